"""``GPTConfig``: the shape, layer choices and regularisation of the kit's Transformer, as plain values.

litgpt's pattern: ``GPTConfig.from_name(name, **overrides)`` shrinks or varies any preset, layer choices are
names (strings) so a config survives YAML and checkpoints, and cross-field checks in ``__post_init__`` say
how to fix a bad value. Imports no Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from kit.nn.layers import get_attention, get_depth, get_ffn

__all__ = ["CHECKPOINT_MODES", "PRESETS", "GPTConfig"]

# what activation checkpointing wraps: nothing, whole blocks, or one sublayer of each block
CHECKPOINT_MODES: tuple[str, ...] = ("none", "full", "attention", "ffn")


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
PRESETS: dict[str, dict[str, object]] = {
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
    attention: str | None = None  # a name in kit.nn.layers.ATTENTION: "dense", "sliding_window"
    ffn: str | None = None  # a name in kit.nn.layers.FFN: "mlp", "moe"
    depth: str | None = None  # a name in kit.nn.layers.DEPTH: "stack", "universal"
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
    # recompute activations in backward (kit.nn.transforms): False/"none", True/"full" (whole blocks),
    # "attention" or "ffn" (only that sublayer); checkpoint_every=k does it on every k-th block only
    activation_checkpointing: bool | str = False
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        if self.name is not None and self.name not in PRESETS:
            raise ValueError(f"unknown config name {self.name!r}; choose one of {sorted(PRESETS)}")
        preset = {**_BASE, **PRESETS[self.name or "tiny"]}
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
                    f"register your class first: kit.nn.layers.{registry}['mine'] = MyClass, then {name}='mine'"
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
        if name not in PRESETS:
            raise ValueError(f"unknown config name {name!r}; choose one of {sorted(PRESETS)}")
        return cls(name=name, **{"vocab_size": PRESETS[name].get("vocab_size"), **overrides})

