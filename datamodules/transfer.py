"""Data for two-stage transfer: BERT pretraining (masked tokens, optional next-sentence pairs) and a small labelled
topic task, both cut from the same corpus by ``kit.data.passages.split_passages`` so they share one tokenizer
and the pretraining text never contains a test passage.

* :class:`MLMDataModule`: ``[CLS] passage [SEP]`` (or ``[CLS] A [SEP] B [SEP]`` with ``nsp=True``) rows of
  ``block_size`` tokens; the collation masks 15% of the non-special tokens (``kit.data.masking.bert_mask``).
  Pretraining text: the task's training passages (labels unused) and every passage of the unlabelled topics.
* :class:`TopicDataModule`: ``(input_ids, label)`` batches of the same rows; ``train_fraction`` keeps a
  class-stratified share of the training passages (1% or 0.1% for the few-label regime).

The tokenizer is the kit's byte-level BPE trained on the pretraining text, plus the specials ``[PAD]``,
``[CLS]``, ``[SEP]``, ``[MASK]`` appended at the end of the vocabulary; or, with ``tokenizer=DIR``, a pretrained
model's tokenizer folder (:func:`kit.datamodules.text.load_tokenizer_folder`), whose own special tokens play those
roles: ``cls_token`` (else ``bos_token``), ``sep_token`` (else ``eos_token``), ``pad_token`` (else the separator)
and ``mask_token`` (masked-LM pretraining needs one). Rows shorter than ``block_size`` are
padded with ``[PAD]``; the backbone has no attention mask, so pads are attended to (passages are long enough
that almost every row is full; :attr:`pad_share` reports the share of pad tokens).

Example:
    >>> dm = TopicDataModule(block_size=32, train_fraction=0.1)
    >>> dm.setup("fit"); x, y = next(iter(dm.train_dataloader())); x.shape[1], dm.num_classes
    (32, 6)
"""

from __future__ import annotations

import random
import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from kit.data.masking import bert_mask, nsp_pair
from kit.data.passages import TopicTask, split_passages, subsample
from kit.data.text import load_texts
from kit.data.tokenizer import load_or_train_bpe
from kit.datamodules.text import load_tokenizer_folder

__all__ = ["DEFAULT_TOPICS", "SPECIALS", "MLMCollator", "MLMDataModule", "TopicDataModule"]

# the six largest topics of the embedded pydoc corpus: distinct subjects, 19-55 KB each (an imbalanced task)
DEFAULT_TOPICS = ["specialnames", "compound", "types", "string-methods", "debugger", "formatstrings"]
SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]"]
# the role each of the kit's specials plays, and the tokenizer_config.json roles that fill it in a pretrained
# tokenizer, first present wins
_ROLES = {"[PAD]": ("pad", "sep", "eos"), "[CLS]": ("cls", "bos"), "[SEP]": ("sep", "eos"), "[MASK]": ("mask",)}


class _Rows(Dataset):
    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return self.tensors[0].size(0)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[i] for t in self.tensors)


