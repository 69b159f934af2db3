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

import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from kit.health.flops import peak_flops_for

__all__ = ["DataWaitTimer", "GPUReader", "HostReader", "guess_peak_flops", "mfu", "physical_gpu_index"]


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


def _bare_uuid(uuid: object) -> str:
    """``"GPU-58d1dcc3-..."`` (NVML, nvidia-smi, CUDA_VISIBLE_DEVICES) and torch's ``"58d1dcc3-..."`` alike."""
    if isinstance(uuid, bytes):
        uuid = uuid.decode()
    text = str(uuid).strip().lower()
    for prefix in ("gpu-", "mig-"):
        text = text.removeprefix(prefix)
    return text


def _torch_uuid(ordinal: int) -> str | None:
    """UUID of CUDA device ``ordinal`` as this process numbers it, or None when torch cannot say."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return _bare_uuid(torch.cuda.get_device_properties(ordinal).uuid)
    except Exception:  # CPU build, ROCm without UUIDs, old driver: fall back to the device mask
        return None


def physical_gpu_index(ordinal: int, uuids: list[str], visible: str | None = None) -> int | None:
    """Map a CUDA ordinal (``cuda:0`` is the first *visible* device) to the driver's GPU index.

    NVML and ``nvidia-smi`` number all GPUs of the machine; CUDA numbers only the visible ones, so with
    ``CUDA_VISIBLE_DEVICES=3`` ordinal 0 is physical GPU 3. The match is by UUID (torch's
    ``get_device_properties(i).uuid`` against the driver's), else through ``CUDA_VISIBLE_DEVICES``
    (indices or UUID prefixes), else the ordinal itself when no mask is set.

    Args:
        ordinal: CUDA device index in this process.
        uuids: UUID of each physical GPU in driver order (``nvmlDeviceGetUUID`` / ``nvidia-smi``).
        visible: the device mask; ``None`` reads ``CUDA_VISIBLE_DEVICES``.

    Returns:
        The physical index, or None when the mask names a device that cannot be matched (reading
        some other GPU would be worse than reading none).

    Example:
        >>> physical_gpu_index(0, ["GPU-aa", "GPU-bb", "GPU-cc", "GPU-dd"], visible="3")
        3
    """
    bare = [_bare_uuid(u) for u in uuids]
    own = _torch_uuid(ordinal)
    if own is not None and own in bare:
        return bare.index(own)
    mask = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if mask is None:
        return ordinal if ordinal < len(uuids) else None
    entries = [e.strip() for e in mask.split(",") if e.strip()]
    if ordinal >= len(entries):
        return None
    entry = entries[ordinal]
    if entry.isdigit():
        index = int(entry)
        return index if index < len(uuids) else None
    prefix = _bare_uuid(entry)
    matches = [i for i, u in enumerate(bare) if prefix and u.startswith(prefix)]
    return matches[0] if len(matches) == 1 else None


class GPUReader:
    """GPU utilisation and memory through NVML (``nvidia-ml-py``), or ``nvidia-smi`` without it.

    NVML is initialised lazily; when the Python binding is missing but the ``nvidia-smi`` tool is
    there, it is queried instead (about 50 ms per read, so read on logging steps only). On machines
    without a driver ``available`` is False and ``unavailable`` says why.

    Indices are CUDA ordinals, as torch numbers devices in this process; each is mapped to the
    driver's GPU through UUIDs (:func:`physical_gpu_index`), so ``cuda:0`` under
    ``CUDA_VISIBLE_DEVICES=3`` reads physical GPU 3, logged as ``gpu0_*``.

    Args:
        indices: CUDA ordinals to read (``None``: every GPU of the machine, by driver index).
    """

    def __init__(self, indices: list[int] | None = None) -> None:
        self.unavailable: str | None = None
        self.source = "nvml"
        self._handles: list = []
        self._indices = indices
        self._smi_map: dict[int, int] | None = None  # physical index -> reported ordinal
        try:
            import pynvml

            pynvml.nvmlInit()
            n = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(j) for j in range(n)]
            if indices is None:
                self._handles = list(enumerate(handles))
            else:
                uuids = [pynvml.nvmlDeviceGetUUID(h) for h in handles]
                physical = {i: physical_gpu_index(i, uuids) for i in indices}
                self._handles = [(i, handles[j]) for i, j in physical.items() if j is not None]
            self._nvml = pynvml
            if not self._handles:
                self.unavailable = "NVML found no GPU" + (
                    f" matching CUDA device(s) {indices}" if indices and n else ""
                )
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
            "--query-gpu=index,uuid,utilization.gpu,memory.used,memory.total",
            "--format=csv,noheader,nounits",
        ]
        try:
            lines = subprocess.run(
                cmd, capture_output=True, text=True, timeout=10, check=True
            ).stdout.splitlines()
        except (OSError, subprocess.SubprocessError):
            return {}
        rows = [[x.strip() for x in line.split(",")] for line in lines if line.strip()]
        if self._smi_map is None:  # physical index -> the name it is logged under
            if self._indices is None:
                self._smi_map = {int(r[0]): int(r[0]) for r in rows}
            else:
                uuids = [r[1] for r in rows]
                found = {i: physical_gpu_index(i, uuids) for i in self._indices}
                self._smi_map = {j: i for i, j in found.items() if j is not None}
        out: dict[str, float] = {}
        for index, _, util, used, total in rows:
            name = self._smi_map.get(int(index))
            if name is not None:
                out[f"gpu{name}_util"] = float(util)
                out[f"gpu{name}_mem_used_gb"] = float(used) * 2**20 / 1e9  # MiB
                out[f"gpu{name}_mem_percent"] = 100.0 * float(used) / max(float(total), 1.0)
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
