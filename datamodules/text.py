"""``TextDataModule``: text files (or the embedded corpus) -> cleaned documents -> BPE -> packed blocks.

The steps are plain functions in ``kit.data`` (``corpus.load_corpus``, ``packing.split_documents``,
``tokenizer.load_or_train_bpe``, ``corpus.augment_documents``, ``packing.pack_blocks``,
``corpus.block_sources``, ``corpus.unigram_cross_entropy``); the datamodule routes them and logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from kit.data.corpus import (
    augment_documents,
    block_sources,
    load_corpus,
    source_rank,
    unigram_cross_entropy,
)
from kit.data.decontaminate import decontaminate_split
from kit.data.packing import pack_blocks, split_documents
from kit.data.sampling import TemperatureSampler
from kit.data.text import LoadReport
from kit.data.tokenizer import EOS, load_or_train_bpe

try:  # resumable mid-epoch; Lightning saves and restores its state in checkpoints
    from torchdata.stateful_dataloader import StatefulDataLoader as _Loader
    from torchdata.stateful_dataloader.sampler import RandomSampler as _RandomSampler
except ImportError:  # pragma: no cover - torchdata is a core dependency, this keeps the module importable
    from torch.utils.data import RandomSampler as _RandomSampler

    _Loader = DataLoader

__all__ = ["BlockDataset", "TextDataModule", "TokenizerFolder", "load_tokenizer_folder"]

# the special-token roles a Hugging Face tokenizer folder may name, as tokenizer_config.json spells them
SPECIAL_ROLES = ("bos", "eos", "pad", "unk", "cls", "sep", "mask")


@dataclass
class TokenizerFolder:
    """A pretrained tokenizer read from a Hugging Face folder: the ``tokenizers`` object, its special tokens and
    chat template, and the SHA-256 of ``tokenizer.json`` (the identity a run records, so a changed file is seen).

    Example:
        >>> tf = load_tokenizer_folder("my-model")  # doctest: +SKIP
        >>> tf.special_ids["eos"], tf.vocab_size  # doctest: +SKIP
        (2, 32000)
    """

    folder: Path
    tokenizer: Tokenizer
    sha256: str
    special_tokens: dict[str, str] = field(default_factory=dict)  # role -> token text, only the roles present
    chat_template: str | None = None

    @property
    def path(self) -> Path:
        return self.folder / "tokenizer.json"

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer can produce, added tokens included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> dict[str, int]:
        """Role -> id for every special token the folder names that the vocabulary holds."""
        ids = {role: self.tokenizer.token_to_id(tok) for role, tok in self.special_tokens.items()}
        return {role: i for role, i in ids.items() if i is not None}


def _token_text(value: object) -> str | None:
    # tokenizer_config.json writes a special token as a string or as an AddedToken dict
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _chat_template(folder: Path, config: dict) -> str | None:
    jinja = folder / "chat_template.jinja"  # newer transformers save the template beside the config
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def load_tokenizer_folder(folder: str | os.PathLike) -> TokenizerFolder:
    """Read a Hugging Face tokenizer folder: ``tokenizer.json`` plus the special tokens and chat template of
    ``tokenizer_config.json`` (and ``special_tokens_map.json``, ``chat_template.jinja`` where present).

    Nothing is downloaded and no code from the folder runs (the chat template is rendered by ``transformers``'
    sandboxed Jinja only when instruction data asks for it). Without a named ``eos_token``, ``<|endoftext|>``
    is used when the vocabulary holds it.

    Args:
        folder: a local folder holding ``tokenizer.json`` (a model folder, or one written by ``save_pretrained``).

    Returns:
        A :class:`TokenizerFolder`.

    Raises:
        FileNotFoundError: the folder has no ``tokenizer.json``; the message says what to pass instead.

    Example:
        >>> tf = load_tokenizer_folder("my-model")  # doctest: +SKIP
        >>> tf.tokenizer.encode("hello").ids  # doctest: +SKIP
        [22557]
    """
    root = Path(folder).expanduser()
    path = root / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer={str(folder)!r} holds no tokenizer.json; pass a Hugging Face model or tokenizer folder "
            "(a slow sentencepiece-only tokenizer can be converted once with "
            "AutoTokenizer.from_pretrained(dir).save_pretrained(dir)), or leave tokenizer unset to train BPE"
        )
    config = {**_read_json(root / "special_tokens_map.json"), **_read_json(root / "tokenizer_config.json")}
    specials = {role: _token_text(config.get(f"{role}_token")) for role in SPECIAL_ROLES}
    specials = {role: tok for role, tok in specials.items() if tok is not None}
    tokenizer = Tokenizer.from_file(str(path))
    if "eos" not in specials and tokenizer.token_to_id(EOS) is not None:
        specials["eos"] = EOS
    return TokenizerFolder(
        folder=root,
        tokenizer=tokenizer,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        special_tokens=specials,
        chat_template=_chat_template(root, config),
    )


class BlockDataset(Dataset):
    """Rows of ``block_size + 1`` tokens served as ``(input_ids, targets)`` pairs, each of shape (T,)."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.size(0)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.blocks[i]
        return row[:-1], row[1:]


