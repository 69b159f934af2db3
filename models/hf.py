"""LightningModules around any ``transformers`` model in a local folder: ``HFCausalLM`` and ``HFSequenceClassifier``.

They train architectures the kit does not implement (GPT-NeoX, Phi, Gemma, ...) with everything else the kit
offers: the same batches (``(input_ids, targets)`` / ``(input_ids, label)``) and metric names (``train/loss``,
``val/loss``, ``val/ppl``, ``val/acc``...) as :class:`kit.models.CausalLM` and
:class:`kit.models.SequenceClassifier`, so the health, spike-guard, clipping, loss-scale and checkpoint callbacks,
Lightning's precision plugins, the CLI and its recipes apply unchanged; ``flops_per_batch`` for MFU; PEFT through
``peft`` on the Hugging Face model (:class:`kit.nn.peft.PeftConfig`: ``lora``, ``qlora`` with 4-bit NF4 base
weights from ``bitsandbytes``, ``prompt``); and the FSDP preset ``FSDPZero3Strategy(blocks="auto")`` wraps the
model's own decoder-layer class, read from the model (:func:`kit.nn.hf_layers.decoder_layer_classes`).

Loading is local only (``local_files_only=True``) and never runs code from the folder (``trust_remote_code`` is
never set): an architecture that needs custom modelling code is refused by ``transformers`` with its own message.

Example:
    >>> lm = HFCausalLM("path/to/tiny-model", lr=1e-4, peft={"method": "lora", "lora_r": 8})  # doctest: +SKIP
    >>> trainer.fit(lm, datamodule=InstructDataModule("chat.jsonl"))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from kit._compat import attached_trainer
from kit.models._classify import ClassifierEvalSteps
from kit.models._optim import OPTIMIZERS, optimizers_from_hparams
from kit.nn.hf_layers import decoder_layer_classes
from kit.nn.peft import PeftConfig, cost_report, trainable_fraction

__all__ = ["HFCausalLM", "HFSequenceClassifier", "apply_hf_peft", "decoder_layer_classes"]

_HF_METHODS = ("full", "lora", "qlora", "prompt")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the first ``peft`` release with ``PromptTuningInit.SAMPLE_VOCAB``, which ``prompt_init="vocab"`` needs here
_PROMPT_VOCAB_PEFT = "0.18.0"


def _lora_targets(cfg: PeftConfig) -> str | list[str]:
    # The kit's default targets name its own GPT's Linears (qkv, proj, fc); on a transformers model they mean every
    # Linear but the output head (peft's "all-linear", which can also be written [all-linear]). Other targets are
    # used as given.
    if cfg.lora_targets in (PeftConfig().lora_targets, ["all-linear"]):
        return "all-linear"
    return list(cfg.lora_targets)


def _prompt_tuning_init(cfg: PeftConfig) -> Any:
    """``peft``'s ``PromptTuningInit`` for ``cfg.prompt_init``; ``"vocab"`` (sampled vocabulary embeddings) is
    ``SAMPLE_VOCAB``, which ``peft`` offers from 0.18 on."""
    import peft
    from packaging.version import Version

    if cfg.prompt_init == "random":
        return peft.PromptTuningInit.RANDOM
    if Version(peft.__version__) < Version(_PROMPT_VOCAB_PEFT):
        raise ValueError(
            f"peft.prompt_init='vocab' on a transformers model needs peft>={_PROMPT_VOCAB_PEFT}, installed "
            f"{peft.__version__}: pip install -U peft (or set peft.prompt_init='random')"
        )
    return peft.PromptTuningInit.SAMPLE_VOCAB


def apply_hf_peft(model: nn.Module, cfg: PeftConfig | None, task: str) -> nn.Module:
    """Wrap a ``transformers`` model with ``peft`` for ``cfg.method`` (``full`` returns it unchanged).

    Args:
        model: the loaded model (already 4-bit for ``qlora``: :class:`HFCausalLM` loads it so).
        cfg: the method and its knobs; ``lora_targets`` left at the kit's default, or ``["all-linear"]``, means every
            Linear but the head.
        task: ``"CAUSAL_LM"`` or ``"SEQ_CLS"`` (the classification head then stays trainable).

    Returns:
        The model to train.

    Raises:
        ValueError: a method ``peft`` does not offer for ``transformers`` models (``adapters`` is the kit's own
            Houlsby method for :class:`kit.nn.GPT`), or ``prompt_init="vocab"`` with ``peft`` older than 0.18.

    Example:
        >>> model = apply_hf_peft(model, PeftConfig(method="lora", lora_r=4), "CAUSAL_LM")  # doctest: +SKIP
    """
    if cfg is None or cfg.method == "full":
        return model
    if cfg.method not in _HF_METHODS:
        raise ValueError(
            f"peft.method={cfg.method!r} is the kit's own method for kit.nn.GPT; on a transformers model choose "
            f"one of {_HF_METHODS}"
        )
    import peft

    if cfg.method == "prompt":
        config = peft.PromptTuningConfig(
            task_type=task, num_virtual_tokens=cfg.prompt_tokens, prompt_tuning_init=_prompt_tuning_init(cfg)
        )
        return peft.get_peft_model(model, config)
    if cfg.method == "qlora":
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = peft.LoraConfig(
        task_type=task,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=_lora_targets(cfg),
        bias="none",
    )
    return peft.get_peft_model(model, config)


class _HFModule(pl.LightningModule):
    """Loading, PEFT, optimisation and cost reporting shared by the two wrappers."""

    _auto_class = "AutoModelForCausalLM"
    _task = "CAUSAL_LM"

    def __init__(
        self,
        model: str,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 10,
        max_steps: int | None = None,
        schedule: str = "cosine",
        optimizer: str = "adamw",
        peft: PeftConfig | dict | None = None,
        dtype: str | None = None,
        **load_kwargs: Any,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr={lr} must be > 0")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={optimizer!r} is not one of {OPTIMIZERS}")
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {sorted(_DTYPES)} (None: the folder's own)")
        if not (Path(model).expanduser() / "config.json").is_file():
            raise FileNotFoundError(
                f"model={model!r} is not a local Hugging Face folder (no config.json); save one with "
                "model.save_pretrained(DIR) or download it first, then pass DIR"
            )
        self.peft = PeftConfig(**peft) if isinstance(peft, dict) else (peft or PeftConfig())
        if self.peft.method not in _HF_METHODS:
            apply_hf_peft(nn.Identity(), self.peft, self._task)  # raises with the list of methods
        self.save_hyperparameters(ignore=["peft"])
        self.hparams["peft"] = asdict(self.peft)
        self.model = apply_hf_peft(self._load(load_kwargs), self.peft, self._task)
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps each submodule's mode as found
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.cost: dict[str, float] = {}

    def _load(self, load_kwargs: dict) -> nn.Module:
        import transformers

        kwargs = {"local_files_only": True, **load_kwargs, "trust_remote_code": False}
        if self.hparams.dtype is not None:
            kwargs["dtype"] = _DTYPES[self.hparams.dtype]
        if self.peft.method == "qlora":
            compute = _DTYPES.get(self.hparams.dtype or "float32", torch.float32)
            kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=self.peft.quant_type, bnb_4bit_compute_dtype=compute
            )
        auto = getattr(transformers, self._auto_class)
        return auto.from_pretrained(str(Path(self.hparams.model).expanduser()), **kwargs)

    # -- what the kit's callbacks and planner read ------------------------------------------------------------
    def decoder_layer_classes(self) -> set[type[nn.Module]]:
        """The model's own decoder-layer classes (what FSDP wraps and activation checkpointing recomputes)."""
        return decoder_layer_classes(self.model)

    @property
    def flops_per_batch(self) -> float | None:
        """``6 * N * tokens`` of the last training batch (N: non-embedding parameters), for MFU."""
        return getattr(self, "_flops_per_batch", None)

    def _count_flops(self, idx: torch.Tensor) -> None:
        if not hasattr(self, "_n_params"):
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            embed = base.get_input_embeddings()
            skip = {id(p) for p in embed.parameters()} if embed is not None else set()
            self._n_params = sum(p.numel() for p in base.parameters() if id(p) not in skip)
        self._flops_per_batch = 6.0 * self._n_params * idx.numel()

    def _check_vocab(self) -> None:
        dm = getattr(attached_trainer(self), "datamodule", None)
        data = getattr(dm, "vocab_size", None)
        rows = self.model.get_input_embeddings().weight.size(0)
        if data is not None and int(data) > rows:
            raise ValueError(
                f"the data's tokenizer has {int(data)} tokens but the model {self.hparams.model} embeds {rows}; "
                "pass the model's own tokenizer folder as data.tokenizer"
            )

    def setup(self, stage: str) -> None:
        self._check_vocab()

    def on_train_start(self) -> None:
        self.cost = cost_report(self.model, self.hparams.optimizer)
        c = self.cost
        rank_zero_info(
            f"{type(self).__name__}[{self.peft.method}] {self.hparams.model}: trainable {c['trainable_params']:,} "
            f"of {c['total_params']:,} parameters ({c['trainable_pct']:.3f}%)"
        )
        self.log("cost/trainable_pct", float(c["trainable_pct"]))

    def configure_optimizers(self) -> dict:
        return optimizers_from_hparams(self)

    @property
    def trainable_fraction(self) -> float:
        return trainable_fraction(self.model)


