"""A GPT-style Transformer and the ``CausalLM`` LightningModule that trains it.

The backbone follows nanoGPT's shape: pre-LayerNorm blocks, fused QKV projection, SDPA attention (causal
or bidirectional), GELU MLP, tied input/output embeddings. Variants are data: a preset ``name`` plus field
overrides (``GPTConfig.from_name``), with the attention and feed-forward layers picked by name from
``kit.models.layers``. Activation checkpointing and compile are applied by ``kit.models.transforms``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric

from kit.health.flops import transformer_flops
from kit.models.layers import add_aux_losses, clear_aux, get_attention, get_depth, get_ffn
from kit.models.layers.attention import QKVLayoutHooks
from kit.models.transforms import CHECKPOINT_MODES, apply_transforms
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
    "depth": "stack",
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
    attention: str | None = None  # a name in kit.models.layers.ATTENTION: "dense", "sliding_window"
    ffn: str | None = None  # a name in kit.models.layers.FFN: "mlp", "moe"
    depth: str | None = None  # a name in kit.models.layers.DEPTH: "stack", "universal"
    # attention="sliding_window" (Longformer): a query sees keys fewer than attn_window positions away
    # (earlier ones only when causal) plus the attn_global positions, which see and are seen by every token
    attn_window: int = 64
    attn_global: list[int] = field(default_factory=list)
    # ffn="moe" (Switch Transformer): experts of width mlp_ratio * n_embd, top-k routing with capacity
    moe_experts: int = 8
    moe_top_k: int = 1  # 1 is Switch; 2 is GShard
    moe_capacity_factor: float = 1.25  # expert capacity = factor * tokens * top_k / experts; <= 0: no limit
    moe_eval_capacity_factor: float = 2.0  # the same in evaluation
    moe_aux_alpha: float = 0.01  # load-balancing loss weight alpha (alpha * E * sum f_i P_i)
    moe_z_loss: float = 1e-3  # router z-loss weight (ST-MoE)
    moe_jitter: float = 0.0  # multiplicative router-input noise in training, e.g. 0.01 (Switch)
    moe_expert_dropout: float = 0.0  # dropout inside the experts (Switch fine-tuning uses 0.4)
    # depth="universal" (Universal Transformer + ACT): one shared block, at most ut_max_steps applications
    ut_max_steps: int | None = None  # None: n_layer
    act_eps: float = 0.01  # a token halts when its summed halting probability passes 1 - act_eps
    act_ponder_cost: float = 0.01  # tau: weight of the ponder cost mean(N + R) in the loss
    # recompute activations in backward (kit.models.transforms): False/"none", True/"full" (whole blocks),
    # "attention" or "ffn" (only that sublayer); checkpoint_every=k does it on every k-th block only
    activation_checkpointing: bool | str = False
    checkpoint_every: int = 1

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
        get_depth(self.depth)
        self._check_variants()

    def _check_variants(self) -> None:
        self.attn_global = [int(g) for g in self.attn_global]
        if self.attn_window < 1:
            raise ValueError(f"attn_window={self.attn_window} must be >= 1 (1: each token sees only itself)")
        if any(g < 0 for g in self.attn_global):
            raise ValueError(
                f"attn_global={self.attn_global} must hold positions >= 0, e.g. [0] for the first token"
            )
        if self.moe_experts < 1 or not 1 <= self.moe_top_k <= self.moe_experts:
            raise ValueError(
                f"moe_experts={self.moe_experts}, moe_top_k={self.moe_top_k}: need 1 <= moe_top_k <= moe_experts"
            )
        for name in ("moe_aux_alpha", "moe_z_loss", "moe_jitter", "act_ponder_cost"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (0 turns it off)")
        if not 0.0 <= self.moe_expert_dropout < 1.0:
            raise ValueError(f"moe_expert_dropout={self.moe_expert_dropout} must be in [0, 1)")
        if self.ut_max_steps is not None and self.ut_max_steps < 1:
            raise ValueError(f"ut_max_steps={self.ut_max_steps} must be >= 1, or None for n_layer")
        if not 0.0 < self.act_eps < 1.0:
            raise ValueError(f"act_eps={self.act_eps} must be in (0, 1); Graves uses 0.01")
        mode = self.activation_checkpointing
        if mode not in (True, False) and mode not in CHECKPOINT_MODES:
            raise ValueError(
                f"activation_checkpointing={mode!r} is not one of {[False, True, *CHECKPOINT_MODES]}"
            )
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every={self.checkpoint_every} must be >= 1 (1: every block)")

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
        depth = get_depth(config.depth)
        self.blocks = nn.ModuleList(Block(config) for _ in range(depth.num_blocks(config)))
        self.depth = depth(config)  # how the blocks are applied: once each, or one shared block with ACT
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

    def num_active_params(self) -> float:
        """Parameters one token's forward multiplies by: what FLOPs and MFU count (``num_params`` for a dense
        stack). MoE layers count ``top_k`` of their experts; a shared Universal Transformer block counts once
        per application."""
        n = float(self.num_params())
        inactive = sum(m.inactive_params() for m in self.modules() if hasattr(m, "inactive_params"))
        block = sum(p.numel() for p in self.blocks.parameters()) - inactive
        extra = get_depth(self.config.depth).applications(self.config) - len(self.blocks)
        return n - inactive + extra * block

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states, shape (B, T, n_embd)."""
        T = idx.size(1)
        if self.config.block_size < T:
            raise ValueError(
                f"sequence length {T} exceeds block_size={self.config.block_size}; crop the input"
            )
        pos = torch.arange(T, device=idx.device)
        clear_aux(self)  # auxiliary losses and statistics belong to one forward
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        x = self.depth(x, self.blocks)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, T, vocab_size) for token ids of shape (B, T)."""
        return self.lm_head(self.hidden_states(idx))

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N + 12 * L * n_embd * T (PaLM, appendix B), with N the
        *active* parameters (:meth:`num_active_params`) and L the block applications, so MFU stays true for
        MoE and Universal Transformer variants."""
        T = seq_len or self.config.block_size
        layers = get_depth(self.config.depth).applications(self.config)
        return transformer_flops(self.num_active_params(), layers, self.config.n_embd, T)

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


