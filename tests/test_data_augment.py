"""MixUp/CutMix (functions, callback, recipe) and text augmentation."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch
from conftest import TinyClassifier, TinyRegressor, make_trainer
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from kit.callbacks.mixup import MixUpCutMix
from kit.data.augment_image import (
    MixUpTransform,
    cutmix_batch,
    cutmix_box,
    mixup_batch,
    one_hot_targets,
    sample_lambda,
)
from kit.data.augment_text import (
    BUILTIN_SYNONYMS,
    TextAugmenter,
    back_translate,
    builtin_synonyms,
    eda,
    random_deletion,
    random_insertion,
    random_swap,
    reorder_sentences,
    synonym_replacement,
)
from kit.datamodules.digits import DigitsDataModule
from kit.models.classifier import ImageClassifier

RECIPE = Path(__file__).resolve().parents[1] / "kit" / "cli" / "recipes" / "vision-mixup.yaml"


# ---------------------------------------------------------------- image functions


@given(st.integers(2, 8), st.integers(2, 6), st.floats(0.0, 1.0), st.floats(0.0, 0.3), st.integers(0, 1000))
@settings(max_examples=60, deadline=None)
def test_mixup_preserves_label_mass(batch, classes, lam, smoothing, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 4, 4, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    xm, t, lam_out, perm = mixup_batch(
        x, y, num_classes=classes, lam=lam, label_smoothing=smoothing, generator=g
    )
    assert t.shape == (batch, classes)
    assert torch.allclose(t.sum(-1), torch.ones(batch), atol=1e-5)
    assert (t >= 0).all() and lam_out == lam
    assert torch.allclose(xm, lam * x + (1 - lam) * x[perm], atol=1e-5)
    # total mass per class over the batch is conserved (perm is a bijection)
    assert torch.allclose(t.sum(0), one_hot_targets(y, classes, smoothing).sum(0), atol=1e-4)


@given(st.integers(2, 6), st.integers(4, 12), st.integers(4, 12), st.floats(0.0, 1.0), st.integers(0, 1000))
@settings(max_examples=60, deadline=None)
def test_cutmix_lambda_equals_pasted_area(batch, h, w, lam, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(batch, dtype=torch.float).view(batch, 1, 1, 1).expand(batch, 2, h, w).contiguous()
    y = torch.arange(batch)
    xm, t, lam_c, perm = cutmix_batch(x, y, num_classes=batch, lam=lam, generator=g)
    # pixels that changed are exactly those copied from the partner; their share is 1 - lam_c
    same_partner = perm == torch.arange(batch)
    for i in range(batch):
        if same_partner[i]:
            continue
        pasted = (xm[i, 0] == perm[i].float()).float().mean().item()
        assert pasted == pytest.approx(1 - lam_c, abs=1e-6)
        assert t[i, i].item() == pytest.approx(lam_c, abs=1e-6)
    assert torch.allclose(t.sum(-1), torch.ones(batch))


def test_cutmix_explicit_box_and_errors():
    x, y = torch.zeros(2, 1, 10, 10), torch.tensor([0, 1])
    x[1] = 1
    xm, t, lam, _ = cutmix_batch(x, y, num_classes=2, box=(0, 5, 0, 4), perm=torch.tensor([1, 0]))
    assert lam == pytest.approx(1 - 20 / 100) and xm[0].sum().item() == 20
    assert t[0].tolist() == pytest.approx([0.8, 0.2])
    with pytest.raises(ValueError, match="outside"):
        cutmix_batch(x, y, num_classes=2, box=(0, 11, 0, 4))
    with pytest.raises(ValueError, match="images"):
        cutmix_batch(torch.zeros(2, 5), y, num_classes=2)
    with pytest.raises(ValueError, match="num_classes"):
        mixup_batch(x, y)
    with pytest.raises(ValueError, match="alpha=0"):
        sample_lambda(0.0)
    g = torch.Generator().manual_seed(0)
    y0, y1, x0, x1 = cutmix_box(8, 8, 1.0, g)
    assert (y1 - y0) * (x1 - x0) == 0  # lam = 1 keeps the whole image
    areas = [(b[1] - b[0]) * (b[3] - b[2]) for b in (cutmix_box(8, 8, 0.75, g) for _ in range(50))]
    assert max(areas) == 16 and min(areas) >= 4  # a 4x4 box, clipped at the border at most to 2x2


def test_beta_draws_are_seeded_and_distributed():
    a = [sample_lambda(0.8, torch.Generator().manual_seed(s)) for s in range(200)]
    b = [sample_lambda(0.8, torch.Generator().manual_seed(s)) for s in range(200)]
    assert a == b and all(0 <= v <= 1 for v in a)
    assert sum(a) / len(a) == pytest.approx(0.5, abs=0.06)  # Beta(a, a) has mean 1/2


# ---------------------------------------------------------------- transform + callback


def test_transform_modes_and_validation():
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    never = MixUpTransform(prob=0.0, num_classes=10, label_smoothing=0.1)
    xo, t = never(x, y)
    assert torch.equal(xo, x) and torch.allclose(t, one_hot_targets(y, 10, 0.1))
    only_cut = MixUpTransform(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=10, seed=1)
    only_cut(x, y)
    assert only_cut.last["cutmix"] == 1.0
    both = MixUpTransform(num_classes=10, seed=0)
    modes = []
    for _ in range(200):
        both(x, y)
        modes.append(both.last["cutmix"])
    assert 0.35 < sum(modes) / 200 < 0.65  # switch_prob 0.5
    for bad in (
        {"prob": 1.5},
        {"switch_prob": -0.1},
        {"mixup_alpha": -1.0},
        {"mixup_alpha": 0.0, "cutmix_alpha": 0.0},
    ):
        with pytest.raises(ValueError):
            MixUpTransform(**bad)
    with pytest.raises(ValueError, match="preset"):
        MixUpCutMix.from_preset("imagenet")


def test_callback_mixes_batches_of_any_module():
    ds = TensorDataset(torch.randn(32, 1, 4, 4), torch.randint(0, 3, (32,)))
    model = TinyClassifier()
    cb = MixUpCutMix(num_classes=3)
    make_trainer(None, [cb], max_steps=4).fit(model, DataLoader(ds, batch_size=8))
    assert len(model.seen) == 4
    for t in model.seen:
        assert t.shape == (8, 3) and torch.allclose(t.sum(-1), torch.ones(8))
        assert (t.max(-1).values < 1).all()  # smoothing 0.1 at least
    state = cb.state_dict()
    cb2 = MixUpCutMix(num_classes=3, seed=99)
    cb2.load_state_dict(state)
    x, y = torch.randn(4, 1, 4, 4), torch.randint(0, 3, (4,))
    assert torch.equal(cb.transform(x, y)[1], cb2.transform(x, y)[1])


def test_callback_reads_num_classes_and_rejects_tuples():
    dm = DigitsDataModule(batch_size=16)
    model = ImageClassifier(num_classes=10, width=8)
    cb = MixUpCutMix()  # default args: DeiT; class count from the module
    make_trainer(None, [cb], max_steps=2, limit_val_batches=0).fit(model, datamodule=dm)
    assert cb.transform.num_classes == 10

    class TupleLoader(DataLoader):
        def __iter__(self):
            for batch in super().__iter__():
                yield tuple(batch)

    ds = TensorDataset(torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,)))
    with pytest.raises(ValueError, match="in place"):
        make_trainer(None, [MixUpCutMix(num_classes=3)], max_steps=1).fit(
            TinyClassifier(), TupleLoader(ds, batch_size=4)
        )
    module = TinyRegressor()  # no num_classes, integer targets, and a forward that cannot take the images
    with pytest.raises(ValueError, match=r"TinyRegressor has no num_classes.*MixUpCutMix\(num_classes=C\)"):
        make_trainer(None, [MixUpCutMix()], max_steps=1).fit(module, DataLoader(ds, batch_size=4))
    assert module.global_step == 0  # failed at the first batch, before any step


class _NoCountClassifier(TinyClassifier):
    """A plain classifier that never states its class count (what a user's module often looks like)."""

    def __init__(self, classes: int) -> None:
        super().__init__(num_classes=classes)
        del self.num_classes

    def forward(self, x):
        return self.net(x)


def test_callback_infers_the_class_count_from_soft_targets_or_the_output_width():
    images = torch.randn(16, 1, 4, 4)
    model = _NoCountClassifier(5)  # integer targets: the count comes from the logits' width
    cb = MixUpCutMix()
    make_trainer(None, [cb], max_steps=2).fit(
        model, DataLoader(TensorDataset(images, torch.randint(0, 5, (16,))), 8)
    )
    assert cb.transform.num_classes == 5 and model.seen[-1].shape == (8, 5) and model.training
    soft = torch.softmax(torch.randn(16, 4), -1)  # soft targets: their width is the count, no forward needed
    cb = MixUpCutMix()
    make_trainer(None, [cb], max_steps=1).fit(
        _NoCountClassifier(4), DataLoader(TensorDataset(images, soft), 8)
    )
    assert cb.transform.num_classes is None and cb.transform.last["mixed"] == 1.0


def test_callback_rejects_integer_inputs_at_the_first_batch_naming_the_fix():
    tokens = TensorDataset(torch.randint(0, 50, (8, 16)), torch.randint(0, 3, (8,)))
    with pytest.raises(
        ValueError, match=r"torch.int64 inputs of shape \(4, 16\).*token ids cannot be interpolated"
    ):
        make_trainer(None, [MixUpCutMix(num_classes=3)], max_steps=1).fit(
            TinyClassifier(), DataLoader(tokens, 4)
        )


def test_digits_datamodule_and_classifier_learn():
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 1797
    val_labels = dm.val_set.tensors[1]
    assert set(val_labels.tolist()) == set(range(10))  # stratified
    model = ImageClassifier(num_classes=10, width=16)
    trainer = make_trainer(None, [MixUpCutMix(num_classes=10)], max_steps=-1, max_epochs=3)
    trainer.fit(model, datamodule=dm)
    assert trainer.callback_metrics["val/acc"] > 0.5  # 10 classes: chance is 0.1
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsDataModule(val_fraction=1.0)


def test_vision_mixup_recipe_runs_through_lightning_cli(monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    argv = ["kit", "fit", "--config", str(RECIPE), "--trainer.max_steps=3", "--trainer.limit_val_batches=1"]
    argv += ["--trainer.enable_progress_bar=false", "--trainer.logger=false"]
    monkeypatch.setattr(sys, "argv", argv)
    cli = LightningCLI(save_config_callback=None)
    assert isinstance(cli.model, ImageClassifier) and isinstance(cli.datamodule, DigitsDataModule)
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, MixUpCutMix))
    assert (cb.transform.mixup_alpha, cb.transform.cutmix_alpha, cb.transform.switch_prob) == (0.8, 1.0, 0.5)
    assert cli.trainer.global_step == 3