class HFCausalLM(_HFModule):
    """Next-token training of ``AutoModelForCausalLM.from_pretrained(model)``, with the kit's logging names.

    Batches are ``(input_ids, targets)`` of shape (B, T); targets of ``-100`` are ignored (the response-only
    masks of :class:`kit.datamodules.InstructDataModule`, padding). Logs ``train/loss``, ``train/ppl``,
    ``val/loss``, ``val/ppl`` (and ``test/...``).

    Args:
        model: a local Hugging Face model folder (``config.json`` and weights).
        lr: peak learning rate.
        weight_decay: AdamW decay on matrices (never on biases, norms, embeddings).
        betas: AdamW betas.
        warmup_steps: linear warmup steps.
        max_steps: step at which decay ends; None takes the Trainer's estimated total steps.
        schedule: "cosine", "linear" or "constant" after warmup.
        optimizer: "adamw" or "adamw8bit" (bitsandbytes).
        peft: :class:`kit.nn.peft.PeftConfig` (or its dict): ``full``, ``lora``, ``qlora`` or ``prompt``.
        dtype: load the weights as "float32", "bfloat16" or "float16"; None keeps the folder's dtype.
        **load_kwargs: passed to ``from_pretrained`` (e.g. ``attn_implementation="sdpa"``).

    Example:
        >>> lm = HFCausalLM("tiny-neox", peft={"method": "lora"})  # doctest: +SKIP
        >>> lm(torch.zeros(1, 8, dtype=torch.long)).shape  # doctest: +SKIP
        torch.Size([1, 8, 320])
    """

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) for the input positions (a soft prompt's positions are cut off)."""
        logits = self.model(input_ids=idx).logits
        return logits[:, -idx.size(1) :]

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        idx, targets = batch[0], batch[1]
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self._count_flops(batch[0])
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/ppl", torch.exp(loss.detach()), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.val_loss.update(self._loss(batch), weight=int((batch[1] != -100).sum()))

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def _epoch_end(self, stage: str) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/ppl", torch.exp(loss), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")


