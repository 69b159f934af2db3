"""``GPTConfig``: the shape, layer choices and regularisation of the kit's Transformer, as plain values.

litgpt's pattern: ``GPTConfig.from_name(name, **overrides)`` shrinks or varies any preset, layer choices are
names (strings) so a config survives YAML and checkpoints, and cross-field checks in ``__post_init__`` say
how to fix a bad value. A variant's own settings are a sub-config defined and checked beside its layer
(``sliding``, ``moe``, ``universal``); a dict given for one becomes the dataclass, so ``asdict`` output and a
checkpoint's hyper-parameters rebuild the same config. Configs written with the older flat names
(``moe_experts``, ``attn_window``...) load through :meth:`GPTConfig.from_dict` (and the constructor), with a
``DeprecationWarning`` naming the new key. Imports no Lightning.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass

from kit.nn.layers import get_activation, get_attention, get_depth, get_ffn
from kit.nn.layers._factory import check_keys, coerce_config
from kit.nn.layers.attention import SlidingWindowConfig
from kit.nn.layers.depth import UniversalConfig
from kit.nn.layers.moe import MoEConfig
from kit.nn.layers.norms import get_norm
from kit.nn.layers.rotary import RopeConfig

__all__ = ["CHECKPOINT_MODES", "POSITIONS", "PRESETS", "RENAMED", "GPTConfig"]

# what activation checkpointing wraps: nothing, whole blocks, or one sublayer of each block
CHECKPOINT_MODES: tuple[str, ...] = ("none", "full", "attention", "ffn")
# how positions enter: a learned absolute embedding added to the tokens (GPT-2), or rotary queries and keys
POSITIONS: tuple[str, ...] = ("learned", "rope")


# The flat names older configs and checkpoints use -> (sub-config, field); GPTConfig.from_dict and the
# constructor map them, with a DeprecationWarning naming the new key.
RENAMED: dict[str, tuple[str, str]] = {
    "attn_window": ("sliding", "window"),
    "attn_global": ("sliding", "global_positions"),
    **{
        f"moe_{name}": ("moe", name)
        for name in (
            "experts",
            "top_k",
            "capacity_factor",
            "eval_capacity_factor",
            "aux_alpha",
            "z_loss",
            "jitter",
            "expert_dropout",
        )
    },
    "ut_max_steps": ("universal", "max_steps"),
    "act_eps": ("universal", "act_eps"),
    "act_ponder_cost": ("universal", "ponder_cost"),
}
_SUBCONFIGS: dict[str, type] = {
    "sliding": SlidingWindowConfig,
    "moe": MoEConfig,
    "universal": UniversalConfig,
}

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
    "activation": "gelu",
    "tie_embeddings": True,
    "attention": "dense",
    "ffn": "mlp",
    "depth": "stack",
    "norm": "layernorm",
    "norm_eps": 1e-5,
    "position": "learned",
}
# fields whose None means something (n_kv_head None: n_head...) but that a preset may still set
_PRESET_OPTIONAL = ("n_kv_head", "head_dim", "mlp_hidden", "qkv_bias", "proj_bias", "mlp_bias", "rope")
_NO_DROPOUT = {"dropout": 0.0, "attn_dropout": 0.0, "embd_dropout": 0.0}
# the Llama family's layer choices: RMSNorm, rotary positions, SwiGLU, no biases, an untied head
_LLAMA = {
    "norm": "rmsnorm",
    "norm_eps": 1e-5,
    "position": "rope",
    "ffn": "swiglu",
    "activation": "silu",
    "bias": False,
    "tie_embeddings": False,
    **_NO_DROPOUT,
}
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
    # a few-KB Llama (grouped-query attention, rotary, RMSNorm, SwiGLU) for unit tests
    "llama-debug": {
        **_LLAMA,
        "vocab_size": 64,
        "block_size": 16,
        "n_layer": 2,
        "n_head": 4,
        "n_kv_head": 2,
        "n_embd": 32,
        "mlp_hidden": 96,
    },
    # SmolLM-135M's shape (Hugging Face's HuggingFaceTB/SmolLM-135M config)
    "smollm-135m": {
        **_LLAMA,
        "vocab_size": 49152,
        "block_size": 2048,
        "n_layer": 30,
        "n_head": 9,
        "n_kv_head": 3,
        "n_embd": 576,
        "mlp_hidden": 1536,
        "tie_embeddings": True,
        "rope": {"theta": 10000.0},
    },
    # Meta Llama 3 8B and 70B (their published configs)
    "llama3-8b": {
        **_LLAMA,
        "vocab_size": 128256,
        "block_size": 8192,
        "n_layer": 32,
        "n_head": 32,
        "n_kv_head": 8,
        "n_embd": 4096,
        "mlp_hidden": 14336,
        "rope": {"theta": 500000.0},
    },
    "llama3-70b": {
        **_LLAMA,
        "vocab_size": 128256,
        "block_size": 8192,
        "n_layer": 80,
        "n_head": 64,
        "n_kv_head": 8,
        "n_embd": 8192,
        "mlp_hidden": 28672,
        "rope": {"theta": 500000.0},
    },
}


@dataclass
class GPTConfig:
    """Shape, layer choice and regularisation of the Transformer; plain values only, so YAML can set it.

    ``name`` picks a preset (``"debug"``, ``"tiny"``, ``"gpt2"``, ``"gpt2-medium"``; the Llama-family
    ``"llama-debug"``, ``"smollm-135m"``, ``"llama3-8b"``, ``"llama3-70b"``) and every field left None
    takes that preset's value (the ``"tiny"`` values when ``name`` is None), so a recipe says
    ``config: {name: tiny, dropout: 0.2}`` and ``--model.init_args.config.n_layer 6`` overrides one field.
    ``vocab_size`` is the exception: None always means "the datamodule's tokenizer size", so the same preset
    follows whatever tokenizer the recipe trains; :meth:`from_name` copies the preset's vocabulary.

    A variant's settings are a sub-config beside its layer, given as the dataclass or a dict:
    ``sliding`` (:class:`~kit.nn.layers.attention.SlidingWindowConfig`), ``moe``
    (:class:`~kit.nn.layers.moe.MoEConfig`), ``universal`` (:class:`~kit.nn.layers.depth.UniversalConfig`).
    In YAML: ``config: {name: tiny, ffn: moe, moe: {experts: 4}}``. The older flat names (``moe_experts``...)
    still work here and in :meth:`from_dict`, with a ``DeprecationWarning`` naming the new key.

    The modern decoder is data too: ``norm="rmsnorm"``, ``position="rope"`` (with ``rope``:
    :class:`~kit.nn.layers.rotary.RopeConfig`), ``ffn="swiglu"``, ``n_kv_head`` for grouped-query attention,
    per-projection biases and an untied head; the defaults reproduce the GPT-2 layout.

    Example:
        >>> GPTConfig.from_name("tiny", n_layer=2).n_layer
        2
        >>> GPTConfig(name="gpt2", dropout=0.1).n_embd
        768
        >>> GPTConfig(ffn="moe", moe={"experts": 4}).moe.experts
        4
        >>> cfg = GPTConfig.from_name("llama3-8b")
        >>> cfg.n_kv_head, cfg.ffn_hidden, cfg.rope.theta
        (8, 14336, 500000.0)
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
    activation: str | None = None  # in kit.nn.layers.ACTIVATIONS, for the MLP and experts: "gelu", "relu"...
    tie_embeddings: bool | None = None  # share the token embedding with the output head
    attention: str | None = None  # a name in kit.nn.layers.ATTENTION: "dense", "sliding_window"
    ffn: str | None = None  # a name in kit.nn.layers.FFN: "mlp", "moe"
    depth: str | None = None  # a name in kit.nn.layers.DEPTH: "stack", "universal"
    norm: str | None = None  # a name in kit.nn.layers.NORMS: "layernorm" (GPT-2), "rmsnorm" (Llama)
    norm_eps: float | None = None  # added inside every norm (LayerNorm's 1e-5 by default)
    position: str | None = None  # "learned" absolute embedding (GPT-2) or "rope" (rotary, no embedding)
    # position="rope": the frequency base and optional Llama-3 scaling; None: the preset's (theta 10000)
    rope: RopeConfig | None = None
    n_kv_head: int | None = None  # key/value heads (grouped-query attention); None: n_head, 1: multi-query
    head_dim: int | None = None  # channels per head; None: n_embd // n_head (Mistral-Nemo sets it apart)
    qkv_bias: bool | None = None  # bias in the fused QKV projection (Qwen2 has one); None: `bias`
    proj_bias: bool | None = None  # bias in the attention output projection; None: `bias`
    mlp_bias: bool | None = None  # biases in the feed-forward projections; None: `bias`
    mlp_hidden: int | None = None  # explicit feed-forward width; None: mlp_ratio * n_embd
    # attention="sliding_window" (Longformer): a query sees keys fewer than sliding.window positions away
    # (earlier ones only when causal) plus sliding.global_positions, which see and are seen by every token
    sliding: SlidingWindowConfig = field(default_factory=SlidingWindowConfig)
    # ffn="moe" (Switch Transformer): moe.experts experts of width mlp_ratio * n_embd, top-k routing with capacity
    moe: MoEConfig = field(default_factory=MoEConfig)
    # depth="universal" (Universal Transformer + ACT): one shared block, at most universal.max_steps applications
    universal: UniversalConfig = field(default_factory=UniversalConfig)
    # recompute activations in backward (kit.nn.transforms): False/"none", True/"full" (whole blocks),
    # "attention" or "ffn" (only that sublayer); checkpoint_every=k does it on every k-th block only
    activation_checkpointing: bool | str = False
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        if self.name is not None and self.name not in PRESETS:
            raise ValueError(f"unknown config name {self.name!r}; choose one of {sorted(PRESETS)}")
        preset = {**_BASE, **PRESETS[self.name or "tiny"]}
        for f in fields(self):
            if (f.name in _BASE or f.name in _PRESET_OPTIONAL) and getattr(self, f.name) is None:
                setattr(self, f.name, preset.get(f.name))
        for key, cls in _SUBCONFIGS.items():  # a dict (YAML, asdict, a checkpoint) becomes the dataclass
            setattr(self, key, coerce_config(getattr(self, key), cls, key))
        self.rope = coerce_config(self.rope if self.rope is not None else {}, RopeConfig, "rope")
        self._check_shape()
        self._check_layers()
        self._check_positions()
        self._check_checkpointing()

    def _check_shape(self) -> None:
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                f"pick n_head from {[h for h in range(1, 33) if self.n_embd % h == 0]}, or set head_dim"
            )
        if self.head_dim is not None and self.head_dim < 1:
            raise ValueError(f"head_dim={self.head_dim} must be >= 1, or null for n_embd // n_head")
        for name in ("block_size", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            raise ValueError(
                f"n_kv_head={self.n_kv_head} does not divide n_head={self.n_head}; pick one of "
                f"{[g for g in range(1, self.n_head + 1) if self.n_head % g == 0]} (1: multi-query) or null (n_head)"
            )
        if self.mlp_hidden is not None and self.mlp_hidden < 1:
            raise ValueError(f"mlp_hidden={self.mlp_hidden} must be >= 1, or null for mlp_ratio * n_embd")
        if self.norm_eps <= 0:
            raise ValueError(
                f"norm_eps={self.norm_eps} must be > 0 (LayerNorm uses 1e-5, Llama 1e-5 or 1e-6)"
            )
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ValueError(
                f"vocab_size={self.vocab_size} must be >= 2, or None to take it from the datamodule"
            )
        for name in ("dropout", "attn_dropout", "embd_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(
                    f"{name}={getattr(self, name)} must be in [0, 1); the seed recipe uses 0.1-0.3"
                )

    def _check_layers(self) -> None:
        for name, registry in (("attention", "ATTENTION"), ("ffn", "FFN")):
            if not isinstance(getattr(self, name), str):  # a class would not survive YAML or a checkpoint
                raise ValueError(
                    f"{name}={getattr(self, name)!r} must be a registered name so the config stays serialisable; "
                    f"register your class first: kit.nn.layers.{registry}['mine'] = MyClass, then {name}='mine'"
                )
        get_attention(self.attention)  # unknown names raise here, listing the registered ones
        get_ffn(self.ffn)
        get_depth(self.depth)
        get_activation(self.activation)
        get_norm(self.norm)

    def _check_positions(self) -> None:
        if self.position not in POSITIONS:
            raise ValueError(f"position={self.position!r} is not one of {list(POSITIONS)}")
        if self.position == "rope" and self.head_size % 2:
            raise ValueError(
                f"position='rope' needs an even head size, but the head size is {self.head_size}; "
                "change n_head, n_embd or head_dim"
            )

    def _check_checkpointing(self) -> None:
        mode = self.activation_checkpointing
        if mode not in (True, False) and mode not in CHECKPOINT_MODES:
            raise ValueError(
                f"activation_checkpointing={mode!r} is not one of {[False, True, *CHECKPOINT_MODES]}"
            )
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every={self.checkpoint_every} must be >= 1 (1: every block)")

    @property
    def head_size(self) -> int:
        """Channels per head: ``head_dim``, or ``n_embd // n_head`` when it is None."""
        return self.head_dim or self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads: ``n_kv_head``, or ``n_head`` when it is None."""
        return self.n_kv_head or self.n_head

    @property
    def ffn_hidden(self) -> int:
        """The feed-forward hidden width: ``mlp_hidden``, or ``mlp_ratio * n_embd`` when it is None."""
        return self.mlp_hidden or self.mlp_ratio * self.n_embd

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> GPTConfig:
        """A config from a plain dict (YAML, a checkpoint's hyper-parameters), older flat names included.

        Each flat name of older configs moves to its sub-config with a ``DeprecationWarning`` naming the new key
        (``moe_experts`` -> ``moe.experts``, ``attn_window`` -> ``sliding.window``, ``attn_global`` ->
        ``sliding.global_positions``, ``ut_max_steps`` -> ``universal.max_steps``, ``act_eps`` ->
        ``universal.act_eps``, ``act_ponder_cost`` -> ``universal.ponder_cost``; :data:`RENAMED` lists them all).

        Args:
            values: field name -> value; sub-configs as dicts or dataclasses.

        Returns:
            The config.

        Raises:
            ValueError: for an unknown key (naming the close matches), or a setting given under both its old
                and its new name.

        Example:
            >>> import warnings
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore", DeprecationWarning)
            ...     GPTConfig.from_dict({"name": "tiny", "ffn": "moe", "moe_experts": 4}).moe.experts
            4
        """
        return cls(**_migrate_flat(values, stacklevel=3))

    @classmethod
    def from_name(cls, name: str, **overrides: object) -> GPTConfig:
        """A named preset, its vocabulary included, with any field overridden (as :meth:`from_dict` reads them).

        Example:
            >>> GPTConfig.from_name("gpt2", dropout=0.1).vocab_size
            50304
            >>> GPTConfig.from_name("debug", ffn="moe", moe={"experts": 2}).moe.experts
            2
        """
        if name not in PRESETS:
            raise ValueError(f"unknown config name {name!r}; choose one of {sorted(PRESETS)}")
        values = {"name": name, "vocab_size": PRESETS[name].get("vocab_size"), **overrides}
        return cls(**_migrate_flat(values, stacklevel=3))


def _accept_flat_names(init: Callable[..., None]) -> Callable[..., None]:
    """Let ``GPTConfig(moe_experts=4)`` work as :meth:`GPTConfig.from_dict` does (with its warning)."""

    @functools.wraps(init)  # keeps the signature that LightningCLI and --print_config read
    def __init__(self: GPTConfig, *args: object, **kwargs: object) -> None:
        if any(name in RENAMED for name in kwargs):
            kwargs = _migrate_flat(kwargs, stacklevel=3)
        init(self, *args, **kwargs)

    return __init__


GPTConfig.__init__ = _accept_flat_names(GPTConfig.__init__)


def _migrate_flat(values: Mapping[str, object], stacklevel: int) -> dict[str, object]:
    """``values`` with each older flat name moved into its sub-config dict, warning once per name."""
    out = dict(values)
    moved: dict[str, dict[str, object]] = {}
    for old, (group, key) in RENAMED.items():
        if old in out:
            value = out.pop(old)
            warnings.warn(
                f"GPTConfig key {old!r} is now {group}.{key}; write `{group}: {{{key}: {value!r}}}` in YAML "
                f"or GPTConfig({group}={{{key!r}: {value!r}}})",
                DeprecationWarning,
                stacklevel=stacklevel,
            )
            moved.setdefault(group, {})[key] = value
    check_keys(out, [f.name for f in fields(GPTConfig)], "GPTConfig")
    for group, settings in moved.items():
        given = out.get(group)
        if is_dataclass(given) and not isinstance(given, type):
            given = asdict(given)
        given = dict(given or {})
        both = sorted(set(given) & set(settings))
        if both:
            raise ValueError(
                f"{group}.{both[0]} is set twice, under its old flat name and in {group}; keep only {group}.{both[0]}"
            )
        out[group] = {**given, **settings}
    return out
