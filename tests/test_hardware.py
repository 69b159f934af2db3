"""HardwareMonitor: readers that degrade on CPU, MFU/data-wait math, and the callback's warnings."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import TinyRegressor, make_trainer
from hypothesis import given
from hypothesis import strategies as st

from kit.callbacks.hardware import HardwareMonitor
from kit.health.hardware import DataWaitTimer, GPUReader, HostReader, guess_peak_flops, mfu


def test_mfu_and_peak_lookup() -> None:
    assert mfu(1e12, 0.01, 312e12) == pytest.approx(0.3205, rel=1e-3)
    assert mfu(2e12, 0.01, 312e12, n_devices=2) == pytest.approx(0.3205, rel=1e-3)
    assert guess_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert guess_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert guess_peak_flops("NVIDIA H200") == 989e12
    assert guess_peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert guess_peak_flops("Some CPU") is None
    with pytest.raises(ValueError, match="step_time_s=0"):
        mfu(1.0, 0.0, 1.0)


def test_data_wait_timer_with_fake_clock() -> None:
    ticks = iter([0.0, 1.0, 1.5, 2.5, 2.6, 3.6]).__next__
    t = DataWaitTimer(clock=ticks)
    t.batch_start()  # 0.0: first batch arrives (no previous end: no wait counted)
    t.batch_end()  # 1.0
    t.batch_start()  # 1.5: waited 0.5
    t.batch_end()  # 2.5
    t.pause()  # validation happened: the gap is not data wait
    t.batch_start()  # 2.6
    t.batch_end()  # 3.6
    s = t.summary()
    assert s["data_wait_share"] == pytest.approx(0.5 / 3.5)
    assert s["compute_time_s"] == pytest.approx(1.0) and s["step_time_s"] == pytest.approx(3.5 / 3)


def test_readers_degrade_without_gpu() -> None:
    gpu = GPUReader()
    if not torch.cuda.is_available():
        assert not gpu.available and gpu.unavailable and gpu.read() == {}
    host = HostReader()
    assert host.available
    r = host.read()
    assert set(r) == {"cpu_percent", "ram_percent", "ram_used_gb", "process_rss_gb"}
    assert 0 <= r["ram_percent"] <= 100 and r["process_rss_gb"] > 0


class Plain(TinyRegressor):
    """The shared MLP regression (4 -> 8 -> 1); ``step_sleep`` makes the step's compute time predictable."""

    def __init__(self, step_sleep: float = 0.0, flops: float | None = None) -> None:
        super().__init__(lr=0.01, in_dim=4, hidden=8)
        self.step_sleep = step_sleep
        if flops is not None:
            self.flops_per_batch = flops

    def training_step(self, batch, batch_idx):
        time.sleep(self.step_sleep)
        return super().training_step(batch, batch_idx)


class SlowData(torch.utils.data.Dataset):
    def __init__(self, n: int, delay: float) -> None:
        self.x, self.delay = torch.randn(n, 4), delay

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        if i % 4 == 0:  # once per batch of 4
            time.sleep(self.delay)
        return self.x[i], self.x[i, :1]


def fit(cb: HardwareMonitor, module: Plain, delay: float, n: int = 4 * 30) -> None:
    trainer = make_trainer(None, [cb], max_steps=-1, max_epochs=1)
    trainer.fit(module, torch.utils.data.DataLoader(SlowData(n, delay), batch_size=4))


def test_warns_on_data_wait_and_logs_mfu() -> None:
    cb = HardwareMonitor(log_every_n_steps=10, peak_flops=1e12)
    with pytest.warns(UserWarning, match="waiting for data"):
        fit(cb, Plain(step_sleep=0.005, flops=1e9), delay=0.03)
    m = cb.last_metrics
    assert m["hw/data_wait_share"] > 0.3  # ~30 ms of fetch per ~5 ms step (loose: shared CI machines)
    assert m["hw/mfu"] == pytest.approx(1e9 / m["hw/step_time_s"] / 1e12, rel=1e-6)
    assert "hw/cpu_percent" in m and "hw/ram_percent" in m
    if not torch.cuda.is_available():
        assert any("GPU counters unavailable" in u for u in cb.unavailable)
        assert not any(k.endswith("_util") for k in m)


