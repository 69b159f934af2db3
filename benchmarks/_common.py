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


def timing_config(name: str, block_size: int, fallback_vocab: int = 512):
    """``GPTConfig.from_name(name)`` for timing runs: dropout off, ``block_size`` set, a vocabulary if it has none."""
    from kit.models.gpt import GPTConfig

    overrides = {"block_size": block_size, "dropout": 0.0, "attn_dropout": 0.0, "embd_dropout": 0.0}
    if GPTConfig.from_name(name).vocab_size is None:
        overrides["vocab_size"] = fallback_vocab
    return GPTConfig.from_name(name, **overrides)
