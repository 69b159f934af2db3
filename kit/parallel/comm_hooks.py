"""DDP communication hooks with byte accounting: fp16/bf16, PowerSGD, top-k and 1-bit sign with error feedback.

A hook is ``hook(state, bucket) -> Future[Tensor]`` as ``DistributedDataParallel.register_comm_hook``
expects. Every state here carries a :class:`CommStats` that counts, per collective, the wire bytes this
worker sends at the group's world size, and the bytes a dense fp32 ring all-reduce of the same bucket would
send at that world size, so the compression ratio can be logged honestly at any W. fp16/bf16 and PowerSGD
delegate the communication to torch's own hooks; top-k and 1-bit average through the two-phase compressed
all-reduce of :mod:`kit.parallel.two_phase` (``scheme="2phase"``, bytes per worker independent of W) or one
``all_gather`` of every worker's message (``scheme="allgather"``, a small-W method).
:func:`onebit_adam_hook` is the gradient side of :class:`kit.parallel.onebit_adam.OneBitAdam`.

Use :func:`make_comm_hook` to build a (state, hook) pair by name:

Example:
    >>> state, hook = make_comm_hook("topk", topk_ratio=0.01)  # or make_comm_hook("topk", CommHookConfig(...))
    >>> ddp_model.register_comm_hook(state, hook)  # doctest: +SKIP
"""

# No ``from __future__ import annotations`` here: DDP checks the hooks' annotations as real objects.
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

from kit.parallel.compression import (
    dense_bytes,
    method_wire_bytes,
    powersgd_bytes,
    sign_compress,
    sign_decompress,
    topk_compress,
    wire_bytes,
)
from kit.parallel.two_phase import ErrorFeedback, SignCodec, TopKCodec, compressed_allreduce

__all__ = [
    "COMM_SETTINGS",
    "DEFAULT_COMM",
    "HOOKS",
    "SCHEMES",
    "UNSET",
    "CommHookConfig",
    "CommStats",
    "HookState",
    "OneBitAdamHookState",
    "PowerSGDHookState",
    "ResidualState",
    "Unset",
    "allreduce_hook",
    "bf16_hook",
    "comm_config",
    "fp16_hook",
    "hook_state_dict",
    "load_hook_state_dict",
    "make_comm_hook",
    "onebit_adam_hook",
    "onebit_hook",
    "powersgd_hook",
    "topk_hook",
]


@dataclass
class CommStats:
    """Wire bytes this worker sent vs a dense fp32 ring all-reduce of the same tensors at the same world size.

    Every collective a hook or optimizer issues is counted by :meth:`collective` from the bytes of the tensor
    it passes in, through :func:`kit.parallel.compression.wire_bytes` (ring all-reduce ``2(W-1)/W x B``,
    all-gather ``(W-1) x B``, all-to-all ``(W-1)/W x B``); :meth:`baseline` adds what a dense fp32 ring
    all-reduce of the same ``numel`` would have sent. So ``ratio = dense / sent`` is the honest cut at this W,
    not the payload ratio (which flatters all-gather schemes as W grows). Bytes received equal bytes sent
    for all three collectives. With one worker nothing goes on the wire: both are 0 and ``ratio`` is 1.

    Example:
        >>> s = CommStats()
        >>> s.collective("all_reduce", 4000, world=4); s.baseline(1000, world=4)
        6000.0
        >>> s.ratio, s.by_collective
        (1.0, {'all_reduce': 6000.0})
    """

    sent: float = 0.0
    dense: float = 0.0
    step_sent: float = 0.0
    step_dense: float = 0.0
    by_collective: dict[str, float] = field(default_factory=dict)

    def add(self, sent: float, dense: float) -> None:
        """Add already-computed wire bytes (``sent``) and dense-baseline bytes (``dense``)."""
        self.sent += sent
        self.dense += dense
        self.step_sent += sent
        self.step_dense += dense

    def collective(self, kind: str, tensor_bytes: float, world: int) -> float:
        """Count one collective ``kind`` on a ``tensor_bytes`` input among ``world`` workers; returns its wire bytes."""
        wire = wire_bytes(kind, tensor_bytes, world)
        self.add(wire, 0.0)
        self.by_collective[kind] = self.by_collective.get(kind, 0.0) + wire
        return wire

    def baseline(self, numel: int, world: int, element_size: int = 4) -> None:
        """Count what a dense ring all-reduce of ``numel`` elements would have sent (the ratio's numerator)."""
        self.add(0.0, wire_bytes("all_reduce", numel * element_size, world))

    @property
    def ratio(self) -> float:
        """Dense bytes / sent bytes over the whole run (1.0 before anything was sent)."""
        return self.dense / self.sent if self.sent else 1.0

    def pop_step(self) -> tuple[float, float]:
        """Return and reset ``(sent, dense)`` accumulated since the previous call."""
        out = (self.step_sent, self.step_dense)
        self.step_sent = self.step_dense = 0.0
        return out


