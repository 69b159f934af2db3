"""HangWatchdog: exit a rank that stops making progress, with a message that says where to resume.

Under DDP a rank that died leaves the others blocked in a collective until the process group's own timeout
(30 minutes by default). A background thread here watches a heartbeat, set when a training step starts or
ends and after each validation batch; if none comes for ``timeout_s`` seconds it prints which step was the
last and which checkpoint to resume from, then exits the process with code 3 (``os._exit``: a thread blocked
in a collective cannot be interrupted). Set ``timeout_s`` well above the slowest step, validation batch and
checkpoint save.

Example:
    >>> import lightning.pytorch as pl
    >>> trainer = pl.Trainer(callbacks=[HangWatchdog(timeout_s=600)])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

__all__ = ["EXIT_CODE", "HangWatchdog"]

EXIT_CODE = 3


class HangWatchdog(Callback):
    """Exit with code 3 when no training step starts or ends for ``timeout_s`` seconds (see the module docstring).

    Logs ``watchdog/max_idle_s``: the longest gap between heartbeats so far, to choose ``timeout_s`` from.

    Args:
        timeout_s: seconds without a heartbeat before the process exits; the default (15 minutes) is half the
            process group's own default timeout.

    Raises:
        ValueError: ``timeout_s <= 0``.

    Example:
        >>> HangWatchdog(timeout_s=120).timeout_s
        120
    """

    def __init__(self, timeout_s: float = 900.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s} must be > 0 seconds; set it well above the slowest step")
        self.timeout_s = timeout_s
        self.max_idle_s = 0.0
        self._beat = time.monotonic()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(timeout_s=self.timeout_s)

    def beat(self) -> None:
        """Record progress now (a long checkpoint save calls this when it ends)."""
        now = time.monotonic()
        self.max_idle_s = max(self.max_idle_s, now - self._beat)
        self._beat = now

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._beat = time.monotonic()
        if self._thread is None:
            self._stop = threading.Event()  # a fresh one: the previous thread may not have seen its stop yet
            self._thread = threading.Thread(
                target=self._watch, args=(trainer, self._stop), name="kit-hang-watchdog", daemon=True
            )
            self._thread.start()

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self.beat()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.beat()
        pl_module.log("watchdog/max_idle_s", self.max_idle_s, on_step=True, on_epoch=False)

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self.beat()

    def _watch(self, trainer: pl.Trainer, stop: threading.Event) -> None:
        while not stop.wait(min(5.0, self.timeout_s / 4)):
            idle = time.monotonic() - self._beat
            if idle > self.timeout_s:
                print(self.message(trainer, idle), file=sys.stderr, flush=True)
                os._exit(EXIT_CODE)

    def message(self, trainer: pl.Trainer, idle: float) -> str:
        """What the rank prints before it exits: the last step, why, and the checkpoint to resume from."""
        newest = None
        for cb in trainer.checkpoint_callbacks:
            newest = getattr(cb, "newest_path", None) or cb.last_model_path or cb.best_model_path or newest
        return (
            f"HangWatchdog: rank {trainer.global_rank}: no training step finished (or started) for {idle:.0f} s "
            f"(timeout_s={self.timeout_s}) after step {trainer.global_step}; another rank has probably died and "
            f"this one is blocked in a collective. Exiting (code {EXIT_CODE}). Resume with --ckpt_path last "
            f"(newest: {newest or 'none yet'})"
        )

    def stop(self) -> None:
        """Stop watching (the thread ends within a few seconds)."""
        self._stop.set()
        self._thread = None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.stop()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.stop()

    def state_dict(self) -> dict[str, Any]:
        return {"max_idle_s": self.max_idle_s}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.max_idle_s = float(state_dict.get("max_idle_s", 0.0))
