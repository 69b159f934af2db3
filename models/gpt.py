"""A GPT-style Transformer and the ``CausalLM`` LightningModule that trains it.

The backbone follows nanoGPT's shape: pre-LayerNorm blocks, fused QKV projection, SDPA attention (causal
or bidirectional), GELU MLP, tied input/output embeddings. Variants are data: a preset ``name`` plus field
overrides (``GPTConfig.from_name``), with the attention and feed-forward layers picked by name from
``kit.models.layers``. Activation checkpointing and compile are applied by ``kit.models.transforms``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric

from kit.health.flops import transformer_flops
from kit.models.layers import get_attention, get_ffn
from kit.models.transforms import apply_transforms
from kit.optim import SCHEDULES, fused_available, lr_lambda, param_groups

__all__ = ["GPT", "Block", "CausalLM", "GPTConfig"]


# The named presets. Each fills the fields a GPTConfig leaves None; "tiny" is the base every preset starts from.
_BASE: dict[str, object] = {
    "block_size": 128,
    "n_layer": 4,
    "n_head": 4,
    "n_embd": 128,
    "dropout": 0.1,
    "attn_dropout": 0.1,
    "embd_dropout": 0.1,
    "bias": True,
    "causal": True,
    "mlp_ratio": 4,
    "tie_embeddings": True,
    "attention": "dense",
    "ffn": "mlp",
}
_NO_DROPOUT = {"dropout": 0.0, "attn_dropout": 0.0, "embd_dropout": 0.0}
_PRESETS: dict[str, dict[str, object]] = {
    # a few-KB model for unit tests
    "debug": {"vocab_size": 64, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, **_NO_DROPOUT},
    # trains in minutes on 2 CPU cores (the `gpt-tiny` recipe)
    "tiny": {},
    "gpt2": {
        "vocab_size": 50304,
        "block_size": 1024,
        "n_layer": 12,
        "n_head": 12,
        "n_embd": 768,
        **_NO_DROPOUT,
    },
    "gpt2-medium": {
        "vocab_size": 50304,
        "block_size": 1024,
        "n_layer": 24,
        "n_head": 16,
        "n_embd": 1024,
        **_NO_DROPOUT,
    },
}


@dataclass
class GPTConfig:
    """Shape, layer choice and regularisation of the Transformer; plain values only, so YAML can set it.

    ``name`` picks a preset (``"debug"``, ``"tiny"``, ``"gpt2"``, ``"gpt2-medium"``) and every field left None
    takes that preset's value (the ``"tiny"`` values when ``name`` is None), so a recipe says
    ``config: {name: tiny, dropout: 0.2}`` and ``--model.init_args.config.n_layer 6`` overrides one field.
    ``vocab_size`` is the exception: None always means "the datamodule's tokenizer size", so the same preset
    follows whatever tokenizer the recipe trains; :meth:`from_name` copies the preset's vocabulary.

    Example:
        >>> GPTConfig.from_name("tiny", n_layer=2).n_layer
        2
        >>> GPTConfig(name="gpt2", dropout=0.1).n_embd
        768
    """

    name: str | None = None  # preset filling every None field below; None: the "tiny" values
    vocab_size: int | None = None  # None: taken from the datamodule (its tokenizer) at setup
    block_size: int | None = None  # maximum context length T
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None  # model width d; must divide by n_head
    dropout: float | None = None  # residual dropout (after attention and feed-forward projections)
    attn_dropout: float | None = None  # dropout on attention probabilities
    embd_dropout: float | None = None  # dropout on token + position embeddings
    bias: bool | None = None  # biases in Linear and LayerNorm
    causal: bool | None = None  # False gives bidirectional attention (MLM encoders)
    mlp_ratio: int | None = None  # hidden width of the MLP as a multiple of n_embd
    tie_embeddings: bool | None = None  # share the token embedding with the output head
    attention: str | None = None  # a name in kit.models.layers.ATTENTION: "dense"
    ffn: str | None = None  # a name in kit.models.layers.FFN: "mlp"
    activation_checkpointing: bool = False  # recompute each block in backward (kit.models.transforms)

    def __post_init__(self) -> None:
        if self.name is not None and self.name not in _PRESETS:
            raise ValueError(f"unknown config name {self.name!r}; choose one of {sorted(_PRESETS)}")
        preset = {**_BASE, **_PRESETS[self.name or "tiny"]}
        for f in fields(self):
            if f.name in _BASE and getattr(self, f.name) is None:
                setattr(self, f.name, preset[f.name])
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                f"pick n_head from {[h for h in range(1, 33) if self.n_embd % h == 0]}"
            )
        for name in ("block_size", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ValueError(
                f"vocab_size={self.vocab_size} must be >= 2, or None to take it from the datamodule"
            )
        for name in ("dropout", "attn_dropout", "embd_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(
                    f"{name}={getattr(self, name)} must be in [0, 1); the seed recipe uses 0.1-0.3"
                )
        for name, registry in (("attention", "ATTENTION"), ("ffn", "FFN")):
            if not isinstance(getattr(self, name), str):  # a class would not survive YAML or a checkpoint
                raise ValueError(
                    f"{name}={getattr(self, name)!r} must be a registered name so the config stays serialisable; "
                    f"register your class first: kit.models.layers.{registry}['mine'] = MyClass, then {name}='mine'"
                )
        get_attention(self.attention)  # unknown names raise here, listing the registered ones
        get_ffn(self.ffn)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_name(cls, name: str, **overrides: object) -> GPTConfig:
        """A named preset, its vocabulary included, with any field overridden.

        Example:
            >>> GPTConfig.from_name("gpt2", dropout=0.1).vocab_size
            50304
        """
        if name not in _PRESETS:
            raise ValueError(f"unknown config name {name!r}; choose one of {sorted(_PRESETS)}")
        return cls(name=name, **{"vocab_size": _PRESETS[name].get("vocab_size"), **overrides})


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = get_attention(config.attention)(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = get_ffn(config.ffn)(config)  # named mlp whatever the variant, so state-dict keys stay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token + position embeddings, ``n_layer`` blocks, final LayerNorm, and a (tied) vocabulary head.

    Args:
        config: a ``GPTConfig`` with ``vocab_size`` set.

    Example:
        >>> model = GPT(GPTConfig.from_name("debug"))
        >>> model(torch.zeros(2, 8, dtype=torch.long)).shape
        torch.Size([2, 8, 64])
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError(
                "GPTConfig.vocab_size is None; set it or let CausalLM take it from the datamodule"
            )
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.embd_dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer) so the residual stream's variance stays flat.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, exclude_positions: bool = True) -> int:
        """Parameter count (tied weights once); position embeddings excluded by default, as in FLOP counts."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if exclude_positions else n

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states, shape (B, T, n_embd)."""
        T = idx.size(1)
        if self.config.block_size < T:
            raise ValueError(
                f"sequence length {T} exceeds block_size={self.config.block_size}; crop the input"
            )
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, T, vocab_size) for token ids of shape (B, T)."""
        return self.lm_head(self.hidden_states(idx))

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N + 12 * n_layer * n_embd * T (PaLM, appendix B)."""
        T = seq_len or self.config.block_size
        return transformer_flops(self.num_params(), self.config.n_layer, self.config.n_embd, T)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` continuations of ``idx`` (B, T); temperature 0 means greedy."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size :]
            logits = self(context)[:, -1, :]
            if temperature <= 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits.float(), dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, next_id), dim=1)
        return idx


class CausalLM(pl.LightningModule):
    """Next-token language modelling with AdamW, warmup + decay, and perplexity logging.

    Batches are ``(input_ids, targets)`` of shape (B, T). The network is built in ``configure_model`` so
    ``config.vocab_size=None`` can be filled from the datamodule's tokenizer.

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
        if isinstance(config, dict):  # load_from_checkpoint passes the saved hyperparameters back as a dict
            config = GPTConfig(**config)
        self.config = config if config is not None else GPTConfig.from_name("tiny")
        self.save_hyperparameters(ignore=["config"])
        self.hparams["config"] = asdict(self.config)
        self.model: GPT | None = None
        # nan_strategy="disable": the default NaN check calls .any() on the host, one GPU sync per update
        # (measured: the Trainer side ran at 0.82x a plain loop on an H200 with it). A NaN loss stays NaN.
        self.val_loss = MeanMetric(nan_strategy="disable")
        if self.config.vocab_size is not None:
            self.configure_model()

    # -- model construction -------------------------------------------------------------------------------
    def configure_model(self) -> None:
        mesh = getattr(self, "_device_mesh", None)  # set by ModelParallelStrategy (preset fsdp2-tp)
        if self.model is not None:
            if mesh is not None and not getattr(self.model, "_kit_parallelized", False):
                self._parallelize(mesh)
            return
        if self.config.vocab_size is None:
            dm = self._trainer.datamodule if self._trainer is not None else None
            vocab = getattr(dm, "vocab_size", None)
            if vocab is None:
                raise ValueError(
                    "config.vocab_size is None and the datamodule has no vocab_size; set model.config.vocab_size"
                )
            self.config = replace(self.config, vocab_size=int(vocab))
            self.hparams["config"] = asdict(self.config)  # so checkpoints rebuild the same shape
        dm = self._trainer.datamodule if self._trainer is not None else None
        dm_block = getattr(dm, "block_size", None)
        if dm_block is not None and dm_block > self.config.block_size:
            raise ValueError(
                f"data.block_size={dm_block} exceeds model.config.block_size={self.config.block_size}; "
                "raise the model's block_size or lower the data's"
            )
        if mesh is not None:
            self.model = GPT(self.config)
            self._parallelize(mesh)
            return
        self.model = apply_transforms(
            GPT(self.config),
            activation_checkpointing=self.config.activation_checkpointing,
            compile=self.hparams.compile,
        )

    def _parallelize(self, mesh: object) -> None:
        """Tensor parallel + FSDP2 over the strategy's device mesh (``kit.parallel.tensor.parallelize``)."""
        from kit.parallel.tensor import parallelize

        parallelize(
            self.model,
            mesh,
            activation_checkpointing=self.config.activation_checkpointing,
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
        logits = self.model(idx)
        return F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), label_smoothing=smoothing
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, self.hparams.label_smoothing)
        B, T = batch[0].shape
        self._flops_per_batch = self.model.flops_per_token(T) * B * T
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
        # includes label smoothing when it is on; val/ppl is the true perplexity
        self.log("train/ppl", torch.exp(loss.detach()), on_step=True, on_epoch=False)
        return loss

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

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model(batch[0]).argmax(dim=-1)

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
            total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 10_000
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
