"""GPUReader reads the GPU this process trains on, not the one with the same CUDA ordinal.

With ``CUDA_VISIBLE_DEVICES=3`` torch's ``cuda:0`` is physical GPU 3; NVML numbers physical GPUs. A fake
NVML module with four GPUs (GPU j reports j * 10 % utilisation) checks the mapping on any machine.
"""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch

from kit.health import hardware
from kit.health.hardware import GPUReader, physical_gpu_index

UUIDS = [f"GPU-{j:08x}-aaaa-bbbb-cccc-{j:012x}" for j in range(4)]


def _fake_nvml() -> ModuleType:
    nvml = ModuleType("pynvml")
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetCount = lambda: len(UUIDS)
    nvml.nvmlDeviceGetHandleByIndex = lambda j: ("handle", j)
    nvml.nvmlDeviceGetUUID = lambda h: UUIDS[h[1]].encode()  # older bindings return bytes
    nvml.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=10 * h[1])
    nvml.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=(h[1] + 1) * 1e9, total=80e9)
    return nvml


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    fake = _fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def _torch_sees(monkeypatch: pytest.MonkeyPatch, physical: list[int] | None) -> None:
    """Pretend torch sees these physical GPUs as cuda:0, cuda:1, ... (None: torch cannot tell UUIDs)."""
    if physical is None:
        monkeypatch.setattr(hardware, "_torch_uuid", lambda ordinal: None)
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda i: SimpleNamespace(uuid=UUIDS[physical[i]].removeprefix("GPU-")),
    )


def test_visible_device_0_is_physical_gpu_3_by_uuid(nvml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    _torch_sees(monkeypatch, [3])
    r = GPUReader([0]).read()
    assert r["gpu0_util"] == 30.0 and r["gpu0_mem_used_gb"] == pytest.approx(4.0)
    assert set(r) == {"gpu0_util", "gpu0_mem_used_gb", "gpu0_mem_percent"}


def test_uuid_wins_over_a_mask_that_disagrees(nvml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")  # e.g. a launcher renumbered devices after fork
    _torch_sees(monkeypatch, [2, 0])
    r = GPUReader([0, 1]).read()
    assert (r["gpu0_util"], r["gpu1_util"]) == (20.0, 0.0)


@pytest.mark.parametrize(
    ("mask", "expected"),
    [("3", 30.0), ("2,3", 20.0), (UUIDS[1][:12], 10.0), (None, 0.0)],
)
def test_without_torch_uuids_the_mask_decides(nvml, monkeypatch: pytest.MonkeyPatch, mask, expected) -> None:
    if mask is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mask)
    _torch_sees(monkeypatch, None)
    assert GPUReader([0]).read()["gpu0_util"] == expected


def test_an_unmatched_device_is_reported_not_misread(nvml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-ffffffff")
    _torch_sees(monkeypatch, None)
    gpu = GPUReader([0])
    assert not gpu.available and "matching CUDA device(s) [0]" in gpu.unavailable and gpu.read() == {}


def test_all_gpus_by_driver_index_when_no_indices(nvml) -> None:
    r = GPUReader().read()
    assert [r[f"gpu{j}_util"] for j in range(4)] == [0.0, 10.0, 20.0, 30.0]


def test_physical_index_function() -> None:
    assert physical_gpu_index(1, UUIDS, visible="3,0") == 0
    assert physical_gpu_index(0, UUIDS, visible="7") is None  # no such GPU
    assert physical_gpu_index(2, UUIDS, visible="0,1") is None  # ordinal beyond the mask
    assert physical_gpu_index(0, UUIDS, visible="GPU-0000000") is None  # ambiguous prefix


def test_nvidia_smi_fallback_maps_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # binding missing: import raises ImportError
    monkeypatch.setattr(hardware.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    rows = "\n".join(f"{j}, {u}, {10 * j}, {1024 * (j + 1)}, 81920" for j, u in enumerate(UUIDS))
    monkeypatch.setattr(hardware.subprocess, "run", lambda *a, **k: SimpleNamespace(stdout=rows + "\n"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    _torch_sees(monkeypatch, [3])
    gpu = GPUReader([0])
    assert gpu.source == "nvidia-smi" and gpu.read()["gpu0_util"] == 30.0