class _StackDict:
    """Collates already-masked rows into the dict the training collation yields (picklable for workers)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def __call__(self, rows: list[tuple[torch.Tensor, ...]]) -> dict[str, torch.Tensor]:
        return dict(zip(self.keys, map(torch.stack, zip(*rows))))


class MLMCollator:
    """Stacks rows and applies BERT masking; rows are ``(ids,)`` or ``(ids, is_next)``. Picklable for workers.

    Draws come from torch's global RNG (seeded by ``seed_everything`` and Lightning's worker seeding) unless a
    generator is given.
    """

    def __init__(
        self,
        mask_id: int,
        vocab_size: int,
        special_ids: list[int],
        p: float = 0.15,
        generator: torch.Generator | None = None,
    ) -> None:
        self.mask_id, self.vocab_size, self.special_ids, self.p = mask_id, vocab_size, special_ids, p
        self.generator = generator

    def __call__(self, rows: list[tuple[torch.Tensor, ...]]) -> dict[str, torch.Tensor]:
        ids = torch.stack([r[0] for r in rows])
        inputs, labels = bert_mask(
            ids, self.mask_id, self.vocab_size, self.special_ids, self.generator, self.p
        )
        batch = {"input_ids": inputs, "labels": labels}
        if len(rows[0]) > 1:
            batch["next_sentence_label"] = torch.stack([r[1] for r in rows])
        return batch


class _PassageData(pl.LightningDataModule):
    """Shared setup: read the corpus, split passages, train (or load) the tokenizer, encode rows."""

    def __init__(
        self,
        classes: list[str] | None = None,
        passage_words: int = 48,
        test_fraction: float = 0.2,
        block_size: int = 64,
        vocab_size: int = 2048,
        batch_size: int = 32,
        seed: int = 1234,
        num_workers: int = 0,
        tokenizer_dir: str | None = None,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__()
        if block_size < 8:
            raise ValueError(f"block_size={block_size} must be >= 8 ([CLS]/[SEP] plus text)")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.classes = list(classes) if classes is not None else list(DEFAULT_TOPICS)
        self.block_size, self.batch_size = block_size, batch_size
        self.tokenizer = None
        self.tokenizer_sha256: str | None = None  # a pretrained tokenizer folder's tokenizer.json
        self._special_ids: dict[str, int] = {}  # the kit's special name ("[PAD]") -> id
        self.task: TopicTask | None = None
        self.pad_share = 0.0

    @property
    def vocab_size(self) -> int | None:
        return self.tokenizer.get_vocab_size() if self.tokenizer is not None else None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def special_id(self, token: str) -> int | None:
        """The id of one of :data:`SPECIALS` (with a pretrained tokenizer: the token playing that role)."""
        return self._special_ids.get(token)

    @property
    def pad_id(self) -> int | None:
        return self.special_id("[PAD]") if self.tokenizer is not None else None

    def _build(self) -> None:
        hp = self.hparams
        docs, _ = load_texts(None)
        self.task = split_passages(docs, self.classes, hp.passage_words, hp.test_fraction, hp.seed)
        pretrain = [p for p, _ in self.task.train] + [p for p, _ in self.task.unlabelled]
        if hp.tokenizer:
            self._pretrained_specials(hp.tokenizer)
            return
        tok, _, _ = load_or_train_bpe(pretrain, hp.vocab_size, 2, hp.tokenizer_dir)
        tok.add_special_tokens(SPECIALS)
        self.tokenizer = tok
        self._special_ids = {t: tok.token_to_id(t) for t in SPECIALS}
        self._special_ids["<|endoftext|>"] = tok.token_to_id("<|endoftext|>")

    def _pretrained_specials(self, folder: str) -> None:
        pretrained = load_tokenizer_folder(folder)
        self.tokenizer, self.tokenizer_sha256 = pretrained.tokenizer, pretrained.sha256
        ids = pretrained.special_ids
        for name, roles in _ROLES.items():
            found = [ids[r] for r in roles if r in ids]
            if found:
                self._special_ids[name] = found[0]
        missing = [n for n in ("[CLS]", "[SEP]") if n not in self._special_ids]
        if missing:
            raise ValueError(
                f"tokenizer={folder!r} names no token for {missing} (tokenizer_config.json has "
                f"{sorted(pretrained.special_tokens)}); rows need a start and a separator: add cls_token/bos_token "
                "and sep_token/eos_token to its tokenizer_config.json"
            )

    def _encode(self, texts: list[str], budget: int | None = None) -> list[list[int]]:
        budget = budget or self.block_size - 2
        # add_special_tokens=False: the rows place their own start and separators
        return [e.ids[:budget] for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def _row(self, *segments: list[int]) -> list[int]:
        cls, sep, pad = (self.special_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
        row = [cls]
        for seg in segments:
            row += [*seg, sep]
        return row + [pad] * (self.block_size - len(row))

    def _rows(self, texts: list[str]) -> torch.Tensor:
        rows = torch.tensor([self._row(ids) for ids in self._encode(texts)], dtype=torch.long)
        self.pad_share = float((rows == self.pad_id).float().mean())
        return rows

    def _loader(self, dataset: Dataset, shuffle: bool, collate=None) -> DataLoader:
        order = (
            {"shuffle": True, "generator": torch.Generator().manual_seed(self.hparams.seed)}
            if shuffle
            else {}
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
            return DataLoader(
                dataset,
                batch_size=self.batch_size,
                num_workers=self.hparams.num_workers,
                persistent_workers=self.hparams.num_workers > 0,
                collate_fn=collate,
                **order,
            )


class MLMDataModule(_PassageData):
    """Masked-LM (and optionally next-sentence) pretraining rows from the corpus minus the topic task's test set.

    Args:
        classes: topics whose test passages are held out (the labelled task's classes); default
            :data:`DEFAULT_TOPICS`.
        passage_words: words per passage.
        test_fraction: share of each class held out for the downstream test (never pretrained on).
        block_size: tokens per row, [CLS]/[SEP] included.
        vocab_size: BPE size before the 4 specials.
        batch_size: rows per batch.
        seed: split, pairing and shuffling seed.
        num_workers: DataLoader workers.
        tokenizer_dir: tokenizer cache folder.
        tokenizer: a pretrained tokenizer folder used instead of training BPE (``vocab_size`` is then unused).
        mask_prob: share of non-special tokens that become targets (BERT: 0.15).
        nsp: build sentence pairs, 50% true next passage (label 1) and 50% a passage of another topic (label 0).
        val_fraction: share of pretraining rows held out for validation (masked once, so val loss is comparable).
    """

    def __init__(
        self,
        classes: list[str] | None = None,
        passage_words: int = 48,
        test_fraction: float = 0.2,
        block_size: int = 64,
        vocab_size: int = 2048,
        batch_size: int = 32,
        seed: int = 1234,
        num_workers: int = 0,
        tokenizer_dir: str | None = None,
        mask_prob: float = 0.15,
        nsp: bool = False,
        val_fraction: float = 0.05,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__(
            classes,
            passage_words,
            test_fraction,
            block_size,
            vocab_size,
            batch_size,
            seed,
            num_workers,
            tokenizer_dir,
            tokenizer,
        )
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob={mask_prob} must be in (0, 1); BERT uses 0.15")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction} must be in (0, 1)")
        self.save_hyperparameters()
        self.train_set: _Rows | None = None
        self.val_set: _Rows | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        self._build()
        rows = (
            self._nsp_rows()
            if hp.nsp
            else (self._rows([p for p, _ in self.task.train + self.task.unlabelled]),)
        )
        n_val = max(1, round(hp.val_fraction * rows[0].size(0)))
        perm = torch.randperm(rows[0].size(0), generator=torch.Generator().manual_seed(hp.seed))
        self.train_set = _Rows(*(r[perm[n_val:]] for r in rows))
        val = [r[perm[:n_val]] for r in rows]
        # the validation rows are masked once, so every evaluation scores the same targets
        fixed = self._collator(torch.Generator().manual_seed(hp.seed))(list(zip(*val)))
        self.val_set = _Rows(*fixed.values())
        self._val_keys = list(fixed)
        rank_zero_info(
            f"MLMDataModule: {len(self.train_set)} train / {n_val} val rows of {hp.block_size} tokens "
            f"({'sentence pairs, ' if hp.nsp else ''}vocab {self.vocab_size}, pad share {self.pad_share:.1%}); "
            f"{len(self.task.test)} test passages of {self.num_classes} topics held out, "
            f"{self.task.dropped} passages dropped for sharing a 13-gram with them"
        )

    def _nsp_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        by_topic: dict[str, list[str]] = {}
        for p, y in self.task.train:
            by_topic.setdefault(self.classes[y], []).append(p)
        for p, t in self.task.unlabelled:
            by_topic.setdefault(t, []).append(p)
        half = (self.block_size - 3) // 2
        segments = [self._encode(texts, half) for texts in by_topic.values()]
        rng = random.Random(self.hparams.seed)
        rows, labels = [], []
        for d, segs in enumerate(segments):
            for i in range(len(segs) - 1):  # every first segment has a true successor, so the coin is 50/50
                a, b, is_next = nsp_pair(segments, d, i, rng)
                rows.append(self._row(a, b))
                labels.append(is_next)
        ids = torch.tensor(rows, dtype=torch.long)
        self.pad_share = float((ids == self.pad_id).float().mean())
        return ids, torch.tensor(labels, dtype=torch.long)

    def _collator(self, generator: torch.Generator | None = None) -> MLMCollator:
        if self.special_id("[MASK]") is None:
            raise ValueError(
                f"tokenizer={self.hparams.tokenizer!r} has no mask_token, which masked-LM pretraining needs; use a "
                "tokenizer with one (a BERT-style folder) or leave tokenizer unset to train BPE with [MASK]"
            )
        specials = list(self._special_ids.values())
        return MLMCollator(
            self.special_id("[MASK]"),
            self.vocab_size,
            [s for s in specials if s is not None],
            self.hparams.mask_prob,
            generator,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self._collator())

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, _StackDict(self._val_keys))


class TopicDataModule(_PassageData):
    """Which of ``classes`` a passage comes from: ``(input_ids (B, T), label (B,))`` batches.

    Args:
        classes: topic names that become labels; default :data:`DEFAULT_TOPICS` (6 classes).
        passage_words: words per passage.
        test_fraction: share of each class held out for test (no 13-gram shared with any training passage).
        block_size: tokens per row, [CLS]/[SEP] included.
        vocab_size: BPE size before the 4 specials (use the pretraining run's value to share its tokenizer).
        batch_size: rows per batch.
        seed: split and shuffle seed.
        num_workers: DataLoader workers.
        tokenizer_dir: tokenizer cache folder.
        tokenizer: a pretrained tokenizer folder used instead of training BPE (``vocab_size`` is then unused).
        train_fraction: class-stratified share of the training passages used (0.01 or 0.001 for few labels).
        val_fraction: share of the (reduced) training passages held out for validation; at least one.
        sample_seed: the draw of the ``train_fraction`` subset (None: ``seed``). The split and the tokenizer
            depend on ``seed`` only, so several few-label draws share one pretraining run and one test set.
    """

    def __init__(
        self,
        classes: list[str] | None = None,
        passage_words: int = 48,
        test_fraction: float = 0.2,
        block_size: int = 64,
        vocab_size: int = 2048,
        batch_size: int = 32,
        seed: int = 1234,
        num_workers: int = 0,
        tokenizer_dir: str | None = None,
        train_fraction: float = 1.0,
        val_fraction: float = 0.1,
        sample_seed: int | None = None,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__(
            classes,
            passage_words,
            test_fraction,
            block_size,
            vocab_size,
            batch_size,
            seed,
            num_workers,
            tokenizer_dir,
            tokenizer,
        )
        subsample([("x", 0)], train_fraction)  # validates train_fraction with its own message
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
        self.save_hyperparameters()
        self.train_set = self.val_set = self.test_set = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        self._build()
        draw = hp.seed if hp.sample_seed is None else hp.sample_seed
        pool = subsample(self.task.train, hp.train_fraction, draw)
        random.Random(draw).shuffle(pool)
        n_val = int(hp.val_fraction * len(pool))  # 0 for a handful of passages: validation then reuses train
        val, train = pool[:n_val], pool[n_val:]
        self.train_set = self._dataset(train)
        self.val_set = self._dataset(val or train)
        self.test_set = self._dataset(self.task.test)
        rank_zero_info(
            f"TopicDataModule: {self.num_classes} topics, {len(train)} train / {len(val)} val / "
            f"{len(self.task.test)} test passages (train_fraction {hp.train_fraction} of {len(self.task.train)}); "
            f"{self.task.dropped} passages dropped for sharing a 13-gram with test"
        )

    def _dataset(self, items: list[tuple[str, int]]) -> _Rows:
        return _Rows(self._rows([p for p, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)
