"""KitCheckpoint: Lightning's ModelCheckpoint with atomic writes, a manifest, last-k + best-k, exact RNG
resume, preemption and an optional asynchronous save.

Every file or folder it writes goes through ``kit.checkpoint``: the strategy saves into a hidden temporary
path, rank zero fsyncs it and renames it into place, then records it in ``manifest.json`` with the SHA-256
of each file. ``last.ckpt`` is a hard link to the newest checkpoint (a folder of hard links for sharded ones), replaced
by a rename, so it always names a complete checkpoint. Sharded checkpoints (FSDP, DeepSpeed) are folders
and take the same path.

- ``keep_last``: periodic checkpoints ``step00000150.ckpt`` every ``every_n_train_steps`` steps (or each epoch
  end); the newest ``keep_last`` stay.
- ``save_top_k`` + ``monitor``: the best k by the metric (ModelCheckpoint's own logic).
- RNG: the python, numpy, torch and CUDA generator states of every rank at the end of the last training step
  are saved under ``checkpoint["kit"]``; they are put back at the start of the next training step, in the
  uninterrupted run too, so validation or a new DataLoader iterator between steps cannot shift the draws.
- Preemption: SIGTERM or SIGUSR1 sets a flag; at the next step boundary the ranks OR it, save, and stop
  cleanly with a message that says how to resume.
- ``async_save``: the training step waits only for the copy of the state to CPU; a background thread
  writes, fsyncs, renames and updates the manifest (one write in flight at a time). Sharded folders go
  through ``torch.distributed.checkpoint.async_save`` on every rank (``kit.checkpoint.sharded``).

Example:
    >>> trainer = pl.Trainer(callbacks=[KitCheckpoint(every_n_train_steps=100, keep_last=2)])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from kit.checkpoint import (
    FORMAT_VERSION,
    CheckpointEntry,
    Manifest,
    capture_rng,
    describe_mismatch,
    restore_rng,
    upgrade_checkpoint,
)
from kit.checkpoint.atomic import CheckpointWriteError, commit, remove_path, write_error

__all__ = ["KitCheckpoint"]

_SIGNALS = ("SIGTERM", "SIGUSR1")


def _to_cpu(obj: Any, memo: dict | None = None) -> Any:
    """A deep copy of a checkpoint with every tensor cloned to CPU (what async saving must wait for).

    Tensors that are the same view of the same storage (tied weights: the embedding and the LM head) get one
    copy, so the file stores them once, as a synchronous ``torch.save`` of the original would.
    """
    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        key = (obj.untyped_storage().data_ptr(), obj.storage_offset(), tuple(obj.shape), obj.stride(), obj.dtype)
        if key not in memo:
            memo[key] = obj.detach().to("cpu", copy=True)
        return memo[key]
    if isinstance(obj, dict):
        return {k: _to_cpu(v, memo) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v, memo) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v, memo) for v in obj)
    return obj


class KitCheckpoint(ModelCheckpoint):
    """Checkpoints that lose nothing (see the module docstring).

    Args:
        dirpath: folder of the checkpoints; ``None``: ``<logger log_dir>/checkpoints``, so each run (logger
            version) writes under its own version folder.
        filename: name pattern of the best-k files (ModelCheckpoint's syntax).
        monitor: metric for best-k; ``None`` keeps no best-k.
        mode: ``"min"`` or ``"max"`` for ``monitor``.
        save_top_k: best checkpoints kept (with ``monitor``).
        keep_last: periodic checkpoints kept, newest first (>= 1).
        every_n_train_steps: periodic checkpoint interval; ``None`` or 0: at each training epoch end.
        save_last: keep ``last.ckpt`` pointing at the newest checkpoint.
        async_save: write in a background thread after copying the state to CPU: single-process single-file
            checkpoints, and sharded ``torch.distributed.checkpoint`` folders (FSDP ``state_dict_type="sharded"``,
            ``ModelParallelStrategy``) through DCP's ``async_save`` on every rank; still atomic (the folder is
            renamed into place once every rank's shards are written). Other strategies (DDP with several
            processes, DeepSpeed) save synchronously and say so once.
        preemption: on SIGTERM/SIGUSR1, checkpoint at the next step boundary and stop cleanly.
        preemption_every_n_steps: how often the ranks compare their signal flags (under DDP each check is
            one small all-reduce with a host sync); a signal is acted on within this many steps.
        hang_timeout_s: if no training step (or validation batch) finishes for this many seconds, print which
            step and checkpoint to resume from and exit the process with code 3: under DDP a rank that died
            leaves the others blocked in a collective, and this bounds the wait below the process group's
            own timeout (30 minutes by default). ``None`` (default) disarms it; set it well above the
            slowest step, validation batch and save.
        exact_rng: save and restore every RNG state so a resumed run draws the same numbers.
        verbose: log each save.
        auto_insert_metric_name: ModelCheckpoint's: write ``name=value`` into best-k file names.

    Raises:
        ValueError: ``keep_last < 1``.
    """

    CHECKPOINT_NAME_LAST = "last"
    saves_final_step = True  # the kit CLI's end-of-fit last.ckpt refresh leaves the final save to this callback

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        keep_last: int = 2,
        every_n_train_steps: int | None = None,
        save_last: bool = True,
        async_save: bool = False,
        preemption: bool = True,
        hang_timeout_s: float | None = None,
        preemption_every_n_steps: int = 1,
        exact_rng: bool = True,
        verbose: bool = False,
        auto_insert_metric_name: bool = True,
    ) -> None:
        if keep_last < 1:
            raise ValueError(
                f"keep_last={keep_last} must be >= 1 (the newest periodic checkpoint is what resumes)"
            )
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=monitor,
            mode=mode,
            save_top_k=save_top_k if monitor is not None else 0,
            save_last=save_last,
            every_n_train_steps=0,
            verbose=verbose,
            auto_insert_metric_name=auto_insert_metric_name,
            enable_version_counter=False,
        )
        self.keep_last, self.every = keep_last, every_n_train_steps or 0
        self.async_save, self.preemption, self.exact_rng = async_save, preemption, exact_rng
        if hang_timeout_s is not None and hang_timeout_s <= 0:
            raise ValueError(f"hang_timeout_s={hang_timeout_s} must be > 0 seconds (or None to disarm)")
        self.hang_timeout_s = hang_timeout_s
        if preemption_every_n_steps < 1:
            raise ValueError(f"preemption_every_n_steps={preemption_every_n_steps} must be >= 1")
        self.preemption_every_n_steps = preemption_every_n_steps
        self._heartbeat = time.monotonic()
        self._watchdog: threading.Thread | None = None
        self._watch_stop = threading.Event()
        self.preempted_by: str | None = None
        self._signal: str | None = None
        self._old_handlers: dict[int, Any] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._futures: list[Future] = []
        self._step_rng: dict[str, Any] | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        self._kind = "best"
        self._sync_warned = False
        self._dcp_group: Any = None  # async sharded saves: DCP's own gloo group
        self._last_periodic_step = -1
        self._hook: Any = None
        self.save_times: list[dict[str, float]] = []  # per save: stall (seconds the step waited) and total
        self.background_write_s: list[float] = []  # async: seconds each background write took

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, every=self.every)

    @property
    def every_n_train_steps(self) -> int:
        """The periodic interval (0: each training epoch end)."""
        return self.every

    # -- setup: config check, signals --------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self._hook is None:  # the resume (if any) loads weights before on_train_start
            self._hook = pl_module.register_load_state_dict_pre_hook(_mismatch_hook)
        if (
            self.async_save
            and self._dcp_group is None
            and dist.is_available()
            and dist.is_initialized()
            and _dcp_model_key(trainer.strategy) is not None
        ):
            # DCP's async write runs collectives in a background thread, so training's own must not share its
            # group; and it needs a CPU backend, which an NCCL-only default group lacks (one rank included)
            self._dcp_group = dist.new_group(backend="gloo")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        _start_cut_short_epoch_afresh(trainer)
        if self.hang_timeout_s is not None and self._watchdog is None:
            self._heartbeat = time.monotonic()
            self._watch_stop.clear()
            self._watchdog = threading.Thread(
                target=self._watch, args=(trainer,), name="kit-ckpt-watchdog", daemon=True
            )
            self._watchdog.start()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.preemption and threading.current_thread() is threading.main_thread():
            for name in _SIGNALS:
                signum = getattr(signal, name, None)
                if signum is not None:  # Lightning's own SIGTERM handler only acts at epoch ends
                    self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal = signal.Signals(signum).name

    def _restore_signals(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()

    def _watch(self, trainer: pl.Trainer) -> None:
        while not self._watch_stop.wait(min(5.0, self.hang_timeout_s / 4)):
            idle = time.monotonic() - self._heartbeat
            if idle > self.hang_timeout_s:
                import sys

                print(
                    f"KitCheckpoint: rank {trainer.global_rank}: no training step finished for {idle:.0f} s "
                    f"(hang_timeout_s={self.hang_timeout_s}) after step {trainer.global_step}; another rank has "
                    f"probably died and this one is blocked in a collective. Exiting (code 3). Resume with "
                    f"--ckpt_path last (newest: {self.last_model_path or self._last_checkpoint_saved or 'none yet'})",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(3)

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._heartbeat = time.monotonic()

    # -- RNG ---------------------------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int
    ) -> None:
        if self._rng_to_restore is not None:
            restore_rng(self._rng_to_restore)
            self._rng_to_restore = None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        from kit import __version__

        rng = self._step_rng if self._step_rng is not None else capture_rng()
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        checkpoint["kit"] = {
            "format": FORMAT_VERSION,
            "kit_version": __version__,
            "rng": gathered if self.exact_rng else None,
        }

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        for note in upgrade_checkpoint(checkpoint):
            rank_zero_warn(f"KitCheckpoint: {note}")
        rng = checkpoint["kit"].get("rng")
        if self.exact_rng and rng:
            if len(rng) != trainer.world_size:
                rank_zero_warn(
                    f"KitCheckpoint: checkpoint holds RNG states of {len(rng)} rank(s), this run has "
                    f"{trainer.world_size}; random draws will differ from the original run"
                )
            self._rng_to_restore = rng[trainer.global_rank % len(rng)]

    # -- saving ------------------------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, idx
    ) -> None:
        self._heartbeat = time.monotonic()
        if self.exact_rng:
            self._step_rng = capture_rng()
            self._rng_to_restore = self._step_rng  # the next step starts from exactly this state
        step = trainer.global_step
        due = self.every > 0 and step % self.every == 0
        stop = False
        if self.preemption and step % self.preemption_every_n_steps == 0:
            # under DDP: one tiny all-reduce (and host sync) per check, so every rank stops at the same step
            stop = trainer.strategy.reduce_boolean_decision(self._signal is not None, all=False)
        if (due or stop) and not self._should_skip_saving_checkpoint(trainer):
            self._save_periodic(trainer)
            self._heartbeat = time.monotonic()  # a long save is progress, not a hang
            pl_module.log("checkpoint/stall_s", self.save_times[-1]["stall_s"], on_step=True, on_epoch=False)
        # every step, so a monitor sees it from the start
        pl_module.log("checkpoint/saves", float(len(self.save_times)), on_step=True, on_epoch=False)
        if stop:
            self._preempt(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every == 0 and not self._should_skip_saving_checkpoint(trainer):
            self._save_periodic(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # best-k after each validation, even when a periodic checkpoint of the same step is already written
        # (ModelCheckpoint would skip it); last.ckpt follows the periodic saves instead
        if self.monitor is None or trainer.sanity_checking or trainer.fast_dev_run:
            return
        if trainer.state.fn != "fit":
            return
        candidates = self._monitor_candidates(trainer)
        if self.monitor in candidates:
            self._save_topk_checkpoint(trainer, candidates)

    def _save_periodic(self, trainer: pl.Trainer) -> None:
        filepath = os.path.join(self.dirpath, f"step{trainer.global_step:08d}{self.FILE_EXTENSION}")
        self._last_periodic_step = trainer.global_step
        self._kind = "step"
        try:
            self._save_checkpoint(trainer, filepath)
        finally:
            self._kind = "best"
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _preempt(self, trainer: pl.Trainer) -> None:
        self.preempted_by = self._signal or "another rank"
        self._drain()
        trainer.should_stop = True
        # Lightning validates when should_stop is set mid-epoch; a preempted job's grace period is for exiting,
        # and the uninterrupted run would not validate at this step (the kit CLI's final validation skips too)
        trainer.limit_val_batches = 0
        rank_zero_info(
            f"KitCheckpoint: received {self.preempted_by}; saved step {trainer.global_step} to "
            f"{self.last_model_path or self._last_checkpoint_saved} and stopping. Resume with "
            "`kit fit --config <same recipe> --ckpt_path last` (or trainer.fit(..., ckpt_path=that path))"
        )

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        start = time.perf_counter()
        kind, step, epoch = self._kind, trainer.global_step, trainer.current_epoch
        score = self.current_score if kind == "best" else None
        score = float(score) if score is not None else None
        tmp = str(Path(filepath).parent / f".{Path(filepath).name}.tmp-step{step}")
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)
        sharded = trainer.strategy.__class__.__name__.startswith(("FSDP", "DeepSpeed", "ModelParallel"))
        dcp_key = _dcp_model_key(trainer.strategy)
        if self.async_save and not sharded and trainer.world_size == 1:
            cpu = _to_cpu(checkpoint)
            self._submit(self._write_async, trainer, cpu, tmp, filepath, (kind, step, epoch, score))
            stall = time.perf_counter() - start  # includes waiting for a previous write still in flight
        elif self.async_save and dcp_key is not None:
            self._save_sharded_async(trainer, checkpoint, dcp_key, tmp, filepath, (kind, step, epoch, score))
            stall = time.perf_counter() - start  # dump + copy of this rank's shards to CPU (+ a previous write)
        else:
            if self.async_save and not self._sync_warned:
                self._sync_warned = True
                rank_zero_warn(
                    f"KitCheckpoint: async_save applies to single-process single-file checkpoints and to sharded "
                    f"(torch.distributed.checkpoint) FSDP / ModelParallel ones; {type(trainer.strategy).__name__} "
                    "saves synchronously"
                )
            ok, err = True, None
            try:
                trainer.strategy.save_checkpoint(checkpoint, tmp)
            except Exception as e:  # every rank must learn of a failure before anyone waits on a barrier
                ok, err = False, e
            ok = trainer.strategy.reduce_boolean_decision(ok, all=True)
            if not ok:
                if trainer.is_global_zero:
                    remove_path(tmp)
                raise write_error(
                    Path(filepath), err or RuntimeError("another rank failed to write its shard")
                )
            if trainer.is_global_zero:
                self._submit(self._commit, tmp, filepath, (kind, step, epoch, score))
                if not self.async_save:
                    self._drain()
            trainer.strategy.barrier("KitCheckpoint.save")
            stall = time.perf_counter() - start
        self.save_times.append({"stall_s": stall, "sync_s": time.perf_counter() - start})
        self._last_global_step_saved = step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            from weakref import proxy

            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _save_sharded_async(
        self, trainer: pl.Trainer, checkpoint: dict, key: str, tmp: str, filepath: str, meta: tuple
    ) -> None:
        """Every rank: start DCP's async write of its shards; rank zero commits once all are on disk.

        The layout is the strategy's own (``key`` for the model, ``optimizer_<i>``, the rest in ``meta.pt``), so
        ``trainer.fit(ckpt_path=folder)`` loads it as if the strategy had saved it.
        """
        from lightning.fabric.utilities.load import _METADATA_FILENAME

        from kit.checkpoint.sharded import finish_async_save, start_async_save

        self._drain()  # one save in flight: DCP's background collectives of two saves must not interleave
        state = {key: checkpoint.pop("state_dict")}
        state.update({f"optimizer_{i}": opt for i, opt in enumerate(checkpoint.pop("optimizer_states", []))})
        future = start_async_save(state, tmp, self._dcp_group)
        if trainer.is_global_zero:
            rest = _to_cpu(checkpoint)  # loops, callbacks, RNG: pickled later, so frozen now

            def finish() -> None:
                try:
                    finish_async_save(future, tmp, rest, _METADATA_FILENAME)
                except BaseException as err:  # DCP's CheckpointException is a BaseException
                    remove_path(tmp)
                    raise write_error(Path(filepath), err) from err
                self._commit(tmp, filepath, meta)

            self._submit(finish)
        else:

            def wait() -> None:
                try:
                    future.result()
                except BaseException as err:
                    raise write_error(Path(filepath), err) from err

            self._submit(wait)

    def _write_async(
        self, trainer: pl.Trainer, checkpoint: dict, tmp: str, filepath: str, meta: tuple
    ) -> None:
        start = time.perf_counter()
        try:
            trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, tmp)
        except Exception as err:
            remove_path(tmp)
            raise write_error(Path(filepath), err) from err
        self._commit(tmp, filepath, meta)
        self.background_write_s.append(time.perf_counter() - start)

    def _commit(self, tmp: str, filepath: str, meta: tuple) -> None:
        """Rank zero: rename into place, record in the manifest, prune old periodic checkpoints."""
        kind, step, epoch, score = meta
        try:
            commit(tmp, filepath)
        except Exception as err:
            remove_path(tmp)
            raise write_error(Path(filepath), err) from err
        manifest = Manifest(self.dirpath)
        manifest.add(Path(filepath).name, step, epoch, kind, score)
        if kind == "step":
            protected = {Path(p).name for p in self.best_k_models} | {Path(filepath).name}
            periodic = manifest.newest_first(["step"])
            for old in periodic[self.keep_last :]:
                if old.name not in protected:
                    remove_path(Path(self.dirpath) / old.name)
                    manifest.remove(old.name)
        manifest.save()

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        if not self.save_last:
            return
        filepath = os.path.join(self.dirpath, f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")
        source = self._last_checkpoint_saved
        self.last_model_path = filepath
        if source and self._last_global_step_saved == trainer.global_step and source != filepath:
            if trainer.is_global_zero:
                self._submit(self._link_last, source, filepath, trainer.global_step, trainer.current_epoch)
                if not self.async_save:
                    self._drain()
            trainer.strategy.barrier("KitCheckpoint.last")
        else:
            self._kind = "last"
            try:
                self._save_checkpoint(trainer, filepath)
            finally:
                self._kind = "best"

    def _link_last(self, source: str, filepath: str, step: int, epoch: int) -> None:
        tmp = Path(filepath).parent / f".{Path(filepath).name}.tmp-link"
        remove_path(tmp)
        try:
            if Path(source).is_dir():  # a sharded folder: link every file (no second copy of the bytes)
                import shutil

                shutil.copytree(source, tmp, copy_function=_link_or_copy)
            else:
                os.link(source, tmp)
            commit(tmp, filepath)
        except Exception as err:
            remove_path(tmp)
            raise write_error(Path(filepath), err) from err
        manifest = Manifest(self.dirpath)
        entry = manifest.entries.get(Path(source).name)
        if entry is None:  # not in the manifest (written by something else): hash the link itself
            manifest.add(Path(filepath).name, step, epoch, "last")
        else:  # a hard link shares the bytes: the source's checksums hold
            manifest.entries[Path(filepath).name] = CheckpointEntry(
                Path(filepath).name, step, epoch, "last", time.time(), None, dict(entry.files)
            )
        manifest.save()

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if trainer.is_global_zero:
            self._submit(self._forget, filepath)

    def _forget(self, filepath: str) -> None:
        remove_path(filepath)
        manifest = Manifest(self.dirpath)
        manifest.remove(Path(filepath).name)
        manifest.save()

    # -- the writer thread -------------------------------------------------------------------------------
    def _submit(self, fn, *args) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kit-ckpt")
        if fn == self._write_async:  # at most one checkpoint in flight: memory holds one CPU copy
            self._drain()
        self._futures.append(self._executor.submit(fn, *args))

    def _drain(self) -> None:
        """Wait for every queued write; re-raise the first failure as CheckpointWriteError."""
        futures, self._futures = self._futures, []
        errors = [f.exception() for f in futures]
        err = next((e for e in errors if e is not None), None)
        if err is not None:
            raise err if isinstance(err, CheckpointWriteError) else write_error(Path(self.dirpath), err)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the final step is always saved, so a later resume (or fine-tune) starts from where fit stopped
        if self._last_periodic_step != trainer.global_step and not trainer.sanity_checking:
            self._save_periodic(trainer)  # (a best-k save of this step alone would leave last.ckpt behind)
        self._drain()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        try:
            self._drain()
        finally:
            self._restore_signals()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._watch_stop.set()
        self._watchdog = None
        self._restore_signals()
        self._drain()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._dcp_group is not None:
            dist.destroy_process_group(self._dcp_group)
            self._dcp_group = None

    # -- state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "keep_last": self.keep_last}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A resumed run writes into its own version folder: best-k bookkeeping restarts there, quietly.
        # (Outside a Trainer, before setup resolved a folder, the state is taken whole.)
        if self.dirpath is None:
            self.dirpath = state_dict.get("dirpath")
        if state_dict.get("dirpath") == self.dirpath:
            super().load_state_dict(state_dict)
            self.current_score = state_dict.get("current_score")
        else:
            self.best_model_path = state_dict.get("best_model_path", "")


def _start_cut_short_epoch_afresh(trainer: pl.Trainer) -> None:
    """Resumed from the last step of an epoch that ``limit_train_batches`` cut short: begin the next epoch anew.

    The restored loader state is mid-way through that epoch's order (the loader was never exhausted), and
    Lightning creates the resumed run's first iterator from it, so the next epoch would continue the old order.
    The uninterrupted run instead starts a new iterator at the epoch boundary (a new permutation from the
    sampler's generator, which restoring the old one has advanced); so does this, once, before the first batch.
    A stream (an iterable dataset) keeps its own position: one with ``start_next_epoch()`` (the kit's webdataset
    stream) is told to drop it, when it lives in this process (no workers); any other gets a warning.
    """
    from lightning.pytorch.utilities.data import sized_len
    from torch.utils.data import IterableDataset

    loop = trainer.fit_loop
    fetcher = getattr(loop, "_data_fetcher", None)
    progress = loop.epoch_loop.batch_progress.current
    batches = trainer.num_training_batches
    if trainer.ckpt_path is None or fetcher is None or not progress.ready or progress.ready < batches:
        return
    if not loop.epoch_loop.restarted_on_train_batch_end:
        return  # saved after the epoch's validation: Lightning itself starts the next epoch with a new iterator
    loader = trainer.train_dataloader
    length = sized_len(loader) if loader is not None else None
    if length is not None and length <= batches:
        return  # the epoch ended with the loader: its restored state already starts a new one
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, IterableDataset):
        # a stream holds its own position; one that can drop it (the kit's webdataset stream) starts anew, in
        # this process only: worker processes hold their own copies
        start = getattr(dataset, "start_next_epoch", None)
        if start is None or getattr(loader, "num_workers", 0) > 0:
            rank_zero_warn(
                "KitCheckpoint: resumed at the end of an epoch that limit_train_batches cut short; the stream "
                "continues where that epoch stopped instead of starting the next epoch's order (the "
                "uninterrupted run's)"
            )
            return
        start()
    iter(fetcher)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        import shutil

        shutil.copy2(src, dst)


def _dcp_model_key(strategy: Any) -> str | None:
    """The model's key in a ``torch.distributed.checkpoint`` folder the strategy writes, or ``None``."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    if isinstance(strategy, ModelParallelStrategy) and getattr(strategy, "_save_distributed_checkpoint", False):
        return "state_dict"
    if isinstance(strategy, FSDPStrategy) and getattr(strategy, "_state_dict_type", "full") == "sharded":
        return "model"
    return None


def _mismatch_hook(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    """Before a resume loads the weights: a clear error listing the keys and shapes that differ."""
    if prefix or not strict:
        return
    problem = describe_mismatch(module.state_dict(), {k: v for k, v in state_dict.items()})
    if problem:
        raise ValueError(
            f"{problem}. The checkpoint was written by a model with a different config; resume with the same "
            "model settings, or load only the weights that fit (strict_loading=False)"
        )
