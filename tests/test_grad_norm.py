"""One gradient-norm function: ``grad_norms`` is it; ``grad_norm`` and the clipping report call it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kit.health.grads import grad_norms, group_by_layer
from kit.precision.clipping import clip_by_value, grad_norm


def _params(sizes: list[int], seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, n in enumerate(sizes):
        p = torch.nn.Parameter(torch.zeros(n, dtype=dtype))
        p.grad = (torch.randn(n, generator=g) * 10 ** (i % 3)).to(dtype)
        out[f"layer{i // 2}.p{i}"] = p
    return out


@given(
    st.lists(st.integers(1, 300), min_size=1, max_size=8),
    st.integers(0, 10_000),
    st.sampled_from([2.0, 1.0, 3.0, float("inf")]),
)
def test_one_norm_is_bit_identical_to_torch_for_fp32(sizes: list[int], seed: int, norm_type: float) -> None:
    params = _params(sizes, seed)
    grads = [p.grad for p in params.values()]
    torch_norm = torch.nn.utils.get_total_norm(grads, norm_type=norm_type)
    total, per = grad_norms(params, None, norm_type=norm_type)
    assert torch.equal(total, torch_norm)  # bitwise, not approx
    assert torch.equal(grad_norm(params.values(), norm_type), torch_norm)
    for name, p in params.items():
        assert torch.equal(per[name], torch.linalg.vector_norm(p.grad, norm_type))


def test_grouped_norms_combine_to_the_global_norm() -> None:
    params = _params([5, 7, 11, 13], seed=3)
    total, per = grad_norms(params, group_by_layer(params))
    assert sorted(per) == ["layer0", "layer1"]
    assert torch.linalg.vector_norm(torch.stack(list(per.values()))) == pytest.approx(float(total), rel=1e-6)


def test_half_precision_gradients_give_a_float32_norm() -> None:
    params = _params([64, 32], seed=0, dtype=torch.bfloat16)
    norm = grad_norm(params.values())
    assert norm.dtype == torch.float32
    reference = torch.linalg.vector_norm(torch.cat([p.grad.float() for p in params.values()]))
    assert float(norm) == pytest.approx(float(reference), rel=1e-2)


def test_clipping_reports_use_the_same_norm() -> None:
    params = _params([9, 4], seed=1)
    before = grad_norms(params, {})[0]
    pre, post = clip_by_value(params.values(), 0.5)
    assert torch.equal(pre, before)
    assert torch.equal(post, grad_norms(params, {})[0])
    assert grad_norm([]) == 0 and grad_norms({}, {})[0] == 0
