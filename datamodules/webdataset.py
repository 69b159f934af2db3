"""Streaming DataModule over webdataset shards (local paths or any URL webdataset opens).

Example:
    >>> dm = WebDataModule("data/train-{000000..000009}.tar", batch_size=16, decode="lm")  # doctest: +SKIP
    >>> trainer.fit(model, datamodule=dm)  # doctest: +SKIP

``kit data shards`` writes shards this module reads: with ``--tokenizer`` each sample holds one packed
token block ``input_ids.npy`` (``block_size + 1`` ids), which ``decode="lm"`` turns into ``(input_ids,
targets)`` batches of shape ``(B, block_size)``, the format of ``kit.models.gpt.CausalLM``.
"""

from __future__ import annotations

import collections
import copy
import io
import itertools
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import webdataset as wds
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from kit._compat import batches_fetched_ahead
from kit.data.shard_meta import read_shard_metadata
from kit.data.shards import ShardErrorHandler, expand_urls

__all__ = ["WebDataModule", "refuse_pipe_urls"]

_DECODERS = ("lm", "text", "raw")


class _ResumableStream(IterableDataset):
    """A training pipeline that knows its epoch and how many samples it has served, so it resumes mid-epoch.

    Every epoch-dependent stage (``wds.detshuffle``, ``wds.ResampledShards``) advances its own epoch each time it
    is iterated; here each is set to this stream's epoch first, so a resumed reader rebuilds the very same
    order, then skips the samples already served (before decoding). ``StatefulDataLoader`` calls
    ``state_dict``/``load_state_dict`` in each worker, so every (rank, worker) reader resumes its own part.
    """

    def __init__(
        self,
        pipeline: wds.DataPipeline,
        decode: Callable[[Any], Any],
        length: int | None,
        handler: Callable[[Exception], bool],
        total: int | None = None,
    ) -> None:
        super().__init__()
        self.pipeline, self.decode, self.length, self.handler = pipeline, decode, length, handler
        self.total = total
        self.epoch, self.position = -1, 0  # epoch -1: none started yet
        self._skip: int | None = None

    def _epoch_stages(self) -> list[Any]:
        return [s for s in self.pipeline.pipeline if isinstance(s, (wds.detshuffle, wds.ResampledShards))]

    def __iter__(self) -> Iterator[Any]:
        if self._skip is None:  # a new epoch; after load_state_dict, the loaded one continues
            self.epoch += 1
            self.position = 0
        skip, self._skip = self._skip or 0, None
        for stage in self._epoch_stages():
            stage.epoch = self.epoch - 1  # each stage adds one as it starts
        it = iter(self.pipeline)
        if self.length is not None:
            it = itertools.islice(it, self.length)
        for n, sample in enumerate(it, 1):
            if n <= skip:
                continue
            self.position = n
            try:
                item = self.decode(sample)
            except Exception as err:  # the same policy as wds.map(..., handler=) on the other loaders
                if self.handler(err):
                    continue
                raise
            yield item

    def __len__(self) -> int:
        # Only with a set epoch length (samples per rank, all workers together). A sized loader also stops
        # Lightning from fetching a batch ahead, which would put the saved position one batch past training.
        if self.total is None:
            raise TypeError("the stream's length is unknown; set WebDataModule(epoch_length=...)")
        return self.total

    def start_next_epoch(self) -> None:
        """Drop a restored mid-epoch position: the next iterator starts the next epoch (KitCheckpoint calls this
        when a resume lands on the last step of an epoch that ``limit_train_batches`` cut short)."""
        self._skip = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._skip = self.position