class HFSequenceClassifier(ClassifierEvalSteps, _HFModule):
    """Classification with ``AutoModelForSequenceClassification.from_pretrained(model, num_labels=...)``.

    Batches are ``(input_ids, label)``. The attention mask is ``input_ids != pad_id`` (the datamodule's ``pad_id``
    when it has one, else the model's ``pad_token_id``); a decoder pools its last non-pad token, as
    ``transformers`` does. Logs ``train/loss``, ``val/loss``, ``val/acc``, ``val/f1`` (and ``test/...``), the names
    of :class:`kit.models.SequenceClassifier`. With LoRA or prompt tuning the new classification head trains too.

    Args:
        model: a local Hugging Face model folder.
        num_labels: number of classes (>= 2).
        **kwargs: as :class:`HFCausalLM` (lr, weight_decay, ..., peft, dtype, load keywords).

    Example:
        >>> clf = HFSequenceClassifier("tiny-phi", num_labels=6, peft={"method": "lora"})  # doctest: +SKIP
    """

    _auto_class = "AutoModelForSequenceClassification"
    _task = "SEQ_CLS"

    def __init__(self, model: str, num_labels: int = 2, **kwargs: Any) -> None:
        if num_labels < 2:
            raise ValueError(f"num_labels={num_labels} must be >= 2")
        super().__init__(model, num_labels=num_labels, **kwargs)
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes=num_labels, average="micro"),
                "f1": MulticlassF1Score(num_classes=num_labels, average="macro"),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(attached_trainer(self), "datamodule", None)
        pad = getattr(dm, "pad_id", None)
        config = self.model.config
        if pad is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = int(pad)  # so a decoder finds each row's last real token

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pad = getattr(self.model.config, "pad_token_id", None)
        mask = (idx != pad).long() if pad is not None else None
        return self.model(input_ids=idx, attention_mask=mask).logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        idx, y = batch
        loss = F.cross_entropy(self(idx).float(), y)
        self._count_flops(idx)
        self.log("train/loss", loss.detach(), prog_bar=True)
        return loss

