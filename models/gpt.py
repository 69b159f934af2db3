"""``CausalLM``: the LightningModule that trains the kit's GPT (``kit.nn``) on next-token prediction.

The network itself (``GPTConfig``, ``GPT``, ``Block``) is torch only and lives in :mod:`kit.nn`; importing
those names from here still works for one release, with a ``DeprecationWarning``. ``init_from`` starts the
network from a Hugging Face folder (:func:`kit.nn.hf.load_hf`) or a kit checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics import MeanMetric

from kit._compat import attached_trainer
from kit.checkpoint.compat import describe_mismatch
from kit.models._hooks import QKVLayoutHooks
from kit.nn.aux import add_aux_losses
from kit.nn.config import GPTConfig
from kit.nn.gpt import GPT as _GPT
from kit.nn.peft import PeftConfig
from kit.nn.transforms import apply_transforms
from kit.optim import SCHEDULES, fused_available, lr_lambda, param_groups

__all__ = ["CausalLM", "read_init_from"]


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def read_init_from(value: str | os.PathLike) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """The config and ``GPT`` state dict that ``init_from`` names.

    A folder holding ``config.json`` is a Hugging Face checkpoint (GPT-2, Llama, Mistral or Qwen2 family, read
    by :func:`kit.nn.hf.load_hf`: safetensors only). Anything else is a kit checkpoint: a ``.ckpt`` file, a run
    folder or a packaged recipe's name (:func:`kit.models.sequence_classifier.resolve_init_from`), read with
    ``torch.load(weights_only=True)``; its ``model.*`` tensors and its saved config are used.

    Raises:
        FileNotFoundError: nothing usable there.
        ValueError: an unsupported Hugging Face family, or a kit checkpoint without a saved config.
    """
    path = Path(value)
    if _is_hf_folder(path):
        from kit.nn.hf import load_hf

        return load_hf(path)
    from kit.models.sequence_classifier import resolve_init_from

    resolved = resolve_init_from(value)
    checkpoint = torch.load(resolved, map_location="cpu", weights_only=True)
    config = (checkpoint.get("hyper_parameters") or {}).get("config")
    if config is None:
        raise ValueError(
            f"init_from={str(value)!r}: {resolved} holds no model config; pass a CausalLM checkpoint"
        )
    from kit.checkpoint.migrations import upgrade_qkv_layout

    config = GPTConfig.from_dict(config)
    with torch.device("meta"):
        probe = _GPT(config)  # the migration reads the attention layers' head counts
    upgrade_qkv_layout(probe, checkpoint, optimizer_states=False)
    prefix = "model."
    state = {
        k.replace("_orig_mod.", "")[len(prefix) :]: v
        for k, v in checkpoint["state_dict"].items()
        if k.replace("_orig_mod.", "").startswith(prefix)
    }
    rank_zero_info(f"CausalLM: init_from={str(value)!r} -> {resolved}")
    return config, state


class CausalLM(QKVLayoutHooks, pl.LightningModule):
    """Next-token language modelling with AdamW, warmup + decay, and perplexity logging.

    Batches are ``(input_ids, targets)`` of shape (B, T). The network is built in ``configure_model`` so
    ``config.vocab_size=None`` can be filled from the datamodule's tokenizer.
    Auxiliary losses recorded by the layers (MoE load balancing and z-loss, the ACT ponder cost) are added to the
    training loss and logged as ``train/aux/...`` by :func:`kit.nn.layers.add_aux_losses`; ``train/loss`` and
    the validation loss stay the plain NLL.

    Args:
        config: model shape; ``GPTConfig.from_name("tiny")`` if omitted.
        lr: peak learning rate.
        weight_decay: AdamW decay on matrices (never on biases, norms, embeddings).
        betas: AdamW betas.
        warmup_steps: linear warmup steps.
        max_steps: step at which decay ends; None takes the Trainer's estimated total steps.
        schedule: "cosine", "linear" or "constant" after warmup.
        min_lr_ratio: final LR as a fraction of ``lr``.
        label_smoothing: cross-entropy smoothing for training (validation reports the true NLL).
        compile: ``torch.compile`` the network.
        fused: fused AdamW; None means on for CUDA.
        init_from: start from these weights instead of a random initialisation: a Hugging Face folder
            (``config.json`` + safetensors, GPT-2 / Llama / Mistral / Qwen2 family) or a kit checkpoint (a ``.ckpt``,
            a run folder or a recipe name). With ``config`` None the model takes the source's config; a ``config``
            dict changes fields of it (``{"dropout": 0.1}``); a ``GPTConfig`` must have the source's shape.
        peft: parameter-efficient fine-tuning (:class:`kit.nn.peft.PeftConfig` or its dict: ``lora``, ``qlora``,
            ``adapters``, ``prompt``), applied after the weights are in place; None trains every parameter.

    Example:
        >>> lm = CausalLM(GPTConfig.from_name("debug"))
        >>> lm.configure_model(); lm.model.config.n_layer
        2
    """

    def __init__(
        self,
        config: GPTConfig | dict | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        max_steps: int | None = None,
        schedule: str = "cosine",
        min_lr_ratio: float = 0.1,
        label_smoothing: float = 0.0,
        compile: bool = False,
        fused: bool | None = None,
        init_from: str | None = None,
        peft: PeftConfig | dict | None = None,
    ) -> None:
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule={schedule!r} is not one of {SCHEDULES}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"label_smoothing={label_smoothing} must be in [0, 1); the seed recipe uses 0.05-0.2"
            )
        if lr <= 0:
            raise ValueError(f"lr={lr} must be > 0")
        self._init_state: dict[str, torch.Tensor] | None = None
        if init_from is not None:
            source, self._init_state = read_init_from(init_from)
            if config is None or isinstance(config, dict):
                config = GPTConfig.from_dict({**asdict(source), **(config or {})})
        if isinstance(config, dict):  # load_from_checkpoint passes the saved hyperparameters back as a dict
            config = GPTConfig.from_dict(config)
        self.config = config if config is not None else GPTConfig.from_name("tiny")
        self.peft = PeftConfig(**peft) if isinstance(peft, dict) else peft
        # the weights come from init_from once; a checkpoint of this run holds them itself, so a reload
        # (load_from_checkpoint) must not need the source folder. The data may still read its tokenizer there.
        self.init_from = init_from
        self.save_hyperparameters(ignore=["config", "init_from", "peft"])
        self.hparams["config"] = asdict(self.config)
        self.hparams["peft"] = asdict(self.peft) if self.peft is not None else None
        self.model: _GPT | None = None
        # nan_strategy="disable": the default NaN check calls .any() on the host, one GPU sync per update
        # (measured: the Trainer side ran at 0.82x a plain loop on an H200 with it). A NaN loss stays NaN.
        self.val_loss = MeanMetric(nan_strategy="disable")
        if self.config.vocab_size is not None:
            self.configure_model()

    # -- model construction -------------------------------------------------------------------------------
    def _check_vocab(self) -> None:
        """The embedding must cover the data's tokenizer (shards or TextDataModule), or ids fail deep inside it."""
        dm = getattr(attached_trainer(self), "datamodule", None)
        dm_vocab = getattr(dm, "vocab_size", None)
        if dm_vocab is not None and self.config.vocab_size < int(dm_vocab):
            raise ValueError(
                f"model.config.vocab_size={self.config.vocab_size} is smaller than the data's tokenizer "
                f"({int(dm_vocab)} tokens): ids past the embedding would fail; set it to null (the data's size) "
                f"or >= {int(dm_vocab)}"
            )

    def configure_model(self) -> None:
        mesh = self.device_mesh  # set by ModelParallelStrategy (preset fsdp2-tp)
        if self.model is not None:
            if mesh is not None and not getattr(self.model, "_kit_parallelized", False):
                if self.config.activation_checkpointing not in (False, "none") or self.hparams.compile:
                    # __init__'s eager build applied the one-device transforms, which hide the module names the
                    # parallel plan needs; parallelize applies its own after TP. Same weights, RNG untouched.
                    with torch.random.fork_rng():
                        fresh = _GPT(self.config)
                    fresh.load_state_dict(self.model.state_dict())
                    self.model = fresh
                self._parallelize(mesh)
            self._check_vocab()  # built in __init__ (vocab_size given): still check it against the data
            return
        if self.config.vocab_size is None:
            dm = getattr(attached_trainer(self), "datamodule", None)
            vocab = getattr(dm, "vocab_size", None)
            if vocab is None:
                raise ValueError(
                    "config.vocab_size is None and the datamodule has no vocab_size; set model.config.vocab_size"
                )
            self.config = replace(self.config, vocab_size=int(vocab))
            self.hparams["config"] = asdict(self.config)  # so checkpoints rebuild the same shape
        self._check_vocab()
        dm = getattr(attached_trainer(self), "datamodule", None)
        dm_block = getattr(dm, "block_size", None)
        if dm_block is not None and dm_block > self.config.block_size:
            raise ValueError(
                f"data.block_size={dm_block} exceeds model.config.block_size={self.config.block_size}; "
                "raise the model's block_size or lower the data's"
            )
        if mesh is not None:
            if self.peft is not None and self.peft.method != "full":
                raise ValueError(
                    f"peft.method={self.peft.method!r} with tensor parallelism is not supported; use fsdp-zero3 or ddp"
                )
            self.model = self._build()
            self._parallelize(mesh)
            return
        self.model = apply_transforms(
            self._build(),
            peft=self.peft,
            activation_checkpointing=self.config.activation_checkpointing,
            checkpoint_every=self.config.checkpoint_every,
            compile=self.hparams.compile,
        )

    def _build(self) -> _GPT:
        """A fresh network, with the ``init_from`` weights when there are some (used once, then dropped)."""
        model = _GPT(self.config)
        if self._init_state is not None:
            mismatch = describe_mismatch(model.state_dict(), self._init_state)
            if mismatch:
                raise ValueError(
                    f"init_from: the weights do not fit model.config ({mismatch}); leave model.config unset to take "
                    "the source's config, or give only the fields to change as a dict"
                )
            model.load_state_dict(self._init_state)
            if self.config.tie_embeddings:
                model.lm_head.weight = model.wte.weight
            self._init_state = None
        return model

    def _parallelize(self, mesh: object) -> None:
        """Tensor parallel + FSDP2 over the strategy's device mesh (``kit.parallel.tensor.parallelize``)."""
        from kit.parallel.tensor import parallelize

        parallelize(
            self.model,
            mesh,
            activation_checkpointing=self.config.activation_checkpointing,
            checkpoint_every=self.config.checkpoint_every,
            compile=self.hparams.compile,
        )
        self.model._kit_parallelized = True

    @property
    def flops_per_batch(self) -> float | None:
        """Training FLOPs of the last seen batch shape (``kit.health.flops.transformer_flops`` of ``B * T``
        tokens at length T), read by Lightning's ``ThroughputMonitor`` and ``HardwareMonitor`` for MFU."""
        return getattr(self, "_flops_per_batch", None)

    # -- steps ----------------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor], smoothing: float) -> torch.Tensor:
        idx, targets = batch
        logits = self.model(idx)[:, -idx.size(1) :]  # a soft prompt's positions have no target
        return F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), label_smoothing=smoothing
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, self.hparams.label_smoothing)
        # MoE balance/z-losses, the ACT ponder cost: added and logged as train/aux/...; loss itself stays the NLL
        total = add_aux_losses(self.model, loss, log=self._log_aux)
        B, T = batch[0].shape
        self._flops_per_batch = self.model.flops_per_token(T) * B * T
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
        # includes label smoothing when it is on; val/ppl is the true perplexity
        self.log("train/ppl", torch.exp(loss.detach()), on_step=True, on_epoch=False)
        return total

    def _log_aux(self, name: str, value: torch.Tensor) -> None:
        self.log(f"train/{name}", value, on_step=True, on_epoch=False)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.val_loss.update(self._loss(batch, 0.0), weight=batch[0].numel())

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/ppl", torch.exp(loss), prog_bar=True, sync_dist=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("test/loss", loss, sync_dist=True)
        self.log("test/ppl", torch.exp(loss), sync_dist=True)

    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        """Per example: the input ids, the greedy next-token prediction at every position, and, when the
        batch has targets, the example's loss and next-token accuracy (``kit predict`` writes them as JSONL)."""
        x = batch[0]
        logits = self.model(x)  # (B, T, V)
        out = {"input_ids": x, "predicted_ids": logits.argmax(dim=-1)}
        if len(batch) > 1:
            y = batch[1]
            loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")
            out["loss"] = loss.mean(dim=1)
            out["next_token_accuracy"] = (out["predicted_ids"] == y).float().mean(dim=1)
        return out

    # -- optimisation ---------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        hp = self.hparams
        groups = [
            {k: v for k, v in g.items() if k != "names"} for g in param_groups(self.model, hp.weight_decay)
        ]
        fused = hp.fused if hp.fused is not None else fused_available(self.device)
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), fused=fused or None)
        total = hp.max_steps
        if total is None:
            total = int(self.trainer.estimated_stepping_batches) if attached_trainer(self) is not None else 10_000
        if hp.warmup_steps >= total:
            rank_zero_warn(
                f"warmup_steps={hp.warmup_steps} >= total steps {total}: the LR never decays; lower model.warmup_steps"
            )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(hp.warmup_steps, max(1, total), hp.schedule, hp.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- generation -----------------------------------------------------------------------------------------
    def generate_text(
        self,
        tokenizer,
        prompt: str,
        max_new_tokens: int = 60,
        temperature: float = 0.8,
        top_k: int | None = 40,
        seed: int = 0,
    ) -> str:
        """Decode a sample continuing ``prompt`` with a ``tokenizers.Tokenizer``."""
        ids = tokenizer.encode(prompt).ids or [0]
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        was_training = self.training
        self.eval()
        try:
            out = self.model.generate(
                idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=gen
            )
        finally:
            self.train(was_training)
        return tokenizer.decode(out[0].tolist())


_MOVED = {"GPT": "kit.nn.gpt", "Block": "kit.nn.gpt"}


def __getattr__(name: str) -> object:
    # the network moved to the torch-only core; the old path works for one release
    if name in _MOVED:
        from kit._deprecate import moved

        return moved(f"kit.models.gpt.{name}", _MOVED[name], name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
