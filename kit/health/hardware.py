"""Hardware counters that degrade gracefully: NVML for GPUs, psutil for CPU/RAM, MFU and data-wait math.

Each reader says what it cannot read (``reader.unavailable``) instead of raising, so the same code
runs on a laptop, a CPU CI box and a GPU node.

Example:
    >>> host = HostReader()
    >>> sorted(host.read())  # doctest: +SKIP
    ['cpu_percent', 'ram_percent', 'ram_used_gb', 'process_rss_gb']
    >>> mfu(flops_per_batch=1e12, step_time_s=0.01, peak_flops=312e12)
    0.32051282051282054
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from kit.health.flops import peak_flops_for

__all__ = ["DataWaitTimer", "GPUReader", "HostReader", "guess_peak_flops", "mfu"]


def mfu(flops_per_batch: float, step_time_s: float, peak_flops: float, n_devices: int = 1) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak of ``n_devices`` devices.

    Args:
        flops_per_batch: training FLOPs of one optimizer step on one device (forward + backward).
        step_time_s: wall time of that step.
        peak_flops: peak FLOP/s of one device.
        n_devices: devices the step ran on when ``flops_per_batch`` is the global figure.

    Raises:
        ValueError: on non-positive times or peaks.
    """
    if step_time_s <= 0 or peak_flops <= 0:
        raise ValueError(f"step_time_s={step_time_s} and peak_flops={peak_flops} must be > 0")
    return flops_per_batch / step_time_s / (peak_flops * n_devices)


def guess_peak_flops(device_name: str) -> float | None:
    """Peak bf16 FLOP/s for a CUDA device name such as ``"NVIDIA H100 80GB HBM3"`` (None if unknown).

    The lookup is :func:`kit.health.flops.peak_flops_for` over the kit's one GPU table
    (:data:`kit.health.flops.GPUS`, the planner's).
    """
    return peak_flops_for(device_name)


class GPUReader:
    """GPU utilisation and memory through NVML (``nvidia-ml-py``), or ``nvidia-smi`` without it.

    NVML is initialised lazily; when the Python binding is missing but the ``nvidia-smi`` tool is
    there, it is queried instead (about 50 ms per read, so read on logging steps only). On machines
    without a driver ``available`` is False and ``unavailable`` says why.

    Args:
        indices: GPU indices to read (``None``: all).
    """

    def __init__(self, indices: list[int] | None = None) -> None:
        self.unavailable: str | None = None
        self.source = "nvml"
        self._handles: list = []
        self._indices = indices
        try:
            import pynvml

            pynvml.nvmlInit()
            n = pynvml.nvmlDeviceGetCount()
            idx = list(range(n)) if indices is None else [i for i in indices if i < n]
            self._handles = [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in idx]
            self._nvml = pynvml
            if not self._handles:
                self.unavailable = "NVML found no GPU"
        except ImportError as err:
            if shutil.which("nvidia-smi") and self._smi():
                self.source = "nvidia-smi"
            else:
                self.unavailable = (
                    f"GPU counters unavailable (nvidia-ml-py not installed: {err}; no nvidia-smi)"
                )
        except Exception as err:  # no driver, no library, no permission: all mean "cannot read"
            self.unavailable = f"GPU counters unavailable (NVML: {type(err).__name__}: {err})"

    @property
    def available(self) -> bool:
        """Whether at least one GPU can be read."""
        return self.unavailable is None

    def _smi(self) -> dict[str, float]:
        cmd = [
            "nvidia-smi",
            "--query-gpu=index,utilization.gpu,memory.used,memory.total",
            "--format=csv,noheader,nounits",
        ]
        try:
            lines = subprocess.run(
                cmd, capture_output=True, text=True, timeout=10, check=True
            ).stdout.splitlines()
        except (OSError, subprocess.SubprocessError):
            return {}
        out: dict[str, float] = {}
        for line in lines:
            i, util, used, total = (float(x) for x in line.split(","))
            if self._indices is None or int(i) in self._indices:
                out[f"gpu{int(i)}_util"] = util
                out[f"gpu{int(i)}_mem_used_gb"] = used * 2**20 / 1e9  # MiB
                out[f"gpu{int(i)}_mem_percent"] = 100.0 * used / max(total, 1.0)
        return out

    def read(self) -> dict[str, float]:
        """``gpu{i}_util`` (%), ``gpu{i}_mem_used_gb``, ``gpu{i}_mem_percent`` for each GPU; {} if unavailable."""
        if self.unavailable is not None:
            return {}
        if self.source == "nvidia-smi":
            return self._smi()
        out: dict[str, float] = {}
        for i, h in self._handles:
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(h)
                mem = self._nvml.nvmlDeviceGetMemoryInfo(h)
            except Exception as err:
                self.unavailable = f"NVML read failed: {err}"
                return {}
            out[f"gpu{i}_util"] = float(util.gpu)
            out[f"gpu{i}_mem_used_gb"] = mem.used / 1e9
            out[f"gpu{i}_mem_percent"] = 100.0 * mem.used / max(mem.total, 1)
        return out


