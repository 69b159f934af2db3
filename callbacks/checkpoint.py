"""KitCheckpoint: Lightning's ModelCheckpoint with atomic writes, a manifest, last-k + best-k, exact RNG
resume and an optional asynchronous save.

Every file or folder it writes goes through ``kit.checkpoint``: a single-file checkpoint is written by
``torch.save`` straight into a hidden temporary file in the checkpoint folder (named with the host, the process
id and a random part; nothing is staged in memory or ``$TMPDIR``), fsynced and renamed into place; a sharded one
(FSDP, DeepSpeed) is a folder the strategy writes under such a temporary name. Rank zero then records it in
``manifest.json`` with the SHA-256 of each file. ``last.ckpt`` is a hard link to the newest checkpoint (a folder of
hard links for sharded ones), recorded in the manifest first and then renamed into place, so it always names a
complete checkpoint. Old periodic checkpoints leave the manifest before their files are deleted, by exact name.
At setup, rank zero sweeps what a killed run left in the folder (``kit.checkpoint.sweep``) and says so.

- ``keep_last``: periodic checkpoints ``step00000150.ckpt`` every ``every_n_train_steps`` steps (or each epoch
  end); the newest ``keep_last`` stay.
- ``save_top_k`` + ``monitor``: the best k by the metric (ModelCheckpoint's own logic).
- RNG (``kit.checkpoint.rng.StepRng``): the python, numpy, torch and CUDA generator states of every rank at the
  end of the last training step are saved under ``checkpoint["kit"]``; they are put back at the start of the
  next training step, in the uninterrupted run too, so validation or a new DataLoader iterator between steps
  cannot shift the draws.
- ``async_save`` (``kit.checkpoint.async_writer``): the training step waits only for the copy of the state to
  CPU; a background thread writes, fsyncs, renames and updates the manifest (one write in flight at a time).
  Sharded folders go through ``torch.distributed.checkpoint.async_save`` on every rank (``kit.checkpoint.sharded``).
- :meth:`KitCheckpoint.save_now` writes the current step on demand, for :class:`~kit.callbacks.PreemptionSave`.

Preemption (:class:`~kit.callbacks.PreemptionSave`) and the hang watchdog (:class:`~kit.callbacks.HangWatchdog`)
are callbacks of their own; ``preemption=True`` (the default) and ``hang_timeout_s`` compose them here for
configurations written before they were split out.

Example:
    >>> trainer = pl.Trainer(callbacks=[KitCheckpoint(every_n_train_steps=100, keep_last=2)])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from kit._compat import dump_checkpoint, strategy_traits
from kit.callbacks._resume import mismatch_hook, start_cut_short_epoch_afresh
from kit.callbacks.preemption import PreemptionSave
from kit.callbacks.watchdog import HangWatchdog
from kit.checkpoint import FORMAT_VERSION, CheckpointEntry, Manifest, upgrade_checkpoint
from kit.checkpoint.async_writer import AsyncWriter, to_cpu
from kit.checkpoint.atomic import commit, remove_path, save_torch_file, temp_path, write_error
from kit.checkpoint.manifest import checksum, delete_checkpoint_files, is_plain_name
from kit.checkpoint.rng import StepRng
from kit.checkpoint.sweep import sweep

__all__ = ["KitCheckpoint"]


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
        preemption: on SIGTERM/SIGUSR1, checkpoint at the next step boundary and stop cleanly (a
            :class:`~kit.callbacks.PreemptionSave` composed inside; ignored when the Trainer has its own).
        hang_timeout_s: deprecated: add ``kit.callbacks.HangWatchdog(timeout_s=...)`` instead (composed inside
            until then). ``None`` (default): no watchdog.
        preemption_every_n_steps: deprecated: add ``kit.callbacks.PreemptionSave(every_n_steps=...)`` and set
            ``preemption=False`` instead (passed to the composed one until then).
        exact_rng: save and restore every RNG state so a resumed run draws the same numbers.
        verbose: log each save.
        auto_insert_metric_name: ModelCheckpoint's: write ``name=value`` into best-k file names.

    Raises:
        ValueError: ``keep_last < 1``, ``hang_timeout_s <= 0`` or ``preemption_every_n_steps < 1``.
    """

    CHECKPOINT_NAME_LAST = "last"
    # the kit CLI's end-of-fit last.ckpt refresh leaves the final save to this callback
    saves_final_step = True

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
        if preemption_every_n_steps < 1:
            raise ValueError(f"preemption_every_n_steps={preemption_every_n_steps} must be >= 1")
        self.hang_timeout_s, self.preemption_every_n_steps = hang_timeout_s, preemption_every_n_steps
        self._own_preemption = PreemptionSave(preemption_every_n_steps) if preemption else None
        if self._own_preemption is not None:
            self._own_preemption.owner = self
        self._preemption = self._own_preemption  # or the Trainer's own PreemptionSave (found at setup)
        self._watchdog = HangWatchdog(hang_timeout_s) if hang_timeout_s is not None else None
        if hang_timeout_s is not None:
            t = hang_timeout_s
            _deprecated(
                f"hang_timeout_s={t}", f"add kit.callbacks.HangWatchdog(timeout_s={t}) to the callbacks"
            )
        if preemption_every_n_steps != 1:
            n = preemption_every_n_steps
            _deprecated(
                f"preemption_every_n_steps={n}",
                f"add kit.callbacks.PreemptionSave(every_n_steps={n}) to the callbacks and set preemption=False",
            )
        self._rng = StepRng()
        self._writer = AsyncWriter(dirpath)
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

    @property
    def preempted_by(self) -> str | None:
        """The signal that stopped the run (``"another rank"`` when a peer received it), else ``None``."""
        return self._preemption.preempted_by if self._preemption is not None else None

    @property
    def newest_path(self) -> str | None:
        """The newest complete checkpoint this callback wrote (``last.ckpt`` when it keeps one), or ``None``."""
        return self.last_model_path or self._last_checkpoint_saved or None

    def _parts(self) -> list[Callback]:
        """The callbacks composed inside (preemption, watchdog) that receive this callback's hooks."""
        parts: list[Callback] = [self._watchdog] if self._watchdog is not None else []
        if self._preemption is not None and self._preemption is self._own_preemption:
            parts.append(self._preemption)
        return parts

    # -- setup ---------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._writer.folder = self.dirpath
        if stage == "fit" and trainer.is_global_zero and self.dirpath:
            notes = sweep(self.dirpath)
            if notes:
                rank_zero_warn(f"KitCheckpoint: swept {self.dirpath} after an interrupted run: {'; '.join(notes)}")
        if stage == "fit" and self._hook is None:  # the resume (if any) loads weights before on_train_start
            self._hook = pl_module.register_load_state_dict_pre_hook(mismatch_hook)
        # the Trainer's own PreemptionSave, if any, takes over from the composed one
        own = [cb for cb in trainer.callbacks if isinstance(cb, PreemptionSave)]
        self._preemption = own[0] if own else self._own_preemption
        if (
            self.async_save
            and self._dcp_group is None
            and dist.is_available()
            and dist.is_initialized()
            and strategy_traits(trainer.strategy).dcp_model_key is not None
        ):
            # DCP's async write runs collectives in a background thread, so training's own must not share its
            # group; and it needs a CPU backend, which an NCCL-only default group lacks (one rank included)
            self._dcp_group = dist.new_group(backend="gloo")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        start_cut_short_epoch_afresh(trainer)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for part in self._parts():
            part.on_train_start(trainer, pl_module)

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if self._watchdog is not None:
            self._watchdog.on_validation_batch_end(trainer, *args, **kwargs)

    # -- RNG -----------------------------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._rng.start_of_step()
        if self._watchdog is not None:
            self._watchdog.on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        from kit import __version__

        checkpoint["kit"] = {
            "format": FORMAT_VERSION,
            "kit_version": __version__,
            "rng": self._rng.for_checkpoint(trainer.world_size) if self.exact_rng else None,
        }

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        for note in upgrade_checkpoint(checkpoint):
            rank_zero_warn(f"KitCheckpoint: {note}")
        rng = checkpoint["kit"].get("rng")
        if self.exact_rng and rng:
            problem = self._rng.from_checkpoint(rng, trainer.global_rank, trainer.world_size)
            if problem:
                rank_zero_warn(f"KitCheckpoint: {problem}")

    # -- saving --------------------------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.exact_rng:
            self._rng.end_of_step()  # the next step starts from exactly this state
        if self.every > 0 and trainer.global_step % self.every == 0:
            self._save_step(trainer)
        # every step, so a monitor sees it from the start
        pl_module.log("checkpoint/saves", float(len(self.save_times)), on_step=True, on_epoch=False)
        for part in self._parts():  # after the save: a long save is progress, not a hang
            part.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def save_now(self, trainer: pl.Trainer) -> str | None:
        """Write this step's periodic checkpoint now (unless it is written already) and wait for every write.

        Call it from ``on_train_batch_end`` (what :class:`~kit.callbacks.PreemptionSave` does).

        Returns:
            The newest complete checkpoint (``last.ckpt`` when kept), or ``None`` if none was written.

        Example:
            >>> path = trainer.checkpoint_callback.save_now(trainer)  # doctest: +SKIP
        """
        if self.exact_rng:
            self._rng.end_of_step()  # as at the end of the step: another callback may ask before this one's hook
        self._save_step(trainer)
        self._writer.drain()
        return self.newest_path

    def _save_step(self, trainer: pl.Trainer) -> None:
        """The periodic checkpoint of this step, once, with its stall logged."""
        if self._last_periodic_step == trainer.global_step or self._should_skip_saving_checkpoint(trainer):
            return
        self._save_periodic(trainer)
        trainer.lightning_module.log(
            "checkpoint/stall_s", self.save_times[-1]["stall_s"], on_step=True, on_epoch=False
        )
        if self._watchdog is not None:
            self._watchdog.beat()  # a long save is progress, not a hang

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

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        start = time.perf_counter()
        kind, step, epoch = self._kind, trainer.global_step, trainer.current_epoch
        score = self.current_score if kind == "best" else None
        score = float(score) if score is not None else None
        # one name for every rank (a sharded folder is written by all of them), unique to this process
        tmp = trainer.strategy.broadcast(str(temp_path(filepath)))
        checkpoint = dump_checkpoint(trainer, self.save_weights_only)
        traits = strategy_traits(trainer.strategy)
        dcp_key = traits.dcp_model_key
        if self.async_save and not traits.shards_state and trainer.world_size == 1:
            cpu = to_cpu(checkpoint)
            # at most one checkpoint in flight: memory holds one CPU copy
            self._writer.submit(
                self._write_async, trainer, cpu, tmp, filepath, (kind, step, epoch, score), exclusive=True
            )
            stall = time.perf_counter() - start  # includes waiting for a previous write still in flight
        elif self.async_save and dcp_key is not None:
            self._save_sharded_async(trainer, checkpoint, dcp_key, tmp, filepath, (kind, step, epoch, score))
            # dump + copy of this rank's shards to CPU (+ a previous write)
            stall = time.perf_counter() - start
        else:
            if self.async_save and not self._sync_warned:
                self._sync_warned = True
                rank_zero_warn(
                    f"KitCheckpoint: async_save applies to single-process single-file checkpoints and to sharded "
                    f"(torch.distributed.checkpoint) FSDP / ModelParallel ones; {traits.name} "
                    "saves synchronously"
                )
            ok, err = True, None
            try:
                self._write(trainer, checkpoint, tmp)
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
                self._writer.submit(self._commit, tmp, filepath, (kind, step, epoch, score))
                if not self.async_save:
                    self._writer.drain()
            trainer.strategy.barrier("KitCheckpoint.save")
            stall = time.perf_counter() - start
        self.save_times.append({"stall_s": stall, "sync_s": time.perf_counter() - start})
        self._last_global_step_saved = step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            from weakref import proxy

            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    @staticmethod
    def _write(trainer: pl.Trainer, checkpoint: dict, tmp: str, single_process: bool = False) -> None:
        """Write ``checkpoint`` to ``tmp``: a single-file checkpoint with ``torch.save`` straight into the file
        (Lightning's default ``checkpoint_io`` buffers it and stages it in ``$TMPDIR`` first); a sharded one, or
        one going through a user's own ``checkpoint_io``, through the strategy."""
        from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
        from lightning.pytorch.strategies import Strategy

        strategy = trainer.strategy
        # only where the strategy would hand the whole dict to the default checkpoint_io: a strategy that saves
        # its own way (sharded, or a subclass's save_checkpoint) and a user's checkpoint_io keep theirs
        plain_save = getattr(strategy.save_checkpoint, "__func__", None) is Strategy.save_checkpoint
        direct = plain_save and type(strategy.checkpoint_io) is TorchCheckpointIO
        if direct and not strategy_traits(strategy).shards_state:
            if single_process or trainer.is_global_zero:
                save_torch_file(checkpoint, tmp)
        elif single_process:
            trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, tmp)
        else:
            trainer.strategy.save_checkpoint(checkpoint, tmp)

    def _save_sharded_async(
        self, trainer: pl.Trainer, checkpoint: dict, key: str, tmp: str, filepath: str, meta: tuple
    ) -> None:
        """Every rank: start DCP's async write of its shards; rank zero commits once all are on disk.

        The layout is the strategy's own (``key`` for the model, ``optimizer_<i>``, the rest in ``meta.pt``), so
        ``trainer.fit(ckpt_path=folder)`` loads it as if the strategy had saved it.
        """
        from lightning.fabric.utilities.load import _METADATA_FILENAME

        from kit.checkpoint.sharded import finish_async_save, start_async_save

        self._writer.drain()  # one save in flight: DCP's background collectives of two saves must not interleave
        state = {key: checkpoint.pop("state_dict")}
        state.update({f"optimizer_{i}": opt for i, opt in enumerate(checkpoint.pop("optimizer_states", []))})
        future = start_async_save(state, tmp, self._dcp_group)
        if trainer.is_global_zero:
            rest = to_cpu(checkpoint)  # loops, callbacks, RNG: pickled later, so frozen now

            def finish() -> None:
                try:
                    finish_async_save(future, tmp, rest, _METADATA_FILENAME)
                except BaseException as err:  # DCP's CheckpointException is a BaseException
                    remove_path(tmp)
                    raise write_error(Path(filepath), err) from err
                self._commit(tmp, filepath, meta)

            self._writer.submit(finish)
        else:

            def wait() -> None:
                try:
                    future.result()
                except BaseException as err:
                    raise write_error(Path(filepath), err) from err

            self._writer.submit(wait)

    def _write_async(
        self, trainer: pl.Trainer, checkpoint: dict, tmp: str, filepath: str, meta: tuple
    ) -> None:
        start = time.perf_counter()
        try:
            self._write(trainer, checkpoint, tmp, single_process=True)
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
        pruned = []
        if kind == "step":
            protected = {Path(p).name for p in self.best_k_models} | {Path(filepath).name}
            periodic = manifest.newest_first(["step"])
            pruned = [old for old in periodic[self.keep_last :] if old.name not in protected]
            for old in pruned:
                manifest.remove(old.name)
        manifest.save()  # before any file goes: a kill in between leaves unlisted files, swept at the next start
        for old in pruned:
            delete_checkpoint_files(self.dirpath, old)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        if not self.save_last:
            return
        filepath = os.path.join(self.dirpath, f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")
        source = self._last_checkpoint_saved
        self.last_model_path = filepath
        if source and self._last_global_step_saved == trainer.global_step and source != filepath:
            if trainer.is_global_zero:
                self._writer.submit(
                    self._link_last, source, filepath, trainer.global_step, trainer.current_epoch
                )
                if not self.async_save:
                    self._writer.drain()
            trainer.strategy.barrier("KitCheckpoint.last")
        else:
            self._kind = "last"
            try:
                self._save_checkpoint(trainer, filepath)
            finally:
                self._kind = "best"

    def _link_last(self, source: str, filepath: str, step: int, epoch: int) -> None:
        tmp = temp_path(filepath)
        name = Path(filepath).name
        try:
            if Path(source).is_dir():  # a sharded folder: link every file (no second copy of the bytes)
                import shutil

                shutil.copytree(source, tmp, copy_function=_link_or_copy)
            else:
                os.link(source, tmp)
            manifest = Manifest(self.dirpath)
            entry = manifest.entries.get(Path(source).name)
            # a hard link shares the bytes: the source's checksums hold (else hash the link itself)
            files = dict(entry.files) if entry is not None else checksum(tmp)
            manifest.entries[name] = CheckpointEntry(name, step, epoch, "last", time.time(), None, files)
            manifest.save()  # recorded before the rename: a kill in between leaves a stale last.ckpt the sweep drops
            commit(tmp, filepath)
        except Exception as err:
            remove_path(tmp)
            raise write_error(Path(filepath), err) from err

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if trainer.is_global_zero:
            self._writer.submit(self._forget, filepath)

    def _forget(self, filepath: str) -> None:
        name = Path(filepath).name
        if not is_plain_name(name) or Path(filepath).parent.resolve() != Path(self.dirpath).resolve():
            return  # only checkpoints this callback wrote into its own folder
        manifest = Manifest(self.dirpath)
        entry = manifest.remove(name)
        manifest.save()  # before the files go
        if entry is None:
            entry = CheckpointEntry(name, files=checksum(filepath) if Path(filepath).exists() else {})
        delete_checkpoint_files(self.dirpath, entry)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the final step is always saved, so a later resume (or fine-tune) starts from where fit stopped
        if self._last_periodic_step != trainer.global_step and not trainer.sanity_checking:
            self._save_periodic(trainer)  # (a best-k save of this step alone would leave last.ckpt behind)
        self._writer.drain()
        for part in self._parts():
            part.on_train_end(trainer, pl_module)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        try:
            self._writer.drain()
        finally:
            for part in self._parts():
                part.on_exception(trainer, pl_module, exception)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for part in self._parts():
            part.teardown(trainer, pl_module, stage)
        self._writer.drain()
        self._writer.shutdown()
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


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        import shutil

        shutil.copy2(src, dst)


def _deprecated(arg: str, instead: str) -> None:
    warnings.warn(f"KitCheckpoint({arg}) is deprecated; {instead}", DeprecationWarning, stacklevel=3)
