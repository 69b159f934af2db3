"""One FLOP formula and one peak table: the model, the planner and the MFU code agree."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kit.callbacks.throughput import TokenThroughput
from kit.health.flops import GPUS, peak_flops_for, transformer_flops
from kit.health.hardware import guess_peak_flops, mfu
from kit.health.planner import GPUS as PLANNER_GPUS
from kit.health.planner import training_flops
from kit.models.gpt import CausalLM
from kit.nn import GPTConfig


def test_transformer_flops_is_6n_plus_attention_per_token() -> None:
    assert transformer_flops(1e9, 24, 2048, 2048) == 6e9 + 12 * 24 * 2048 * 2048
    assert transformer_flops(1e9, 24, 2048, 2048, tokens=10) == 10 * transformer_flops(1e9, 24, 2048, 2048)
    assert transformer_flops(1e9, 24, 2048, 4096) > transformer_flops(1e9, 24, 2048, 2048)  # attention grows
    with pytest.raises(ValueError, match="n_layer=-1"):
        transformer_flops(1e9, -1, 2048, 2048)


@given(st.integers(1, 8), st.integers(1, 16))
def test_model_planner_and_mfu_count_the_same_flops(batch: int, seq_len: int) -> None:
    torch.manual_seed(0)
    lm = CausalLM(GPTConfig.from_name("debug"))
    cfg, model = lm.config, lm.model
    x = torch.randint(0, cfg.vocab_size, (batch, seq_len))
    lm.training_step((x, x), 0)
    tokens = batch * seq_len
    from_model = lm.flops_per_batch
    from_planner = training_flops(model.num_params(), tokens, cfg.n_layer, cfg.n_embd, seq_len)
    from_formula = transformer_flops(model.num_params(), cfg.n_layer, cfg.n_embd, seq_len, tokens=tokens)
    # what the formula said before it had one home, per caller: 6N + 12 L d T per token
    by_hand = (6 * model.num_params() + 12 * cfg.n_layer * cfg.n_embd * seq_len) * tokens
    assert from_model == pytest.approx(by_hand, rel=1e-12)
    assert from_planner == pytest.approx(from_model, rel=1e-12)
    assert from_formula == pytest.approx(from_model, rel=1e-12)
    peak = GPUS["h100-80gb"].peak_flops
    assert mfu(from_model, 1.0, peak) == pytest.approx(from_planner / peak, rel=1e-12)


def test_one_peak_table_for_planner_and_hardware() -> None:
    assert PLANNER_GPUS is GPUS
    for name, entry in [
        ("NVIDIA H100 80GB HBM3", "h100-80gb"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA B200", "b200"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L4", "l4"),
    ]:
        assert peak_flops_for(name) == guess_peak_flops(name) == GPUS[entry].peak_flops
    assert peak_flops_for("Intel Xeon") is None and guess_peak_flops("Intel Xeon") is None


def _fake_cuda_trainer() -> SimpleNamespace:
    """Just what TokenThroughput.setup reads, on a CUDA root device that need not exist."""
    return SimpleNamespace(
        precision="bf16-mixed",
        strategy=SimpleNamespace(root_device=torch.device("cuda", 0)),
        world_size=1,
    )


@pytest.mark.parametrize(("device_name", "entry"), [("NVIDIA H200", "h200"), ("NVIDIA B200", "b200")])
def test_token_throughput_falls_back_to_the_kit_table(
    monkeypatch: pytest.MonkeyPatch, device_name: str, entry: str
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: device_name)
    cb = TokenThroughput(window_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cb.setup(_fake_cuda_trainer(), None, "fit")
    assert cb.available_flops == int(GPUS[entry].peak_flops)
    assert not [w for w in caught if "FLOPs not found" in str(w.message)]  # MFU is known: no false alarm
    throughput = cb._new_window(SimpleNamespace(log_every_n_steps=1))
    flops = 1e14
    for step in (1, 2, 3):  # window_size=2 batches at one batch a reading: three readings
        throughput.update(time=float(step), batches=step, samples=4 * step, flops=flops)
    metrics = throughput.compute()
    assert metrics["device/mfu"] == pytest.approx(mfu(flops, 1.0, GPUS[entry].peak_flops), rel=1e-6)


def test_token_throughput_still_warns_for_an_unknown_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Mystery Accelerator 9000")
    cb = TokenThroughput()
    with pytest.warns(UserWarning, match="FLOPs not found"):
        cb.setup(_fake_cuda_trainer(), None, "fit")
    assert cb.available_flops is None