@dataclass
class HookState:
    """State of the stateless hooks: the process group (None = world) and the byte counters."""

    process_group: Any = None
    stats: CommStats = field(default_factory=CommStats)


@dataclass
class ResidualState(HookState):
    """State of top-k / 1-bit hooks: the setting, the scheme, a dense warm-up, and the error-feedback buffers.

    ``scheme="2phase"`` (default) averages through :func:`kit.parallel.two_phase.compressed_allreduce`
    (all-to-all + all-gather, worker- and server-side error feedback; bytes per worker independent of W);
    ``scheme="allgather"`` all-gathers every worker's message (worker-side error feedback only; each worker
    receives W - 1 messages, so the cut shrinks as W grows: the hook warns once above the W where it falls
    under 90%). 1-bit scales follow the parameter tensors in both schemes (``per_tensor_scale=True``); in
    the two-phase scheme each tensor's piece of a chunk is further cut into ``block`` (default 32) entries
    per scale, since the server's second compression needs small groups. ``per_tensor_scale=False`` is one
    scale per chunk (two-phase) or per bucket (all-gather): one scale per chunk cost +32.5% loss with
    momentum SGD on the kit's benchmark (docs/benchmarks.md). ``start_iter`` steps of dense all-reduce come first (DGC's
    and 1-bit Adam's warm-up): the early, fast-changing gradients are the ones compression hurts most.
    """

    ratio: float = 0.01
    per_tensor_scale: bool = True
    start_iter: int = 0
    iter: int = 0
    scheme: str = "2phase"
    block: int | None = 32
    residuals: dict[int, torch.Tensor] = field(default_factory=dict)
    feedback: dict[int, ErrorFeedback] = field(default_factory=dict)
    warned: bool = False

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme={self.scheme!r} is not supported; choose one of {', '.join(SCHEMES)}")

    def dense_phase(self, bucket: dist.GradBucket) -> bool:
        """True while ``iter < start_iter`` (warm-up with dense all-reduce); counts steps on the last bucket."""
        dense = self.iter < self.start_iter
        if bucket.is_last():
            self.iter += 1
        return dense


@dataclass
class OneBitAdamHookState(HookState):
    """State of :func:`onebit_adam_hook`: the optimizer whose ``compressing`` flag says when to stop all-reducing."""

    optimizer: Any = None


