"""Hessian probes: power iteration vs the exact full Hessian, Hutchinson trace, FD fallback, the callback."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyClassifier, make_trainer
from torch import nn
from torch.func import functional_call

from kit.callbacks.hessian import HessianMonitor
from kit.health.hessian import hessian_top_eigenvalue, hutchinson_trace, make_hvp, preserved_state


def small_problem(seed: int, act: type[nn.Module] = nn.Tanh, dtype: torch.dtype = torch.float64):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), act(), nn.Linear(6, 2)).to(dtype)
    x = torch.randn(32, 4, dtype=dtype)
    y = torch.randint(0, 2, (32,))

    def loss_fn() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y)

    return model, x, y, loss_fn


def exact_spectrum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(theta: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for n, s in zip(names, shapes):
            k = s.numel()
            params[n] = theta[i : i + k].view(s)
            i += k
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    H = torch.autograd.functional.hessian(f, flat)
    return torch.linalg.eigvalsh(H)


def top_abs(eigs: torch.Tensor) -> float:
    return float(eigs[eigs.abs().argmax()])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", ["autograd", "finite_difference"])
def test_top_eigenvalue_matches_full_hessian(seed: int, method: str) -> None:
    model, x, y, loss_fn = small_problem(seed)
    exact = top_abs(exact_spectrum(model, x, y))
    res = hessian_top_eigenvalue(
        loss_fn, list(model.parameters()), method=method, generator=torch.Generator().manual_seed(0)
    )
    assert res.method == method
    assert res.iterations <= 100
    assert res.eigenvalue == pytest.approx(exact, rel=0.01), (res, exact)


def test_quadratic_closed_form_and_float32() -> None:
    w = nn.Parameter(torch.randn(5))
    A = torch.diag(torch.tensor([10.0, 3.0, 2.0, 1.0, 0.5]))
    res = hessian_top_eigenvalue(lambda: 0.5 * w @ A @ w, [w], tol=1e-6)
    assert res.converged and res.eigenvalue == pytest.approx(10.0, rel=1e-3)
    fd = hessian_top_eigenvalue(lambda: 0.5 * w @ A @ w, [w], tol=1e-6, method="finite_difference")
    assert fd.eigenvalue == pytest.approx(10.0, rel=1e-3)


def test_hutchinson_trace_close_to_exact() -> None:
    model, x, y, loss_fn = small_problem(3)
    exact = float(exact_spectrum(model, x, y).sum())
    est = hutchinson_trace(
        loss_fn, list(model.parameters()), n_samples=300, generator=torch.Generator().manual_seed(0)
    )
    assert est == pytest.approx(exact, rel=0.15)
    with pytest.raises(ValueError, match="n_samples=0"):
        hutchinson_trace(loss_fn, list(model.parameters()), n_samples=0)


class _TanhBackward(torch.autograd.Function):
    """The backward of tanh as an op without a derivative, like fused attention kernels' backward."""

    @staticmethod
    def forward(ctx, g, y):
        return g * (1 - y * y)

    @staticmethod
    def backward(ctx, gg):
        raise RuntimeError("derivative for fused_tanh_backward is not implemented")


class NoDoubleBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return _TanhBackward.apply(g, y)


