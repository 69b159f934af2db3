"""Parameter-efficient fine-tuning of the kit's backbone: LoRA and QLoRA (through ``peft`` and ``bitsandbytes``),
Houlsby bottleneck adapters, and prompt tuning; plus the cost report every method prints at fit start.

:func:`apply_peft` is step 1 of ``kit.nn.transforms.apply_transforms``: it freezes the backbone and adds the
method's trainable parameters. The methods:

| ``method`` | trains | paper |
| --- | --- | --- |
| ``"full"`` | everything | |
| ``"lora"`` | rank-``r`` updates ``B A`` beside each targeted Linear (``peft.LoraConfig``) | Hu et al. 2021 |
| ``"qlora"`` | LoRA over 4-bit NF4 base weights (``bitsandbytes.nn.Linear4bit``) | Dettmers et al. 2023 |
| ``"adapters"`` | ``x + up(act(down(x)))`` after attention and/or the FFN, up-projection zero-initialised | Houlsby et al. 2019 |
| ``"prompt"`` | ``n`` soft-prompt vectors prepended to the input embeddings | Lester et al. 2021 |

Where the kit differs from the papers: Houlsby also trains the LayerNorms; here they stay frozen unless
``train_norms=True`` (so "backbone frozen" holds bitwise). Prompt tuning prepends the prompt after the position
embeddings are added to the real tokens (a forward hook on the backbone's embedding dropout ``drop``): the prompt
vectors are free parameters, so a position term on them would be absorbed into them anyway.

Example:
    >>> from kit.nn import GPT, GPTConfig
    >>> model = apply_peft(GPT(GPTConfig.from_name("debug")), PeftConfig(method="adapters", adapter_size=4))
    >>> trainable_fraction(model) < 0.2
    True
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from kit.nn.layers.norms import RMSNorm

__all__ = [
    "METHODS",
    "BottleneckAdapter",
    "PeftConfig",
    "SoftPrompt",
    "adapter_state_dict",
    "apply_peft",
    "cost_report",
    "load_adapter_state_dict",
    "measured_optimizer_state_bytes",
    "merge_lora",
    "optimizer_state_bytes",
    "prompt_length",
    "quantize_4bit",
    "trainable_fraction",
]

METHODS = ("full", "lora", "qlora", "adapters", "prompt")


@dataclass
class PeftConfig:
    """Which parameter-efficient method to apply and its knobs; plain values, so a recipe YAML can set it.

    Example:
        >>> PeftConfig(method="lora", lora_r=4).lora_alpha
        16
    """

    method: str = "full"  # one of METHODS
    lora_r: int = 8  # LoRA rank r
    lora_alpha: int = 16  # LoRA scale is alpha / r
    lora_dropout: float = 0.0  # dropout on the LoRA branch input
    # Linear module names (suffixes) LoRA/QLoRA target: attention qkv + output proj, MLP fc + proj
    lora_targets: list[str] = field(default_factory=lambda: ["qkv", "proj", "fc"])
    adapter_size: int = 16  # Houlsby bottleneck width
    adapter_positions: list[str] = field(default_factory=lambda: ["attn", "ffn"])  # after which sublayers
    prompt_tokens: int = 8  # soft-prompt length n
    prompt_init: str = "vocab"  # "vocab": copies of random token embeddings; "random": N(0, 0.02)
    quant_type: str = "nf4"  # bitsandbytes 4-bit type for QLoRA: "nf4" or "fp4"
    train_norms: bool = False  # also train the norms (Houlsby did); False keeps the backbone frozen
    seed: int = 0  # draws the vocabulary rows that initialise the prompt

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {METHODS}")
        for name in ("lora_r", "lora_alpha", "adapter_size", "prompt_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
        if not self.lora_targets:
            raise ValueError("lora_targets is empty; name Linear modules, e.g. ['qkv', 'proj']")
        bad = sorted(set(self.adapter_positions) - {"attn", "ffn"})
        if bad or not self.adapter_positions:
            raise ValueError(
                f"adapter_positions={self.adapter_positions} must be a non-empty subset of ['attn', 'ffn']"
            )
        if self.prompt_init not in ("vocab", "random"):
            raise ValueError(f"prompt_init={self.prompt_init!r} must be 'vocab' or 'random'")
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"quant_type={self.quant_type!r} must be 'nf4' or 'fp4'")


# -- bottleneck adapters ------------------------------------------------------------------------------------
class BottleneckAdapter(nn.Module):
    """Houlsby adapter ``h + up(gelu(down(h)))``; ``up`` starts at zero so the adapted model starts as the base.

    Example:
        >>> a = BottleneckAdapter(8, 2); h = torch.randn(3, 8)
        >>> torch.equal(a(h), h)
        True
    """

    def __init__(self, d_model: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, d_model)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


def _add_adapters(model: nn.Module, cfg: PeftConfig) -> None:
    blocks = _blocks(model)
    d = model.config.n_embd
    for block in blocks:
        for pos, sub in (("attn", "attn"), ("ffn", "mlp")):
            if pos in cfg.adapter_positions:
                adapter = BottleneckAdapter(d, cfg.adapter_size)
                # a child of the block (so it saves, moves and counts with it) fed by a hook on the sublayer's
                # output: the sublayers and the backbone's state-dict keys stay as they were
                block.add_module(f"adapter_{pos}", adapter)
                getattr(block, sub).register_forward_hook(_HookCall(adapter))


class _HookCall:
    """A picklable forward hook that passes a sublayer's output through its adapter."""

    def __init__(self, adapter: nn.Module) -> None:
        self.adapter = adapter

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.adapter(output)