class CausalLM(QKVLayoutHooks, pl.LightningModule):
    """Next-token language modelling with AdamW, warmup + decay, and perplexity logging.

    Batches are ``(input_ids, targets)`` of shape (B, T). The network is built in ``configure_model`` so
    ``config.vocab_size=None`` can be filled from the datamodule's tokenizer.
    Auxiliary losses recorded by the layers (MoE load balancing and z-loss, the ACT ponder cost) are added to the
    training loss and logged as ``train/aux/...`` by :func:`kit.models.layers.add_aux_losses`; ``train/loss`` and
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
    def _check_vocab(self) -> None:
        """The embedding must cover the data's tokenizer (shards or TextDataModule), or ids fail deep inside it."""
        dm = self._trainer.datamodule if self._trainer is not None else None
        dm_vocab = getattr(dm, "vocab_size", None)
        if dm_vocab is not None and self.config.vocab_size < int(dm_vocab):
            raise ValueError(
                f"model.config.vocab_size={self.config.vocab_size} is smaller than the data's tokenizer "
                f"({int(dm_vocab)} tokens): ids past the embedding would fail; set it to null (the data's size) "
                f"or >= {int(dm_vocab)}"
            )

    def configure_model(self) -> None:
        mesh = getattr(self, "_device_mesh", None)  # set by ModelParallelStrategy (preset fsdp2-tp)
        if self.model is not None:
            if mesh is not None and not getattr(self.model, "_kit_parallelized", False):
                if self.config.activation_checkpointing not in (False, "none") or self.hparams.compile:
                    # __init__'s eager build applied the one-device transforms, which hide the module names the
                    # parallel plan needs; parallelize applies its own after TP. Same weights, RNG untouched.
                    with torch.random.fork_rng():
                        fresh = GPT(self.config)
                    fresh.load_state_dict(self.model.state_dict())
                    self.model = fresh
                self._parallelize(mesh)
            self._check_vocab()  # built in __init__ (vocab_size given): still check it against the data
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
        self._check_vocab()
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
            checkpoint_every=self.config.checkpoint_every,
            compile=self.hparams.compile,
        )

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
        logits = self.model(idx)
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
