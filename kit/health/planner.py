"""Compute planner: training FLOPs, GPU-time, and memory per GPU under DDP and ZeRO-1/2/3.

Formulas (all documented in docs/planner.md):

- FLOPs per token = ``6 N`` (forward 2N, backward 4N) ``+ 12 L d T`` for attention scores and the
  weighted sum (QK^T and AV, forward + backward; the count PaLM uses for MFU), from
  :mod:`kit.health.flops`, which also holds the GPU table (``GPUS``, re-exported here).
- Memory (mixed precision + Adam, the ZeRO paper's accounting): bf16 weights ``2N``, bf16 gradients
  ``2N``, fp32 master weights + Adam m + v ``12N``. DDP keeps all of it on every GPU; ZeRO-1 shards
  the optimizer state over G GPUs, ZeRO-2 also the gradients, ZeRO-3 (= FSDP full shard) also the
  weights (plus a gathered layer as working buffer).
- Activations per layer (Korthikanti et al. 2022, no tensor parallel): ``s b h (34 + 5 a s / h)``
  bytes; the ``5 a s / h`` term (attention matrix) vanishes with flash attention. With full
  activation checkpointing only each layer's input (``2 s b h``) is kept, plus one layer's full
  activations during recomputation.

Example:
    >>> plan = TrainingPlan(params=7e9, tokens=1e12, gpu="h100-80gb", mfu=0.4, n_gpus=64)
    >>> round(plan.total_flops / 1e22, 1)
    4.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kit.health.flops import GPUS, GPUSpec, transformer_flops

__all__ = [
    "GPUS",
    "STRATEGIES",
    "GPUSpec",
    "Layout",
    "MemoryBreakdown",
    "TrainingPlan",
    "bubble_fraction",
    "gpus_for_days",
    "layout_comm",
    "layout_memory",
    "memory_per_gpu",
    "min_gpus_that_fit",
    "model_shape",
    "preset_shape",
    "suggest_layout",
    "training_flops",
]


STRATEGIES = ("ddp", "zero1", "zero2", "zero3")


def get_gpu(name: str) -> GPUSpec:
    """Look up a GPU by table name (case-insensitive).

    Raises:
        ValueError: listing the known names.
    """
    key = name.lower()
    if key not in GPUS:
        raise ValueError(f"gpu={name!r} is not in the table; choose one of: {', '.join(GPUS)}")
    return GPUS[key]


def model_shape(params: float, aspect: float = 128.0) -> tuple[int, int]:
    """Guess ``(n_layer, d_model)`` for a decoder with ``params ~ 12 L d^2`` and ``d / L = aspect``.

    GPT-3 175B (d=12288, L=96) and Llama-7B (4096, 32) both have d/L = 128.
    """
    d = (params * aspect / 12.0) ** (1.0 / 3.0)
    d = max(64, round(d / 64.0) * 64)
    layers = max(1, round(params / (12.0 * d * d)))
    return layers, d


def preset_shape(name: str) -> dict[str, float | int]:
    """The planner's view of a ``GPTConfig`` preset (``"llama3-8b"``, ``"llama3-70b"``, ``"gpt2"``...).

    Returns:
        ``params`` (counted exactly on the meta device, position embeddings excluded as in FLOP counts),
        ``n_layer``, ``d_model``, ``n_head``, ``n_kv_head`` and ``seq_len`` (the preset's context length).

    Raises:
        ValueError: an unknown preset, listing the known ones.

    Example:
        >>> shape = preset_shape("llama3-8b")
        >>> shape["params"], shape["n_kv_head"]
        (8030261248, 8)
    """
    import torch

    from kit.nn import GPT, GPTConfig

    config = GPTConfig.from_name(name)
    with torch.device("meta"):  # exact count, no memory
        params = GPT(config).num_params()
    return {
        "params": params,
        "n_layer": config.n_layer,
        "d_model": config.n_embd,
        "n_head": config.n_head,
        "n_kv_head": config.kv_heads,
        "seq_len": config.block_size,
    }


def training_flops(params: float, tokens: float, n_layer: int, d_model: int, seq_len: int) -> float:
    """``6 N D + 12 L d T D``: dense matmuls plus attention (forward + backward), by
    :func:`kit.health.flops.transformer_flops` (the count the model and the MFU code use too)."""
    return transformer_flops(params, n_layer, d_model, seq_len, tokens=tokens)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU by kind."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    buffers: float = 0.0

    @property
    def total(self) -> float:
        """Sum of all parts."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.buffers


def memory_per_gpu(
    params: float,
    n_gpus: int,
    strategy: str = "zero3",
    checkpointing: bool = False,
    n_layer: int | None = None,
    d_model: int | None = None,
    n_head: int | None = None,
    seq_len: int = 2048,
    micro_batch: int = 1,
    flash_attention: bool = True,
) -> MemoryBreakdown:
    """Memory per GPU for mixed-precision Adam training.

    Args:
        params: parameter count N.
        n_gpus: data-parallel world size G.
        strategy: ``"ddp"``, ``"zero1"``, ``"zero2"`` or ``"zero3"`` (FSDP full shard).
        checkpointing: full activation checkpointing per layer.
        n_layer: layers (guessed from N when ``None``).
        d_model: width (guessed from N when ``None``).
        n_head: heads (``d_model / 128`` when ``None``).
        seq_len: sequence length s.
        micro_batch: sequences per GPU per micro-step b.
        flash_attention: no materialised attention matrix.

    Returns:
        A :class:`MemoryBreakdown` in bytes.

    Raises:
        ValueError: on an unknown strategy or ``n_gpus < 1``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {STRATEGIES}")
    if n_gpus < 1:
        raise ValueError(f"n_gpus={n_gpus} must be >= 1")
    if n_layer is None or d_model is None:
        n_layer, d_model = model_shape(params)
    n_head = n_head or max(1, d_model // 128)
    g = float(n_gpus)
    weights, grads, optim = 2.0 * params, 2.0 * params, 12.0 * params
    buffers = 0.0
    if strategy in ("zero1", "zero2", "zero3"):
        optim /= g
    if strategy in ("zero2", "zero3"):
        grads /= g
    if strategy == "zero3":
        weights /= g
        if n_gpus > 1:  # two gathered layers in bf16 (current + prefetch); nothing to gather on one GPU
            buffers = 2 * 2.0 * params / n_layer
    s, b, h, a = seq_len, micro_batch, d_model, n_head
    per_layer = s * b * h * (34.0 + (0.0 if flash_attention else 5.0 * a * s / h))
    if checkpointing:
        acts = n_layer * 2.0 * s * b * h + per_layer
    else:
        acts = n_layer * per_layer
    return MemoryBreakdown(weights, grads, optim, acts, buffers)


def min_gpus_that_fit(
    params: float,
    gpu: str,
    strategy: str,
    checkpointing: bool,
    headroom: float = 0.9,
    max_gpus: int = 1 << 16,
    **kw,
) -> int | None:
    """Smallest G whose per-GPU memory fits ``headroom * memory``; ``None`` if none up to ``max_gpus``.

    The 10% headroom covers the CUDA context, allocator fragmentation and temporary buffers.
    """
    cap = get_gpu(gpu).memory_gb * 1e9 * headroom
    if memory_per_gpu(params, 1, strategy, checkpointing, **kw).total <= cap:
        return 1
    if memory_per_gpu(params, max_gpus, strategy, checkpointing, **kw).total > cap:
        return None
    lo, hi = 1, max_gpus  # memory is non-increasing in G: bisect
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if memory_per_gpu(params, mid, strategy, checkpointing, **kw).total <= cap:
            hi = mid
        else:
            lo = mid
    return hi


def gpus_for_days(total_flops: float, gpu: str, mfu: float, days: float) -> int:
    """GPUs needed to do ``total_flops`` in ``days`` at utilisation ``mfu``."""
    return math.ceil(total_flops / (get_gpu(gpu).peak_flops * mfu * days * 86400.0))


@dataclass
class TrainingPlan:
    """A full plan: FLOPs, time and memory for one model/data/GPU choice.

    Args:
        params: parameter count N.
        tokens: training tokens D.
        gpu: GPU table name.
        mfu: model FLOPs utilisation (0.3-0.5 is typical for large runs).
        n_gpus: GPUs for the time estimate (``None``: the smallest ZeRO-3 + checkpointing count that fits).
        seq_len: sequence length.
        micro_batch: sequences per GPU per micro-step.
        n_layer: layers (guessed from N when ``None``).
        d_model: width (guessed from N when ``None``).
        flash_attention: attention matrix not materialised.
        active_params: parameters one token uses (a mixture of experts: see
            :func:`kit.health.flops.moe_active_params`); FLOPs and time count these, memory counts ``params``.
            None: ``params`` (a dense model).

    Raises:
        ValueError: on non-positive sizes or ``mfu`` outside (0, 1].
    """

    params: float
    tokens: float
    gpu: str = "h100-80gb"
    mfu: float = 0.4
    n_gpus: int | None = None
    seq_len: int = 2048
    micro_batch: int = 1
    n_layer: int | None = None
    d_model: int | None = None
    flash_attention: bool = True
    active_params: float | None = None
    fits: dict[str, int | None] = field(init=False)

    def __post_init__(self) -> None:
        if self.params <= 0 or self.tokens <= 0:
            raise ValueError(f"params={self.params} and tokens={self.tokens} must be > 0, e.g. --params 7e9")
        if self.active_params is not None and not 0 < self.active_params <= self.params:
            raise ValueError(
                f"active_params={self.active_params} must be in (0, params={self.params}]; "
                "for a top-k mixture of E experts see kit.health.flops.moe_active_params"
            )
        if not 0 < self.mfu <= 1:
            raise ValueError(f"mfu={self.mfu} must be in (0, 1]; 0.4 is a typical large-run value")
        self.spec = get_gpu(self.gpu)
        if self.n_layer is None or self.d_model is None:
            self.n_layer, self.d_model = model_shape(self.params)
        self.fits = {
            f"{s}{'+ckpt' if c else ''}": min_gpus_that_fit(self.params, self.gpu, s, c, **self._shape_kw())
            for s in STRATEGIES
            for c in (False, True)
        }
        if self.n_gpus is None:
            self.n_gpus = self.fits["zero3+ckpt"] or 1

    def _shape_kw(self) -> dict:
        return {
            "n_layer": self.n_layer,
            "d_model": self.d_model,
            "seq_len": self.seq_len,
            "micro_batch": self.micro_batch,
            "flash_attention": self.flash_attention,
        }

    @property
    def total_flops(self) -> float:
        """Training FLOPs (6ND + attention)."""
        active = self.params if self.active_params is None else self.active_params
        return training_flops(active, self.tokens, self.n_layer, self.d_model, self.seq_len)

    @property
    def attention_share(self) -> float:
        """Fraction of the FLOPs spent in attention scores."""
        active = self.params if self.active_params is None else self.active_params
        return 1.0 - 6.0 * active * self.tokens / self.total_flops

    @property
    def gpu_hours(self) -> float:
        """GPU-hours at the given MFU (independent of the GPU count)."""
        return self.total_flops / (self.spec.peak_flops * self.mfu) / 3600.0

    @property
    def days(self) -> float:
        """Wall-clock days on ``n_gpus`` GPUs (perfect data-parallel scaling assumed)."""
        return self.gpu_hours / self.n_gpus / 24.0

    def memory(self, strategy: str, checkpointing: bool, n_gpus: int | None = None) -> MemoryBreakdown:
        """Per-GPU memory for a strategy at ``n_gpus`` (default: the plan's)."""
        return memory_per_gpu(self.params, n_gpus or self.n_gpus, strategy, checkpointing, **self._shape_kw())


# -- 3D layouts: data x tensor x pipeline parallel ------------------------------------------------------------


def bubble_fraction(n_stages: int, n_microbatches: int) -> float:
    """Idle share of a GPipe / 1F1B step: ``(p - 1) / (m + p - 1)`` (Narayanan et al. 2021, section 2.2).

    Example:
        >>> round(bubble_fraction(4, 16), 3)
        0.158
    """
    if n_stages < 1 or n_microbatches < 1:
        raise ValueError(f"n_stages={n_stages} and n_microbatches={n_microbatches} must be >= 1")
    return (n_stages - 1) / (n_microbatches + n_stages - 1)


@dataclass(frozen=True)
class Layout:
    """A DP x TP x PP layout and what it costs per GPU.

    ``comm`` holds bytes each GPU sends per optimizer step, by kind: ``tp`` (sequence-parallel all-gathers and
    reduce-scatters of ``s b h`` bf16 activations, 4 per layer forward and 4 backward, ring volume
    ``(t - 1) / t``), ``pp`` (one activation forward and one gradient backward per micro-batch and stage
    boundary), ``dp`` (ring all-reduce of the GPU's bf16 gradient shard, ``2 (d - 1) / d`` of it).
    """

    dp: int
    tp: int
    pp: int
    n_microbatches: int
    memory: MemoryBreakdown
    fits: bool
    comm: dict[str, float]

    @property
    def bubble(self) -> float:
        """Pipeline bubble fraction (p-1)/(m+p-1)."""
        return bubble_fraction(self.pp, self.n_microbatches)

    @property
    def n_gpus(self) -> int:
        return self.dp * self.tp * self.pp


def layout_memory(
    params: float,
    dp: int,
    tp: int,
    pp: int,
    *,
    n_layer: int,
    d_model: int,
    n_head: int | None = None,
    seq_len: int = 2048,
    micro_batch: int = 1,
    n_microbatches: int = 1,
    checkpointing: bool = True,
    flash_attention: bool = True,
) -> MemoryBreakdown:
    """Memory per GPU under DP x TP x PP with mixed-precision Adam.

    Weights, gradients and optimizer state (``2N + 2N + 12N``) are split over ``tp * pp``; the optimizer
    state is further sharded over the ``dp`` replicas (ZeRO-1, Megatron's distributed optimizer).
    Activations follow Korthikanti et al. (2022) with sequence parallelism: ``s b h (34 + 5 a s / h) / t``
    per layer; the first stage of 1F1B holds ``min(p, m)`` micro-batches of its ``L / p`` layers. With
    checkpointing only each layer's input ``2 s b h / t`` stays, plus one layer's activations.
    """
    n_head = n_head or max(1, d_model // 128)
    shard = params / (tp * pp)
    weights, grads, optim = 2.0 * shard, 2.0 * shard, 12.0 * shard / dp
    s, b, h, a = seq_len, micro_batch, d_model, n_head
    per_layer = s * b * h * (34.0 + (0.0 if flash_attention else 5.0 * a * s / h)) / tp
    layers = math.ceil(n_layer / pp)
    in_flight = min(pp, n_microbatches)
    if checkpointing:
        acts = in_flight * layers * 2.0 * s * b * h / tp + per_layer
    else:
        acts = in_flight * layers * per_layer
    return MemoryBreakdown(weights, grads, optim, acts)


def layout_comm(
    params: float,
    dp: int,
    tp: int,
    pp: int,
    *,
    n_layer: int,
    d_model: int,
    seq_len: int = 2048,
    micro_batch: int = 1,
    n_microbatches: int = 1,
) -> dict[str, float]:
    """Bytes sent per GPU per optimizer step by tensor, pipeline and data parallelism (see :class:`Layout`)."""
    act = 2.0 * seq_len * micro_batch * d_model  # one bf16 activation of a micro-batch
    layers = math.ceil(n_layer / pp)
    tp_bytes = 8.0 * (tp - 1) / tp * act * layers * n_microbatches if tp > 1 else 0.0
    pp_bytes = 2.0 * act * n_microbatches if pp > 1 else 0.0
    dp_bytes = 2.0 * (dp - 1) / dp * 2.0 * params / (tp * pp) if dp > 1 else 0.0
    return {"tp": tp_bytes, "pp": pp_bytes, "dp": dp_bytes}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def suggest_layout(
    params: float,
    n_gpus: int,
    gpu: str = "h100-80gb",
    *,
    gpus_per_node: int = 8,
    n_layer: int | None = None,
    d_model: int | None = None,
    n_head: int | None = None,
    seq_len: int = 2048,
    micro_batch: int = 1,
    n_microbatches: int | None = None,
    checkpointing: bool = True,
    flash_attention: bool = True,
    headroom: float = 0.9,
    n_kv_head: int | None = None,
) -> Layout:
    """Megatron's rule of thumb: TP inside a node up to 8, then PP across nodes until it fits, DP for the rest.

    TP grows through the divisors of ``n_gpus`` that divide the head count (and the key/value head count
    ``n_kv_head`` of a grouped-query model; None: ``n_head``) and are at most
    ``min(8, gpus_per_node)``, smallest first, until the model fits ``headroom`` of the GPU; then PP grows
    through the divisors of the rest that are at most ``n_layer``; the leftover GPUs are data parallel.
    ``n_microbatches`` defaults to ``4 p`` (bubble under 20%). If nothing fits, the last layout tried is
    returned with ``fits=False``.

    Example:
        >>> lay = suggest_layout(70e9, 64, "h100-80gb", n_layer=80, d_model=8192, n_head=64)
        >>> (lay.tp, lay.pp, lay.dp, lay.fits)
        (8, 1, 8, True)
    """
    if n_gpus < 1:
        raise ValueError(f"n_gpus={n_gpus} must be >= 1")
    if n_layer is None or d_model is None:
        n_layer, d_model = model_shape(params)
    n_head = n_head or max(1, d_model // 128)
    cap = get_gpu(gpu).memory_gb * 1e9 * headroom
    kw = {"n_layer": n_layer, "d_model": d_model, "seq_len": seq_len, "micro_batch": micro_batch}

    def build(tp: int, pp: int) -> Layout:
        dp = n_gpus // (tp * pp)
        m = n_microbatches or (4 * pp if pp > 1 else 1)
        mem = layout_memory(
            params,
            dp,
            tp,
            pp,
            n_head=n_head,
            n_microbatches=m,
            checkpointing=checkpointing,
            flash_attention=flash_attention,
            **kw,
        )
        comm = layout_comm(params, dp, tp, pp, n_microbatches=m, **kw)
        return Layout(dp, tp, pp, m, mem, mem.total <= cap, comm)

    kv = n_kv_head or n_head
    tps = [t for t in _divisors(n_gpus) if t <= min(8, gpus_per_node) and n_head % t == 0 and kv % t == 0]
    layout = build(1, 1)
    for tp in tps:
        layout = build(tp, 1)
        if layout.fits:
            return layout
    tp = tps[-1]
    for pp in _divisors(n_gpus // tp):
        if pp > n_layer:
            break
        layout = build(tp, pp)
        if layout.fits:
            return layout
    return layout