# -- prompt tuning ------------------------------------------------------------------------------------------
class SoftPrompt(nn.Module):
    """``n`` learned vectors prepended to every sequence's embeddings: (B, T, C) -> (B, n + T, C).

    Example:
        >>> p = SoftPrompt(torch.zeros(4, 8)); p(torch.ones(2, 3, 8)).shape
        torch.Size([2, 7, 8])
    """

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.embedding = nn.Parameter(init.clone())  # (n, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prompt = self.embedding.to(x.dtype).unsqueeze(0).expand(x.size(0), -1, -1)
        return torch.cat([prompt, x], dim=1)


def _add_prompt(model: nn.Module, cfg: PeftConfig) -> None:
    wte = model.wte.weight
    if cfg.prompt_init == "vocab":  # Lester et al.: initialise from (sampled) vocabulary embeddings
        g = torch.Generator().manual_seed(cfg.seed)
        rows = torch.randint(0, wte.size(0), (cfg.prompt_tokens,), generator=g)
        init = wte.detach()[rows.to(wte.device)].float()
    else:
        init = torch.randn(cfg.prompt_tokens, wte.size(1)) * 0.02
    model.soft_prompt = SoftPrompt(init)
    model.drop.register_forward_hook(_HookCall(model.soft_prompt))


def prompt_length(model: nn.Module) -> int:
    """Number of soft-prompt positions the backbone prepends (0 without prompt tuning)."""
    base = _base(model)
    prompt = getattr(base, "soft_prompt", None)
    return 0 if prompt is None else prompt.embedding.size(0)


# -- LoRA / QLoRA -------------------------------------------------------------------------------------------
def _target_linears(model: nn.Module, targets: list[str]) -> list[str]:
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.split(".")[-1] in targets and n.startswith("blocks.")
    ]
    if not names:
        found = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"lora_targets={targets} match no Linear inside the blocks; the backbone has {found}"
        )
    return names


def quantize_4bit(model: nn.Module, targets: list[str], quant_type: str = "nf4") -> nn.Module:
    """Replace the targeted ``nn.Linear`` layers of the blocks by frozen ``bitsandbytes.nn.Linear4bit`` ones.

    The weights are quantized at once on their current device (bitsandbytes >= 0.45 quantizes on CPU too);
    biases stay in full precision, as in QLoRA. Marks the model ``is_loaded_in_4bit`` so ``peft`` wraps the
    layers with its 4-bit LoRA class.

    Args:
        model: the backbone.
        targets: Linear names (last path component) to quantize.
        quant_type: ``"nf4"`` (NormalFloat, the QLoRA choice) or ``"fp4"``.

    Returns:
        ``model``, modified in place.
    """
    import bitsandbytes as bnb

    for name in _target_linears(model, targets):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        lin: nn.Linear = getattr(parent, child)
        q = bnb.nn.Linear4bit(
            lin.in_features,
            lin.out_features,
            bias=lin.bias is not None,
            compute_dtype=lin.weight.dtype,
            quant_type=quant_type,
            device=lin.weight.device,
        )
        weight = bnb.nn.Params4bit(lin.weight.data.contiguous(), requires_grad=False, quant_type=quant_type)
        q.weight = weight._quantize(lin.weight.device)
        # bitsandbytes 0.50's CPU inference fast path (AVX512-bf16 CPUs, eval mode, no grad) repacks the weight in
        # place and needs in_features to be a multiple of the 64-value block (it fails on a 32-wide model);
        # the generic dequantize-and-matmul path works for every shape in training and evaluation alike
        q.support_avx512bf16_for_cpu = False
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        setattr(parent, child, q)
    model.is_loaded_in_4bit = True
    return model


