"""Lightning hooks shared by the kit's LightningModules."""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_warn

from kit.checkpoint.migrations import mark_qkv_layout, upgrade_qkv_layout

__all__ = ["QKVLayoutHooks"]


class QKVLayoutHooks:
    """LightningModule mixin: mark saved checkpoints head-major, upgrade older ones on load (with a warning).

    Put it first in the bases (``class CausalLM(QKVLayoutHooks, pl.LightningModule)``); a subclass that
    overrides either hook calls ``super()``.
    """

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        mark_qkv_layout(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        notes = upgrade_qkv_layout(self, checkpoint)  # type: ignore[arg-type]
        if notes:
            rank_zero_warn(
                f"{type(self).__name__}: this checkpoint predates the head-major fused QKV layout; "
                f"converted on load: {'; '.join(notes[:4])}"
                + (f" and {len(notes) - 4} more" if len(notes) > 4 else "")
            )


