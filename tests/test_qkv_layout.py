"""Checkpoints written before the head-major fused QKV layout (issue 10) load as the model they were saved from.

The old layout stacked the rows ``[q; k; v]``; loading such weights into the head-major model raises no error
but computes something else. The modules mark what they save and convert unmarked checkpoints on load: the
weights, and for a resumed fit also Adam's moments of those rows, so the resumed run is the old run.
"""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from conftest import make_trainer
from torch.utils.data import DataLoader, TensorDataset

from kit.checkpoint.migrations import QKV_LAYOUT_KEY, upgrade_qkv_layout
from kit.models.gpt import CausalLM
from kit.models.sequence_classifier import load_backbone
from kit.nn import GPTConfig
from kit.nn.layers.attention import qkv_head_major, qkv_stacked


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 64, (16, 16), generator=g)
    return DataLoader(TensorDataset(x, x.roll(-1, dims=1)), batch_size=4)


def _old_style(checkpoint: dict, model: CausalLM) -> dict:
    """What a pre-issue-10 kit wrote for the same run: stacked QKV rows and moments, no layout mark."""
    old = copy.deepcopy(checkpoint)
    old.pop(QKV_LAYOUT_KEY)
    n_head = model.model.config.n_head
    qkv = [k for k in old["state_dict"] if k.endswith((".qkv.weight", ".qkv.bias"))]
    assert qkv, "the debug model has fused QKV projections"
    for k in qkv:
        old["state_dict"][k] = qkv_stacked(old["state_dict"][k], n_head)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = model.configure_optimizers()["optimizer"].param_groups
    order = [names[id(p)] for g in groups for p in g["params"]]  # the optimizer state's integer keys
    for idx, name in enumerate(order):
        if name in qkv:
            for key in ("exp_avg", "exp_avg_sq"):
                state = old["optimizer_states"][0]["state"][idx]
                assert state[key].shape == model.get_parameter(name).shape  # the index really is that param
                state[key] = qkv_stacked(state[key], n_head)
    return old


def _trained(tmp_path) -> tuple[CausalLM, str]:
    pl.seed_everything(0, workers=True)
    model = CausalLM(GPTConfig.from_name("debug"), warmup_steps=1, max_steps=6)
    trainer = make_trainer(tmp_path, max_steps=3, deterministic=True)
    trainer.fit(model, _loader())
    path = str(tmp_path / "new.ckpt")
    trainer.save_checkpoint(path)
    return model, path


def test_head_major_is_a_row_permutation_with_its_inverse() -> None:
    w = torch.randn(3 * 8, 5)
    assert torch.equal(qkv_stacked(qkv_head_major(w, 4), 4), w)
    assert not torch.equal(qkv_head_major(w, 4), w)


def test_old_checkpoint_loads_and_resumes_as_the_new_one(tmp_path) -> None:
    model, path = _trained(tmp_path)
    new = torch.load(path, weights_only=False)
    assert new[QKV_LAYOUT_KEY] == "head_major"  # every save is marked
    old_path = str(tmp_path / "old.ckpt")
    torch.save(_old_style(new, model), old_path)

    # weights: load_from_checkpoint converts (and warns), giving the same tensors
    with_new = CausalLM.load_from_checkpoint(path)
    with torch.no_grad():
        loaded_raw = CausalLM(GPTConfig.from_name("debug"))
        loaded_raw.configure_model()
        loaded_raw.load_state_dict(torch.load(old_path, weights_only=False)["state_dict"])
    with pytest.warns(UserWarning, match="predates the head-major fused QKV layout"):
        with_old = CausalLM.load_from_checkpoint(old_path)
    for (n, a), (_, b) in zip(with_new.state_dict().items(), with_old.state_dict().items()):
        assert torch.equal(a, b), n
    x = torch.randint(0, 64, (2, 16))
    with_new.eval(), with_old.eval(), loaded_raw.eval()
    assert torch.equal(with_new.model(x), with_old.model(x))
    assert not torch.allclose(with_new.model(x), loaded_raw.model(x))  # unconverted: silently different

    # resume: three more steps from either file end bitwise equal (weights and Adam moments were reordered)
    finals = []
    for ckpt in (path, old_path):
        pl.seed_everything(0, workers=True)
        resumed = CausalLM(GPTConfig.from_name("debug"), warmup_steps=1, max_steps=6)
        make_trainer(tmp_path, max_steps=6, deterministic=True).fit(resumed, _loader(), ckpt_path=ckpt)
        finals.append(resumed.state_dict())
    for name in finals[0]:
        assert torch.equal(finals[0][name], finals[1][name]), name


def test_init_from_backbone_of_an_old_checkpoint_is_converted(tmp_path) -> None:
    model, path = _trained(tmp_path)
    new = torch.load(path, weights_only=False)
    old = _old_style(new, model)
    backbones = []
    for ckpt in (new, old):
        target = copy.deepcopy(model.model)
        for p in target.parameters():
            torch.nn.init.zeros_(p)
        load_backbone(target, ckpt)
        backbones.append(target.state_dict())
    for name in backbones[0]:
        assert torch.equal(backbones[0][name], backbones[1][name]), name


def test_plain_state_dict_and_marked_checkpoints_are_left_alone() -> None:
    model = CausalLM(GPTConfig.from_name("debug"))
    model.configure_model()
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    assert upgrade_qkv_layout(model, plain) == []
    marked = {"state_dict": {k: v.clone() for k, v in plain.items()}, QKV_LAYOUT_KEY: "head_major"}
    marked["pytorch-lightning_version"] = pl.__version__
    assert upgrade_qkv_layout(model, marked) == []
    hand_made = {"state_dict": {k: v.clone() for k, v in plain.items()}}  # torch.save({"state_dict": ...})
    assert upgrade_qkv_layout(model, hand_made) == []
    unmarked = {
        **copy.deepcopy(marked),
        QKV_LAYOUT_KEY: None,
    }  # what a Trainer wrote before the layout change
    assert upgrade_qkv_layout(model, unmarked) and not torch.equal(
        unmarked["state_dict"]["model.blocks.0.attn.qkv.weight"], plain["model.blocks.0.attn.qkv.weight"]
    )
    for k, v in plain.items():
        assert torch.equal(marked["state_dict"][k], v) and torch.equal(hand_made["state_dict"][k], v)
