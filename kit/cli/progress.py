"""The progress bar ``kit fit`` adds by default: Lightning's RichProgressBar, labelled by step when training
is bounded by steps.

Lightning labels the bar ``Epoch {current}/{max_epochs - 1}``; a run bounded by ``max_steps`` has
``max_epochs = -1``, which printed ``Epoch 13/-2``. This bar shows ``Epoch 13 · step 650/1000`` instead,
and keeps Lightning's label whenever ``max_epochs`` is set.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar

__all__ = ["StepRichProgressBar", "train_description"]


def train_description(current_epoch: int, max_epochs: int | None, global_step: int, max_steps: int) -> str:
    """The training bar's label: ``Epoch 3/9`` when epochs bound the run, ``Epoch 13 · step 650/1000`` otherwise."""
    if max_epochs is not None and max_epochs >= 0:
        return f"Epoch {current_epoch}/{max_epochs - 1}"
    if max_steps is not None and max_steps > 0:
        return f"Epoch {current_epoch} · step {global_step}/{max_steps}"
    return f"Epoch {current_epoch}"


class StepRichProgressBar(RichProgressBar):
    """``RichProgressBar`` whose training label never shows a negative epoch count."""

    def _get_train_description(self, current_epoch: int) -> str:
        t = self.trainer
        text = train_description(current_epoch, t.max_epochs, t.global_step, t.max_steps)
        width = len(self.validation_description)
        return f"{text:{width}}" if width > len(text) else text
