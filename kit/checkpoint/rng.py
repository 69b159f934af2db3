"""Capture and restore every random generator a training step draws from: python, numpy, torch, CUDA.

Example:
    >>> import torch
    >>> state = capture_rng(); a = torch.rand(2)
    >>> restore_rng(state); bool((torch.rand(2) == a).all())
    True
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng"]


def _numpy_state() -> tuple:
    # plain ints and lists, so a checkpoint loads with torch.load(weights_only=True)
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return (str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(gauss))


def capture_rng() -> dict[str, Any]:
    """``{"python", "numpy", "torch", "cuda"}`` generator states (``cuda`` only when CUDA is initialised).

    Every value is a tensor or plain Python data, so checkpoints holding it load with ``weights_only=True``.
    """
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the states ``capture_rng`` returned (missing keys are left alone)."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # a different GPU count: each local device keeps its own stream where one was saved
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
