"""``InstructDataModule``: instruction-tuning rows (JSONL) -> token ids with the loss on the responses only.

Each line of a JSONL file is one example, in one of two forms:

* ``{"prompt": "...", "response": "..."}``: the tokens are ``[bos] prompt response eos`` (``bos`` only when the
  tokenizer has one distinct from ``eos``); the prompt is used as written, so it carries its own formatting.
* ``{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}``: a chat, rendered with the
  tokenizer's chat template when its folder has one (``tokenizer_config.json`` or ``chat_template.jinja``),
  else with the plain template :data:`PLAIN_TEMPLATE` documents. Every assistant turn is trained on.

Prompt and response pieces are tokenized separately and concatenated, so the loss mask is exact: a target is
``-100`` (ignored by ``cross_entropy``) everywhere except on the response tokens and the ``eos`` that ends
them. Batches are ``(input_ids, targets)`` of shape (B, T), as :class:`kit.models.CausalLM` and
:class:`kit.models.HFCausalLM` expect.

Packing (``packing=True``): the examples are concatenated into one stream and cut into rows of ``block_size``
(consecutive rows overlap by one token, the ragged tail is dropped), so no compute goes to padding. There is no
document masking: attention inside a row also sees the end of the previous example, as in GPT-style pretraining;
the loss still falls on response tokens only. Without packing, each example is one row, padded to the longest
in its batch (pad tokens get target ``-100``).

A bad row is never dropped silently: invalid JSON, a line that is not an object, missing keys (neither
``prompt``/``response`` nor a well-formed ``messages`` list), an empty response, or an example longer than
``block_size + 1`` tokens is counted by reason, and the counts with the first few ``file:line`` places are
reported once on rank zero (``bad_rows`` keeps them). A file with no usable row is an error.
"""

from __future__ import annotations

import glob
import json
import os
import random
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from kit.data.packing import pack_blocks
from kit.datamodules.text import TokenizerFolder, _Loader, _RandomSampler, load_tokenizer_folder

__all__ = ["BAD_ROW_REASONS", "PLAIN_TEMPLATE", "InstructDataModule", "PaddedCollator", "encode_example"]

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index
BAD_ROW_REASONS = (
    "invalid JSON",
    "not an object",
    "missing keys",
    "empty response",
    "too long",
    "chat template rewrites earlier turns",  # no exact loss mask exists for such a rendering
)
# The chat rendering used when the tokenizer has no chat template: each message is "### Role:\n" + content +
# "\n\n"; an assistant's content is followed by eos (trained on) before the blank line.
PLAIN_TEMPLATE = "### {role}:\n{content}\n\n"
_PLACES_SHOWN = 3


@dataclass
class _Segment:
    text: str
    trained: bool
    eos_after: bool = False  # the plain template ends each assistant turn with eos


@dataclass
class BadRows:
    """Rows skipped, by reason, with the first few ``file:line`` places of each."""

    counts: Counter = field(default_factory=Counter)
    places: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, place: str) -> None:
        self.counts[reason] += 1
        shown = self.places.setdefault(reason, [])
        if len(shown) < _PLACES_SHOWN:
            shown.append(place)

    def summary(self) -> str:
        return "; ".join(
            f"{reason} {n} ({', '.join(self.places[reason])})" for reason, n in self.counts.items()
        )