class FusedTanh(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return NoDoubleBackward.apply(x)


def test_auto_falls_back_to_finite_difference() -> None:
    model, x, y, loss_fn = small_problem(0, act=FusedTanh)
    _, used = make_hvp(loss_fn, list(model.parameters()), "auto")
    assert used == "finite_difference"
    with pytest.raises(RuntimeError):
        make_hvp(loss_fn, list(model.parameters()), "autograd")[0](
            [torch.ones_like(p) for p in model.parameters()]
        )
    ref_model, *_ = small_problem(0)  # same weights with the normal tanh
    exact = top_abs(exact_spectrum(ref_model, x, y))
    res = hessian_top_eigenvalue(loss_fn, list(model.parameters()))
    assert res.method == "finite_difference" and res.eigenvalue == pytest.approx(exact, rel=0.01)


def test_preserved_state_restores_mode_rng_and_grads() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a mixed state must come back as it was
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with preserved_state(model):
        assert not model.training
        torch.rand(100)
    assert model.training and not model[1].training
    assert torch.equal(torch.rand(3), expected)
    w = nn.Parameter(torch.randn(4))
    hessian_top_eigenvalue(lambda: (w**4).sum(), [w], max_iter=5)
    assert w.grad is None  # uses autograd.grad, never .grad


def test_validation() -> None:
    w = nn.Parameter(torch.randn(2))
    with pytest.raises(ValueError, match="max_iter"):
        hessian_top_eigenvalue(lambda: (w**2).sum(), [w], max_iter=0)
    with pytest.raises(ValueError, match="method='bogus'"):
        make_hvp(lambda: (w**2).sum(), [w], "bogus")
    with pytest.raises(ValueError, match="log_every_n_steps=0"):
        HessianMonitor(log_every_n_steps=0)


# -- the callback ----------------------------------------------------------------------------------------


def _data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def _train(callbacks: list) -> TinyClassifier:
    torch.manual_seed(0)
    module = TinyClassifier(num_classes=2, in_dim=4, hidden=8, dropout=0.2)
    make_trainer(None, callbacks, max_steps=10).fit(module, _data())
    return module


def test_callback_probes_without_disturbing_training() -> None:
    cb = HessianMonitor(log_every_n_steps=5, trace=True, trace_samples=4)
    with_probe = _train([cb])
    without = _train([])
    # dropout RNG, train mode and grads were all restored: training is bit-identical
    for a, b in zip(with_probe.parameters(), without.parameters()):
        assert torch.equal(a, b)
    assert [h["step"] for h in cb.history] == [5, 10]
    last = cb.history[-1]
    assert last["hessian/top_eigenvalue"] > 0 and "hessian/trace" in last
    # the logged value is the held batch's top eigenvalue at the final weights (eval mode)
    x, y = cb.held_batch
    with_probe.eval()
    direct = hessian_top_eigenvalue(
        lambda: nn.functional.cross_entropy(with_probe.net(x), y),
        list(with_probe.parameters()),
        generator=torch.Generator().manual_seed(0),
    )
    assert last["hessian/top_eigenvalue"] == pytest.approx(direct.eigenvalue, rel=1e-3)
    resumed = HessianMonitor()
    resumed.load_state_dict(cb.state_dict())
    assert [h["step"] for h in resumed.history] == [5, 10]
    assert resumed.history[-1]["hessian/top_eigenvalue"] == last["hessian/top_eigenvalue"]


def test_no_false_convergence_with_eigenvalues_of_both_signs() -> None:
    """A Rayleigh quotient can stall while v is still a mix of +lambda and -lambda eigenvectors (common at
    random init); the residual test must not call that converged."""
    w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    sym = torch.diag(torch.tensor([5.0, -5.0, 0.1], dtype=torch.float64))
    v0 = [torch.tensor([1.0, 0.7, 0.3], dtype=torch.float64)]
    res = hessian_top_eigenvalue(lambda: 0.5 * w @ sym @ w, [w], v0=v0)
    assert not res.converged and res.iterations == 100
    near = torch.diag(torch.tensor([5.0, -4.0, 0.1], dtype=torch.float64))
    res = hessian_top_eigenvalue(lambda: 0.5 * w @ near @ w, [w], v0=v0)
    assert res.converged and res.eigenvalue == pytest.approx(5.0, rel=1e-3)


def test_finite_difference_matches_double_backward_on_a_small_gpt() -> None:
    """The kit's GPT on CPU uses the fused SDPA kernel (no double backward): auto falls back to FD.
    Along the sharpest direction FD must still be accurate (a 1e-3 relative step was 4.4% low here)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from kit.models.gpt import CausalLM
    from kit.nn import GPTConfig

    torch.manual_seed(0)
    module = CausalLM(GPTConfig.from_name("debug", vocab_size=128, block_size=32), warmup_steps=1)
    ids = torch.randint(128, (8, 33), generator=torch.Generator().manual_seed(0))
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    for _ in range(30):
        module._loss((x, y), 0.0).backward()
        opt.step()
        opt.zero_grad()
    module.eval()
    params = list(module.parameters())

    def loss_fn():
        return module._loss((x, y), 0.0)

    auto = hessian_top_eigenvalue(loss_fn, params, generator=torch.Generator().manual_seed(0))
    with sdpa_kernel([SDPBackend.MATH]):
        exact = hessian_top_eigenvalue(
            loss_fn, params, method="autograd", generator=torch.Generator().manual_seed(0)
        )
    assert auto.method == "finite_difference" and auto.converged and exact.converged
    assert auto.eigenvalue == pytest.approx(exact.eigenvalue, rel=0.01)


@pytest.mark.parametrize(("method", "warns"), [("finite_difference", False), ("auto", True)])
def test_fallback_warning_only_when_auto_fell_back(method: str, warns: bool) -> None:
    """Finite differences asked for by name need no warning; ``auto`` falling back to them gets one, once."""
    import warnings

    torch.manual_seed(0)
    module = TinyClassifier(num_classes=2, in_dim=4, hidden=8)
    cb = HessianMonitor(
        method=method,
        max_iter=3,
        loss_fn=lambda m, b: nn.functional.cross_entropy(FusedTanh()(m.net(b[0])), b[1]),
    )
    cb.held_batch = (torch.randn(8, 4), torch.randint(0, 2, (8,)))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for step in (1, 2):
            assert cb.probe(module, step)["hessian/iterations"] >= 1
    fd = [w for w in seen if "double backward unsupported" in str(w.message)]
    assert len(fd) == (1 if warns else 0)
