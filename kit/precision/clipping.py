"""Gradient clipping as plain functions: global norm, value, AutoClip and adaptive (unit-wise) clipping.

Nothing here knows about the Trainer or the optimizer, so every function works in any training loop and
after any optimizer-specific unscaling. The functions clip ``p.grad`` in place and return the pre- and
post-clip global gradient norms as 0-dim tensors on the gradients' device (no host sync).

Example:
    >>> model = torch.nn.Linear(4, 2)
    >>> model(torch.randn(8, 4)).pow(2).sum().backward()
    >>> pre, post = clip_by_norm(model.parameters(), max_norm=0.1)
    >>> bool(post <= 0.1 + 1e-6)
    True
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from kit.health.grads import grad_norms

__all__ = [
    "AutoClip",
    "adaptive_clip_",
    "clip_by_norm",
    "clip_by_value",
    "grad_norm",
    "grads_of",
    "unitwise_norm",
]

_Params = Tensor | Iterable[Tensor]


def grads_of(parameters: _Params) -> list[Tensor]:
    """Return the gradients of ``parameters`` that exist (``p.grad is not None``).

    Args:
        parameters: a tensor or an iterable of tensors (e.g. ``model.parameters()``).

    Returns:
        The list of gradient tensors.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def grad_norm(parameters: _Params, norm_type: float = 2.0) -> Tensor:
    """Global gradient norm over all parameters, as ``clip_grad_norm_`` measures it.

    A thin wrapper over :func:`kit.health.grads.grad_norms`, the kit's one gradient-norm function.

    Args:
        parameters: parameters whose ``.grad`` is measured.
        norm_type: p of the p-norm (``float("inf")`` for the max norm).

    Returns:
        A 0-dim float32 tensor; ``tensor(0.)`` if no parameter has a gradient.
    """
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    return grad_norms({str(i): p for i, p in enumerate(params)}, {}, norm_type=norm_type)[0]


def clip_by_norm(
    parameters: _Params, max_norm: float, norm_type: float = 2.0, foreach: bool | None = None
) -> tuple[Tensor, Tensor]:
    """Scale all gradients so that their global norm is at most ``max_norm``.

    Bit-for-bit the computation of ``torch.nn.utils.clip_grad_norm_`` (same total norm, same
    ``max_norm / (norm + 1e-6)`` coefficient clamped to 1), so swapping it in changes nothing numerically.

    Args:
        parameters: parameters whose ``.grad`` is clipped in place.
        max_norm: the largest allowed global norm (the seed recipe uses 1.0-5.0).
        norm_type: p of the p-norm.
        foreach: use the foreach kernels (None = torch's default for the device).

    Returns:
        ``(pre_norm, post_norm)`` as 0-dim tensors; the post norm is ``pre * min(1, max/(pre+1e-6))``.

    Raises:
        ValueError: if ``max_norm`` is not positive.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(4)); p.grad = torch.full((4,), 3.0)
        >>> [round(float(x), 3) for x in clip_by_norm([p], 1.0)]
        [6.0, 1.0]
    """
    if max_norm <= 0:
        raise ValueError(f"max_norm={max_norm} must be > 0; the seed recipe uses 1.0")
    params = [parameters] if isinstance(parameters, Tensor) else [p for p in parameters if p.grad is not None]
    if not params:
        zero = torch.tensor(0.0)
        return zero, zero
    grads = [p.grad for p in params]
    pre = torch.nn.utils.get_total_norm(grads, norm_type=norm_type, foreach=foreach)
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, pre, foreach=foreach)
    coef = torch.clamp(max_norm / (pre + 1e-6), max=1.0)
    return pre, pre * coef


def clip_by_value(parameters: _Params, clip_value: float, norm_type: float = 2.0) -> tuple[Tensor, Tensor]:
    """Clamp every gradient element to ``[-clip_value, clip_value]``.

    Args:
        parameters: parameters whose ``.grad`` is clipped in place.
        clip_value: the largest allowed absolute value of an element.
        norm_type: p of the norm reported before and after.

    Returns:
        ``(pre_norm, post_norm)`` global norms as 0-dim tensors.

    Raises:
        ValueError: if ``clip_value`` is not positive.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, -0.5])
        >>> _ = clip_by_value([p], 1.0); p.grad.tolist()
        [1.0, -0.5]
    """
    if clip_value <= 0:
        raise ValueError(f"clip_value={clip_value} must be > 0; try clip_value=1.0")
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    pre = grad_norm(params, norm_type)
    torch.nn.utils.clip_grad_value_(params, clip_value)
    return pre, grad_norm(params, norm_type)


