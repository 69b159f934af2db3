"""Helpers shared by the benchmarks: naming the device and waiting for queued GPU work."""

from __future__ import annotations

import platform

import torch


def device_name() -> str:
    """The CUDA device's name, or the CPU with its torch thread count."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def cuda_sync() -> None:
    """Wait for queued CUDA kernels so a timer covers them; nothing on CPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
