"""``TokenThroughput``: samples/s, tokens/s and MFU for ``(input_ids, targets)`` batches, through ``pl_module.log``.

The rates come from Lightning's public ``Throughput`` window (``lightning.fabric.utilities.throughput``); the
callback only counts batches, samples and tokens, times the training steps, and logs. It does not subclass
``ThroughputMonitor``, which writes to the loggers directly (so EarlyStopping/ModelCheckpoint could not see
its metrics) and synchronises CUDA after every batch: here the clock is read, and CUDA synchronised, on
logging steps only, and the window spans about ``window_size`` batches whatever the logging cadence.

Where Lightning's peak-FLOPs table has no entry for the device (H200, B200 and other names it does not parse),
the peak comes from the kit's table (``kit.health.flops.GPUS``, the planner's), so MFU is logged there too.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from kit.health.flops import peak_flops_for

__all__ = ["TokenThroughput", "batch_size_of", "compute_dtype", "tokens_per_sample"]

_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16, "64": torch.float64}


def batch_size_of(batch: Any) -> int:
    """Leading dimension of the first tensor in a batch (tuple, list, dict or tensor)."""
    first = _first_tensor(batch)
    return int(first.size(0))


def tokens_per_sample(batch: Any) -> int:
    """Tokens in a batch: B * T of the first tensor (T = 1 for 1-D tensors)."""
    first = _first_tensor(batch)
    return int(first.numel())


def _first_tensor(batch: Any):
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    while isinstance(batch, (tuple, list)):
        batch = batch[0]
    if not hasattr(batch, "size"):
        raise TypeError(f"cannot find a tensor in a batch of type {type(batch).__name__}; pass batch_size_fn")
    return batch


def compute_dtype(precision: str) -> torch.dtype | str:
    """The matmul dtype a Trainer ``precision`` string computes in, as ``get_available_flops`` expects it.

    ``"bf16-mixed"``/``"bf16-true"`` -> bfloat16, ``"16-mixed"``/``"16-true"`` -> float16, ``"64-true"`` ->
    float64; 32-bit precision is ``"tfloat32"`` when ``torch.set_float32_matmul_precision`` allows TF32.

    Example:
        >>> compute_dtype("bf16-mixed")
        torch.bfloat16
    """
    head = str(precision).split("-")[0]
    if head in _DTYPES:
        return _DTYPES[head]
    return "tfloat32" if torch.get_float32_matmul_precision() != "highest" else torch.float32


class TokenThroughput(Callback):
    """Logs training ``samples_per_sec``, ``batches_per_sec``, ``items_per_sec`` (tokens) and, where the
    device's peak FLOP/s is known and the module sets ``flops_per_batch``, ``mfu``. Usable from YAML with no
    arguments; the keys are Lightning's ``ThroughputMonitor`` keys (``train/device/samples_per_sec``, ...).

    The peak is Lightning's for the run's compute dtype; for a CUDA device Lightning does not know, it is
    the kit's dense bf16 peak (``kit.health.flops.peak_flops_for``). Time spent in validation is not counted.

    Args:
        window_size: batches the rates are averaged over (rounded up to whole logging intervals).
        separator: between the stage and the metric name in logged keys.
        log_every_n_steps: logging cadence in optimizer steps (``None``: the Trainer's).

    Raises:
        ValueError: on a window below 1 or a cadence below 1.

    Example:
        >>> trainer = pl.Trainer(callbacks=[TokenThroughput()])  # doctest: +SKIP
    """

    def __init__(
        self, window_size: int = 20, separator: str = "/", log_every_n_steps: int | None = None
    ) -> None:
        if window_size < 1:
            raise ValueError(f"window_size={window_size} must be >= 1 batches; e.g. window_size=20")
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(
                f"log_every_n_steps={log_every_n_steps} must be >= 1 or None (use the Trainer's)"
            )
        self.window_size, self.separator, self.log_every_n_steps = window_size, separator, log_every_n_steps
        self.available_flops: int | None = None
        self.throughput: Throughput | None = None
        self._world_size = 1
        self._warned_flops = False
        self._val_start = 0.0
        self._reset()

    def _reset(self) -> None:
        self._t0 = time.perf_counter()
        self._batches = self._samples = self._tokens = 0
        self._flops = 0.0  # since the last reading
        self._has_flops: bool | None = None

    def _every(self, trainer: pl.Trainer) -> int:
        return self.log_every_n_steps or max(1, trainer.log_every_n_steps)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        device = trainer.strategy.root_device
        with warnings.catch_warnings(record=True) as held:  # Lightning warns "FLOPs not found" for devices
            warnings.simplefilter("always")  # its table lacks: hold that until the kit's table had its turn
            self.available_flops = get_available_flops(device, compute_dtype(trainer.precision))
        if self.available_flops is None and device.type == "cuda":
            peak = peak_flops_for(torch.cuda.get_device_name(device))
            self.available_flops = int(peak) if peak is not None else None
        for w in held:
            if self.available_flops is None or "FLOPs not found" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self._world_size = trainer.world_size

    def _new_window(self, trainer: pl.Trainer) -> Throughput:
        readings = max(2, math.ceil(self.window_size / self._every(trainer)) + 1)
        return Throughput(
            available_flops=self.available_flops,
            world_size=self._world_size,
            window_size=readings,
            separator=self.separator,
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()
        self.throughput = self._new_window(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:  # keep validation off the train clock
            self._t0 += time.perf_counter() - self._val_start

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.throughput is None:  # on_train_start did not run (hooks called by hand)
            self.on_train_start(trainer, pl_module)
        self._batches += 1
        self._samples += batch_size_of(batch)
        self._tokens += tokens_per_sample(batch)
        if self._has_flops is None:
            self._has_flops = getattr(pl_module, "flops_per_batch", None) is not None
            if not self._has_flops and not self._warned_flops:
                self._warned_flops = True
                rank_zero_warn(
                    f"TokenThroughput: {type(pl_module).__name__} has no `flops_per_batch`, so MFU is not logged; "
                    "set it (e.g. with lightning.fabric.utilities.throughput.measure_flops) to get device/mfu"
                )
        if self._has_flops:
            self._flops += float(pl_module.flops_per_batch)
        if (batch_idx + 1) % trainer.accumulate_grad_batches or trainer.global_step % self._every(trainer):
            return  # mid-accumulation or not a logging step: counting only, no clock read, no sync
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)  # the clock must cover the queued kernels
        self.throughput.update(
            time=time.perf_counter() - self._t0,
            batches=self._batches,
            samples=self._samples,
            lengths=self._tokens,
            flops=self._flops if self._has_flops else None,
        )
        self._flops = 0.0
        metrics = {f"train{self.separator}{k}": float(v) for k, v in self.throughput.compute().items()}
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