def _add_lora(model: nn.Module, cfg: PeftConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    _target_linears(model, cfg.lora_targets)  # a clear error before peft's
    config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_targets,
        bias="none",
    )
    return get_peft_model(model, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the LoRA updates into the base weights and drop the wrappers (``peft``'s merge-and-unload).

    Returns:
        The plain backbone (a 4-bit one is dequantized, merged and requantized, which rounds).
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError(
            f"merge_lora needs the PeftModel apply_peft returns for lora/qlora, got {type(model).__name__}"
        )
    return model.merge_and_unload()


# -- entry point --------------------------------------------------------------------------------------------
def _base(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no .blocks; PEFT methods expect kit.nn.GPT")
    return blocks


def apply_peft(model: nn.Module, cfg: PeftConfig | None) -> nn.Module:
    """Freeze the backbone and add the method's trainable parameters (``"full"`` leaves everything trainable).

    Args:
        model: a ``kit.nn.GPT`` (anything with ``blocks``, ``wte``, ``drop`` and ``config.n_embd``).
        cfg: the method; None or ``method="full"`` returns ``model`` unchanged.

    Returns:
        The model to train: ``model`` itself, or a ``peft.PeftModel`` around it for LoRA/QLoRA (its attributes,
        ``hidden_states`` included, reach the backbone).
    """
    if cfg is None or cfg.method == "full":
        return model
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.method == "qlora":
        quantize_4bit(model, cfg.lora_targets, cfg.quant_type)
    if cfg.method in ("lora", "qlora"):
        model = _add_lora(model, cfg)
    elif cfg.method == "adapters":
        _add_adapters(model, cfg)
    elif cfg.method == "prompt":
        _add_prompt(model, cfg)
    if cfg.train_norms:
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, RMSNorm)):
                m.requires_grad_(True)
    return model


# -- reports and adapter-only state ----------------------------------------------------------------------------
def _logical_numel(p: torch.Tensor) -> int:
    state = getattr(p, "quant_state", None)  # a 4-bit weight stores two values per byte
    return int(math.prod(state.shape)) if state is not None else p.numel()


def trainable_fraction(module: nn.Module) -> float:
    """Trainable share of the (logical, unquantized) parameter count."""
    total = sum(_logical_numel(p) for p in module.parameters())
    return sum(p.numel() for p in module.parameters() if p.requires_grad) / max(1, total)


def optimizer_state_bytes(params: list[torch.Tensor], optimizer: str = "adamw", block: int = 256) -> int:
    """Bytes of optimizer state the parameters will hold once stepped.

    ``"adamw"``: two moments in the parameter's dtype (plus a scalar step per tensor, as torch stores it).
    ``"adamw8bit"``: bitsandbytes' blockwise 8-bit moments for tensors of >= 4096 elements (one byte each
    plus a float32 absmax per ``block`` values, and two 256-entry float32 quantization maps), full 32-bit state
    below that size (its ``min_8bit_size``).
    """
    total = 0
    for p in params:
        n = p.numel()
        if optimizer == "adamw8bit" and n >= 4096:
            total += 2 * n + 2 * 4 * math.ceil(n / block) + 2 * 256 * 4
        else:
            total += 2 * n * p.element_size() + (4 if optimizer == "adamw" else 0)
    return total


def measured_optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes actually held in ``optimizer.state`` (after at least one step)."""
    return sum(
        v.numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if torch.is_tensor(v)
    )


def adapter_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors only, keyed as in ``module.state_dict()``: a per-task checkpoint."""
    keep = {n for n, p in module.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k in keep}


def load_adapter_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an :func:`adapter_state_dict` into a module built the same way (backbone loaded separately).

    Raises:
        KeyError: a saved key the module lacks, or a trainable parameter the state misses.
    """
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    unexpected, missing = sorted(set(state) - trainable), sorted(trainable - set(state))
    if unexpected or missing:
        raise KeyError(
            f"adapter state does not fit this module: unexpected {unexpected[:5]}, missing {missing[:5]}; "
            "build the module with the same PeftConfig"
        )
    module.load_state_dict(state, strict=False)


def _nbytes(state: dict[str, torch.Tensor]) -> int:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.tell()


def cost_report(module: nn.Module, optimizer: str = "adamw") -> dict[str, float]:
    """What a fine-tuning run costs in parameters and bytes, before it starts.

    Returns:
        ``trainable_params``, ``total_params`` (logical: a 4-bit weight counts its unquantized size),
        ``trainable_pct``, ``optimizer_state_bytes`` (:func:`optimizer_state_bytes`), ``checkpoint_bytes``
        (``torch.save`` of the trainable tensors: what each new task adds), ``full_checkpoint_bytes``
        (``torch.save`` of the whole ``state_dict``) and ``weight_bytes`` (parameters and buffers as stored).
    """
    trainable = [p for p in module.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in trainable)
    total = sum(_logical_numel(p) for p in module.parameters())
    full = module.state_dict()
    return {
        "trainable_params": n_train,
        "total_params": total,
        "trainable_pct": 100.0 * n_train / max(1, total),
        "optimizer_state_bytes": optimizer_state_bytes(trainable, optimizer),
        "checkpoint_bytes": _nbytes(adapter_state_dict(module)),
        "full_checkpoint_bytes": _nbytes(full),
        "weight_bytes": sum(t.numel() * t.element_size() for t in full.values() if torch.is_tensor(t)),
    }
