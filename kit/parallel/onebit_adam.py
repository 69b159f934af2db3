"""1-bit Adam and 1-bit AdamW (Tang et al. 2021): Adam's convergence with ~97% less communication at any W.

Compressing gradients under Adam distorts its second moment (sign or sparse gradients make ``v`` wrong),
which is why 1-bit or top-k *gradients* with AdamW end several percent worse. 1-bit Adam instead:

1. **warm-up** (``freeze_step`` steps): plain Adam; gradients are averaged densely (DDP's all-reduce, or
   the strategy's :func:`kit.parallel.comm_hooks.onebit_adam_hook`, which all-reduces in this stage);
2. **compression stage**: the variance ``v`` is frozen (it changes slowly once training settled); each
   worker updates its momentum with its *local* gradient, ``m_i = b1 m + (1 - b1) g_i``, and the momenta
   are averaged by the two-phase compressed all-reduce (:func:`kit.parallel.two_phase.compressed_allreduce`,
   1-bit signs + scale, worker- and server-side error feedback); the update is ``m / (sqrt(v) + eps)``.
   The gradient all-reduce is skipped, so the momentum's compressed all-reduce is the only communication.

Every worker decodes the same messages, so the averaged momentum, the frozen variance and the parameters
stay identical across workers. Bias corrections follow ``torch.optim.Adam`` (with ``v``'s frozen at its
last warm-up value), so with ``freeze_step=None`` (never compress) the optimizer is ``torch.optim.Adam``
(``OneBitAdamW``: ``torch.optim.AdamW``) step for step. Where DeepSpeed's (now removed) ``OnebitAdam``
differed: it had no bias correction; the kit keeps torch's so that the warm-up *is* Adam.

Example:
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = OneBitAdamW(model.parameters(), lr=1e-3, freeze_step=100)
    >>> opt.compressing
    False
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from kit.parallel.two_phase import ErrorFeedback, SignCodec, compressed_allreduce

__all__ = ["OneBitAdam", "OneBitAdamW"]


class OneBitAdam(torch.optim.Optimizer):
    """Adam with a dense warm-up, then a frozen variance and 1-bit compressed momentum averaging.

    Args:
        params: parameters or parameter groups (as any torch optimizer).
        lr: learning rate.
        betas: ``(b1, b2)``.
        eps: added to ``sqrt(v_hat)``.
        weight_decay: L2 penalty added to the gradient (Adam); decoupled decay in :class:`OneBitAdamW`. None:
            the class's ``default_weight_decay``, torch's default (0 for Adam, 0.01 for AdamW).
        freeze_step: optimizer steps of plain Adam before the variance freezes and compression starts
            (the paper uses 15-25% of training); None never compresses (plain Adam).
        process_group: the group the momentum is averaged over (None = world; one process without
            ``torch.distributed`` is W = 1, where only the compression error remains).
        compress: what the 1-bit all-reduce carries in the compression stage. ``"update"`` (default):
            the momentum divided by the frozen ``sqrt(v_hat) + eps``, the same on every worker, so its
            average is the averaged momentum's update exactly; one sign scale then fits every coordinate.
            ``"momentum"``: the momentum itself, as in the paper and DeepSpeed, where coordinates with a
            tiny variance (rare embedding rows) receive the chunk's mean momentum divided by their tiny
            ``sqrt(v)``. ``"none"``: the momentum is averaged by a dense all-reduce, no compression (an
            ablation: what freezing the variance alone costs). Measured on the kit's 600-step benchmark: see
            docs/benchmarks.md.
        per_tensor_scale: one 1-bit scale per tensor piece of each chunk (see
            :func:`kit.parallel.two_phase.scale_groups`) instead of the default one per chunk (the paper's
            and DeepSpeed's). Not the default here, unlike ``ddp-1bit``: with a young frozen variance a few
            coordinates of ``m / sqrt(v)`` are huge, and one scale per chunk dilutes them where a scale per
            tensor lets them set the whole tensor's step (worse on the kit's benchmark: docs/benchmarks.md).
        block: at most this many consecutive entries share a scale (restarting at each tensor with
            ``per_tensor_scale``); None: no limit.
        scale: the 1-bit scale of each group, ``"mean"`` (``mean |x|``, the least-squares scale; default) or
            ``"l2"`` (``||x||_2 / sqrt(n)``, DeepSpeed's). ``compress="momentum", scale="l2"`` is DeepSpeed's
            former ``OnebitAdam`` (docs/benchmarks.md: each combination on the kit's benchmark).

    Raises:
        ValueError: for a negative ``lr``/``eps``/``weight_decay``, betas outside [0, 1), ``freeze_step < 1``,
            or an unknown ``compress``/``scale``.
    """

    decoupled = False
    default_weight_decay = 0.0

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | None = None,
        freeze_step: int | None = 1000,
        process_group: Any = None,
        compress: Literal["update", "momentum", "none"] = "update",
        per_tensor_scale: bool = False,
        block: int | None = None,
        scale: Literal["mean", "l2"] = "mean",
    ) -> None:
        if weight_decay is None:
            weight_decay = self.default_weight_decay
        if block is not None and block < 1:
            raise ValueError(f"block={block} must be >= 1 (entries per 1-bit scale) or None (no block)")
        if compress not in ("update", "momentum", "none"):
            raise ValueError(f"compress={compress!r} is not supported; choose 'update', 'momentum' or 'none'")
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr={lr}, eps={eps}, weight_decay={weight_decay} must all be >= 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas={tuple(betas)} must be in [0, 1); Adam's default is (0.9, 0.999)")
        if freeze_step is not None and freeze_step < 1:
            raise ValueError(
                f"freeze_step={freeze_step} must be >= 1 (the variance needs a warm-up) or None (plain Adam)"
            )
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.freeze_step = freeze_step
        self.process_group = process_group
        self.compress = compress
        self.steps = 0  # completed optimizer steps
        self.feedback = ErrorFeedback()
        self.per_tensor_scale = per_tensor_scale
        self.codec = SignCodec(block, scale)
        self.stats: Any = None  # a CommStats, set by the strategy to count the momentum's bytes

    @property
    def compressing(self) -> bool:
        """True when the next step compresses (``steps >= freeze_step``): the gradient all-reduce is skipped."""
        return self.freeze_step is not None and self.steps >= self.freeze_step

    def _params(self) -> list[tuple[dict[str, Any], Tensor]]:
        return [(g, p) for g in self.param_groups for p in g["params"] if p.grad is not None]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One step: Adam in the warm-up, frozen-variance compressed-momentum Adam afterwards."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        compressing = self.compressing
        params = self._params()
        for group, p in params:
            grad = p.grad
            if grad.is_sparse:
                raise RuntimeError("OneBitAdam does not support sparse gradients; use torch.optim.SparseAdam")
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            b1, b2 = group["betas"]
            wd = group["weight_decay"]
            if wd and self.decoupled:
                p.mul_(1 - group["lr"] * wd)
            elif wd:
                grad = grad.add(p, alpha=wd)
            state["exp_avg"].lerp_(grad, 1 - b1)
            if not compressing:
                state["exp_avg_sq"].mul_(b2).addcmul_(grad, grad.conj(), value=1 - b2)
                state["frozen_step"] = int(state["step"])  # the variance's bias correction, frozen later
        if compressing and params:
            self._average_momenta([p for _, p in params])
        for group, p in params:
            state = self.state[p]
            b1, b2 = group["betas"]
            step = float(state["step"])
            bias1 = 1 - b1**step
            bias2_sqrt = math.sqrt(1 - b2 ** state["frozen_step"])
            denom = (state["exp_avg_sq"].sqrt() / bias2_sqrt).add_(group["eps"])
            p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / bias1)
        self.steps += 1
        return loss

    def _denom(self, p: Tensor) -> Tensor:
        """The frozen ``sqrt(v_hat) + eps`` of ``p`` (identical on every worker)."""
        state, group = self.state[p], self._group_of[p]
        bias2_sqrt = math.sqrt(1 - group["betas"][1] ** state["frozen_step"])
        return (state["exp_avg_sq"].sqrt() / bias2_sqrt).add_(group["eps"])

    def _average_momenta(self, params: list[Tensor]) -> None:
        self._group_of = {p: g for g in self.param_groups for p in g["params"]}
        momenta = [self.state[p]["exp_avg"] for p in params]
        denoms = [self._denom(p) for p in params] if self.compress == "update" else None
        parts = [m if denoms is None else m / d for m, d in zip(momenta, denoms or momenta, strict=True)]
        flat = torch.cat([x.reshape(-1).float() for x in parts])
        if self.compress == "none":
            self._dense_average(flat)
            averaged = flat
        else:
            averaged = self._compressed_average(flat, momenta)
        offset = 0
        for i, m in enumerate(momenta):
            chunk = averaged[offset : offset + m.numel()].view_as(m).to(m.dtype)
            m.copy_(chunk if denoms is None else chunk * denoms[i])
            offset += m.numel()

    def _dense_average(self, flat: Tensor) -> None:
        world = (
            dist.get_world_size(self.process_group) if dist.is_available() and dist.is_initialized() else 1
        )
        if world > 1:
            dist.all_reduce(flat, group=self.process_group)
            flat /= world
        if self.stats is not None:
            self.stats.collective("all_reduce", 4 * flat.numel(), world)
            self.stats.baseline(flat.numel(), world)

    def _compressed_average(self, flat: Tensor, momenta: list[Tensor]) -> Tensor:
        segments = [m.numel() for m in momenta] if self.per_tensor_scale else None
        return compressed_allreduce(flat, self.codec, self.feedback, self.process_group, self.stats, segments)

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state (per-parameter ``exp_avg``, frozen ``exp_avg_sq``, steps) + stage and errors."""
        out = super().state_dict()
        out["onebit"] = {"steps": self.steps, "freeze_step": self.freeze_step, **self.feedback.state_dict()}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved: the stage, the frozen variance and both error buffers."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("onebit", {})
        super().load_state_dict(state_dict)
        self.steps = int(extra.get("steps", 0))
        device = next((p.device for g in self.param_groups for p in g["params"]), None)
        self.feedback.load_state_dict(extra, device)


class OneBitAdamW(OneBitAdam):
    """:class:`OneBitAdam` with decoupled weight decay (``p -= lr * wd * p``), as ``torch.optim.AdamW``.

    The same arguments; ``weight_decay`` defaults to AdamW's 0.01.

    Example:
        >>> OneBitAdamW(torch.nn.Linear(4, 2).parameters(), lr=3e-4).defaults["weight_decay"]
        0.01
        >>> opt = OneBitAdamW(torch.nn.Linear(4, 2).parameters(), lr=3e-4, weight_decay=0.1, freeze_step=60)
        >>> opt.freeze_step
        60
    """

    decoupled = True
    default_weight_decay = 1e-2
