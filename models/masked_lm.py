"""``MaskedLM``: BERT-style pretraining of the shared GPT backbone with bidirectional attention.

The objective is masked-token prediction (inputs corrupted by ``kit.data.masking.bert_mask``; the loss is taken
at the target positions only, through the backbone's tied vocabulary head) plus, with ``nsp=True``, BERT's
next-sentence prediction from the ``[CLS]`` position through a tanh pooler. The backbone's state-dict keys are
``model.*``, the same as ``CausalLM``'s, so ``SequenceClassifier(init_from=...)`` loads either.

Where the kit differs from BERT: no segment (token-type) embeddings, the ``[SEP]`` token alone marks the pair
boundary; and no attention mask, pads are attended to (``MLMDataModule`` rows are ~98% text).

Example:
    >>> from kit.nn import GPTConfig
    >>> mlm = MaskedLM(GPTConfig.from_name("debug", causal=False), nsp=True)
    >>> ids = torch.randint(0, 64, (2, 16)); labels = torch.full((2, 16), -100); labels[:, 3] = 7
    >>> mlm.training_step({"input_ids": ids, "labels": labels, "next_sentence_label": torch.tensor([0, 1])}, 0).ndim
    0
"""

from __future__ import annotations

from dataclasses import asdict, replace

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from kit._compat import attached_trainer
from kit.data.masking import IGNORE_INDEX
from kit.models._hooks import QKVLayoutHooks
from kit.models._optim import optimizers_from_hparams
from kit.nn import GPT, GPTConfig
from kit.nn.transforms import apply_transforms

__all__ = ["MaskedLM"]


class MaskedLM(QKVLayoutHooks, pl.LightningModule):
    """Masked-LM (+ optional next-sentence) pretraining on dict batches ``{"input_ids", "labels"[,
    "next_sentence_label"]}``.

    Args:
        config: the backbone; must have ``causal=False``. Default ``GPTConfig(name="tiny", causal=False)``.
        nsp: add the next-sentence head and loss (the datamodule must be built with ``nsp=True``).
        nsp_weight: weight of the NSP loss in the total.
        lr: peak learning rate.
        weight_decay: AdamW decay on matrices.
        betas: AdamW betas.
        warmup_steps: linear warmup steps.
        max_steps: step at which decay ends; None takes the Trainer's estimate.
        schedule: "cosine", "linear" or "constant" after warmup.
        optimizer: "adamw" or "adamw8bit" (bitsandbytes).
    """

    def __init__(
        self,
        config: GPTConfig | dict | None = None,
        nsp: bool = False,
        nsp_weight: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 100,
        max_steps: int | None = None,
        schedule: str = "linear",
        optimizer: str = "adamw",
    ) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = GPTConfig.from_dict(config)
        self.config = config if config is not None else GPTConfig(name="tiny", causal=False)
        if self.config.causal:
            raise ValueError(
                "MaskedLM needs bidirectional attention but config.causal=True; set model.config.causal=false"
            )
        if lr <= 0 or nsp_weight < 0:
            raise ValueError(f"lr={lr} must be > 0 and nsp_weight={nsp_weight} >= 0")
        self.save_hyperparameters(ignore=["config"])
        self.hparams["config"] = asdict(self.config)
        self.model: GPT | None = None
        self.pooler: nn.Module | None = None
        self.nsp_head: nn.Module | None = None
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.val_mlm_acc = MeanMetric(nan_strategy="disable")
        self.val_nsp_acc = MulticlassAccuracy(num_classes=2)
        if self.config.vocab_size is not None:
            self.configure_model()

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.config.vocab_size is None:
            vocab = getattr(
                getattr(attached_trainer(self), "datamodule", None), "vocab_size", None
            )
            if vocab is None:
                raise ValueError("config.vocab_size is None and the datamodule has no vocab_size; set it")
            self.config = replace(self.config, vocab_size=int(vocab))
            self.hparams["config"] = asdict(self.config)
        self.model = apply_transforms(
            GPT(self.config), activation_checkpointing=self.config.activation_checkpointing
        )
        if self.hparams.nsp:
            d = self.config.n_embd
            self.pooler = nn.Sequential(nn.Linear(d, d), nn.Tanh())  # BERT's pooler over the [CLS] position
            self.nsp_head = nn.Linear(d, 2)

    def _losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hidden = self.model.hidden_states(batch["input_ids"])  # (B, T, C)
        labels = batch["labels"]
        target = labels != IGNORE_INDEX
        logits = self.model.lm_head(
            hidden[target]
        )  # (n_targets, V): the vocabulary head only where it counts
        out = {"mlm": F.cross_entropy(logits.float(), labels[target]) if target.any() else hidden.sum() * 0.0}
        out["mlm_acc"] = (logits.argmax(-1) == labels[target]).float().mean() if target.any() else None
        if self.nsp_head is not None:
            nsp_logits = self.nsp_head(self.pooler(hidden[:, 0]))  # (B, 2)
            out["nsp"] = F.cross_entropy(nsp_logits.float(), batch["next_sentence_label"])
            out["nsp_logits"] = nsp_logits
        out["loss"] = out["mlm"] + self.hparams.nsp_weight * out["nsp"] if "nsp" in out else out["mlm"]
        return out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self._losses(batch)
        self.log("train/loss", out["loss"].detach(), prog_bar=True)
        self.log("train/mlm_loss", out["mlm"].detach())
        if "nsp" in out:
            self.log("train/nsp_loss", out["nsp"].detach())
        return out["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self._losses(batch)
        n = int((batch["labels"] != IGNORE_INDEX).sum())
        self.val_loss.update(out["mlm"], weight=max(n, 1))
        if out["mlm_acc"] is not None:
            self.val_mlm_acc.update(out["mlm_acc"], weight=n)
        if "nsp" in out:
            self.val_nsp_acc.update(out["nsp_logits"], batch["next_sentence_label"])

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, sync_dist=True)
        self.log("val/mlm_acc", self.val_mlm_acc.compute(), sync_dist=True)
        self.val_loss.reset()
        self.val_mlm_acc.reset()
        if self.nsp_head is not None:
            self.log("val/nsp_acc", self.val_nsp_acc.compute())
            self.val_nsp_acc.reset()

    def configure_optimizers(self) -> dict:
        return optimizers_from_hparams(self)
