"""``SequenceClassifier``: stage two of transfer learning, the shared backbone plus a classification head,
started from a pretraining checkpoint (``init_from``) of either objective and fine-tuned fully or with a
parameter-efficient method (``peft``, applied by ``kit.nn.transforms``).

Example:
    >>> from kit.nn import GPTConfig
    >>> clf = SequenceClassifier(GPTConfig.from_name("debug", causal=False), num_classes=3,
    ...                          peft={"method": "adapters", "adapter_size": 4})
    >>> clf(torch.randint(0, 64, (2, 16))).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from kit._compat import attached_trainer
from kit.checkpoint.init_from import resolve_init_from
from kit.checkpoint.migrations import upgrade_qkv_layout
from kit.checkpoint.safe_load import load_checkpoint
from kit.models._classify import ClassifierEvalSteps
from kit.models._hooks import QKVLayoutHooks
from kit.models._optim import optimizers_from_hparams
from kit.nn import GPT, GPTConfig
from kit.nn.peft import (
    PeftConfig,
    adapter_state_dict,
    cost_report,
    load_adapter_state_dict,
    measured_optimizer_state_bytes,
    prompt_length,
)
from kit.nn.transforms import apply_transforms

__all__ = [
    "POOLINGS",
    "SequenceClassifier",
    "check_vocabulary",
    "checkpoint_vocab_size",
    "load_backbone",
    "resolve_init_from",
]

POOLINGS = ("mean", "cls", "last")


def load_backbone(model: nn.Module, checkpoint: dict) -> tuple[list[str], list[str]]:
    """Copy a pretraining checkpoint's backbone (``model.*`` keys of a Lightning checkpoint, or a plain state
    dict of ``GPT``) into ``model``.

    Returns:
        ``(missing, unexpected)``: backbone keys the checkpoint lacks (left at their fresh initialisation), and
        checkpoint keys the backbone has no place for (pretraining heads such as ``nsp_head.*``).

    Raises:
        ValueError: a parameter whose shape differs, naming it and both shapes.
    """
    notes = upgrade_qkv_layout(model, checkpoint, optimizer_states=False)
    if notes:
        rank_zero_warn(
            "init_from: checkpoint predates the head-major fused QKV layout; converted "
            f"{len(notes)} tensor(s): {'; '.join(notes[:4])}" + (" ..." if len(notes) > 4 else "")
        )
    state = checkpoint.get("state_dict", checkpoint)
    source = {}
    unexpected = []
    for key, value in state.items():
        key = key.replace("_orig_mod.", "")  # a compiled model's keys
        if key.startswith("model."):
            source[key[len("model.") :]] = value
        else:
            unexpected.append(key)
    target = model.state_dict()
    for key, value in source.items():
        if key in target and target[key].shape != value.shape:
            raise ValueError(
                f"init_from: parameter {key!r} has shape {tuple(value.shape)} in the checkpoint but "
                f"{tuple(target[key].shape)} in this model; build the classifier with the pretraining config "
                "(leave model.config unset to take it from the checkpoint)"
            )
    unexpected += sorted(f"model.{k}" for k in source if k not in target)
    missing = sorted(k for k in target if k not in source)
    model.load_state_dict({k: v for k, v in source.items() if k in target}, strict=False)
    return missing, unexpected


def checkpoint_vocab_size(checkpoint: dict) -> int | None:
    """The vocabulary of a pretraining checkpoint: rows of its token embedding (or its config's ``vocab_size``)."""
    state = checkpoint.get("state_dict", checkpoint)
    for key in ("model.wte.weight", "model._orig_mod.wte.weight", "wte.weight"):
        if key in state and hasattr(state[key], "shape"):
            return int(state[key].shape[0])
    config = (checkpoint.get("hyper_parameters") or {}).get("config") or {}
    vocab = config.get("vocab_size") if isinstance(config, dict) else None
    return int(vocab) if vocab is not None else None


def check_vocabulary(checkpoint: dict, model_vocab: int | None, data_vocab: int | None) -> None:
    """Before ``init_from`` loads a backbone: its vocabulary must match the model's and the data's tokenizer.

    Raises:
        ValueError: the sizes differ, naming both and the fix (token ids past the embedding would otherwise end in
            an IndexError deep inside the first forward).

    Example:
        >>> check_vocabulary({"state_dict": {"model.wte.weight": torch.zeros(64, 8)}}, 64, 512)  # doctest: +SKIP
        ValueError: init_from: the checkpoint's vocabulary has 64 tokens but the data's tokenizer has 512 ...
    """
    vocab = checkpoint_vocab_size(checkpoint)
    if vocab is None:
        return
    if data_vocab is not None and int(data_vocab) != vocab:
        raise ValueError(
            f"init_from: the checkpoint's vocabulary has {vocab:,} tokens but the data's tokenizer has "
            f"{int(data_vocab):,}; fine-tune with the tokenizer the backbone was pretrained with (the same "
            "data.vocab_size and tokenizer_dir as the pretraining run)"
        )
    if model_vocab is not None and int(model_vocab) != vocab:
        raise ValueError(
            f"init_from: the checkpoint's vocabulary has {vocab:,} tokens but model.config.vocab_size is "
            f"{int(model_vocab):,}; leave model.config unset to take the pretraining config from the checkpoint"
        )


class SequenceClassifier(ClassifierEvalSteps, QKVLayoutHooks, pl.LightningModule):
    """Pooled backbone states -> dropout -> linear head; cross-entropy on ``(input_ids (B, T), label (B,))``.

    Logs ``val/acc``, ``val/f1`` (macro) and ``val/loss`` (and ``test/*``) through torchmetrics, and at fit start
    the cost of the chosen method: ``cost/trainable_params``, ``cost/trainable_pct``,
    ``cost/optimizer_state_bytes``, ``cost/checkpoint_bytes`` (trainable tensors: what each task stores),
    ``cost/full_checkpoint_bytes``; after the first step ``cost/optimizer_state_bytes_measured``.

    Args:
        config: the backbone. None: the ``init_from`` checkpoint's config, else ``tiny`` bidirectional.
        num_classes: labels; None takes the datamodule's ``num_classes``.
        init_from: a ``CausalLM`` or ``MaskedLM`` checkpoint whose backbone starts the model (None: random): a
            ``.ckpt`` file, a run folder, or a pretraining recipe's name (``bert-tiny-pretrain``), the last two
            giving the newest complete checkpoint under them (:func:`resolve_init_from`).
        peft: a ``kit.nn.peft.PeftConfig`` (or its dict); None is a full fine-tune.
        pooling: "mean" over non-pad positions, "cls" (position 0, for MLM backbones) or "last" non-pad
            position (for causal backbones).
        pad_id: the padding token; None takes the datamodule's ``pad_id``.
        classifier_dropout: dropout before the head.
        lr: peak learning rate.
        weight_decay: AdamW decay on matrices.
        betas: AdamW betas.
        warmup_steps: linear warmup steps.
        max_steps: step where decay ends; None takes the Trainer's estimate.
        schedule: "linear", "cosine" or "constant" after warmup.
        optimizer: "adamw" or "adamw8bit" (bitsandbytes 8-bit state).
        label_smoothing: cross-entropy smoothing in training.
        trainable_only_checkpoint: with a PEFT method, Lightning checkpoints keep only the trainable tensors (the
            frozen backbone comes back from ``init_from``), so a task costs kilobytes, not the whole model.
    """

    def __init__(
        self,
        config: GPTConfig | dict | None = None,
        num_classes: int | None = None,
        init_from: str | None = None,
        peft: PeftConfig | dict | None = None,
        pooling: str = "mean",
        pad_id: int | None = None,
        classifier_dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 10,
        max_steps: int | None = None,
        schedule: str = "linear",
        optimizer: str = "adamw",
        label_smoothing: float = 0.0,
        trainable_only_checkpoint: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2")
        if lr <= 0:
            raise ValueError(f"lr={lr} must be > 0")
        if isinstance(config, dict):
            config = GPTConfig.from_dict(config)
        if isinstance(peft, dict):
            peft = PeftConfig(**peft)
        resolved = resolve_init_from(init_from) if init_from is not None else None
        if resolved is not None and str(resolved) != str(init_from):
            rank_zero_info(f"SequenceClassifier: init_from={str(init_from)!r} -> {resolved}")
        # data, never code: a file that needs pickled objects is refused with one line
        self._checkpoint = load_checkpoint(resolved) if resolved else None
        if config is None and self._checkpoint is not None:
            config = GPTConfig.from_dict(self._checkpoint["hyper_parameters"]["config"])
        self.config = config if config is not None else GPTConfig(name="tiny", causal=False)
        self.peft = peft or PeftConfig()
        self.save_hyperparameters(ignore=["config", "peft"])
        self.hparams["config"] = asdict(self.config)
        self.hparams["peft"] = asdict(self.peft)
        if resolved is not None:
            # the file itself, so a trainable-only checkpoint reloads the backbone it was trained on, even after a
            # newer pretraining run
            self.hparams["init_from"] = str(resolved)
        self.model: nn.Module | None = None
        self.head: nn.Module | None = None
        self.load_report: dict[str, list[str]] = {}
        self.cost: dict[str, float] = {}
        self.val_loss = MeanMetric(nan_strategy="disable")
        # trainable-only checkpoints lack the frozen backbone, which init_from rebuilds: load them non-strictly
        self.strict_loading = not (trainable_only_checkpoint and self.peft.method != "full")
        # the model is built once the vocabulary and class count are known (here, or in configure_model)
        if self.config.vocab_size is not None and num_classes is not None:
            self.configure_model()

    # -- construction ---------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        dm = getattr(attached_trainer(self), "datamodule", None)
        if self.config.vocab_size is None:
            vocab = getattr(dm, "vocab_size", None)
            if vocab is None:
                raise ValueError("config.vocab_size is None and the datamodule has no vocab_size; set it")
            self.config = replace(self.config, vocab_size=int(vocab))
            self.hparams["config"] = asdict(self.config)
        if self.hparams.num_classes is None:
            n = getattr(dm, "num_classes", None)
            if n is None:
                raise ValueError(
                    "num_classes is None and the datamodule has no num_classes; set model.num_classes"
                )
            self.hparams.num_classes = int(n)
        if self.hparams.pad_id is None and getattr(dm, "pad_id", None) is not None:
            self.hparams.pad_id = int(dm.pad_id)
        if self._checkpoint is not None:
            check_vocabulary(self._checkpoint, self.config.vocab_size, getattr(dm, "vocab_size", None))
        backbone = GPT(self.config)
        if self._checkpoint is not None:
            missing, unexpected = load_backbone(backbone, self._checkpoint)
            self.load_report = {"missing": missing, "unexpected": unexpected}
            rank_zero_info(
                f"SequenceClassifier: loaded {self.hparams.init_from}; missing keys {missing or 'none'}, "
                f"unexpected keys {unexpected or 'none'}"
            )
            self._checkpoint = None  # the tensors now live in the backbone
        self.model = apply_transforms(
            backbone, peft=self.peft, activation_checkpointing=self.config.activation_checkpointing
        )
        k = self.hparams.num_classes
        self.head = nn.Sequential(
            nn.Dropout(self.hparams.classifier_dropout), nn.Linear(self.config.n_embd, k)
        )
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes=k, average="micro"),
                "f1": MulticlassF1Score(num_classes=k, average="macro"),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    # -- forward --------------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) for token ids (B, T)."""
        hidden = self.model.hidden_states(idx)[
            :, prompt_length(self.model) :
        ]  # (B, T, C), soft prompt dropped
        pool = self.hparams.pooling
        if pool == "cls":
            pooled = hidden[:, 0]
        else:
            pad = self.hparams.pad_id
            keep = (idx != pad) if pad is not None else torch.ones_like(idx, dtype=torch.bool)  # (B, T)
            if pool == "mean":
                w = keep.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)
            else:
                last = keep.long().cumsum(1).argmax(1)  # index of the last non-pad position
                pooled = hidden[torch.arange(idx.size(0), device=idx.device), last]
        return self.head(pooled)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        idx, y = batch
        loss = F.cross_entropy(self(idx).float(), y, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss.detach(), prog_bar=True)
        return loss


    # -- costs, optimisation, checkpoints -------------------------------------------------------------------
    def on_train_start(self) -> None:
        self.cost = cost_report(self, self.hparams.optimizer)
        c = self.cost
        rank_zero_info(
            f"SequenceClassifier[{self.peft.method}]: trainable {c['trainable_params']:,} of {c['total_params']:,} "
            f"parameters ({c['trainable_pct']:.3f}%); optimizer state {c['optimizer_state_bytes']:,} B "
            f"({self.hparams.optimizer}); checkpoint per task {c['checkpoint_bytes']:,} B "
            f"(full model {c['full_checkpoint_bytes']:,} B)"
        )
        for key in (
            "trainable_params",
            "trainable_pct",
            "optimizer_state_bytes",
            "checkpoint_bytes",
            "full_checkpoint_bytes",
        ):
            self.log(f"cost/{key}", float(c[key]))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step == 1 and "optimizer_state_bytes_measured" not in self.cost:
            opt = self.optimizers()
            measured = measured_optimizer_state_bytes(getattr(opt, "optimizer", opt))
            self.cost["optimizer_state_bytes_measured"] = measured
            self.log("cost/optimizer_state_bytes_measured", float(measured))

    def configure_optimizers(self) -> dict:
        return optimizers_from_hparams(self)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors (PEFT parameters and the head): one task's worth of weights."""
        return adapter_state_dict(self)

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_adapter_state_dict(self, state)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.hparams.trainable_only_checkpoint and self.peft.method != "full":
            keep = set(self.adapter_state_dict())
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
            checkpoint["trainable_only"] = True

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if not checkpoint.get("trainable_only"):
            return
        saved = (checkpoint.get("hyper_parameters") or {}).get("init_from")
        if saved is not None and self.hparams.init_from is not None and saved != self.hparams.init_from:
            rank_zero_warn(
                f"this trainable-only checkpoint was trained on the backbone {saved}, but init_from resolved to "
                f"{self.hparams.init_from}; the adapters may not fit it. Pass --model.init_from={saved}"
            )
