"""What differs between a checkpoint and the model it is loaded into, and upgrades of older checkpoints.

Example:
    >>> import torch
    >>> describe_mismatch({"w": torch.zeros(2, 3)}, {"w": torch.zeros(2, 4), "b": torch.zeros(2)})
    "checkpoint does not fit the model: 1 shape mismatch(es): w checkpoint (2, 4) vs model (2, 3); 1 unexpected key(s) in the checkpoint: ['b']"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["FORMAT_VERSION", "describe_mismatch", "upgrade_checkpoint"]

# Version of what the kit's checkpoint callback adds to a Lightning checkpoint (under "kit").
#   1: "kit" = {"format", "rng" (per rank), "kit_version"}
FORMAT_VERSION = 1


def _shape(value: Any) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else None


def describe_mismatch(model: Mapping[str, Any], checkpoint: Mapping[str, Any], limit: int = 12) -> str | None:
    """A one-paragraph account of missing keys, unexpected keys and shape mismatches, or ``None`` if they fit."""
    missing = [k for k in model if k not in checkpoint]
    unexpected = [k for k in checkpoint if k not in model]
    shapes = [
        f"{k} checkpoint {_shape(checkpoint[k])} vs model {_shape(model[k])}"
        for k in model
        if k in checkpoint and _shape(model[k]) != _shape(checkpoint[k])
    ]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): " + "; ".join(shapes[:limit]))
    if missing:
        parts.append(f"{len(missing)} key(s) missing from the checkpoint: {missing[:limit]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) in the checkpoint: {unexpected[:limit]}")
    return "checkpoint does not fit the model: " + "; ".join(parts)


def upgrade_checkpoint(checkpoint: dict[str, Any]) -> list[str]:
    """Bring a checkpoint written by an older kit up to ``FORMAT_VERSION`` in place; returns what changed.

    A checkpoint without a ``"kit"`` section (written by a plain ``ModelCheckpoint`` or a kit before the
    checkpoint callback) loads: model, optimizer, schedulers, loops and callbacks restore as Lightning does,
    but it holds no RNG state, so the resumed run cannot reproduce the random draws of an uninterrupted one.

    Raises:
        ValueError: the checkpoint comes from a newer kit format than this one reads.
    """
    kit = checkpoint.get("kit")
    if kit is None:
        checkpoint["kit"] = {"format": FORMAT_VERSION, "rng": None, "kit_version": None}
        return [
            "no kit section (pre-checkpoint-callback or plain ModelCheckpoint): RNG states are not restored"
        ]
    fmt = int(kit.get("format", 0))
    if fmt > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint kit format {fmt} (kit {kit.get('kit_version')}) is newer than this kit's {FORMAT_VERSION}; "
            "upgrade lightning-kit to load it"
        )
    return []