class _BadRow(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _messages(row: dict) -> list[dict[str, str]]:
    messages = row.get("messages")
    ok = (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    )
    if not ok:
        raise _BadRow("missing keys")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise _BadRow("empty response")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _template_segments(messages: list[dict[str, str]], render) -> list[_Segment]:
    """Assistant turns are the text each one adds to the rendering of the conversation before it (after the
    generation prompt); everything else is prompt."""
    segments, done = [], ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            head = render(messages[:i], True)
            if not head.startswith(done):
                raise _BadRow("chat template rewrites earlier turns")
            segments.append(_Segment(head[len(done) :], False))
            done = head
        upto = render(messages[: i + 1], False)
        if not upto.startswith(done):
            raise _BadRow("chat template rewrites earlier turns")
        segments.append(_Segment(upto[len(done) :], message["role"] == "assistant"))
        done = upto
    return [s for s in segments if s.text]


def _plain_segments(messages: list[dict[str, str]]) -> list[_Segment]:
    segments = []
    for m in messages:
        head, _, tail = PLAIN_TEMPLATE.format(role=m["role"].capitalize(), content="\0").partition("\0")
        if m["role"] == "assistant":
            segments += [
                _Segment(head, False),
                _Segment(m["content"], True, eos_after=True),
                _Segment(tail, False),
            ]
        else:
            segments.append(_Segment(head + m["content"] + tail, False))
    return segments


def encode_example(row: object, tokenizer: TokenizerFolder, render=None) -> tuple[list[int], list[int]]:
    """One JSONL row -> ``(ids, labels)``: ``labels[i]`` is ``ids[i]`` on response tokens, ``-100`` elsewhere.

    Args:
        row: the parsed JSON value.
        tokenizer: the tokenizer folder (its ``eos`` is required; ``bos`` starts a prompt/response example).
        render: ``render(messages, add_generation_prompt) -> str``, the chat template; None uses
            :data:`PLAIN_TEMPLATE`.

    Raises:
        ValueError: a bad row; ``str(err)`` is one of :data:`BAD_ROW_REASONS`.

    Example:
        >>> ids, labels = encode_example({"prompt": "2+2=", "response": "4"}, tf)  # doctest: +SKIP
        >>> [t for t, l in zip(ids, labels) if l != -100] == tf.tokenizer.encode("4").ids + [tf.special_ids["eos"]]
        True
    """
    if not isinstance(row, dict):
        raise _BadRow("not an object")
    eos, bos = tokenizer.special_ids["eos"], tokenizer.special_ids.get("bos")
    # a chat template writes its own start token; otherwise a bos distinct from eos starts the example
    start = [bos] if bos is not None and bos != eos else []
    if "messages" not in row and isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
        if not row["response"].strip():
            raise _BadRow("empty response")
        segments = [_Segment(row["prompt"], False), _Segment(row["response"], True, eos_after=True)]
    elif "messages" in row:
        messages = _messages(row)
        segments = _template_segments(messages, render) if render else _plain_segments(messages)
        start = [] if render else start
    else:
        raise _BadRow("missing keys")
    ids, labels, last = list(start), [IGNORE_INDEX] * len(start), []
    encoded = tokenizer.tokenizer.encode_batch([s.text for s in segments], add_special_tokens=False)
    for segment, enc in zip(segments, encoded):
        piece = enc.ids + ([eos] if segment.eos_after else [])
        ids += piece
        labels += piece if segment.trained else [IGNORE_INDEX] * len(piece)
        last = piece if segment.trained else last
    if segments[-1].trained and eos not in last:
        ids.append(eos)  # the template's last turn does not end with eos: teach the model to stop
        labels.append(eos)
    return ids, labels


def _expand(paths: str | list[str]) -> list[Path]:
    found: list[Path] = []
    for pattern in [paths] if isinstance(paths, str) else paths:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise FileNotFoundError(f"data.paths: {pattern!r} matches no file; pass JSONL files or globs")
        found += [Path(m) for m in matches]
    return found


def _read_rows(paths: list[Path]) -> Iterator[tuple[str, object]]:
    """``(file:line, parsed JSON or the exception)`` for each non-blank line."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path.name}:{n}", json.loads(line)
                except json.JSONDecodeError as err:
                    yield f"{path.name}:{n}", err


class _Examples(Dataset):
    """One example per row: ``(input_ids, targets)`` of its own length, shifted by one."""

    def __init__(self, examples: list[tuple[list[int], list[int]]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids, labels = self.examples[i]
        return torch.tensor(ids[:-1]), torch.tensor(labels[1:])


class _Packed(Dataset):
    """Rows of ``block_size + 1`` ids and labels cut from the concatenated examples."""

    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return self.ids.size(0)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ids[i, :-1], self.labels[i, 1:]


class PaddedCollator:
    """Pads ``(input_ids, targets)`` rows to the longest in the batch: inputs with ``pad_id``, targets with -100.

    Example:
        >>> x, y = PaddedCollator(0)([(torch.tensor([5, 6]), torch.tensor([6, 7])), (torch.tensor([5]), torch.tensor([9]))])
        >>> x.tolist(), y.tolist()
        ([[5, 6], [5, 0]], [[6, 7], [9, -100]])
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        T = max(x.numel() for x, _ in rows)
        x = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        y = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
        for i, (xi, yi) in enumerate(rows):
            x[i, : xi.numel()], y[i, : yi.numel()] = xi, yi
        return x, y


class InstructDataModule(pl.LightningDataModule):
    """Instruction tuning from JSONL: ``prompt``/``response`` rows or chat ``messages``, loss on responses only.

    See the module docstring for the row formats, the templates, packing and the bad-row report.

    Args:
        paths: JSONL files or globs.
        tokenizer: the model's tokenizer folder (``tokenizer.json``, ``tokenizer_config.json``); None takes the
            folder the model is loaded from (``model.init_from`` of ``CausalLM``, ``model.model`` of
            ``HFCausalLM``) when it holds a ``tokenizer.json``. The tokenizer must name an ``eos_token``.
        block_size: context length T; a longer example is a bad row ("too long").
        batch_size: rows per batch.
        packing: concatenate examples into full rows (no document masking) instead of one padded row each.
        val_fraction: share of the good rows held out for validation (at least one when there are two or more).
        val_paths: JSONL files for validation instead of a share of ``paths``.
        seed: split and shuffle seed.
        num_workers: DataLoader worker processes.

    Example:
        >>> dm = InstructDataModule("chat.jsonl", tokenizer="my-model", block_size=512)  # doctest: +SKIP
        >>> dm.setup("fit"); x, y = next(iter(dm.train_dataloader()))  # doctest: +SKIP
    """

    def __init__(
        self,
        paths: str | list[str],
        tokenizer: str | None = None,
        block_size: int = 512,
        batch_size: int = 8,
        packing: bool = False,
        val_fraction: float = 0.05,
        val_paths: str | list[str] | None = None,
        seed: int = 1234,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if block_size < 2:
            raise ValueError(f"block_size={block_size} must be >= 2")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction} must lie in [0, 1); 0.05 is common")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be >= 0")
        self.save_hyperparameters()
        self.block_size, self.batch_size = block_size, batch_size
        self.tokenizer_folder: TokenizerFolder | None = None
        self.bad_rows = BadRows()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @property
    def vocab_size(self) -> int | None:
        """The tokenizer's size (checked against the model's at fit start)."""
        return self.tokenizer_folder.vocab_size if self.tokenizer_folder is not None else None

    @property
    def tokenizer(self):  # the ``tokenizers.Tokenizer``, as TextDataModule exposes it
        return self.tokenizer_folder.tokenizer if self.tokenizer_folder is not None else None

    def _tokenizer_dir(self) -> str:
        if self.hparams.tokenizer:
            return self.hparams.tokenizer
        trainer = getattr(self, "trainer", None)
        module = trainer.lightning_module if trainer is not None else None
        hp = getattr(module, "hparams", {}) or {}
        # CausalLM keeps init_from as an attribute (not a hyperparameter); HFCausalLM's folder is hparams.model
        for folder in (getattr(module, "init_from", None), hp.get("init_from"), hp.get("model")):
            if isinstance(folder, (str, os.PathLike)) and (Path(folder) / "tokenizer.json").is_file():
                return str(folder)
        raise ValueError(
            "InstructDataModule has no tokenizer: pass data.tokenizer=DIR (a folder holding tokenizer.json), or "
            "load the model from a Hugging Face folder (model.init_from / model.model) that holds one"
        )

    def _render(self):
        """The chat template as ``render(messages, add_generation_prompt)``, or None (plain template)."""
        folder = self.tokenizer_folder
        if folder.chat_template is None:
            return None
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast.from_pretrained(str(folder.folder), local_files_only=True)
        hf.chat_template = folder.chat_template
        return lambda messages, prompt: hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=prompt
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        self.tokenizer_folder = load_tokenizer_folder(self._tokenizer_dir())
        if "eos" not in self.tokenizer_folder.special_ids:
            raise ValueError(
                f"the tokenizer in {self.tokenizer_folder.folder} names no eos_token, which ends every response; "
                "add eos_token to its tokenizer_config.json"
            )
        render = self._render()
        examples = self._encode_all(_expand(hp.paths), render)
        if hp.val_paths:
            train, val = examples, self._encode_all(_expand(hp.val_paths), render)
        else:
            train, val = self._split(examples)
        self.train_set, self.val_set = self._dataset(train, "train"), self._dataset(val, "val")
        self._report(len(train), len(val), render is not None)

    def _encode_all(self, paths: list[Path], render) -> list[tuple[list[int], list[int]]]:
        examples = []
        for place, row in _read_rows(paths):
            try:
                if isinstance(row, json.JSONDecodeError):
                    raise _BadRow("invalid JSON")
                ids, labels = encode_example(row, self.tokenizer_folder, render)
                if len(ids) > self.block_size + 1:
                    raise _BadRow("too long")
            except _BadRow as bad:
                self.bad_rows.add(bad.reason, place)
                continue
            examples.append((ids, labels))
        if not examples:
            raise ValueError(
                f"no usable row in {[str(p) for p in paths]}: {self.bad_rows.summary() or 'the files are empty'}; "
                'rows are JSON objects with "prompt" and "response", or "messages"'
            )
        return examples

    def _split(self, examples: list) -> tuple[list, list]:
        order = list(range(len(examples)))
        random.Random(self.hparams.seed).shuffle(order)
        n_val = max(1, round(self.hparams.val_fraction * len(order))) if self.hparams.val_fraction else 0
        n_val = min(n_val, len(order) - 1)
        val = [examples[i] for i in sorted(order[:n_val])]
        train = [examples[i] for i in sorted(order[n_val:])]
        return train, val or train  # a single row: validation reuses it

    def _dataset(self, examples: list[tuple[list[int], list[int]]], split: str) -> Dataset:
        if not self.hparams.packing:
            return _Examples(examples)
        ids = [t for e in examples for t in e[0]]
        labels = [t for e in examples for t in e[1]]
        try:
            return _Packed(pack_blocks([ids], self.block_size), pack_blocks([labels], self.block_size))
        except ValueError as err:
            raise ValueError(f"{split} split: {err}; or turn data.packing off") from None

    def _report(self, n_train: int, n_val: int, chat_template: bool) -> None:
        hp, bad = self.hparams, self.bad_rows
        trained = sum(int((y != IGNORE_INDEX).sum()) for _, y in self.train_set)
        rank_zero_info(
            f"InstructDataModule: {n_train} train / {n_val} val examples ({len(self.train_set)} train rows, "
            f"{'packed' if hp.packing else 'one per row, padded'}, block_size {hp.block_size}); "
            f"{trained:,} response tokens to train on; chats rendered with "
            f"{'the chat template' if chat_template else 'the plain template'} of {self.tokenizer_folder.folder}; "
            + (
                f"{sum(bad.counts.values())} bad rows skipped: {bad.summary()}"
                if bad.counts
                else "no bad rows"
            )
        )

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        order = {}
        if shuffle:  # the sampler owns its generator, so the loader's state resumes the order exactly
            order = {
                "sampler": _RandomSampler(dataset, generator=torch.Generator().manual_seed(self.hparams.seed))
            }
        pad = self.tokenizer_folder.special_ids
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
            return _Loader(
                dataset,
                batch_size=self.batch_size,
                num_workers=self.hparams.num_workers,
                persistent_workers=self.hparams.num_workers > 0,
                collate_fn=None if self.hparams.packing else PaddedCollator(pad.get("pad", pad["eos"])),
                **order,
            )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def state_dict(self) -> dict:
        folder = self.tokenizer_folder
        return {"tokenizer_sha256": folder.sha256 if folder else None, "bad_rows": dict(self.bad_rows.counts)}

    def load_state_dict(self, state_dict: dict) -> None:
        saved, folder = state_dict.get("tokenizer_sha256"), self.tokenizer_folder
        if saved and folder is not None and saved != folder.sha256:
            rank_zero_warn(
                f"resuming with a different tokenizer.json (sha256 {folder.sha256[:12]}) than the checkpoint's "
                f"({saved[:12]}): token ids no longer mean what the model learned; pass the tokenizer the run "
                "started with"
            )