class PowerSGDHookState(HookState):
    """Wraps torch's ``PowerSGDState`` and adds byte accounting.

    Args:
        process_group: the process group (None = world).
        rank: ``matrix_approximation_rank`` (1-4 is typical; higher is closer to dense).
        start_iter: dense all-reduce before this step (torch requires >= 2 with error feedback).
        min_compression_rate: compress a matrix only if this many times smaller.
        **kwargs: more ``PowerSGDState`` arguments (``use_error_feedback``, ``warm_start``, ``random_seed``...).
    """

    def __init__(
        self,
        process_group: Any = None,
        rank: int = 4,
        start_iter: int = 10,
        min_compression_rate: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(process_group=process_group)
        if rank < 1:
            raise ValueError(f"rank={rank} must be >= 1; PowerSGD ranks 1-4 are typical")
        if start_iter < 2:
            raise ValueError(f"start_iter={start_iter} must be >= 2 (torch's PowerSGD needs two dense steps)")
        self.psgd = psgd.PowerSGDState(
            process_group=process_group,
            matrix_approximation_rank=rank,
            start_powerSGD_iter=start_iter,
            min_compression_rate=min_compression_rate,
            **kwargs,
        )


def _bucket_numel_bytes(bucket: dist.GradBucket) -> tuple[int, int]:
    buf = bucket.buffer()
    return buf.numel(), buf.element_size()


def _completed(tensor: torch.Tensor) -> torch.futures.Future:
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(tensor)
    return fut


def allreduce_hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Plain averaging all-reduce (DDP's default) with byte accounting: the uncompressed baseline."""
    numel, size = _bucket_numel_bytes(bucket)
    world = _world(state)
    state.stats.collective("all_reduce", numel * size, world)
    state.stats.baseline(numel, world, size)
    return default_hooks.allreduce_hook(state.process_group, bucket)


def fp16_hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """torch's ``fp16_compress_hook``: all-reduce in float16 (half the bytes), with byte accounting."""
    numel, size = _bucket_numel_bytes(bucket)
    state.stats.collective("all_reduce", numel * 2, _world(state))
    state.stats.baseline(numel, _world(state), size)
    return default_hooks.fp16_compress_hook(state.process_group, bucket)


def bf16_hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """torch's ``bf16_compress_hook``: all-reduce in bfloat16 (half the bytes), with byte accounting."""
    numel, size = _bucket_numel_bytes(bucket)
    state.stats.collective("all_reduce", numel * 2, _world(state))
    state.stats.baseline(numel, _world(state), size)
    return default_hooks.bf16_compress_hook(state.process_group, bucket)


def powersgd_hook(state: PowerSGDHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """torch's ``powerSGD_hook`` (low-rank P/Q all-reduces with error feedback) with byte accounting."""
    numel, size = _bucket_numel_bytes(bucket)
    if state.psgd.iter < state.psgd.start_powerSGD_iter:
        payload = dense_bytes(numel, size)
    else:
        shapes = [tuple(g.shape) for g in bucket.gradients()]
        payload = powersgd_bytes(
            shapes, state.psgd.matrix_approximation_rank, state.psgd.min_compression_rate, size
        )
    state.stats.collective("all_reduce", payload, _world(state))
    state.stats.baseline(numel, _world(state), size)
    return psgd.powerSGD_hook(state.psgd, bucket)


def _world(state: HookState) -> int:
    return dist.get_world_size(state.process_group)


def _residual(state: ResidualState, bucket: dist.GradBucket) -> torch.Tensor | None:
    """The bucket's error-feedback residual, or None on its first step or after DDP rebuilt its buckets."""
    residual = state.residuals.get(bucket.index())
    if residual is not None and residual.numel() != bucket.buffer().numel():
        return None
    return residual


def _two_phase(
    state: ResidualState, bucket: dist.GradBucket, codec: Any
) -> torch.futures.Future[torch.Tensor]:
    grad = bucket.buffer()
    ef = state.feedback.setdefault(bucket.index(), ErrorFeedback())
    segments = [g.numel() for g in bucket.gradients()] if state.per_tensor_scale else None
    # synchronous: DDP calls the hooks of its buckets in the same order on every rank, so the collectives match
    grad.copy_(compressed_allreduce(grad, codec, ef, state.process_group, state.stats, segments))
    return _completed(grad)


def _warn_allgather(state: ResidualState, method: str, numel: int) -> None:
    world = _world(state)
    if state.warned:
        return
    state.warned = True
    cut = 1 - method_wire_bytes(method, numel, world, state.ratio) / max(
        method_wire_bytes("dense", numel, world), 1.0
    )
    if cut < 0.9:
        warnings.warn(
            f"{method} at W={world} cuts only {cut:.1%} of a dense all-reduce's wire bytes (each worker "
            "receives W-1 messages); use scheme='2phase' (the default), whose cut does not shrink with W",
            stacklevel=2,
        )


def _gather_and_average(
    state: ResidualState,
    grad: torch.Tensor,
    payload: torch.Tensor,
    add_message: Callable[[torch.Tensor, torch.Tensor], None],
) -> torch.futures.Future[torch.Tensor]:
    """All-gather every worker's compressed ``payload``; decode each into a dense sum and average it into ``grad``."""
    world = _world(state)
    state.stats.collective("all_gather", payload.numel() * payload.element_size(), world)
    state.stats.baseline(grad.numel(), world, grad.element_size())
    gathered = [torch.empty_like(payload) for _ in range(world)]
    work = dist.all_gather(gathered, payload, group=state.process_group, async_op=True)

    def decode(_: torch.futures.Future) -> torch.Tensor:
        total = torch.zeros(grad.numel(), dtype=torch.float32, device=grad.device)
        for msg in gathered:
            add_message(total, msg)
        grad.copy_(total.div_(world).to(grad.dtype))
        return grad

    return work.get_future().then(decode)


def topk_hook(state: ResidualState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Top-k sparsification with error feedback.

    ``scheme="2phase"``: the ``ratio`` largest entries of each of the W chunks go through the two-phase
    compressed all-reduce (``2 x ratio`` of dense's wire bytes at any W). ``scheme="allgather"``: values
    and int32 indices of the bucket's top entries in one ``all_gather`` (``ratio x W`` of dense's bytes:
    it stops paying at ``W = 1/ratio``).
    """
    if state.dense_phase(bucket):
        return allreduce_hook(state, bucket)
    if state.scheme == "2phase":
        return _two_phase(state, bucket, TopKCodec(state.ratio))
    grad = bucket.buffer()
    numel = grad.numel()
    _warn_allgather(state, "topk-allgather", numel)
    values, indices, state.residuals[bucket.index()] = topk_compress(
        grad, state.ratio, _residual(state, bucket)
    )
    values = values.float()
    payload = torch.cat([values, indices.to(torch.int32).view(torch.float32)])
    k = values.numel()

    def add_message(total: torch.Tensor, msg: torch.Tensor) -> None:
        total.index_add_(0, msg[k:].view(torch.int32).long(), msg[:k])

    return _gather_and_average(state, grad, payload, add_message)


def onebit_hook(state: ResidualState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """1-bit sign compression with scales and error feedback (the 1-bit SGD/Adam idea).

    ``scheme="2phase"``: signs + one fp32 scale per tensor piece in each chunk (see
    :func:`kit.parallel.two_phase.scale_groups`) through the two-phase compressed all-reduce (``2(W-1)/W x n/8`` bytes per worker plus scales, ~97% cut at any W). ``scheme="allgather"``: ``ceil(n/8)`` bytes
    of signs plus one scale per parameter tensor (one per bucket with ``per_tensor_scale=False``) in one
    ``all_gather`` (``W/64`` of dense's bytes: no cut left at W = 64).
    """
    if state.dense_phase(bucket):
        return allreduce_hook(state, bucket)
    if state.scheme == "2phase":
        return _two_phase(state, bucket, SignCodec(state.block))
    grad = bucket.buffer()
    numel = grad.numel()
    _warn_allgather(state, "1bit-allgather", numel)
    segments = [g.numel() for g in bucket.gradients()] if state.per_tensor_scale else None
    packed, scales, state.residuals[bucket.index()] = sign_compress(grad, _residual(state, bucket), segments)
    payload = torch.cat([packed, scales.float().view(torch.uint8)])
    nbytes = packed.numel()

    def add_message(total: torch.Tensor, msg: torch.Tensor) -> None:
        total += sign_decompress(
            msg[:nbytes], msg[nbytes:].clone().view(torch.float32), numel, segments=segments
        )

    return _gather_and_average(state, grad, payload, add_message)


def onebit_adam_hook(
    state: OneBitAdamHookState, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """The gradient side of 1-bit Adam: dense all-reduce during the warm-up, then no communication at all.

    Once ``state.optimizer.compressing`` (a :class:`kit.parallel.onebit_adam.OneBitAdam` past its
    ``freeze_step``), each worker keeps its local gradient and the optimizer averages the momentum instead.
    """
    if state.optimizer is None or not state.optimizer.compressing:
        return allreduce_hook(state, bucket)
    return _completed(bucket.buffer())


HOOKS = ("allreduce", "fp16", "bf16", "powersgd", "topk", "1bit")
SCHEMES = ("2phase", "allgather")


@dataclass(frozen=True)
class CommHookConfig:
    """Which comm hook to run and its settings: one config for the strategies, ``GradientCompression`` and
    :func:`make_comm_hook`.

    Every field is checked at construction, so a bad setting fails where it is written, not at the first
    backward.

    Example:
        >>> CommHookConfig(hook="topk", topk_ratio=0.05).topk_ratio
        0.05
        >>> CommHookConfig(hook="lz4")
        Traceback (most recent call last):
        ...
        ValueError: hook='lz4' is not supported; choose one of allreduce, fp16, bf16, powersgd, topk, 1bit

    YAML (a strategy's or the callback's ``init_args``): ``comm: {hook: topk, topk_ratio: 0.01}``.
    """

    # allreduce (DDP's default, with byte counts), fp16/bf16 (half-precision all-reduce), powersgd, topk, 1bit
    hook: Literal["allreduce", "fp16", "bf16", "powersgd", "topk", "1bit"] = "powersgd"
    # top-k: fraction of the entries sent, in (0, 1]; <= 0.05 for a 90% byte cut
    topk_ratio: float = 0.01
    # PowerSGD: matrix approximation rank (1-4 is typical; higher is closer to dense)
    powersgd_rank: int = 4
    # PowerSGD: first compressed step, dense all-reduce before (torch needs >= 2)
    powersgd_start_iter: int = 10
    # top-k and 1bit: dense all-reduce steps before compressing (0: compress from the first step)
    dense_start: int = 0
    # top-k and 1bit: "2phase" (all-to-all + all-gather, the cut does not shrink with W) or "allgather" (small W)
    scheme: Literal["2phase", "allgather"] = "2phase"
    # 1bit: scales never span two parameter tensors (False: one scale per chunk or bucket)
    per_tensor_scale: bool = True
    # 1bit two-phase: at most this many entries share a scale (32: a 93.8% cut; None: whole tensor pieces, ~96.9%)
    block: int | None = 32

    def __post_init__(self) -> None:
        if self.hook not in HOOKS:
            raise ValueError(f"hook={self.hook!r} is not supported; choose one of {', '.join(HOOKS)}")
        if not 0 < self.topk_ratio <= 1:
            raise ValueError(
                f"topk_ratio={self.topk_ratio} must be in (0, 1]; 0.01 keeps the largest 1% of entries"
            )
        if self.powersgd_rank < 1:
            raise ValueError(
                f"powersgd_rank={self.powersgd_rank} must be >= 1; PowerSGD ranks 1-4 are typical"
            )
        if self.powersgd_start_iter < 2:
            raise ValueError(
                f"powersgd_start_iter={self.powersgd_start_iter} must be >= 2 (torch's PowerSGD needs two dense steps)"
            )
        if self.dense_start < 0:
            raise ValueError(f"dense_start={self.dense_start} must be >= 0 (0: compress from the first step)")
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme={self.scheme!r} is not supported; choose one of {', '.join(SCHEMES)}")
        if self.block is not None and self.block < 1:
            raise ValueError(
                f"block={self.block} must be >= 1 (entries per 1-bit scale) or None (one per tensor piece)"
            )


COMM_SETTINGS = tuple(f.name for f in fields(CommHookConfig))
DEFAULT_COMM = CommHookConfig()  # frozen: one instance serves as every signature's default
# short spellings make_comm_hook also takes (the names its states and codecs use)
_ALIASES = {"ratio": "topk_ratio"}


class Unset:
    """The default of a deprecated flat ``block`` argument, where None is a value (whole tensor pieces)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


def comm_config(comm: CommHookConfig | None, owner: str, **flat: Any) -> CommHookConfig:
    """The config a strategy or callback runs with: ``comm``, or its deprecated flat keyword arguments.

    Args:
        comm: the config (None or the defaults: not given, so flat arguments may fill it; a string is the old
            positional ``hook``, deprecated too).
        owner: the class name, for the messages.
        **flat: the flat arguments as passed (None or ``UNSET``: not given; ``block=None`` is a value).

    Returns:
        ``comm``, a config built from the given flat arguments (with a ``DeprecationWarning``), or the defaults.

    Raises:
        TypeError: if ``comm`` is not a ``CommHookConfig``, or if both a non-default ``comm`` and flat
            arguments are given.

    Example:
        >>> comm_config(None, "GradientCompression", hook=None, block=UNSET) == CommHookConfig()
        True
    """
    if isinstance(comm, str) and flat.get("hook") is None:  # the old first positional argument was the hook
        comm, flat = None, {**flat, "hook": comm}
    if comm is not None and not isinstance(comm, CommHookConfig):
        raise TypeError(
            f"{owner}: comm={comm!r} is not a CommHookConfig; pass comm=CommHookConfig(hook=...) "
            "(YAML: comm: {hook: topk})"
        )
    given = {k: v for k, v in flat.items() if v is not UNSET and (v is not None or k == "block")}
    if not given:
        return comm if comm is not None else DEFAULT_COMM
    spelled = ", ".join(f"{k}={v!r}" for k, v in given.items())
    if comm is not None and comm != DEFAULT_COMM:
        raise TypeError(
            f"{owner}: pass comm=CommHookConfig(...) or the flat {spelled}, not both; move them into comm"
        )
    warnings.warn(
        f"{owner}({spelled}) is deprecated; pass comm=CommHookConfig({spelled}) (YAML: comm: {{{spelled}}}), "
        "the flat arguments go in the next release",
        DeprecationWarning,
        stacklevel=3,
    )
    return CommHookConfig(**given)


def make_comm_hook(
    name: str, config: CommHookConfig | None = None, process_group: Any = None, **settings: Any
) -> tuple[HookState, Any]:
    """Build a fresh ``(state, hook)`` pair for ``DistributedDataParallel.register_comm_hook``.

    Args:
        name: one of ``allreduce``, ``fp16``, ``bf16``, ``powersgd``, ``topk``, ``1bit``.
        config: the settings (None: the defaults); its ``hook`` must be ``name``.
        process_group: the group to communicate in (None = world).
        **settings: :class:`CommHookConfig` fields to override (``topk_ratio``, ``powersgd_rank``,
            ``powersgd_start_iter``, ``dense_start``, ``scheme``, ``per_tensor_scale``, ``block``; ``ratio`` is
            taken for ``topk_ratio``).

    Returns:
        ``(state, hook)``; the state's ``stats`` counts the bytes.

    Raises:
        TypeError: for a keyword that is not a setting (the message lists them).
        ValueError: for an unknown name, an invalid setting, or a ``config`` of another hook.

    Example:
        >>> state, hook = make_comm_hook("topk", ratio=0.05)
        >>> state.ratio, hook.__name__
        (0.05, 'topk_hook')
    """
    cfg = _hook_config(name, config, settings)
    if cfg.hook == "allreduce":
        return HookState(process_group), allreduce_hook
    if cfg.hook == "fp16":
        return HookState(process_group), fp16_hook
    if cfg.hook == "bf16":
        return HookState(process_group), bf16_hook
    if cfg.hook == "powersgd":
        return PowerSGDHookState(
            process_group, rank=cfg.powersgd_rank, start_iter=cfg.powersgd_start_iter
        ), powersgd_hook
    state = ResidualState(
        process_group, ratio=cfg.topk_ratio, per_tensor_scale=cfg.per_tensor_scale, start_iter=cfg.dense_start,
        scheme=cfg.scheme, block=cfg.block,
    )  # fmt: skip
    return state, topk_hook if cfg.hook == "topk" else onebit_hook


def _settings_signature() -> inspect.Signature:
    # make_comm_hook's settings are CommHookConfig's fields; its signature lists them, with their defaults, for
    # help(), IDEs and code that reads a default (inspect.signature(make_comm_hook).parameters["block"].default)
    sig = inspect.signature(make_comm_hook)
    fixed = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    settings = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
        for f in fields(CommHookConfig)
        if f.name != "hook"
    ]
    return sig.replace(parameters=[*fixed, *settings])


make_comm_hook.__signature__ = _settings_signature()  # type: ignore[attr-defined]


def _hook_config(name: str, config: CommHookConfig | None, settings: dict[str, Any]) -> CommHookConfig:
    for alias, field_name in _ALIASES.items():
        if alias in settings:
            if field_name in settings:
                raise TypeError(f"make_comm_hook got both {alias}= and {field_name}=; pass {field_name} only")
            settings[field_name] = settings.pop(alias)
    unknown = sorted(set(settings) - (set(COMM_SETTINGS) - {"hook"}))
    if unknown:
        allowed = ", ".join(["process_group", *(s for s in COMM_SETTINGS if s != "hook"), *_ALIASES])
        raise TypeError(f"make_comm_hook got unknown keyword(s) {', '.join(unknown)}; it takes {allowed}")
    if config is not None and config.hook != name:
        raise ValueError(
            f"make_comm_hook({name!r}) got a config for hook={config.hook!r}; pass the same name, or config only "
            "through make_comm_hook(config.hook, config)"
        )
    return replace(config or CommHookConfig(hook=name), **settings)


_PSGD_STATE = ("iter", "error_dict", "p_memory_dict", "q_memory_dict")


def hook_state_dict(state: HookState) -> dict[str, Any]:
    """What a resumed run needs of a hook state: byte totals, warm-up counters, residuals, PowerSGD memories.

    Plain tensors, ints and lists only (loads with ``torch.load(weights_only=True)``); tensors stay where
    they are (a checkpoint moves them to the CPU).
    """
    out: dict[str, Any] = {"sent": float(state.stats.sent), "dense": float(state.stats.dense)}
    if isinstance(state, ResidualState):
        out.update(
            iter=state.iter,
            residuals=dict(state.residuals),
            feedback={k: ef.state_dict() for k, ef in state.feedback.items()},
        )
    if isinstance(state, PowerSGDHookState):
        out.update({k: getattr(state.psgd, k) for k in _PSGD_STATE})
        _, keys, pos, has_gauss, gauss = state.psgd.rng.get_state()
        out["rng"] = [torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss)]
    return out


def load_hook_state_dict(
    state: HookState, saved: dict[str, Any], device: torch.device | str | None = None
) -> None:
    """Restore what :func:`hook_state_dict` saved into a freshly built state of the same hook.

    Args:
        state: a fresh state of the same hook.
        saved: what :func:`hook_state_dict` returned (possibly through a checkpoint).
        device: where the gradient buckets live; residuals and PowerSGD memories move there (a checkpoint
            may hold them on the CPU or on the device they were saved from). None leaves them where they are.
    """

    def placed(tensors: dict) -> dict:
        return {k: v.to(device) if device is not None else v for k, v in tensors.items()}

    state.stats.sent, state.stats.dense = float(saved.get("sent", 0)), float(saved.get("dense", 0))
    if isinstance(state, ResidualState):
        state.iter = int(saved.get("iter", 0))
        state.residuals = placed(saved.get("residuals", {}))
        state.feedback = {}
        for k, ef_state in saved.get("feedback", {}).items():
            state.feedback[int(k)] = ErrorFeedback()
            state.feedback[int(k)].load_state_dict(ef_state, device)
    if isinstance(state, PowerSGDHookState):
        for k in _PSGD_STATE:
            if k in saved:
                setattr(state.psgd, k, saved[k] if k == "iter" else placed(saved[k]))
        if "rng" in saved:
            keys, pos, has_gauss, gauss = saved["rng"]
            state.psgd.rng.set_state(("MT19937", keys.numpy().astype("uint32"), pos, has_gauss, gauss))
