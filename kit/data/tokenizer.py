"""Byte-level BPE training with HF ``tokenizers``, cached on disk by corpus hash and settings."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = [
    "EOS",
    "MAX_PIECE_CHARS",
    "MAX_PRETOKEN_CHARS",
    "cache_dir",
    "document_pieces",
    "load_or_train_bpe",
    "pre_tokenizer",
    "train_bpe",
]

EOS = "<|endoftext|>"
# Below 256 + special tokens a byte-level BPE cannot even hold its alphabet.
MIN_VOCAB = 260
# Longest pre-token BPE sees, in bytes. GPT-2's split leaves a run without spaces (a base64 blob, a minified
# file, a repeated character) as one pre-token, and training time grows with the square of its length
# (400k characters took a minute); cut into pieces of this size, it grows linearly. Ordinary words, numbers
# and punctuation runs are far shorter, so an ordinary corpus gets the same vocabulary either way.
MAX_PRETOKEN_CHARS = 256
# Longest piece of a document handed to the trainer at once, in characters. ``tokenizers`` holds a document's
# pre-tokens with their offsets while it counts them, about 120 bytes per character of a document of one
# repeated word (a 12 MB one peaked at 1.5 GB); cut at a space between words, a piece keeps the same
# pre-tokens and costs about 30 MB, so the same 12 MB document peaks near 140 MB whatever its size.
MAX_PIECE_CHARS = 1 << 18


def document_pieces(text: str, max_chars: int = MAX_PIECE_CHARS) -> Iterator[str]:
    """``text`` in pieces of at most ``max_chars`` characters, cut before a single space between two words
    (GPT-2's split gives each piece the pre-tokens the whole text has there); a window without one is cut
    where it ends.

    Example:
        >>> list(document_pieces("aa bb cc dd ee", max_chars=6))
        ['aa bb', ' cc dd', ' ee']
    """
    start = 0
    while len(text) - start > max_chars:
        end = start + max_chars
        cut = text.rfind(" ", start + 1, end + 1)
        while cut > start and (text[cut - 1].isspace() or text[cut + 1 : cut + 2].isspace()):
            cut = text.rfind(" ", start + 1, cut)
        cut = cut if cut > start else end
        yield text[start:cut]
        start = cut
    yield text[start:]


def pre_tokenizer(max_pretoken_chars: int | None = MAX_PRETOKEN_CHARS) -> pre_tokenizers.PreTokenizer:
    """GPT-2's byte-level split, then every pre-token cut into pieces of at most ``max_pretoken_chars`` bytes.

    Args:
        max_pretoken_chars: piece length in bytes (byte-level characters); ``None`` keeps pre-tokens whole.

    Raises:
        ValueError: ``max_pretoken_chars < 1``.

    Example:
        >>> [len(t) for t, _ in pre_tokenizer(4).pre_tokenize_str("abcdefghij k")]
        [4, 4, 2, 2]
    """
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if max_pretoken_chars is None:
        return byte_level
    if max_pretoken_chars < 1:
        raise ValueError(
            f"max_pretoken_chars={max_pretoken_chars} must be >= 1 (default {MAX_PRETOKEN_CHARS}), or None"
        )
    cut = pre_tokenizers.Split(Regex(f".{{1,{max_pretoken_chars}}}"), behavior="isolated")
    return pre_tokenizers.Sequence([byte_level, cut])


def cache_dir() -> Path:
    """Where trained tokenizers are cached: ``$KIT_CACHE`` or ``~/.cache/lightning-kit``."""
    return Path(os.environ.get("KIT_CACHE", Path.home() / ".cache" / "lightning-kit"))


def train_bpe(
    texts: Iterable[str],
    vocab_size: int = 4096,
    min_frequency: int = 2,
    show_progress: bool = False,
    length: int | None = None,
    max_pretoken_chars: int | None = MAX_PRETOKEN_CHARS,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer (GPT-2 style) with ``<|endoftext|>`` as its only special token.

    Args:
        texts: training documents.
        vocab_size: target vocabulary including the 256 byte tokens and the special token.
        min_frequency: a pair must occur this often to be merged.
        show_progress: let ``tokenizers`` draw its own progress bar (reading, counting pairs, merges; it
            draws only on a terminal).
        length: number of documents, so the reading bar has a total.
        max_pretoken_chars: pre-tokens longer than this many bytes are cut (:func:`pre_tokenizer`), so
            training time stays linear in the corpus; ``None`` keeps them whole.

    Returns:
        A ``tokenizers.Tokenizer``; ``token_to_id(EOS)`` is its document separator.

    Raises:
        ValueError: ``vocab_size`` is too small for a byte-level vocabulary.

    Example:
        >>> tok = train_bpe(["hello world"] * 10, vocab_size=300)
        >>> tok.decode(tok.encode("hello world").ids)
        'hello world'
    """
    if vocab_size < MIN_VOCAB:
        raise ValueError(
            f"vocab_size={vocab_size} is below {MIN_VOCAB} (256 bytes + specials); use 1000 or more"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer(max_pretoken_chars)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    pieces = (piece for text in texts for piece in document_pieces(text))  # bounded memory per document
    tok.train_from_iterator(pieces, trainer=trainer, length=length)
    return tok


# Below this many characters training takes well under a second: a bar would only flash.
PROGRESS_MIN_CHARS = 2_000_000


def _rank_zero() -> bool:
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK"))


def load_or_train_bpe(
    texts: list[str],
    vocab_size: int,
    min_frequency: int = 2,
    directory: str | os.PathLike | None = None,
    show_progress: bool | None = None,
) -> tuple[Tokenizer, Path, bool]:
    """Return a tokenizer for ``texts``, training it only if no cached one matches corpus and settings.

    The cache key hashes every document and the settings, so editing one file retrains. Training shows
    ``tokenizers``' progress bar (rank zero, on a terminal) when ``show_progress`` is true, or, by default,
    when the corpus has at least ``PROGRESS_MIN_CHARS`` characters (a user corpus, not the embedded one).

    Returns:
        ``(tokenizer, path_of_json, loaded_from_cache)``.
    """
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    settings = {
        "vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "kind": "byte-bpe-v2",
    }  # v2: long pre-tokens cut
    digest.update(json.dumps(settings, sort_keys=True).encode())
    path = Path(directory or cache_dir() / "tokenizers") / f"bpe-{vocab_size}-{digest.hexdigest()[:16]}.json"
    if path.exists():
        try:
            return Tokenizer.from_file(str(path)), path, True
        except Exception:  # a truncated cache file from a killed run: retrain and overwrite it
            path.unlink(missing_ok=True)
    if show_progress is None:
        show_progress = _rank_zero() and sum(map(len, texts)) >= PROGRESS_MIN_CHARS
    tok = train_bpe(
        texts,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=show_progress,
        length=len(texts),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, path)  # atomic: concurrent ranks never read half a file
    return tok, path, False