class TextDataModule(pl.LightningDataModule):
    """Language-modelling data from text files, folders, globs or JSONL, or the embedded corpus by default.

    Setup reads and cleans the documents (``kit.data.text.clean_text``), splits them train/val/test by
    document, moves every held-out document that shares a 13-gram with training into training (GPT-3's
    contamination rule, ``kit.data.decontaminate``; the moved names are logged and kept in ``moved_docs``),
    trains (or loads from cache) a byte-level BPE tokenizer on the training documents only, and packs each
    split into blocks of ``block_size + 1`` tokens with ``<|endoftext|>`` between documents. ``kit test``
    evaluates the test split, never the validation one.

    Args:
        paths: files, folders or globs; None uses the embedded ``pydoc_data`` corpus (79 topics, ~465 KB).
        vocab_size: BPE vocabulary size.
        block_size: context length T of each example.
        batch_size: examples per batch.
        val_fraction: share of documents held out for validation.
        test_fraction: share of documents held out for testing (0: no test split; ``test_dataloader`` then
            says so).
        decontaminate_ngram: held-out documents sharing an n-gram of this many words with training move to
            training before anything is tokenized; 0 turns the check off.
        seed: split and shuffle seed.
        num_workers: DataLoader worker processes.
        lowercase: lower-case during cleaning.
        min_frequency: BPE merge threshold.
        tokenizer_dir: tokenizer cache folder (default ``$KIT_CACHE/tokenizers``).
        sources: named sources ``{name: path | glob | [paths]}`` instead of ``paths``; training blocks are then
            drawn per source with ``kit.data.sampling.TemperatureSampler`` (probability of a source proportional to
            its block count ** (1/temperature)). Validation stays unweighted.
        sources_from_topics: use the embedded corpus's 79 topics as sources (a ready long tail, 200 B - 62 KB).
        temperature: source temperature: 1 keeps natural proportions, larger flattens toward uniform.
        augment_p: probability that each training document also contributes an augmented copy
            (``kit.data.augment_text.TextAugmenter``: EDA swap/delete and sentence reordering, seeded by ``seed``;
            lines, punctuation, code and technical words kept). The tokenizer is trained on the originals only.
        tokenizer: a pretrained model's tokenizer folder (holding ``tokenizer.json``; a Hugging Face model folder
            will do) used instead of training BPE: ``vocab_size``, ``min_frequency`` and ``tokenizer_dir`` are then
            unused, each document starts with the tokenizer's ``bos_token`` (when it has one distinct from eos) and
            documents are separated by its ``eos_token``. The SHA-256 of ``tokenizer.json`` is logged and saved in
            checkpoints; resuming with a different file warns. A model whose vocabulary is smaller than this
            tokenizer's is an error at fit start naming both sizes.

    After ``setup()`` in source mode, ``source_counts`` (training blocks per source), ``source_proportions``
    (effective sampling share per source) and ``natural_proportions`` are available and logged.

    Example:
        >>> dm = TextDataModule(vocab_size=512, block_size=32)
        >>> dm.setup("fit"); x, y = next(iter(dm.train_dataloader())); x.shape
        torch.Size([16, 32])
    """

    def __init__(
        self,
        paths: str | list[str] | None = None,
        vocab_size: int = 4096,
        block_size: int = 128,
        batch_size: int = 16,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        decontaminate_ngram: int = 13,
        seed: int = 1234,
        num_workers: int = 0,
        lowercase: bool = False,
        min_frequency: int = 2,
        tokenizer_dir: str | None = None,
        sources: dict[str, str | list[str]] | None = None,
        sources_from_topics: bool = False,
        temperature: float = 1.0,
        augment_p: float = 0.0,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__()
        if paths is not None and (sources is not None or sources_from_topics):
            raise ValueError("pass either paths or sources/sources_from_topics, not both")
        if sources is not None and sources_from_topics:
            raise ValueError("pass either sources or sources_from_topics=True, not both")
        if sources is not None and not sources:
            raise ValueError("sources is empty; pass {name: path_or_glob} or leave it None")
        if not temperature > 0:
            raise ValueError(
                f"temperature={temperature} must be > 0 (1 = natural proportions, larger = flatter)"
            )
        if not 0.0 <= augment_p <= 1.0:
            raise ValueError(f"augment_p={augment_p} must lie in [0, 1]")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if block_size < 1:
            raise ValueError(f"block_size={block_size} must be >= 1")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be >= 0")
        split_documents(["a", "b"], val_fraction)  # validates val_fraction with its own message
        if not 0.0 <= test_fraction < 1.0 - val_fraction:
            raise ValueError(
                f"test_fraction={test_fraction} must lie in [0, 1 - val_fraction={val_fraction}); 0.1 is common, 0 "
                "turns the test split off"
            )
        if decontaminate_ngram < 0:
            raise ValueError(
                f"decontaminate_ngram={decontaminate_ngram} must be >= 0 (13 as in GPT-3, 0 = off)"
            )
        self.save_hyperparameters()
        self.paths = paths
        self.block_size = block_size
        self.batch_size = batch_size
        self.tokenizer = None
        self.tokenizer_path: str | None = None
        self.tokenizer_sha256: str | None = None  # set when a tokenizer folder is given
        self.special_ids: dict[str, int] = {}
        self.train_texts: list[str] = []
        self.val_texts: list[str] = []
        self.test_texts: list[str] = []
        self.moved_docs: dict[str, list[str]] = {"val": [], "test": []}  # held-out names moved to training
        self.report: LoadReport | None = None
        self.unigram_loss: float | None = None
        self.train_set: BlockDataset | None = None
        self.val_set: BlockDataset | None = None
        self.test_set: BlockDataset | None = None
        self.multi_source = sources is not None or sources_from_topics
        self.train_groups: list[str] | None = None  # source of each training block
        self.source_counts: dict[str, int] = {}
        self.source_proportions: dict[str, float] = {}
        self.natural_proportions: dict[str, float] = {}
        self.sampler: TemperatureSampler | None = None
        self.augmented_docs = 0
        self._summary: tuple[os.PathLike, bool, int, int] | None = None  # built but not yet reported

    @property
    def vocab_size(self) -> int | None:
        """The trained tokenizer's size (may be below the requested size on a small corpus)."""
        return self.tokenizer.get_vocab_size() if self.tokenizer is not None else None

    def prepare_data(self) -> None:
        # Rank 0 trains and caches the tokenizer once; other ranks then load it from disk in setup().
        self._load_and_tokenize(log=False)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self._load_and_tokenize(log=True)
        elif self._summary is not None:  # prepare_data built it in this process: report it once, here
            self._log_setup(*self._summary)

    def _load_and_tokenize(self, log: bool) -> None:
        hp = self.hparams
        docs, report, source_of = load_corpus(hp.paths, hp.sources, hp.sources_from_topics, hp.lowercase)
        self.report = report
        rank = source_rank(docs, source_of) if self.multi_source else None
        train_names = self._split(docs, source_of, rank)
        tok, path, cached = self._tokenizer()
        self.tokenizer, self.tokenizer_path = tok, str(path)
        train_sources = [source_of.get(n, "") for n in train_names]
        if hp.augment_p > 0:  # after the tokenizer: it is trained on the original documents only
            self.train_texts, train_sources, self.augmented_docs = augment_documents(
                self.train_texts, train_sources, hp.augment_p, hp.seed, rank
            )
        eos = self.special_ids.get("eos") if hp.tokenizer else tok.token_to_id(EOS)
        train_ids, val_ids, test_ids = (
            self._encode(texts) for texts in (self.train_texts, self.val_texts, self.test_texts)
        )
        self._pack(train_ids, val_ids, eos, test_ids)
        if self.multi_source:
            self._assign_sources(train_ids, train_sources, eos is not None)
        flat_train = [t for ids in train_ids for t in ids]
        flat_val = [t for ids in val_ids for t in ids]
        self.unigram_loss = unigram_cross_entropy(flat_train, flat_val, tok.get_vocab_size())
        self._summary = (path, cached, len(flat_train), len(flat_val))
        if log:
            self._log_setup(*self._summary)

    def _tokenizer(self) -> tuple[Tokenizer, Path, bool]:
        """The folder's tokenizer when one is given, else BPE trained on (or cached for) the training documents."""
        hp = self.hparams
        if not hp.tokenizer:
            return load_or_train_bpe(self.train_texts, hp.vocab_size, hp.min_frequency, hp.tokenizer_dir)
        folder = load_tokenizer_folder(hp.tokenizer)
        self.tokenizer_sha256, self.special_ids = folder.sha256, folder.special_ids
        return folder.tokenizer, folder.path, True

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids per document; a pretrained tokenizer's bos starts each one (the trained BPE has none)."""
        if not self.hparams.tokenizer:
            return [e.ids for e in self.tokenizer.encode_batch(texts)]
        bos, eos = self.special_ids.get("bos"), self.special_ids.get("eos")
        head = [bos] if bos is not None and bos != eos else []
        return [head + e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def _split(
        self, docs: dict[str, str], source_of: dict[str, str], rank: dict[str, int] | None
    ) -> list[str]:
        """Document-level train/val/test split, decontaminated; training grouped by source. Returns the train names."""
        hp = self.hparams
        train_names, val_names = split_documents(list(docs), hp.val_fraction, hp.seed)
        test_names: list[str] = []
        # from the training side, so the validation split is the same with or without it; a corpus of two or
        # three documents has no test split (test_dataloader then says so)
        if hp.test_fraction > 0 and len(train_names) >= 2:
            train_names, test_names = split_documents(
                train_names, hp.test_fraction / (1 - hp.val_fraction), hp.seed + 1
            )
        if hp.decontaminate_ngram:
            held = {"val": val_names, "test": test_names}
            try:
                _, _, moved = decontaminate_split(
                    [docs[n] for n in train_names],
                    {k: [docs[n] for n in v] for k, v in held.items()},
                    hp.decontaminate_ngram,
                )
            except ValueError as err:  # a templated corpus: every held-out document repeats training text
                rank_zero_warn(f"TextDataModule: split kept as drawn, held-out losses are optimistic: {err}")
                moved = {k: [] for k in held}
            self.moved_docs = {k: [held[k][i] for i in idx] for k, idx in moved.items()}
            gone = {n for names in self.moved_docs.values() for n in names}
            train_names += [n for k in held for n in self.moved_docs[k]]
            val_names = [n for n in val_names if n not in gone]
            test_names = [n for n in test_names if n not in gone]
        if rank is not None:  # group training documents by source so each source's blocks are contiguous
            train_names = sorted(train_names, key=lambda n: rank[source_of[n]])
        self.train_texts = [docs[n] for n in train_names]
        self.val_texts = [docs[n] for n in val_names]
        self.test_texts = [docs[n] for n in test_names]
        return train_names

    def _pack(
        self,
        train_ids: list[list[int]],
        val_ids: list[list[int]],
        eos: int | None,
        test_ids: list[list[int]] | None = None,
    ) -> None:
        """Every split into blocks; a too-short split names its size and the knob that grows it."""
        block_size = self.hparams.block_size
        splits = {"train": train_ids, "val": val_ids, "test": test_ids or []}
        packed = {}
        for name, ids in splits.items():
            if name == "test" and not ids:
                continue
            try:
                packed[name] = BlockDataset(pack_blocks(ids, block_size, eos))
            except ValueError as err:
                sizes = ", ".join(
                    f"{k} split {sum(map(len, v)):,} tokens in {len(v)} docs" for k, v in splits.items()
                )
                knob = "" if name == "train" else f"; raising data.{name}_fraction grows the {name} split"
                raise ValueError(f"{err} ({sizes}{knob})") from None
        self.train_set, self.val_set = packed["train"], packed["val"]
        self.test_set = packed.get("test")

    def _log_setup(self, path: os.PathLike, cached: bool, n_train: int, n_val: int) -> None:
        """What setup built and what reading skipped, replaced or moved: once, on rank zero."""
        self._summary = None
        hp, report = self.hparams, self.report
        source = "embedded pydoc_data corpus" if hp.paths is None else f"{report.files} file(s)"
        rank_zero_info(
            f"TextDataModule: {source}, {report.documents} documents ({len(self.train_texts)} train / "
            f"{len(self.val_texts)} val / {len(self.test_texts)} test); tokenizer {self._tokenizer_origin(cached)} "
            f"{path} (vocab {self.vocab_size}); {n_train:,} train / {n_val:,} val tokens -> "
            f"{len(self.train_set)} / {len(self.val_set)} blocks of {hp.block_size}; "
            f"unigram baseline val loss {self.unigram_loss:.3f}"
        )
        if hp.decontaminate_ngram:
            moved = {k: v for k, v in self.moved_docs.items() if v}
            rank_zero_info(
                f"TextDataModule: {hp.decontaminate_ngram}-gram decontamination moved "
                + (
                    "; ".join(
                        f"{len(v)} {k} document(s) to training ({', '.join(v[:5])}{' ...' if len(v) > 5 else ''})"
                        for k, v in moved.items()
                    )
                    if moved
                    else "nothing: no held-out document shares an n-gram with training"
                )
            )
        if self.multi_source:
            top = sorted(self.source_proportions.items(), key=lambda kv: -kv[1])
            shown = ", ".join(
                f"{n} {100 * p:.1f}% (natural {100 * self.natural_proportions[n]:.1f}%)" for n, p in top[:8]
            )
            rank_zero_info(
                f"TextDataModule: {len(self.source_counts)} sources with training blocks, temperature "
                f"{hp.temperature}; effective shares: {shown}{' ...' if len(top) > 8 else ''}"
            )
        problems = report.problems()
        if problems:
            rank_zero_warn(f"TextDataModule: {problems}")
        if len(self.train_set) < self.batch_size:
            rank_zero_warn(
                f"only {len(self.train_set)} training blocks for batch_size={self.batch_size}: one short batch per epoch"
            )

    def _tokenizer_origin(self, cached: bool) -> str:
        if self.hparams.tokenizer:
            return f"(pretrained, sha256 {self.tokenizer_sha256[:12]}, specials {self.special_ids}) read from"
        return "loaded from" if cached else "trained and cached at"

    def _assign_sources(self, train_ids: list[list[int]], sources: list[str], with_eos: bool) -> None:
        """Label each packed training block with the source of its first token; build the sampler weights."""
        self.train_groups = block_sources(
            [len(ids) for ids in train_ids], sources, self.hparams.block_size, len(self.train_set), with_eos
        )
        self.source_counts = dict(Counter(self.train_groups))
        sampler = TemperatureSampler(
            self.train_groups, self.hparams.temperature, seed=self.hparams.seed, num_replicas=1, rank=0
        )
        self.source_proportions = sampler.proportions
        self.natural_proportions = sampler.natural_proportions
        missing = sorted(set(sources) - set(self.source_counts))
        if missing:
            rank_zero_warn(
                f"{len(missing)} source(s) hold less than one block of training text and are not sampled on their "
                f"own (their tokens sit in a neighbouring block): {missing[:10]}"
            )

    def _loader(self, dataset: BlockDataset, shuffle: bool) -> DataLoader:
        order: dict = {}
        if shuffle and self.train_groups is not None:
            # distributed-aware: picks up world size and rank from torch.distributed when it is initialised
            self.sampler = TemperatureSampler(
                self.train_groups, self.hparams.temperature, num_samples=len(dataset), seed=self.hparams.seed
            )
            self._log_proportions()
            order = {"sampler": self.sampler}
        elif shuffle:
            # The sampler owns its generator and saves it in the loader's state. A loader-level generator would
            # also seed each iterator's base seed, so the next epoch's order would depend on how many iterators
            # were made (a resumed run makes one more) and a resume would not be exact.
            generator = torch.Generator().manual_seed(self.hparams.seed)
            order = {"sampler": _RandomSampler(dataset, generator=generator)}
        with warnings.catch_warnings():
            # torchdata 0.11 calls torch.set_vital, which torch deprecates; nothing a user can act on
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
            return _Loader(
                dataset,
                batch_size=self.batch_size,
                num_workers=self.hparams.num_workers,
                persistent_workers=self.hparams.num_workers > 0,
                pin_memory=torch.cuda.is_available(),
                drop_last=False,
                **order,
            )

    def _log_proportions(self) -> None:
        trainer = self.trainer
        if trainer is None or not trainer.loggers:
            return
        metrics = {f"data/source_p/{name}": p for name, p in self.source_proportions.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            raise ValueError(
                f"TextDataModule has no test split (test_fraction={self.hparams.test_fraction}, "
                f"{len(self.train_texts) + len(self.val_texts)} documents); set data.test_fraction (e.g. 0.1) on a "
                "corpus of 3+ documents, or run `kit validate` for the validation split"
            )
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split where there is one (text the model neither trained nor was selected on), else validation."""
        return self._loader(self.test_set if self.test_set is not None else self.val_set, shuffle=False)

    def state_dict(self) -> dict:
        return {"tokenizer_path": self.tokenizer_path, "tokenizer_sha256": self.tokenizer_sha256}

    def load_state_dict(self, state_dict: dict) -> None:
        # The tokenizer is rebuilt from the corpus (cache hit); a mismatch means the data changed under the run.
        saved = state_dict.get("tokenizer_path")
        if saved and self.tokenizer_path and os.path.basename(saved) != os.path.basename(self.tokenizer_path):
            rank_zero_warn(
                f"resuming with a different tokenizer ({self.tokenizer_path}) than the checkpoint's ({saved}): "
                "the corpus or data settings changed"
            )
        saved_sha = state_dict.get("tokenizer_sha256")
        if saved_sha and self.tokenizer_sha256 and saved_sha != self.tokenizer_sha256:
            rank_zero_warn(
                f"resuming with a different tokenizer.json (sha256 {self.tokenizer_sha256[:12]}) than the "
                f"checkpoint's ({saved_sha[:12]}): token ids no longer mean what the model learned; pass the "
                "tokenizer folder the run started with"
            )