class AutoClip:
    """AutoClip (Seetharaman et al., 2020): clip to the p-th percentile of the history of gradient norms.

    The history is a fixed-size ring buffer kept on the gradients' device, so the percentile is computed
    without a host sync and memory stays bounded however long training runs. The current norm joins the
    history before the threshold is taken, as in the paper, so the first step is never clipped.

    Args:
        percentile: the percentile in (0, 100] of past norms to clip to (paper default 10).
        history_size: how many recent norms to keep (>= 1).
        norm_type: p of the p-norm.

    Raises:
        ValueError: if an argument is out of range.

    Example:
        >>> clip = AutoClip(percentile=10, history_size=100)
        >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.ones(2)
        >>> pre, post, threshold = clip([p])
    """

    def __init__(self, percentile: float = 10.0, history_size: int = 1000, norm_type: float = 2.0) -> None:
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile={percentile} must be in (0, 100]; AutoClip's default is 10")
        if history_size < 1:
            raise ValueError(f"history_size={history_size} must be >= 1; try history_size=1000")
        self.percentile = float(percentile)
        self.history_size = int(history_size)
        self.norm_type = norm_type
        self.history = torch.zeros(self.history_size)
        self.count = 0  # norms seen so far; the buffer holds the last min(count, history_size)

    def observe(self, norm: Tensor) -> Tensor:
        """Add one norm to the history and return the current clipping threshold (0-dim tensor)."""
        if self.history.device != norm.device:
            self.history = self.history.to(norm.device)
        self.history[self.count % self.history_size] = norm.detach().float()
        self.count += 1
        filled = self.history[: min(self.count, self.history_size)]
        return torch.quantile(filled, self.percentile / 100.0)

    def __call__(self, parameters: _Params) -> tuple[Tensor, Tensor, Tensor]:
        """Clip ``parameters``' gradients in place.

        Returns:
            ``(pre_norm, post_norm, threshold)`` as 0-dim tensors.
        """
        params = (
            [parameters] if isinstance(parameters, Tensor) else [p for p in parameters if p.grad is not None]
        )
        if not params:
            zero = torch.tensor(0.0)
            return zero, zero, zero
        pre = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=self.norm_type)
        threshold = self.observe(pre)
        coef = torch.clamp(threshold / (pre + 1e-6), max=1.0)
        torch._foreach_mul_([p.grad for p in params], coef.to(params[0].grad.device))
        return pre, pre * coef, threshold

    def state_dict(self) -> dict:
        """Return the history so a resumed run clips exactly as the killed one would have."""
        return {"history": self.history.detach().cpu().clone(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        """Restore the history saved by :meth:`state_dict`."""
        history = state["history"].float()
        if history.numel() != self.history_size:
            raise ValueError(
                f"saved AutoClip history has {history.numel()} entries but history_size={self.history_size}; "
                "construct AutoClip with the saved history_size"
            )
        self.history = history.to(self.history.device)
        self.count = int(state["count"])


def unitwise_norm(x: Tensor) -> Tensor:
    """Norm per output unit (row) as in NFNets: whole-tensor norm for scalars/vectors, else over dims 1..n.

    Args:
        x: a parameter or gradient tensor; dim 0 indexes output units (``nn.Linear`` / ``nn.Conv`` layout).

    Returns:
        A tensor broadcastable against ``x`` (shape ``(out, 1, ..., 1)`` or a 0-dim tensor).
    """
    if x.ndim <= 1:
        return x.norm(2)
    return x.norm(2, dim=tuple(range(1, x.ndim)), keepdim=True)


def adaptive_clip_(
    parameters: _Params, clip_factor: float = 0.01, eps: float = 1e-3, norm_type: float = 2.0
) -> tuple[Tensor, Tensor]:
    """Adaptive gradient clipping (Brock et al., 2021, NFNets), unit-wise.

    For every unit ``i`` (row of a weight): if ``||g_i|| > clip_factor * max(||w_i||, eps)`` the gradient
    row is rescaled to exactly that bound; otherwise it is left alone.

    Args:
        parameters: parameters whose ``.grad`` is clipped in place (the weights are read, not changed).
        clip_factor: lambda, the largest allowed gradient-to-weight norm ratio per unit (paper: 0.01).
        eps: floor on the weight norm, so zero-initialised units can still move.
        norm_type: p of the global norm reported before and after (the unit norms are always L2).

    Returns:
        ``(pre_norm, post_norm)`` global gradient norms as 0-dim tensors.

    Raises:
        ValueError: if ``clip_factor`` or ``eps`` is not positive.

    Example:
        >>> w = torch.nn.Parameter(torch.ones(1, 4)); w.grad = torch.ones(1, 4)
        >>> _ = adaptive_clip_([w], clip_factor=0.01); round(float(w.grad.norm()), 4)
        0.02
    """
    if clip_factor <= 0:
        raise ValueError(f"clip_factor={clip_factor} must be > 0; the NFNet paper uses 0.01")
    if eps <= 0:
        raise ValueError(f"eps={eps} must be > 0; the NFNet paper uses 1e-3")
    params = [parameters] if isinstance(parameters, Tensor) else [p for p in parameters if p.grad is not None]
    pre = grad_norm(params, norm_type)
    with torch.no_grad():
        for p in params:
            g = p.grad
            max_norm = unitwise_norm(p.detach()).clamp_(min=eps) * clip_factor
            g_norm = unitwise_norm(g)
            clipped = g * (max_norm / g_norm.clamp(min=1e-6))
            g.copy_(torch.where(g_norm > max_norm, clipped, g))
    return pre, grad_norm(params, norm_type)
