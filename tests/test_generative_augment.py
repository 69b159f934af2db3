"""GenerativeAugment: the mixing function and the callback (the contract runs in test_callback_contract.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import BatchRecorder, make_trainer
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kit.callbacks import GenerativeAugment
from kit.data.augment_generative import generate, mix_generated

MARK = 1000.0  # generated samples carry MARK + class in every pixel: easy to recognise


class Marked(nn.Module):
    latent_dim = 3

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (MARK + labels.float()).view(-1, 1, 1).expand(-1, 2, 2) + 0 * z[:, :1, None]


class Sampler(nn.Module):
    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return (MARK + labels.float()).view(-1, 1, 1).expand(-1, 2, 2).clone()


@given(st.integers(1, 32), st.floats(0.0, 1.0), st.sampled_from(["batch", "uniform"]), st.integers(0, 999))
@settings(max_examples=80, deadline=None)
def test_mix_replaces_a_share_of_rows_with_labelled_samples(batch, ratio, labels, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(batch, 2, 2, generator=g), torch.randint(0, 5, (batch,), generator=g)
    xm, ym, rows = mix_generated(x, y, Marked(), ratio, labels, num_classes=5, rng=g)
    assert len(rows) == round(ratio * batch) and len(set(rows.tolist())) == len(rows)
    fake = (xm >= MARK - 1).flatten(1).all(1)
    assert fake.nonzero().flatten().sort().values.tolist() == rows.sort().values.tolist()
    assert torch.equal(xm[rows, 0, 0], MARK + ym[rows].float())  # each sample carries its label
    keep = ~fake
    assert torch.equal(xm[keep], x[keep]) and torch.equal(ym[keep], y[keep])
    if labels == "batch":
        assert torch.equal(ym, y)  # the class mix is unchanged
    assert not (x >= MARK - 1).any()  # inputs untouched


def test_soft_targets_sample_protocol_and_errors():
    x, y = torch.zeros(4, 2, 2), torch.eye(3)[[0, 1, 2, 0]]
    xm, ym, _ = mix_generated(x, y, Sampler(), 1.0, "uniform", rng=torch.Generator().manual_seed(0))
    assert ym.shape == (4, 3) and torch.equal(ym.sum(1), torch.ones(4))
    assert torch.equal(xm[:, 0, 0], MARK + ym.argmax(1).float())
    assert generate(Marked(), torch.tensor([2]), rng=torch.Generator()).shape == (1, 2, 2)
    with pytest.raises(ValueError, match="latent_dim"):
        generate(nn.Identity(), torch.tensor([0]))
    with pytest.raises(ValueError, match="ratio=1.5"):
        mix_generated(x, y, Sampler(), 1.5)
    with pytest.raises(ValueError, match="num_classes"):
        mix_generated(x, torch.tensor([0, 1, 2, 0]), Sampler(), 0.5, "uniform")
    with pytest.raises(ValueError, match="shape"):
        mix_generated(torch.zeros(4, 3, 3), y, Sampler(), 0.5)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(64, 2, 2, generator=g), torch.randint(0, 4, (64,), generator=g)), 8
    )


def test_callback_feeds_the_module_and_resumes(tmp_path):
    module = BatchRecorder(field=None, ids=False)
    cb = GenerativeAugment(Marked(), ratio=0.25, start_step=2, seed=3)
    trainer = make_trainer(tmp_path, [cb], max_steps=6, limit_val_batches=0)
    trainer.fit(module, _loader())
    fakes = [int((x >= MARK - 1).flatten(1).all(1).sum()) for x, _ in module.seen]
    assert fakes == [0, 0, 2, 2, 2, 2]  # start_step=2, then round(0.25 * 8) rows per batch
    assert cb.generated == 8 and trainer.callback_metrics["gen_aug/synthetic_fraction"] == 0.25
    # the random stream resumes: a restored callback draws what the original draws next
    resumed = GenerativeAugment(Marked(), ratio=0.25, seed=99)
    resumed.load_state_dict(cb.state_dict())
    x, y = next(iter(_loader()))
    a = mix_generated(x, y, Marked(), 0.5, rng=cb.rng)[2]
    b = mix_generated(x, y, Marked(), 0.5, rng=resumed.rng)[2]
    assert torch.equal(a, b)


def test_callback_without_generator_warns_and_passes_batches(tmp_path):
    module = BatchRecorder(field=None, ids=False)
    with pytest.warns(UserWarning, match="no generator"):
        make_trainer(tmp_path, [GenerativeAugment()], max_steps=2, limit_val_batches=0).fit(module, _loader())
    assert not any((x >= MARK - 1).any() for x, _ in module.seen)
    with pytest.raises(ValueError, match="labels="):
        GenerativeAugment(labels="mixed")
