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

__all__ = ["StepRng", "capture_rng", "restore_rng"]


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


class StepRng:
    """Exact RNG resume: the generator states at the end of the last training step, put back before the next.

    Call :meth:`end_of_step` after each training step and :meth:`start_of_step` before the next one: the next
    step then starts from exactly the saved states, in the uninterrupted run too, so validation or a new
    DataLoader iterator between steps cannot shift the draws. :meth:`for_checkpoint` gathers every rank's
    states for a checkpoint; :meth:`from_checkpoint` picks this rank's to restore.

    Example:
        >>> import torch
        >>> rng = StepRng(); rng.end_of_step(); a = torch.rand(1)
        >>> rng.start_of_step(); bool(torch.rand(1) == a)
        True
    """

    def __init__(self) -> None:
        self.step_state: dict[str, Any] | None = None
        self.pending: dict[str, Any] | None = None

    def end_of_step(self) -> None:
        """Capture the states now; the next :meth:`start_of_step` restores them."""
        self.step_state = capture_rng()
        self.pending = self.step_state

    def start_of_step(self) -> None:
        """Restore the states captured at the end of the last step (or loaded from a checkpoint), once."""
        if self.pending is not None:
            restore_rng(self.pending)
            self.pending = None

    def for_checkpoint(self, world_size: int) -> list[dict[str, Any]]:
        """Every rank's end-of-step states, in rank order (a collective when ``world_size > 1``)."""
        import torch.distributed as dist

        state = self.step_state if self.step_state is not None else capture_rng()
        if world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * world_size
            dist.all_gather_object(gathered, state)
            return gathered
        return [state]

    def from_checkpoint(self, saved: list[dict[str, Any]], rank: int, world_size: int) -> str | None:
        """Restore ``saved[rank]`` before the next step; returns a warning when the rank counts differ."""
        self.pending = saved[rank % len(saved)]
        if len(saved) == world_size:
            return None
        return (
            f"checkpoint holds RNG states of {len(saved)} rank(s), this run has {world_size}; random draws will "
            "differ from the original run"
        )
