"""Layout migrations: old checkpoints converted on load, so they compute what they computed when saved.

One migration so far, the fused QKV layout: the kit's attention stores its ``qkv`` rows head-major
(Megatron-LM's order, which tensor parallelism needs); checkpoints written before hold them ``[q; k; v]``
stacked. :func:`upgrade_qkv_layout` reorders such a checkpoint, optimizer moments included. Torch only.
"""

from __future__ import annotations

import torch
from torch import nn

from kit.nn.layers.attention import DenseAttention, qkv_head_major

__all__ = ["QKV_LAYOUT_KEY", "mark_qkv_layout", "upgrade_qkv_layout"]


# in a Lightning checkpoint: "head_major" once the modules write the head-major fused QKV layout
QKV_LAYOUT_KEY = "kit_qkv_layout"


def mark_qkv_layout(checkpoint: dict) -> None:
    """Record in a Lightning checkpoint that its fused QKV rows are head-major (the modules' ``on_save_checkpoint``)."""
    checkpoint[QKV_LAYOUT_KEY] = "head_major"


def _optimizers(configured: object) -> list[torch.optim.Optimizer]:
    """The optimizers in whatever ``configure_optimizers`` returned (an optimizer, a dict, or lists of them)."""
    if isinstance(configured, torch.optim.Optimizer):
        return [configured]
    if isinstance(configured, dict):
        return _optimizers(configured.get("optimizer"))
    if isinstance(configured, (list, tuple)):
        return [o for item in configured for o in _optimizers(item)]
    return []


def upgrade_qkv_layout(module: nn.Module, checkpoint: dict, optimizer_states: bool = True) -> list[str]:
    """Reorder a Lightning checkpoint written before the head-major QKV layout, in place; returns what changed.

    Kit checkpoints written before the head-major layout hold each :class:`DenseAttention`'s fused ``qkv`` rows stacked
    ``[q; k; v]``; loaded as they are, they would compute something else without any error. A checkpoint that
    a Trainer wrote (it has ``pytorch-lightning_version``) without the :data:`QKV_LAYOUT_KEY` mark is such a
    checkpoint (the kit's modules mark every save, through ``kit.models._hooks.QKVLayoutHooks``): its ``qkv`` weights and biases are
    reordered with :func:`qkv_head_major`, and so are the optimizer's per-element states of those parameters
    (Adam's moments), matched by position through a throw-away ``module.configure_optimizers()``, so that a
    resumed run continues as the old one would have. A plain ``state_dict`` or a hand-made dict carries no
    such evidence and is left alone: convert it with :func:`qkv_head_major`.

    Args:
        module: the LightningModule (or backbone) the checkpoint is about to be loaded into.
        checkpoint: the loaded checkpoint dict.
        optimizer_states: also reorder the optimizer states (off where only weights are read, e.g. ``init_from``).
    """
    written_by_trainer = "pytorch-lightning_version" in checkpoint and isinstance(
        checkpoint.get("state_dict"), dict
    )
    if checkpoint.get(QKV_LAYOUT_KEY) == "head_major" or not written_by_trainer:
        return []
    heads = {name: m.n_head for name, m in module.named_modules() if isinstance(m, DenseAttention)}
    if not heads:
        return []
    only = next(iter(set(heads.values()))) if len(set(heads.values())) == 1 else None
    state, changed = checkpoint["state_dict"], {}
    for key in list(state):
        clean = key.replace("_orig_mod.", "")
        for suffix in (".qkv.weight", ".qkv.bias"):
            owner = clean[: -len(suffix)] if clean.endswith(suffix) else None
            n_head = heads.get(owner, only if owner is not None and owner.endswith("attn") else None)
            if n_head is not None:
                state[key] = qkv_head_major(state[key], n_head)
                changed[clean] = n_head
    checkpoint[QKV_LAYOUT_KEY] = "head_major"
    notes = [f"{k}: rows reordered [q; k; v] -> head-major" for k in sorted(changed)]
    if changed and optimizer_states and checkpoint.get("optimizer_states"):
        notes += _upgrade_optimizer_states(module, checkpoint["optimizer_states"], changed)
    return notes


def _upgrade_optimizer_states(module: nn.Module, states: list[dict], changed: dict[str, int]) -> list[str]:
    names = {id(p): n.replace("_orig_mod.", "") for n, p in module.named_parameters()}
    try:
        optimizers = _optimizers(module.configure_optimizers())  # type: ignore[operator]
    except Exception as err:  # a module whose optimizers need a running trainer
        return [
            f"optimizer moments of the QKV rows NOT reordered ({type(err).__name__}: {err}); resume with fresh "
            "optimizer state or convert them by hand"
        ]
    notes = []
    for opt, saved in zip(optimizers, states):
        order = [names.get(id(p)) for group in opt.param_groups for p in group["params"]]
        for idx, name in enumerate(order):
            per_param = saved.get("state", {}).get(idx)
            if name not in changed or not per_param:
                continue
            for k, v in per_param.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0 and v.size(0) % (3 * changed[name]) == 0:
                    per_param[k] = qkv_head_major(v, changed[name])
            notes.append(f"{name}: optimizer state reordered ({', '.join(sorted(per_param))})")
    return notes
