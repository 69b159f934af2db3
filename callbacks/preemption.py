"""PreemptionSave: on SIGTERM or SIGUSR1, checkpoint at the next step boundary and stop cleanly.

A cluster scheduler that preempts a job sends SIGTERM (SLURM: SIGUSR1 with ``--signal``) and kills it a grace
period later. The handler only sets a flag; at the next step boundary (every ``every_n_steps`` steps) the
ranks OR their flags, so every rank stops at the same step, the checkpoint callbacks that can save on demand
(:class:`~kit.callbacks.KitCheckpoint`) write that step and wait for the write, and the Trainer stops without
the validation Lightning would otherwise run on the way out. The log says how to resume.

Lightning's own SIGTERM handling acts only at epoch ends; this one acts within ``every_n_steps`` steps.

Example:
    >>> import lightning.pytorch as pl
    >>> from kit.callbacks import KitCheckpoint
    >>> trainer = pl.Trainer(callbacks=[KitCheckpoint(preemption=False), PreemptionSave()])  # doctest: +SKIP
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

__all__ = ["PreemptionSave"]

SIGNALS = ("SIGTERM", "SIGUSR1")


class PreemptionSave(Callback):
    """Checkpoint and stop at the next step boundary after SIGTERM or SIGUSR1 (see the module docstring).

    Logs ``preemption/stop`` (1.0 on the step it stops at) on every step it checks.

    Args:
        every_n_steps: how often the ranks compare their signal flags (under DDP each check is one small
            all-reduce with a host sync); a signal is acted on within this many steps.

    Raises:
        ValueError: ``every_n_steps < 1``.

    Example:
        >>> PreemptionSave(every_n_steps=10).every_n_steps
        10
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1 (1: check after every step)")
        self.every_n_steps = every_n_steps
        self.preempted_by: str | None = None
        self.preemptions = 0  # stops over the whole run, resumes included
        self.owner: Any = None  # a checkpoint callback that composes this one saves alone
        self._signal: str | None = None
        self._old_handlers: dict[int, Any] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps)

    def _savers(self, trainer: pl.Trainer) -> list[Any]:
        if self.owner is not None:
            return [self.owner]
        return [cb for cb in trainer.checkpoint_callbacks if callable(getattr(cb, "save_now", None))]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not self._savers(trainer):
            rank_zero_warn(
                "PreemptionSave: no checkpoint callback that saves on demand, so a signal stops the run without "
                "saving; add kit.callbacks.KitCheckpoint"
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for name in SIGNALS:
            signum = getattr(signal, name, None)
            if signum is not None and signum not in self._old_handlers:
                self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal = signal.Signals(signum).name

    def restore_handlers(self) -> None:
        """Put back the signal handlers that were installed before training started."""
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        # under DDP: one tiny all-reduce (and host sync) per check, so every rank stops at the same step
        stop = trainer.strategy.reduce_boolean_decision(self._signal is not None, all=False)
        pl_module.log("preemption/stop", float(stop), on_step=True, on_epoch=False)
        if stop:
            self.stop(trainer)

    def stop(self, trainer: pl.Trainer) -> None:
        """Save this step through every on-demand checkpoint callback, wait for the writes, and stop."""
        self.preempted_by = self._signal or "another rank"
        self.preemptions += 1
        paths = [saver.save_now(trainer) for saver in self._savers(trainer)]
        trainer.should_stop = True
        # Lightning validates when should_stop is set mid-epoch; a preempted job's grace period is for exiting,
        # and the uninterrupted run would not validate at this step (the kit CLI's final validation skips too)
        trainer.limit_val_batches = 0
        saved = (
            f"saved step {trainer.global_step} to {paths[0]}" if paths else "nothing saved (no KitCheckpoint)"
        )
        rank_zero_info(
            f"PreemptionSave: received {self.preempted_by}; {saved} and stopping. Resume with "
            "`kit fit --config <same recipe> --ckpt_path last` (or trainer.fit(..., ckpt_path=that path))"
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # before the Trainer's own teardown puts back the handlers it found, so both end as they were
        self.restore_handlers()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.restore_handlers()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.restore_handlers()

    def state_dict(self) -> dict[str, Any]:
        return {"preemptions": self.preemptions}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.preemptions = int(state_dict.get("preemptions", 0))