# ---------------------------------------------------------------- text


WORDS = ["the", "big", "dog", "wants", "a", "quick", "answer", "to", "a", "hard", "problem"]


@given(st.lists(st.sampled_from([*WORDS, "x", "y"]), min_size=1, max_size=40), st.integers(0, 10_000))
@settings(max_examples=80, deadline=None)
def test_eda_invariants(words, seed):
    rng = random.Random(seed)
    swapped = random_swap(words, 0.1, rng)
    assert sorted(swapped) == sorted(words)
    deleted = random_deletion(words, 0.5, rng)
    assert 1 <= len(deleted) <= len(words)
    it = iter(words)
    assert all(w in it for w in deleted)  # deletion keeps order
    replaced = synonym_replacement(words, 0.1, rng)
    assert len(replaced) == len(words)
    changed = [(a, b) for a, b in zip(words, replaced) if a != b]
    assert all(b in BUILTIN_SYNONYMS[a] for a, b in changed)
    assert len(changed) <= max(1, round(0.1 * len(words)))
    inserted = random_insertion(words, 0.1, rng)
    has_syn = any(builtin_synonyms(w) for w in words)
    assert len(inserted) == len(words) + (max(1, round(0.1 * len(words))) if has_syn else 0)


def test_eda_seeded_and_pluggable_synonyms():
    text = "the big dog wants a quick answer"
    assert eda(text, "synonym", 0.3, random.Random(1)) == eda(text, "synonym", 0.3, random.Random(1))
    custom = eda(text, "synonym", 1.0, random.Random(0), synonyms=lambda w: ["ZZ"] if w == "dog" else [])
    assert custom == "the big ZZ wants a quick answer"
    with pytest.raises(ValueError, match="op='shout'"):
        eda(text, "shout")
    with pytest.raises(ValueError, match="rate=2"):
        random_deletion(["a", "b"], 2)