class HostReader:
    """CPU and RAM through psutil; ``cpu_percent`` is the average since the previous read."""

    def __init__(self) -> None:
        self.unavailable: str | None = None
        try:
            import psutil

            self._psutil = psutil
            self._proc = psutil.Process()
            psutil.cpu_percent(None)  # start the interval
        except Exception as err:
            self.unavailable = f"host counters unavailable (psutil: {err})"

    @property
    def available(self) -> bool:
        """Whether psutil works here."""
        return self.unavailable is None

    def read(self) -> dict[str, float]:
        """``cpu_percent``, ``ram_percent``, ``ram_used_gb``, ``process_rss_gb``; {} if unavailable."""
        if not self.available:
            return {}
        vm = self._psutil.virtual_memory()
        return {
            "cpu_percent": float(self._psutil.cpu_percent(None)),
            "ram_percent": float(vm.percent),
            "ram_used_gb": (vm.total - vm.available) / 1e9,
            "process_rss_gb": self._proc.memory_info().rss / 1e9,
        }


@dataclass
class DataWaitTimer:
    """Splits wall time into "waiting for the next batch" and "computing on it".

    Call :meth:`batch_start` when a batch arrives and :meth:`batch_end` when its step is done; the
    gap between an end and the next start is data wait. ``clock`` is injectable for tests.

    Example:
        >>> t = iter([0.0, 1.0, 1.5, 2.5]).__next__
        >>> timer = DataWaitTimer(clock=t)
        >>> timer.batch_end(); timer.batch_start(); timer.batch_end(); timer.batch_start()
        >>> round(timer.summary()["data_wait_share"], 3)
        0.8
    """

    clock: object = time.perf_counter
    wait_s: float = 0.0
    compute_s: float = 0.0
    steps: int = 0
    _last_end: float | None = field(default=None, repr=False)
    _last_start: float | None = field(default=None, repr=False)

    def batch_start(self) -> None:
        """A batch arrived."""
        now = self.clock()
        if self._last_end is not None:
            self.wait_s += now - self._last_end
        self._last_start = now

    def batch_end(self) -> None:
        """The step on the batch finished."""
        now = self.clock()
        if self._last_start is not None:
            self.compute_s += now - self._last_start
            self.steps += 1
        self._last_end = now

    def pause(self) -> None:
        """Forget the open interval (validation or checkpointing ran in between)."""
        self._last_end = None

    def summary(self) -> dict[str, float]:
        """Totals since the last :meth:`reset`."""
        total = self.wait_s + self.compute_s
        return {
            "data_wait_share": self.wait_s / total if total > 0 else 0.0,
            "step_time_s": total / self.steps if self.steps else 0.0,
            "compute_time_s": self.compute_s / self.steps if self.steps else 0.0,
        }

    def reset(self) -> None:
        """Start a new window (keeps the open interval)."""
        self.wait_s = self.compute_s = 0.0
        self.steps = 0

    def state_dict(self) -> Mapping:
        """Nothing worth resuming: timing windows restart after a resume."""
        return {}
