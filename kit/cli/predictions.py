"""Where ``kit predict`` puts its output: one JSON line per example, decoded text beside token ids.

Lightning's ``trainer.predict`` returns the predictions and ``LightningCLI`` drops them; this writer keeps
them. It turns each batch's output into rows: a dict of per-example tensors gives one row per example, a
tensor gives ``{"prediction": ...}`` rows. When the datamodule has a ``tokenizer`` (``TextDataModule``), every
``*_ids`` field gets a decoded ``*_text`` field beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

__all__ = ["JSONLPredictionWriter", "prediction_rows"]


def _plain(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.item() if value.dim() == 0 else value.tolist()
    return value


def prediction_rows(output: Any) -> list[dict]:
    """One dict per example from a ``predict_step`` output (dict of tensors, tensor, list, or anything else)."""
    if isinstance(output, dict):
        sizes = {len(v) for v in output.values() if torch.is_tensor(v) and v.dim() > 0}
        if len(sizes) == 1:
            n = sizes.pop()
            return [
                {
                    k: _plain(v[i]) if torch.is_tensor(v) and v.dim() > 0 else _plain(v)
                    for k, v in output.items()
                }
                for i in range(n)
            ]
        return [{k: _plain(v) for k, v in output.items()}]
    if torch.is_tensor(output) and output.dim() > 0:
        return [{"prediction": _plain(row)} for row in output]
    if isinstance(output, (list, tuple)):
        return [{"prediction": _plain(x)} for x in output]
    return [{"prediction": _plain(output)}]


class JSONLPredictionWriter(BasePredictionWriter):
    """Append every predict batch's rows to ``path`` (JSON Lines) as they come; ``rows`` counts them."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path)
        self.rows = 0
        self._file = None

    def on_predict_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w")

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):
        if self._file is None:
            return
        tokenizer = getattr(trainer.datamodule, "tokenizer", None) if trainer.datamodule is not None else None
        for row in prediction_rows(prediction):
            if tokenizer is not None:
                for key in [k for k in row if k.endswith("_ids") and isinstance(row[k], list)]:
                    row[key[:-4] + "_text"] = tokenizer.decode(row[key])
            self._file.write(json.dumps(row) + "\n")
            self.rows += 1

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