def test_reorder_and_back_translation():
    text = "One is first. Two is second! Three is third?"
    out = reorder_sentences(text, random.Random(3))
    assert sorted(out.split()) == sorted(text.split())
    calls = []

    def fake_translate(texts, src, tgt):
        calls.append((len(texts), src, tgt))
        return [t[::-1] for t in texts]

    assert back_translate(["abc", "de"], fake_translate, "en", "fr") == ["abc", "de"]
    assert calls == [(2, "en", "fr"), (2, "fr", "en")]  # one batched call per direction
    with pytest.raises(ValueError, match="1:1"):
        back_translate(["a", "b"], lambda t, s, g: t[:1])


def test_text_augmenter_probability_seed_batching_state():
    texts = [f"the big dog number {i} wants a quick answer. It is hard!" for i in range(400)]
    aug = TextAugmenter(p=0.5, seed=0)
    out = aug(texts)
    changed = sum(a != b for a, b in zip(texts, out))
    assert 140 < changed < 220  # ~half (a few ops leave a text unchanged)
    assert TextAugmenter(p=0.5, seed=0)(texts) == out
    state = aug.state_dict()
    nxt = aug(texts[:5])
    aug2 = TextAugmenter(p=0.5, seed=123)
    aug2.load_state_dict(state)
    assert aug2(texts[:5]) == nxt
    batches = []
    bt = TextAugmenter(
        p=1.0, ops=("backtranslate",), translate=lambda t, s, g: (batches.append(len(t)), t)[1]
    )
    assert bt(texts[:7]) == texts[:7] and batches == [7, 7]
    with pytest.raises(ValueError, match="translate"):
        TextAugmenter(ops=("backtranslate",))
    with pytest.raises(ValueError, match="subset"):
        TextAugmenter(ops=("typo",))
