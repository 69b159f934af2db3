import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from kit.nn import GPT, GPTConfig
from kit.optim import lr_lambda, param_groups


def test_warmup_then_cosine_values_at_key_steps() -> None:
    f = lr_lambda(warmup_steps=10, total_steps=110, schedule="cosine", min_lr_ratio=0.1)
    assert f(0) == pytest.approx(1 / 11)
    assert f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through decay
    assert f(110) == pytest.approx(0.1)
    assert f(10_000) == pytest.approx(0.1)


def test_linear_and_constant_schedules() -> None:
    lin = lr_lambda(0, 100, "linear", 0.0)
    assert [lin(s) for s in (0, 25, 50, 100)] == pytest.approx([1.0, 0.75, 0.5, 0.0])
    const = lr_lambda(5, 100, "constant")
    assert const(2) == pytest.approx(0.5) and const(50) == 1.0 and const(500) == 1.0


@given(
    st.integers(0, 50),
    st.integers(1, 500),
    st.sampled_from(["cosine", "linear", "constant"]),
    st.floats(0, 1),
)
def test_schedule_is_bounded_and_non_increasing_after_warmup(warmup, total, schedule, floor) -> None:
    f = lr_lambda(warmup, total, schedule, floor)
    values = [f(s) for s in range(warmup, warmup + total + 5)]
    assert all(0.0 < v <= 1.0 + 1e-12 or (v == 0.0 and floor == 0.0) for v in values)
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(values))


def test_schedule_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="'step'"):
        lr_lambda(0, 10, "step")


def test_no_decay_groups_biases_norms_and_embeddings() -> None:
    model = GPT(GPTConfig.from_name("debug"))
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(
        n.endswith("weight") and "ln" not in n and "wte" not in n and "wpe" not in n for n in decay["names"]
    )
    assert {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias", "blocks.0.attn.qkv.bias"} <= set(
        no_decay["names"]
    )
    # tied lm_head appears once; every trainable parameter is in exactly one group
    n_grouped = len(decay["params"]) + len(no_decay["params"])
    assert n_grouped == len(list(model.parameters()))
    assert "lm_head.weight" not in decay["names"] + no_decay["names"]


def test_param_groups_work_on_any_module() -> None:
    groups = param_groups(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), 0.05)
    assert [len(g["params"]) for g in groups] == [1, 3]
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups])
    assert math.isclose(opt.param_groups[0]["weight_decay"], 0.05)
