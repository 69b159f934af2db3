"""Hessian spectrum probes: top eigenvalue by power iteration on Hessian-vector products, trace by Hutchinson.

Both take a ``loss_fn`` closure that recomputes the loss from the current parameters, so the same
code serves the exact HVP (double backward) and the finite-difference fallback for models whose
kernels have no double backward (fused/flash attention): ``Hv ~ (g(w + e v) - g(w - e v)) / 2e``.
Neither touches ``.grad`` (they use ``torch.autograd.grad``); :func:`preserved_state` puts the
model's train/eval mode and the RNG streams back afterwards.

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    >>> A = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    >>> res = hessian_top_eigenvalue(lambda: 0.5 * w @ A @ w, [w])
    >>> round(res.eigenvalue, 3)
    3.0
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "HessianResult",
    "hessian_top_eigenvalue",
    "hutchinson_trace",
    "hvp_autograd",
    "hvp_finite_difference",
    "make_hvp",
    "preserved_state",
]

LossFn = Callable[[], Tensor]
HVP = Callable[[list[Tensor]], list[Tensor]]


@dataclass
class HessianResult:
    """Outcome of a power iteration.

    Attributes:
        eigenvalue: Rayleigh quotient at the last iterate (the eigenvalue of largest magnitude).
        iterations: HVPs used.
        converged: relative change fell below the tolerance.
        method: ``"autograd"`` or ``"finite_difference"``.
    """

    eigenvalue: float
    iterations: int
    converged: bool
    method: str


@contextlib.contextmanager
def preserved_state(module: nn.Module | None = None, eval_mode: bool = True) -> Iterator[None]:
    """Restore the module's train/eval flags and the CPU and CUDA RNG states on exit.

    Args:
        module: model whose per-submodule ``training`` flags are restored (``None``: RNG only).
        eval_mode: switch to eval inside the block (no dropout, so the Hessian is deterministic).
    """
    cpu_rng = torch.get_rng_state()
    cuda_rng = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    modes = [(m, m.training) for m in module.modules()] if module is not None else []
    try:
        if module is not None and eval_mode:
            module.eval()
        yield
    finally:
        for m, flag in modes:
            m.training = flag
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def hvp_autograd(loss_fn: LossFn, params: Sequence[Tensor]) -> HVP:
    """Exact HVP by double backward; the gradient graph is built once and reused for every product."""
    loss = loss_fn()
    grads = torch.autograd.grad(loss, list(params), create_graph=True)

    def hvp(v: list[Tensor]) -> list[Tensor]:
        out = torch.autograd.grad(grads, list(params), grad_outputs=v, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if o is None else o.detach() for o, p in zip(out, params)]

    return hvp


def hvp_finite_difference(loss_fn: LossFn, params: Sequence[Tensor], eps: float = 1e-4) -> HVP:
    """Central finite-difference HVP, for ops without double backward.

    The step is ``eps * (1 + |w|) / |v|``, so it scales with the weights; the parameters are restored
    bit-exactly from a copy after each product. Error is O(step^2) times the third derivative.
    """
    params = list(params)

    def grad_at() -> list[Tensor]:
        out = torch.autograd.grad(loss_fn(), params, allow_unused=True)
        return [torch.zeros_like(p) if o is None else o.detach() for o, p in zip(out, params)]

    w_norm = float(torch.linalg.vector_norm(torch.stack([p.detach().float().norm() for p in params])))

    def hvp(v: list[Tensor]) -> list[Tensor]:
        v_norm = float(torch.linalg.vector_norm(torch.stack([t.float().norm() for t in v]))) or 1.0
        h = eps * (1.0 + w_norm) / v_norm
        saved = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                torch._foreach_add_([p.data for p in params], v, alpha=h)
            g_plus = grad_at()
            with torch.no_grad():
                torch._foreach_add_([p.data for p in params], v, alpha=-2 * h)
            g_minus = grad_at()
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.data.copy_(s)
        return [(a - b) / (2 * h) for a, b in zip(g_plus, g_minus)]

    return hvp


def make_hvp(
    loss_fn: LossFn, params: Sequence[Tensor], method: str = "auto", eps: float = 1e-4
) -> tuple[HVP, str]:
    """Build an HVP closure.

    Args:
        loss_fn: recomputes the scalar loss from the current parameters.
        params: parameters to differentiate (those with ``requires_grad``).
        method: ``"auto"`` (double backward, falling back to finite differences when an op
            lacks it), ``"autograd"`` or ``"finite_difference"``.
        eps: relative finite-difference step.

    Returns:
        ``(hvp, method_used)``.

    Raises:
        ValueError: on an unknown ``method``.
    """
    if method not in ("auto", "autograd", "finite_difference"):
        raise ValueError(f"method={method!r} is not one of 'auto', 'autograd', 'finite_difference'")
    if method == "finite_difference":
        return hvp_finite_difference(loss_fn, params, eps), "finite_difference"
    try:
        hvp = hvp_autograd(loss_fn, params)
        if method == "auto":  # probe once: some kernels fail only in the second backward
            hvp([torch.zeros_like(p) for p in params])
        return hvp, "autograd"
    except (RuntimeError, NotImplementedError):
        if method == "autograd":
            raise
        return hvp_finite_difference(loss_fn, params, eps), "finite_difference"


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum((x.float() * y.float()).sum() for x, y in zip(a, b))


def _normalise(v: list[Tensor]) -> list[Tensor]:
    n = torch.sqrt(_dot(v, v)).clamp_min(1e-30)
    return [t / n for t in v]


def hessian_top_eigenvalue(
    loss_fn: LossFn,
    params: Sequence[Tensor],
    max_iter: int = 100,
    tol: float = 1e-3,
    method: str = "auto",
    generator: torch.Generator | None = None,
    v0: list[Tensor] | None = None,
    eps: float = 1e-4,
) -> HessianResult:
    """Eigenvalue of largest magnitude of the loss Hessian by power iteration.

    Args:
        loss_fn: recomputes the loss from the current parameters (a held batch).
        params: parameters to probe.
        max_iter: HVP budget (100 by default).
        tol: stop when the relative change of the Rayleigh quotient is below ``tol`` and the
            relative residual ``|Hv - lambda v| / |lambda|`` below ``sqrt(tol)`` (so the quotient's error,
            of order residual^2 / gap, is also about ``tol``).
        method: see :func:`make_hvp`.
        generator: RNG for the random start vector.
        v0: explicit start vector (overrides ``generator``).
        eps: finite-difference step.

    Returns:
        A :class:`HessianResult`.

    Raises:
        ValueError: if ``max_iter < 1``, ``tol <= 0`` or ``params`` is empty.
    """
    params = [p for p in params if p.requires_grad]
    if max_iter < 1 or tol <= 0 or not params:
        raise ValueError(f"need max_iter >= 1 (got {max_iter}), tol > 0 (got {tol}) and trainable params")
    hvp, used = make_hvp(loss_fn, params, method, eps)
    if v0 is None:
        v0 = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    v = _normalise([t.to(p.dtype) for t, p in zip(v0, params)])
    eig, converged, it = 0.0, False, 0
    for it in range(1, max_iter + 1):
        hv = hvp(v)
        new = float(_dot(v, hv))  # Rayleigh quotient, v has unit norm
        # Converged when the quotient is stable AND v is (nearly) an eigenvector: the residual test
        # stops the quotient's chance stalls (eigenvalues of both signs) from passing as convergence.
        residual = float(torch.sqrt(_dot(*(2 * [[h - new * t for h, t in zip(hv, v)]]))))
        if it > 1 and abs(new - eig) <= tol * abs(new) and residual <= math.sqrt(tol) * abs(new):
            eig, converged = new, True
            break
        eig = new
        v = _normalise(hv)
    return HessianResult(eigenvalue=eig, iterations=it, converged=converged, method=used)


def hutchinson_trace(
    loss_fn: LossFn,
    params: Sequence[Tensor],
    n_samples: int = 10,
    method: str = "auto",
    generator: torch.Generator | None = None,
    eps: float = 1e-4,
) -> float:
    """Hutchinson estimate ``E[v^T H v]`` of the Hessian trace with Rademacher ``v``.

    Args:
        loss_fn: recomputes the loss.
        params: parameters to probe.
        n_samples: number of probe vectors (variance falls as 1/n).
        method: see :func:`make_hvp`.
        generator: RNG for the probes.
        eps: finite-difference step.

    Returns:
        The trace estimate.

    Raises:
        ValueError: if ``n_samples < 1``.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples} must be >= 1; 10 is a usual choice")
    params = [p for p in params if p.requires_grad]
    hvp, _ = make_hvp(loss_fn, params, method, eps)
    total = 0.0
    for _ in range(n_samples):
        v = [
            (torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(device=p.device, dtype=p.dtype)
            for p in params
        ]
        total += float(_dot(v, hvp(v)))
    return total / n_samples