class _ConsumedStateLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` whose ``state_dict`` is the state after the batches training has *consumed*.

    Over an unsized stream Lightning's ``_PrefetchDataFetcher`` keeps one batch fetched ahead (to learn that the
    epoch ended one step early), so the loader's own state at a checkpoint is one batch past training, and a
    resume from it would skip that batch. This loader keeps the state after each of its last few batches and
    hands out the one ``pending()`` batches back (``pending`` counts the batches fetched but not yet trained on).
    """

    def __init__(self, *args: Any, pending: Callable[[], int | None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending = pending
        self._after: collections.deque[dict[str, Any]] = collections.deque(maxlen=4)
        self._unknown_warned = False

    def __iter__(self) -> Iterator[Any]:
        iterator = super().__iter__()
        self._after.clear()
        return self._snapshotting(iterator)

    def _snapshotting(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            self._after.append(copy.deepcopy(StatefulDataLoader.state_dict(self)))
            yield batch

    def state_dict(self) -> dict[str, Any]:
        pending = self._pending()
        if pending is None:
            if not self._unknown_warned:
                self._unknown_warned = True
                rank_zero_warn(
                    "WebDataModule: cannot tell how many batches Lightning holds fetched ahead (its fetcher changed); "
                    "a resume from this checkpoint may skip up to one batch. Set epoch_length=<batches per epoch> to "
                    "make the loader sized (no fetch ahead)"
                )
            pending = 0
        if pending == 0 or not self._after:
            return StatefulDataLoader.state_dict(self)
        if pending >= len(self._after):
            raise RuntimeError(
                f"WebDataModule: {pending} batch(es) fetched ahead of training but only {len(self._after)} loader "
                "states kept; lower the trainer's prefetching or set epoch_length"
            )
        return copy.deepcopy(self._after[-1 - pending])


def _tar_samples(
    src: Iterator[dict[str, Any]], handler: Callable[[Exception], bool]
) -> Iterator[dict[str, Any]]:
    """``wds.tarfile_to_samples`` that closes each shard's stream even when a shard fails mid-way."""
    from webdataset import tariterators as tars

    for source in tars.url_opener(src, handler=handler):
        try:
            yield from tars.group_by_keys(tars.tar_file_expander([source], handler=handler), handler=handler)
        finally:
            source["stream"].close()


def _decode_lm(sample: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    if "input_ids.npy" not in sample:
        raise KeyError(
            f"sample {sample.get('__key__')} has no 'input_ids.npy' (keys: {sorted(sample)}); use decode='raw'"
        )
    ids = np.load(io.BytesIO(sample["input_ids.npy"]))
    ids = torch.from_numpy(ids.astype(np.int64))
    return ids[:-1], ids[1:]


def _decode_text(sample: dict[str, Any]) -> str:
    return sample["txt"].decode("utf-8")


def _collate_list(batch: list[Any]) -> list[Any]:
    return batch


def refuse_pipe_urls(urls: str | list[str], allow_pipe: bool) -> None:
    """Refuse ``pipe:`` URLs unless ``allow_pipe``: webdataset runs their command in a shell.

    Raises:
        ValueError: naming the URL and the option that allows it.

    Example:
        >>> refuse_pipe_urls(["shards/train-000000.tar"], allow_pipe=False)
    """
    for url in [urls] if isinstance(urls, str) else list(urls):
        if str(url).lstrip().startswith("pipe:") and not allow_pipe:
            raise ValueError(
                f"shard URL {str(url)[:80]!r} runs a shell command (webdataset's pipe: scheme); refused unless you "
                "opt in with WebDataModule(allow_pipe=True) (--data.allow_pipe=true), and only for configs you wrote"
            )


class WebDataModule(pl.LightningDataModule):
    """Stream training (and validation) samples from tar shards.

    Shards are split across nodes (``split_by_node``) and DataLoader workers (``split_by_worker``), shuffled
    per epoch by ``wds.detshuffle`` with ``seed + epoch`` (shard order, then a sample buffer), so the order is
    deterministic for a given seed, world size and worker count. The training loader is a
    ``StatefulDataLoader`` over a stream that records its epoch and position, so a checkpoint taken mid-epoch
    resumes with the next sample: each reader rebuilds the epoch's order (shard list, ``detshuffle`` seeded by
    ``seed + epoch``, the same shuffle buffer) and skips, before decoding, the samples it already served. The
    resume is exact with or without ``epoch_length``. Without it the stream is unsized and Lightning fetches
    one batch ahead to detect the epoch's end; the loader then keeps its state after each recent batch and saves
    the one before the batches fetched ahead, so a resumed run does not skip them. The cost of a resume is
    re-reading (not decoding) the epoch's samples up to the position. In ``resampled`` mode every rank/worker
    draws shards with replacement forever (the multi-node recipe: no rank runs out early); ``epoch_length``
    then sets the batches per epoch.

    Args:
        train_urls: shard paths, globs, brace patterns (``train-{000000..000099}.tar``) or URLs.
        val_urls: the same for validation (read in order, not resampled); ``None`` for no validation.
        batch_size: samples per batch.
        num_workers: DataLoader workers (kept alive across epochs so the per-epoch shuffle advances).
        shuffle_buffer: samples in the shuffle buffer; 0 disables sample shuffling.
        shard_shuffle: shuffle the shard order each epoch.
        seed: base seed of every shuffle.
        resampled: sample shards with replacement (infinite stream); needs ``epoch_length``.
        epoch_length: batches per epoch per rank (required when ``resampled``; optional otherwise).
        decode: ``"lm"`` (``input_ids.npy`` -> ``(input_ids, targets)``), ``"text"`` (``txt`` -> ``str``),
            ``"raw"`` (the sample dict), or a callable ``sample -> item``.
        on_error: corrupt/truncated shard policy: ``"warn"`` (skip, warn, count), ``"skip"`` or ``"raise"``.
        vocab_size: the tokenizer size you expect; ``None`` takes it from ``kit-shards.json`` beside the shards
            (written by ``kit data shards --tokenizer``). Given both and they differ: a ``ValueError`` naming both.
        allow_pipe: accept ``pipe:COMMAND`` URLs, which webdataset opens by running ``COMMAND`` in a shell.
            Off by default: a YAML that names a ``pipe:`` URL is code, so only configs you wrote should turn it
            on (``--data.allow_pipe=true``).

    After construction, ``vocab_size``, ``block_size``, ``tokenizer_path`` and ``tokenizer`` (the
    ``tokenizers.Tokenizer``, when its file exists) come from that metadata, so ``CausalLM`` with
    ``vocab_size: null`` sizes its embedding from the shards.

    Raises:
        ValueError: no shards, an unknown ``decode`` or ``on_error``, ``resampled`` without
            ``epoch_length``, or a ``pipe:`` URL without ``allow_pipe=True``.
    """

    def __init__(
        self,
        train_urls: str | list[str],
        val_urls: str | list[str] | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        shard_shuffle: bool = True,
        seed: int = 0,
        resampled: bool = False,
        epoch_length: int | None = None,
        decode: str | Callable[[dict[str, Any]], Any] = "lm",
        on_error: str = "warn",
        vocab_size: int | None = None,
        allow_pipe: bool = False,
    ) -> None:
        super().__init__()
        self.allow_pipe = allow_pipe
        refuse_pipe_urls(train_urls, allow_pipe)
        if val_urls is not None:
            refuse_pipe_urls(val_urls, allow_pipe)
        self.train_shards = expand_urls(train_urls)
        self.val_shards = expand_urls(val_urls) if val_urls is not None else None
        if isinstance(decode, str) and decode not in _DECODERS:
            raise ValueError(f"decode={decode!r}; choose one of {_DECODERS} or pass a callable")
        if resampled and not epoch_length:
            raise ValueError("resampled=True streams forever; set epoch_length=<batches per epoch per rank>")
        if batch_size < 1 or shuffle_buffer < 0:
            raise ValueError(f"batch_size={batch_size} must be >= 1 and shuffle_buffer={shuffle_buffer} >= 0")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle_buffer, self.shard_shuffle, self.seed = shuffle_buffer, shard_shuffle, seed
        self.resampled, self.epoch_length, self.decode = resampled, epoch_length, decode
        self.error_handler = ShardErrorHandler(on_error)
        self.metadata = read_shard_metadata(self.train_shards) or {}
        recorded = self.metadata.get("vocab_size")
        if vocab_size is not None and recorded is not None and int(vocab_size) != int(recorded):
            raise ValueError(
                f"vocab_size={vocab_size} but the shards were tokenized with a {recorded}-token tokenizer "
                f"({self.metadata.get('tokenizer')}); drop data.vocab_size or rewrite the shards with the tokenizer "
                "you mean"
            )
        self.vocab_size: int | None = vocab_size if vocab_size is not None else recorded
        self.block_size: int | None = self.metadata.get("block_size")
        self.tokenizer_path: str | None = self.metadata.get("tokenizer")
        self.tokenizer = None
        if self.tokenizer_path and os.path.isfile(self.tokenizer_path):
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(self.tokenizer_path)

    @property
    def shard_errors(self) -> int:
        """Corrupt-shard errors skipped in this process (workers count their own and warn)."""
        return self.error_handler.errors

    def _decoder(self) -> Callable[[dict[str, Any]], Any]:
        if callable(self.decode):
            return self.decode
        return {"lm": _decode_lm, "text": _decode_text, "raw": lambda s: s}[self.decode]

    def _decode_one(self, sample: dict[str, Any]) -> Any:
        return self._decoder()(sample)

    def make_dataset(self, shards: list[str], train: bool, decode: bool = True) -> wds.DataPipeline:
        """The webdataset pipeline for ``shards`` (public so users can iterate it without a Trainer).

        ``pipe:`` URLs are refused here too unless the module was built with ``allow_pipe=True``.

        Shuffling uses ``wds.detshuffle`` (seeded by ``seed`` and the epoch) for the shard order and the sample
        buffer. With ``decode=False`` the pipeline yields raw samples (the training loader decodes after its
        resume bookkeeping).
        """
        refuse_pipe_urls(shards, self.allow_pipe)
        handler = self.error_handler
        if train and self.resampled:
            stages: list[Any] = [wds.ResampledShards(shards, seed=self.seed, deterministic=True)]
        else:
            stages = [wds.SimpleShardList(shards)]
            if train:
                self._check_split(len(shards))
            stages += [wds.split_by_node, wds.split_by_worker]
            if train and self.shard_shuffle:
                stages.append(wds.detshuffle(len(shards), initial=len(shards), seed=self.seed))
        stages.append(wds.pipelinefilter(_tar_samples)(handler))
        if train and self.shuffle_buffer:
            initial = min(self.shuffle_buffer, 100)
            stages.append(wds.detshuffle(self.shuffle_buffer, initial=initial, seed=self.seed + 1))
        if decode:
            stages.append(wds.map(self._decoder(), handler=handler))
        pipeline = wds.DataPipeline(*stages)
        if train and self.epoch_length and decode:
            pipeline = pipeline.with_epoch(self._samples_per_epoch())
        return pipeline

    def _samples_per_epoch(self) -> int:
        return self.epoch_length * self.batch_size // max(self.num_workers, 1)

    def _check_split(self, n_shards: int) -> None:
        world = self.trainer.world_size if self.trainer is not None else 1
        parts = world * max(self.num_workers, 1)
        if n_shards < parts:
            rank_zero_warn(
                f"{n_shards} shard(s) for {world} rank(s) x {max(self.num_workers, 1)} worker(s): some get no data; "
                "write more shards or use resampled=True"
            )
        elif world > 1 and n_shards % world:
            rank_zero_warn(
                f"{n_shards} shards do not split evenly over {world} ranks, so ranks see different batch counts "
                "and DDP can hang at the epoch end; use resampled=True with epoch_length, or a multiple of the ranks"
            )

    def _loader(self, shards: list[str], train: bool) -> DataLoader:
        collate = _collate_list if self.decode in ("text", "raw") else None
        if train:  # resumable mid-epoch: StatefulDataLoader saves each reader's epoch and position
            length = self._samples_per_epoch() if self.epoch_length else None
            raw = self.make_dataset(shards, train, decode=False)
            total = self.epoch_length * self.batch_size if self.epoch_length else None
            dataset = _ResumableStream(raw, self._decode_one, length, self.error_handler, total)
            sized = {} if total is not None else {"pending": self._batches_fetched_ahead}
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
                return (StatefulDataLoader if total is not None else _ConsumedStateLoader)(
                    dataset,
                    batch_size=self.batch_size,
                    num_workers=self.num_workers,
                    persistent_workers=self.num_workers > 0,
                    collate_fn=collate,
                    **sized,
                )
        return DataLoader(
            self.make_dataset(shards, train),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )

    def _batches_fetched_ahead(self) -> int | None:
        """Batches Lightning's training fetcher holds that no training step has used yet (``None``: unknown)."""
        trainer = self.trainer
        return batches_fetched_ahead(trainer) if trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_shards, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_shards, train=False) if self.val_shards else []

    def state_dict(self) -> dict[str, Any]:
        return {"shard_errors": self.error_handler.errors}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.error_handler.errors = int(state_dict.get("shard_errors", 0))
