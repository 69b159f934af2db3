"""Byte-level BPE training with HF ``tokenizers``, cached on disk by corpus hash and settings."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = ["EOS", "cache_dir", "load_or_train_bpe", "train_bpe"]

EOS = "<|endoftext|>"
# Below 256 + special tokens a byte-level BPE cannot even hold its alphabet.
MIN_VOCAB = 260


def cache_dir() -> Path:
    """Where trained tokenizers are cached: ``$KIT_CACHE`` or ``~/.cache/lightning-kit``."""
    return Path(os.environ.get("KIT_CACHE", Path.home() / ".cache" / "lightning-kit"))


def train_bpe(
    texts: Iterable[str],
    vocab_size: int = 4096,
    min_frequency: int = 2,
    show_progress: bool = False,
    length: int | None = None,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer (GPT-2 style) with ``<|endoftext|>`` as its only special token.

    Args:
        texts: training documents.
        vocab_size: target vocabulary including the 256 byte tokens and the special token.
        min_frequency: a pair must occur this often to be merged.
        show_progress: let ``tokenizers`` draw its own progress bar (reading, counting pairs, merges; it
            draws only on a terminal).
        length: number of documents, so the reading bar has a total.

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
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
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
    settings = {"vocab_size": vocab_size, "min_frequency": min_frequency, "kind": "byte-bpe-v1"}
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
