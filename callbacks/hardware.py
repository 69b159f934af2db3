"""HardwareMonitor: GPU utilisation/memory (NVML), CPU/RAM (psutil), MFU and data-wait share.

MFU needs ``pl_module.flops_per_batch`` (FLOPs of one training batch on one device, forward +
backward, the attribute Lightning's ThroughputMonitor also reads) and the device's peak FLOP/s
(guessed from the CUDA device name or passed as ``peak_flops``). Data wait is the time between the
end of one training batch and the start of the next, i.e. what the loop spent fetching data (plus the
loop's own bookkeeping: logging, progress bar, other callbacks).

The data-wait warning fires only when the wait is a real cost: its share of the step exceeds
``data_wait_threshold`` **and** it costs at least ``min_data_wait_s`` per step **and** that holds for
``patience`` logging windows in a row. On a fast model (a step of a few milliseconds) the loop's
bookkeeping alone is a large share of a tiny step; warning there would teach users to ignore the warning.

Everything it cannot read on this machine is reported once (``monitor.unavailable``) and skipped.

Example:
    >>> import lightning.pytorch as pl
    >>> trainer = pl.Trainer(callbacks=[HardwareMonitor()])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from kit.callbacks._common import log_metrics
from kit.health.hardware import DataWaitTimer, GPUReader, HostReader, guess_peak_flops, mfu

__all__ = ["HardwareMonitor"]


class HardwareMonitor(Callback):
    """Log hardware counters every ``log_every_n_steps`` and warn on under-utilisation.

    Args:
        log_every_n_steps: cadence in training batches (``None``: the Trainer's).
        gpu_util_threshold: warn when GPU utilisation (%) is below this (85).
        data_wait_threshold: share of step time spent waiting for data above which a window counts (0.10).
        min_data_wait_s: ... and only if the wait per step is at least this many seconds (0.005): below it
            the "wait" is loop bookkeeping, and a faster loader would not save anything that matters.
        patience: consecutive logging windows over both bars before the data-wait warning fires (3).
        peak_flops: peak FLOP/s of one device for MFU (``None``: from the GPU name).
        warmup_steps: batches ignored before warnings (compilation, cudnn autotune, first fetch).
        sync_cuda: synchronise CUDA on logging steps so the step time covers queued kernels.
        prefix: metric name prefix.

    Raises:
        ValueError: on thresholds out of range.

    Example:
        >>> cb = HardwareMonitor(gpu_util_threshold=80, data_wait_threshold=0.2, peak_flops=312e12)
    """

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        gpu_util_threshold: float = 85.0,
        data_wait_threshold: float = 0.10,
        min_data_wait_s: float = 0.005,
        patience: int = 3,
        peak_flops: float | None = None,
        warmup_steps: int = 5,
        sync_cuda: bool = True,
        prefix: str = "hw/",
    ) -> None:
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(
                f"log_every_n_steps={log_every_n_steps} must be >= 1 or None (use the Trainer's)"
            )
        if not 0 <= gpu_util_threshold <= 100:
            raise ValueError(
                f"gpu_util_threshold={gpu_util_threshold} is a percentage; use 0..100 (default 85)"
            )
        if not 0 <= data_wait_threshold <= 1:
            raise ValueError(f"data_wait_threshold={data_wait_threshold} is a share; use 0..1 (default 0.10)")
        if min_data_wait_s < 0 or patience < 1:
            raise ValueError(
                f"min_data_wait_s={min_data_wait_s} must be >= 0 and patience={patience} >= 1 (defaults 0.005, 3)"
            )
        self.min_data_wait_s, self.patience = min_data_wait_s, patience
        self._slow_windows = 0
        self.log_every_n_steps, self.gpu_util_threshold = log_every_n_steps, gpu_util_threshold
        self.data_wait_threshold, self.peak_flops = data_wait_threshold, peak_flops
        self.warmup_steps, self.sync_cuda, self.prefix = warmup_steps, sync_cuda, prefix
        self.timer = DataWaitTimer()
        self.unavailable: list[str] = []
        self.last_metrics: dict[str, float] = {}
        self.warnings: list[str] = []
        self._batches = 0
        self._gpu: GPUReader | None = None
        self._host: HostReader | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._host is not None:
            return
        self._host = HostReader()
        on_cuda = pl_module.device.type == "cuda" or trainer.strategy.root_device.type == "cuda"
        self._gpu = GPUReader([trainer.strategy.root_device.index or 0] if on_cuda else None)
        if self.peak_flops is None and on_cuda:
            self.peak_flops = guess_peak_flops(torch.cuda.get_device_name(trainer.strategy.root_device))
        self.unavailable = [u for u in (self._gpu.unavailable, self._host.unavailable) if u]
        if self.peak_flops is None:
            self.unavailable.append("MFU: peak FLOP/s unknown for this device (pass peak_flops=...)")
        if not hasattr(pl_module, "flops_per_batch"):
            self.unavailable.append("MFU: the module has no flops_per_batch attribute")
        if self.unavailable:
            rank_zero_info("HardwareMonitor cannot read: " + "; ".join(self.unavailable))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.timer.batch_start()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches += 1
        every = self.log_every_n_steps or max(1, trainer.log_every_n_steps)
        log_now = self._batches % every == 0
        if log_now and self.sync_cuda and torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.timer.batch_end()
        if not log_now:
            return
        m: dict[str, float] = {}
        summary = self.timer.summary()
        m[self.prefix + "data_wait_share"] = summary["data_wait_share"]
        m[self.prefix + "step_time_s"] = summary["step_time_s"]
        m[self.prefix + "data_wait_s"] = summary["step_time_s"] - summary["compute_time_s"]
        fpb = getattr(pl_module, "flops_per_batch", None)
        if fpb and self.peak_flops and summary["step_time_s"] > 0:
            m[self.prefix + "mfu"] = mfu(float(fpb), summary["step_time_s"], self.peak_flops)
        m.update({self.prefix + k: v for k, v in (self._gpu.read() if self._gpu else {}).items()})
        m.update({self.prefix + k: v for k, v in (self._host.read() if self._host else {}).items()})
        self.timer.reset()
        self.last_metrics = log_metrics(pl_module, m)
        if self._batches > self.warmup_steps:
            self._check(m)

    def _check(self, m: dict[str, float]) -> None:
        utils = {k: v for k, v in m.items() if k.endswith("_util")}
        for k, v in utils.items():
            if v < self.gpu_util_threshold:
                self._warn(
                    f"HardwareMonitor: {k.removeprefix(self.prefix)} = {v:.0f}% < {self.gpu_util_threshold:.0f}%; "
                    "the GPU idles: raise the batch size, use more dataloader workers / pin_memory, or compile"
                )
        wait = m.get(self.prefix + "data_wait_share", 0.0)
        per_step = m.get(self.prefix + "data_wait_s", 0.0)
        costly = wait > self.data_wait_threshold and per_step >= self.min_data_wait_s
        self._slow_windows = self._slow_windows + 1 if costly else 0
        if self._slow_windows == self.patience:  # once per sustained episode
            self._warn(
                f"HardwareMonitor: {100 * wait:.1f}% of step time ({1000 * per_step:.1f} ms per step) spent waiting "
                f"for data for {self.patience} logging windows in a row (> {100 * self.data_wait_threshold:.0f}% and "
                f">= {1000 * self.min_data_wait_s:.0f} ms); raise num_workers, prefetch, or pre-tokenise"
            )

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        if len(self.warnings) <= 5:
            rank_zero_warn(msg)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.timer.pause()  # validation time is not data wait

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        self.timer.pause()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self._batches, "warnings": list(self.warnings), "slow_windows": self._slow_windows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._batches = int(state_dict.get("batches", 0))
        self.warnings = list(state_dict.get("warnings", []))
        self._slow_windows = int(state_dict.get("slow_windows", 0))
