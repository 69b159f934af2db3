"""TrainingDoctor: each check as a function, the callback on a plain module, and `kit doctor` on a checkpoint."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import TinyRegressor, make_trainer
from hypothesis import given
from hypothesis import strategies as st
from lightning.pytorch.callbacks import ModelCheckpoint

from kit.callbacks.doctor import TrainingDoctor
from kit.cli.commands.doctor import main as doctor_main
from kit.health.doctor import (
    TrainingHistory,
    check_gradients,
    check_leakage,
    check_learning_rate,
    check_overfitting,
    diagnose,
    exact_duplicates,
    lr_range_test,
    ngram_overlap,
    plot_history,
    plot_lr_range,
    val_loss_rising,
)

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "judge",
    "boxing",
    "matches",
    "near",
    "old",
    "harbours",
    "and",
    "bright",
    "lanterns",
    "sway",
    "above",
    "narrow",
    "streets",
    "full",
    "of",
    "merchants",
    "selling",
    "spices",
    "cloth",
    "and",
    "maps",
]


def doc(seed: int, n: int = 60) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[i] for i in torch.randint(len(WORDS), (n,), generator=g).tolist())


TRAIN = [doc(i) for i in range(30)]
VAL = [doc(1000 + i) for i in range(10)]


# -- leakage -------------------------------------------------------------------------------------------


def test_planted_leakage_is_found() -> None:
    assert ngram_overlap(TRAIN, VAL)["contaminated"] == []  # random docs share no 13-gram
    leaked = list(VAL)
    passage = " ".join(TRAIN[3].split()[10:30])  # 20 words copied from a training document
    leaked[4] = (
        doc(2000, 20) + " " + passage.upper().replace(" ", ",  ") + " " + doc(2001, 20)
    )  # case/punct changed
    leaked[7] = TRAIN[5]  # an exact duplicate
    res = ngram_overlap(TRAIN, leaked)
    assert res["contaminated"] == [4, 7] and res["fraction"] == pytest.approx(0.2)
    assert exact_duplicates(TRAIN, leaked) == [7]
    f = check_leakage(TRAIN, leaked)
    assert f.severity == "problem" and "1/10 validation documents are exact copies" in f.saw and f.try_
    assert check_leakage(TRAIN, VAL).severity == "ok"
    assert "skipped" in check_leakage(None, VAL).saw


@given(st.integers(13, 40), st.integers(0, 29))
def test_any_copied_13gram_is_caught(length: int, src: int) -> None:
    words = TRAIN[src].split()
    val = [doc(5000, 15) + " " + " ".join(words[:length]) + " " + doc(5001, 15)]
    assert ngram_overlap(TRAIN, val)["contaminated"] == [0]


# -- learning rate, gradients, overfitting ---------------------------------------------------------------


def history(losses: list[float], grad: list[float] | None = None, lr: float = 1e-3) -> TrainingHistory:
    h = TrainingHistory()
    for s, v in enumerate(losses):
        h.record_train(s, v, lr, (grad or [1.0] * len(losses))[s])
    return h


def test_learning_rate_check_synthetic() -> None:
    falling = [3.0 * math.exp(-0.03 * s) + 0.5 for s in range(100)]
    assert check_learning_rate(history(falling)).severity == "ok"
    rising = [1.0 + 0.02 * s for s in range(100)]
    f = check_learning_rate(history(rising, lr=0.3))
    assert f.severity == "problem" and "lower the learning rate (now 0.3)" in f.try_
    bounce = [2.0 - 0.05 * s for s in range(30)] + [0.5 + 0.05 * s for s in range(30)]
    assert check_learning_rate(history(bounce)).severity == "problem"
    nan = falling[:50] + [float("nan")] * 5
    assert "non-finite at step 50" in check_learning_rate(history(nan)).saw
    # warmup steps are ignored: a rise inside warmup is not a finding
    warm = [1.0 + 0.1 * s for s in range(20)] + falling
    assert check_learning_rate(history(warm), warmup_steps=20).severity == "ok"
    assert check_learning_rate(history(falling), range_test_lr=1e-5).severity == "warn"


def test_gradient_check() -> None:
    healthy = {"a": [1.0, 0.9, 1.1, 1.0], "b": [0.5, 0.6, 0.5, 0.4]}
    assert check_gradients(healthy).severity == "ok"
    exploding = {"a": [1.0, 1.0, 1.2, 50.0], "b": [0.5] * 4}
    assert "exploding in ['a']" in check_gradients(exploding).saw
    vanishing = {"first": [1e-9] * 4, "last": [1.0] * 4}
    assert "vanishing in ['first']" in check_gradients(vanishing).saw
    assert "non-finite" in check_gradients({"a": [1.0, float("inf")]}).saw


def test_overfitting_check_and_trigger() -> None:
    h = history([2.0 - 0.015 * s for s in range(100)])
    for s, v in zip((20, 40, 60, 80, 99), (1.8, 1.6, 1.7, 1.8, 1.9)):
        h.record_val(s, v)
    f = check_overfitting(h, patience=3)
    assert f.severity == "problem" and "1.6 (best)" in f.saw and "EarlyStopping" in f.try_
    assert val_loss_rising(h.val_loss, 3) and not val_loss_rising(h.val_loss, 4)
    assert val_loss_rising([1.0, float("nan")], 3)


def test_lr_range_test_on_a_quadratic() -> None:
    w = torch.tensor([5.0])

    def step(lr: float) -> float:  # SGD on f(w) = w^2 diverges for lr > 1
        nonlocal w
        w = w - lr * 2 * w
        return float(w**2)

    suggested, curve = lr_range_test(step, 1e-4, 10.0, 40)
    assert 1e-2 < suggested < 1.0 and len(curve) < 40  # below the stability limit lr=1; stopped on blow-up


def test_report_markdown_and_plots(tmp_path: Path) -> None:
    h = history([2.0 - 0.01 * s for s in range(50)])
    h.record_val(10, 1.9)
    h.record_layers({"a": 1.0, "b": 0.5})
    diag = diagnose(h, TRAIN, VAL)
    diag.plots = plot_history(h, tmp_path)
    assert [Path(p).name for p in diag.plots] == ["loss.png", "lr.png", "grad_norm.png"]
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in diag.plots)
    md = diag.to_markdown()
    assert "**No problems found.**" in md and "![loss](loss.png)" in md and "| leakage | ok |" in md


# -- the callback on a plain module ---------------------------------------------------------------------


def loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = torch.tanh(x @ torch.randn(8, 1, generator=g)) + 0.1 * torch.randn(512, 1, generator=g)
    ds = torch.utils.data.TensorDataset
    tr = torch.utils.data.DataLoader(ds(x[:448], y[:448]), batch_size=16, shuffle=True)
    return tr, torch.utils.data.DataLoader(ds(x[448:], y[448:]), batch_size=64)


def train(lr: float, doctor: TrainingDoctor, tmp_path: Path, steps: int = 112, **kw) -> pl.Trainer:
    torch.manual_seed(0)
    trainer = make_trainer(
        tmp_path,
        [doctor, *kw.pop("callbacks", [])],
        max_steps=steps,
        val_check_interval=14,
        num_sanity_val_steps=2,
        enable_checkpointing=kw.pop("enable_checkpointing", False),
        **kw,
    )
    trainer.fit(TinyRegressor(lr=lr, hidden=32), *loaders())
    return trainer


def test_healthy_run_gets_a_clean_report(tmp_path: Path) -> None:
    doctor = TrainingDoctor(
        log_every_n_steps=2,
        report_on_fit_end=True,
        out_dir=str(tmp_path / "doc"),
        train_texts=TRAIN,
        val_texts=VAL,
    )
    train(0.05, doctor, tmp_path)
    diag = doctor.last_diagnosis
    assert diag.problems == [], diag.to_markdown()
    assert {f.check for f in diag.findings} == {"learning_rate", "leakage", "gradients", "overfitting"}
    assert "No problems found" in (tmp_path / "doc" / "report.md").read_text()
    assert len(doctor.history.val_loss) == 8 and len(doctor.history.steps) == 56


def test_lr_100x_too_high_is_diagnosed_when_val_loss_rises(tmp_path: Path) -> None:
    doctor = TrainingDoctor(log_every_n_steps=2, out_dir=str(tmp_path / "doc"))
    with pytest.warns(UserWarning, match="TrainingDoctor: .*learning_rate"):
        train(5.0, doctor, tmp_path)  # 100x the healthy 0.05
    assert len(doctor.reports) == 1  # triggered by the diverged validation loss, once per streak
    lr = next(f for f in doctor.last_diagnosis.findings if f.check == "learning_rate")
    assert lr.severity == "problem" and "lower the learning rate (now 5)" in lr.try_
    assert (tmp_path / "doc" / "loss.png").exists()


def test_planted_leakage_via_callback_and_range_test(tmp_path: Path) -> None:
    leaked = VAL[:5] + TRAIN[:2]
    doctor = TrainingDoctor(
        log_every_n_steps=2,
        report_on_fit_end=True,
        out_dir=str(tmp_path / "doc"),
        train_texts=TRAIN,
        val_texts=leaked,
        range_test_steps=20,
    )
    trainer = train(0.05, doctor, tmp_path, steps=28)
    leak = next(f for f in doctor.last_diagnosis.findings if f.check == "leakage")
    assert leak.severity == "problem" and "2/7 validation documents are exact copies" in leak.saw
    assert doctor.range_test_lr is not None and 0 < doctor.range_test_lr < 1.0
    # the curve is kept (history, so also the checkpoint) and drawn beside the report
    assert len(doctor.history.lr_range) >= 3 and doctor.history.lr_range_suggested == doctor.range_test_lr
    assert (tmp_path / "doc" / "lr_range.png").read_bytes()[:4] == b"\x89PNG"
    assert "![lr_range](lr_range.png)" in (tmp_path / "doc" / "report.md").read_text()
    # the range test trains the module itself, then restores its weights exactly
    module = trainer.lightning_module
    before = [p.detach().clone() for p in module.parameters()]
    again = doctor._range_test(trainer, module)  # same weights, batch and seeds: the same suggestion
    assert again == pytest.approx(doctor.range_test_lr, rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_lr_range_plot_from_a_saved_history(tmp_path: Path) -> None:
    """`kit doctor` rebuilds the history from a checkpoint and calls plot_history: the curve survives that."""
    h = history([2.0 - 0.01 * s for s in range(20)])
    h.lr_range = [(1e-4, 2.0), (1e-3, 1.5), (1e-2, 1.2), (1e-1, 3.0), (1.0, float("inf"))]
    h.lr_range_suggested = 1e-3
    restored = TrainingHistory.from_state_dict(h.state_dict())
    paths = plot_history(restored, tmp_path)
    assert Path(paths[-1]).name == "lr_range.png" and Path(paths[-1]).read_bytes()[:4] == b"\x89PNG"
    assert plot_lr_range([], None, tmp_path / "none") is None


def test_kit_doctor_on_a_checkpoint(tmp_path: Path) -> None:
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    train(
        5.0,
        TrainingDoctor(log_every_n_steps=2, out_dir=str(tmp_path / "doc")),
        tmp_path,
        callbacks=[ckpt_cb],
        enable_checkpointing=True,
    )
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    (tmp_path / "train.txt").write_text(TRAIN[0])
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "a.txt").write_text(TRAIN[0])  # leaked
    out = tmp_path / "after"
    code = doctor_main(
        [
            "--ckpt",
            str(ckpt),
            "--train-text",
            str(tmp_path / "train.txt"),
            "--val-text",
            str(tmp_path / "val"),
            "--out",
            str(out),
        ]
    )
    assert code == 1
    report = (out / "report.md").read_text()
    assert "| learning_rate | problem |" in report and "| leakage | problem |" in report
    assert doctor_main(["--ckpt", str(tmp_path / "missing.ckpt")]) == 2
    r = subprocess.run(
        [sys.executable, "-m", "kit.cli.commands.doctor", "--ckpt", str(ckpt), "--out", str(tmp_path / "sub")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1 and "learning_rate" in r.stdout and (tmp_path / "sub" / "report.md").exists()


def test_validation() -> None:
    with pytest.raises(ValueError, match="patience=0"):
        TrainingDoctor(patience=0)
    with pytest.raises(ValueError, match="n=0"):
        ngram_overlap([], [], n=0)


def test_kit_doctor_rebuilds_the_kits_datamodule_from_the_checkpoint(tmp_path: Path) -> None:
    """CausalLM + TextDataModule: the data comes back from ``datamodule_hyper_parameters``, the model from --model."""
    from kit.datamodules.text import TextDataModule
    from kit.models.gpt import CausalLM
    from kit.nn import GPTConfig

    dm = TextDataModule(vocab_size=300, block_size=16, batch_size=8)
    lm = CausalLM(GPTConfig.from_name("debug", vocab_size=None, block_size=16), warmup_steps=2)
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = pl.Trainer(
        max_steps=12,
        val_check_interval=4,
        limit_val_batches=2,
        check_val_every_n_epoch=None,
        callbacks=[TrainingDoctor(log_every_n_steps=2), ckpt_cb],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    trainer.fit(lm, dm)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert "datamodule_hyper_parameters" in ckpt
    out = tmp_path / "report"
    code = doctor_main(
        [
            "--ckpt",
            str(tmp_path / "last.ckpt"),
            "--model",
            "kit.models.gpt.CausalLM",
            "--batches",
            "2",
            "--out",
            str(out),
        ]
    )
    report = (out / "report.md").read_text()
    assert code in (0, 1)
    assert "| leakage |" in report and "skipped" not in report.split("| leakage |")[1].split("\n")[0]
    assert "| generalisation_gap |" in report and "with the checkpoint's weights" in report
    # the same from a LightningCLI-style YAML instead of the saved datamodule hyper-parameters
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "model:\n  class_path: kit.models.gpt.CausalLM\n"
        "data:\n  class_path: kit.datamodules.text.TextDataModule\n"
        "  init_args: {vocab_size: 300, block_size: 16, batch_size: 8}\n"
    )
    out2 = tmp_path / "report2"
    assert doctor_main(
        ["--ckpt", str(tmp_path / "last.ckpt"), "--config", str(cfg), "--batches", "1", "--out", str(out2)]
    ) in (0, 1)
    assert "with the checkpoint's weights" in (out2 / "report.md").read_text()
