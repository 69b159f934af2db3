"""kit.nn.transforms: checkpointing and compile applied in one place, in order, with nothing else changed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kit.models.gpt import CausalLM
from kit.nn import GPT, Block, GPTConfig
from kit.nn.transforms import apply_transforms, checkpoint_blocks


def test_activation_checkpointing_recomputes_blocks_with_the_same_gradients_and_keys(monkeypatch) -> None:
    calls = [0]
    block_forward = Block.forward

    def counted(self: Block, x: torch.Tensor) -> torch.Tensor:  # module hooks do not fire in the recompute
        calls[0] += 1
        return block_forward(self, x)

    monkeypatch.setattr(Block, "forward", counted)
    torch.manual_seed(0)
    plain = GPT(GPTConfig.from_name("debug"))
    ckpt = GPT(GPTConfig.from_name("debug"))
    ckpt.load_state_dict(plain.state_dict())
    apply_transforms(ckpt, activation_checkpointing=True)
    assert ckpt.state_dict().keys() == plain.state_dict().keys()  # checkpoints load either way
    x = torch.randint(0, 64, (2, 16))
    counts = {}
    for name, m in (("plain", plain), ("ckpt", ckpt)):
        calls[0] = 0
        m(x).sum().backward()
        counts[name] = calls[0]
    assert counts == {"plain": 2, "ckpt": 4}  # each of the 2 blocks runs again in backward
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name


def test_causal_lm_applies_the_config_and_compile_in_order(monkeypatch) -> None:
    seen = []

    def fake_compile(self: nn.Module, *args: object, **kwargs: object) -> None:
        seen.append(type(self.blocks[0]).__name__)  # what compile sees: the already-checkpointed tree

    monkeypatch.setattr(GPT, "compile", fake_compile)
    lm = CausalLM(GPTConfig.from_name("debug", activation_checkpointing=True), compile=True)
    assert seen == ["CheckpointWrapper"]
    assert lm.configure_optimizers()["optimizer"].param_groups  # parameters still found under the wrapper
    plain = CausalLM(GPTConfig.from_name("debug"))
    assert type(plain.model.blocks[0]) is Block and seen == ["CheckpointWrapper"]


def test_checkpointing_a_model_without_the_blocks_says_what_to_pass() -> None:
    with pytest.raises(
        ValueError, match=r"no submodule of Sequential is one of \['Block'\]; .*blocks=\(MyBlock,\)"
    ):
        checkpoint_blocks(nn.Sequential(nn.Linear(2, 2)))
    model = checkpoint_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), blocks=(nn.Linear,))
    assert type(model[0]).__name__ == "CheckpointWrapper"
