"""Optimizer parameter groups and learning-rate schedules, free of any Trainer."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["SCHEDULES", "lr_lambda", "param_groups"]

SCHEDULES = ("cosine", "linear", "constant")

# Norm and embedding weights are not decayed: decay pulls them toward zero with no regularising benefit.
_NO_DECAY_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.Embedding, nn.GroupNorm, nn.BatchNorm1d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed group and a no-decay group (biases, norms, embeddings).

    Tied parameters appear once. Works on any ``nn.Module``.

    Args:
        model: the model.
        weight_decay: decay for the decayed group.

    Returns:
        Two groups for ``torch.optim.AdamW``; names are kept under ``"names"`` for inspection.

    Example:
        >>> groups = param_groups(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)), 0.1)
        >>> [len(g["params"]) for g in groups]
        [1, 3]
    """
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            if name.endswith("bias") or isinstance(module, _NO_DECAY_TYPES) or param.ndim < 2:
                no_decay.append(param)
                no_decay_names.append(full)
            else:
                decay.append(param)
                decay_names.append(full)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]


def lr_lambda(
    warmup_steps: int, total_steps: int, schedule: str = "cosine", min_lr_ratio: float = 0.1
) -> Callable[[int], float]:
    """Multiplier for ``LambdaLR``: linear warmup from 0 to 1, then cosine/linear decay to ``min_lr_ratio``.

    Args:
        warmup_steps: steps of linear warmup (step 0 gives 1/(warmup_steps+1), never exactly 0).
        total_steps: the step at which decay reaches ``min_lr_ratio``; later steps stay there.
        schedule: "cosine", "linear" or "constant" (after warmup).
        min_lr_ratio: floor as a fraction of the peak LR.

    Raises:
        ValueError: unknown schedule or inconsistent step counts.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not one of {SCHEDULES}")
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"warmup_steps={warmup_steps} must be >= 0 and total_steps={total_steps} >= 1")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio={min_lr_ratio} must be in [0, 1]")

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            shape = 1.0 - progress
        return min_lr_ratio + (1.0 - min_lr_ratio) * shape

    return fn


def fused_available(device: torch.device | str) -> bool:
    """Fused AdamW exists for CUDA tensors; on CPU it is slower or missing, so we only ask for it on CUDA."""
    return torch.device(device).type == "cuda"
