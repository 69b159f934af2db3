"""The optimizer + schedule that the transfer modules share: AdamW (torch, or 8-bit from bitsandbytes) over the
trainable parameters only, no decay on biases/norms/embeddings, linear warmup then decay per step."""

from __future__ import annotations

import torch
from torch import nn

from kit._compat import attached_trainer
from kit.optim import SCHEDULES, fused_available, lr_lambda, param_groups

__all__ = ["OPTIMIZERS", "build_optimizer", "optimizers_from_hparams"]

OPTIMIZERS = ("adamw", "adamw8bit")


def build_optimizer(
    model: nn.Module,
    optimizer: str,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup_steps: int,
    total_steps: int,
    schedule: str = "linear",
    device: torch.device | None = None,
) -> dict:
    """Lightning's ``configure_optimizers`` answer for ``model``'s trainable parameters.

    ``"adamw8bit"`` is ``bitsandbytes.optim.AdamW8bit`` (blockwise 8-bit moments; runs on CPU with bitsandbytes
    >= 0.45, on CUDA everywhere).

    Raises:
        ValueError: an unknown optimizer or schedule, or no trainable parameter.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is not one of {OPTIMIZERS}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not one of {SCHEDULES}")
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, weight_decay)]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameter: the PEFT method froze everything")
    if optimizer == "adamw8bit":
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(groups, lr=lr, betas=tuple(betas))
    else:
        fused = fused_available(device) if device is not None else False
        opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup_steps, max(1, total_steps), schedule))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def optimizers_from_hparams(module) -> dict:
    """``build_optimizer`` from a LightningModule's saved hyperparameters (``optimizer``, ``lr``, ``weight_decay``,
    ``betas``, ``warmup_steps``, ``max_steps``, ``schedule``); ``max_steps=None`` takes the Trainer's estimate."""
    hp = module.hparams
    total = hp.max_steps or (int(module.trainer.estimated_stepping_batches) if attached_trainer(module) else 10_000)
    return build_optimizer(
        module, hp.optimizer, hp.lr, hp.weight_decay, hp.betas, hp.warmup_steps, total, hp.schedule, module.device
    )