def test_fast_loader_no_data_warning_and_says_what_it_cannot_read() -> None:
    cb = HardwareMonitor(log_every_n_steps=10)
    fit(
        cb, Plain(step_sleep=0.15), delay=0.0
    )  # a 150 ms step: collating a batch stays under 10% on a busy machine
    assert cb.last_metrics["hw/data_wait_share"] < 0.1
    assert not any("waiting for data" in w for w in cb.warnings)
    assert any("peak FLOP/s unknown" in u for u in cb.unavailable)
    assert any("flops_per_batch" in u for u in cb.unavailable)
    assert "hw/mfu" not in cb.last_metrics


def test_gpu_util_warning_logic() -> None:
    cb = HardwareMonitor(gpu_util_threshold=85)
    cb._check({"hw/gpu0_util": 40.0, "hw/data_wait_share": 0.0})
    assert cb.warnings and "gpu0_util = 40%" in cb.warnings[0]
    cb2 = HardwareMonitor()
    cb2._check({"hw/gpu0_util": 97.0, "hw/data_wait_share": 0.05})
    assert cb2.warnings == []


def test_validation() -> None:
    with pytest.raises(ValueError, match="gpu_util_threshold=150"):
        HardwareMonitor(gpu_util_threshold=150)
    with pytest.raises(ValueError, match="data_wait_threshold=2"):
        HardwareMonitor(data_wait_threshold=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA + NVML")
def test_nvml_reads_on_gpu() -> None:
    gpu = GPUReader([0])
    r = gpu.read()
    assert gpu.available and 0 <= r["gpu0_util"] <= 100 and r["gpu0_mem_used_gb"] > 0


@given(st.lists(st.tuples(st.floats(0, 5), st.floats(0, 5)), min_size=1, max_size=30))
def test_data_wait_share_invariants(intervals: list[tuple[float, float]]) -> None:
    """For any sequence of (wait, compute) durations the timer's totals are exact and the share in [0, 1]."""
    clock, now = [], 0.0
    for wait, compute in intervals:
        now += wait
        clock.append(now)  # batch_start
        now += compute
        clock.append(now)  # batch_end
    t = DataWaitTimer(clock=iter(clock).__next__)
    for _ in intervals:
        t.batch_start()
        t.batch_end()
    waits = sum(w for w, _ in intervals[1:])  # the first batch has no previous end
    computes = sum(c for _, c in intervals)
    assert t.wait_s == pytest.approx(waits, abs=1e-9) and t.compute_s == pytest.approx(computes, abs=1e-9)
    assert 0.0 <= t.summary()["data_wait_share"] <= 1.0


def test_gpu_reader_falls_back_to_nvidia_smi(tmp_path, monkeypatch) -> None:
    """Without the nvidia-ml-py binding, the reader asks the nvidia-smi tool (faked here)."""
    import os
    import sys

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '0, GPU-aa, 97, 40000, 81559'\necho '1, GPU-bb, 12, 100, 81559'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # cuda:1 is physical GPU 1
    monkeypatch.setattr("kit.health.hardware._torch_uuid", lambda ordinal: None)
    gpu = GPUReader([1])
    assert gpu.available and gpu.source == "nvidia-smi"
    r = gpu.read()
    assert r == {
        "gpu1_util": 12.0,
        "gpu1_mem_used_gb": pytest.approx(100 * 2**20 / 1e9),
        "gpu1_mem_percent": pytest.approx(100 * 100 / 81559),
    }


def test_data_wait_warns_only_when_costly_and_sustained() -> None:
    cb = HardwareMonitor(patience=2)
    bookkeeping = {"hw/data_wait_share": 0.5, "hw/data_wait_s": 0.001}  # 1 ms of loop overhead on a 1 ms step
    for _ in range(5):
        cb._check(bookkeeping)
    assert cb.warnings == []
    costly = {"hw/data_wait_share": 0.5, "hw/data_wait_s": 0.05}
    cb._check(costly)
    assert cb.warnings == []  # one window is not a pattern
    cb._check(costly)
    cb._check(costly)
    assert len(cb.warnings) == 1 and "50.0% of step time (50.0 ms per step)" in cb.warnings[0]
    cb._check(bookkeeping)
    cb._check(costly)
    cb._check(costly)
    assert len(cb.warnings) == 2  # a new episode warns again
    with pytest.raises(ValueError, match="patience=0"):
        HardwareMonitor(patience=0)
