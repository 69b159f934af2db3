"""SpikeGuard: the rolling z-score detector and the callback's skip / rewind / stop actions and resume."""

from __future__ import annotations

import math
import random

import lightning.pytorch as pl
import pytest
import torch
from conftest import TinyRegressor, make_trainer
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from kit.callbacks.spike_guard import SpikeGuard
from kit.health.spikes import SpikeDetector

# -- detector ------------------------------------------------------------------------------------------


@given(st.integers(0, 10_000), st.floats(0.01, 10.0), st.floats(-5.0, 5.0))
@settings(max_examples=30)
def test_no_false_alarms_on_clean_gaussian_series(seed: int, std: float, mean: float) -> None:
    rng = random.Random(seed)
    det = SpikeDetector(window=128, threshold=6.0)
    flagged = [det.update(rng.gauss(mean, std)).is_spike for _ in range(600)]
    assert not any(flagged)


@given(st.integers(0, 10_000), st.floats(8.0, 1000.0))
@settings(max_examples=30)
def test_injected_spike_is_caught_and_not_absorbed(seed: int, sigmas: float) -> None:
    rng = random.Random(seed)
    det = SpikeDetector(window=64, threshold=6.0)
    for _ in range(100):
        det.update(rng.gauss(2.0, 0.1))
    mean, std = det.stats()
    v = det.update(mean + sigmas * std)
    assert v.is_spike and v.reason == "zscore" and v.zscore > 6
    assert det.stats() == (mean, std)  # the spike is kept out of the window


def test_nan_inf_and_warmup() -> None:
    det = SpikeDetector(window=8, threshold=6.0)
    assert det.update(float("nan")).reason == "nonfinite"
    assert det.update(float("inf")).is_spike
    v = [det.update(x) for x in (1.0, 1.0, 1.0)]
    assert not any(x.active for x in v)  # inactive until half full (4 of 8)
    assert not det.update(1e9).is_spike  # still warming up: only the 4th value
    det2 = SpikeDetector(window=8)
    for x in (1.0, 1.1, 0.9, 1.0):
        det2.update(x)
    assert det2.active and det2.update(100.0).is_spike
    assert not det2.update(-100.0).is_spike  # one-sided by default
    assert SpikeDetector(window=8, two_sided=True).load_state_dict(det2.state_dict()) is None


def test_state_dict_round_trip_gives_same_verdicts() -> None:
    a = SpikeDetector(window=16)
    for i in range(20):
        a.update(1.0 + 0.01 * (i % 5))
    b = SpikeDetector(window=16)
    b.load_state_dict(a.state_dict())
    for x in (1.02, 1.5, 50.0):
        va, vb = a.update(x), b.update(x)
        assert va == vb


def test_validation_messages() -> None:
    with pytest.raises(ValueError, match="window=2"):
        SpikeDetector(window=2)
    with pytest.raises(ValueError, match="action='explode'"):
        SpikeGuard(action="explode")
    with pytest.raises(ValueError, match="monitor"):
        SpikeGuard(monitor=("accuracy",))


# -- callback ------------------------------------------------------------------------------------------


PLAIN = {"lr": 0.01, "in_dim": 4, "hidden": 8}  # the shared MLP regression, 4 -> 8 -> 1


class SpikyData(torch.utils.data.Dataset):
    """Regression data; batches listed in ``spikes`` get targets 1000x larger (or NaN)."""

    def __init__(self, n_batches: int, batch: int = 8, spikes: dict[int, str] | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n_batches * batch, 4, generator=g)
        self.y = self.x[:, :1].clone()
        for b, kind in (spikes or {}).items():
            self.y[b * batch : (b + 1) * batch] = float("nan") if kind == "nan" else 1000.0
        self.batch = batch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class WeightLog(Callback):
    """Weights before and after every optimizer step (callback order: after the guard)."""

    def __init__(self) -> None:
        self.before: dict[int, torch.Tensor] = {}
        self.after: dict[int, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before[trainer.global_step] = torch.cat(
            [p.detach().reshape(-1) for p in pl_module.parameters()]
        ).clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[trainer.global_step - 1] = torch.cat(
            [p.detach().reshape(-1) for p in pl_module.parameters()]
        ).clone()


def run(
    guard: SpikeGuard, n_batches: int, spikes: dict[int, str] | None = None, extra: list | None = None, **kw
):
    torch.manual_seed(0)
    module = TinyRegressor(**PLAIN)
    log = WeightLog()
    trainer = make_trainer(
        None,
        [guard, log, *(extra or [])],
        max_steps=-1,
        max_epochs=1,
        enable_checkpointing=bool(extra),
        **kw,
    )
    dl = torch.utils.data.DataLoader(SpikyData(n_batches, spikes=spikes), batch_size=8)
    trainer.fit(module, dl)
    return trainer, module, log


def test_clean_run_has_no_false_alarms() -> None:
    guard = SpikeGuard(window=32)
    run(guard, 120)
    assert guard.events == [] and guard.skipped == []


@pytest.mark.parametrize("kind", ["big", "nan"])
def test_skip_drops_the_spiking_update(kind: str) -> None:
    guard = SpikeGuard(window=32)
    _trainer, module, log = run(guard, 60, spikes={40: kind})
    assert [e["step"] for e in guard.events] == [40]
    assert guard.events[0]["reason"].startswith("loss:" + ("nonfinite" if kind == "nan" else "zscore"))
    assert guard.skipped == [{"step": 40, "epoch": 0, "batch_idx": 40, "rewind": 0}]
    assert torch.equal(log.before[40], log.after[40])  # the update was not applied
    assert not torch.equal(log.before[39], log.after[39])  # ordinary steps were
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_grad_norm_spike_alone_is_caught() -> None:
    guard = SpikeGuard(window=32, monitor=("grad_norm",))
    run(guard, 60, spikes={45: "big"})
    assert [e["step"] for e in guard.events] == [45] and "grad_norm:zscore" in guard.events[0]["reason"]


def test_rewind_reloads_last_checkpoint_and_skips_next_batches(tmp_path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=10, save_top_k=-1)
    guard = SpikeGuard(action="rewind", window=32, skip_batches=5)
    _trainer, module, log = run(guard, 60, spikes={45: "big"}, extra=[ckpt])
    event = guard.events[0]
    assert event["step"] == 45 and event["rewound_to"].endswith("step=40.ckpt")
    saved = torch.load(event["rewound_to"], weights_only=False)["state_dict"]
    flat_saved = torch.cat([saved[k].reshape(-1) for k in module.state_dict()])
    # the step after the rewind starts from the checkpoint's weights, and its update is dropped
    assert torch.equal(log.before[46], flat_saved) and torch.equal(log.after[46], flat_saved)
    assert [s["step"] for s in guard.skipped] == [45, 46, 47, 48, 49, 50]
    assert [s["rewind"] for s in guard.skipped] == [0, 1, 1, 1, 1, 1]
    assert not torch.equal(log.before[51], log.after[51])  # training resumes after K batches


def test_rewind_without_checkpoint_falls_back_to_skip() -> None:
    guard = SpikeGuard(action="rewind", window=32, skip_batches=5)
    with pytest.warns(UserWarning, match="no checkpoint to rewind to"):
        run(guard, 50, spikes={40: "big"})
    assert guard.events[0]["rewound_to"] is None and guard.pending_skips == 0


def test_stop_writes_report(tmp_path) -> None:
    report = tmp_path / "spikes.md"
    guard = SpikeGuard(action="stop", window=32, report_path=str(report))
    trainer, *_ = run(guard, 60, spikes={40: "nan"})
    assert trainer.global_step == 41 and trainer.should_stop  # stopped right after the (dropped) step 40
    text = report.read_text()
    assert "| 40 | 0 | 40 | loss:nonfinite" in text


def test_state_survives_resume(tmp_path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    guard = SpikeGuard(window=32)
    run(guard, 50, spikes={40: "big"}, extra=[ckpt])
    assert guard.events
    resumed = SpikeGuard(window=32)
    torch.manual_seed(0)
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[resumed],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        enable_checkpointing=False,
    )
    trainer.fit(
        TinyRegressor(**PLAIN),
        torch.utils.data.DataLoader(SpikyData(50), batch_size=8),
        ckpt_path=str(tmp_path / "last.ckpt"),
    )
    assert resumed.events[:1] == guard.events and resumed.skipped[:1] == guard.skipped
    assert len(resumed.detectors["loss"].values) == 32  # the window came back full: active at once
    assert not math.isnan(resumed.detectors["loss"].stats()[0])


def test_microbatch_losses_are_summed_under_accumulation() -> None:
    guard = SpikeGuard(window=16)
    run(guard, 80, spikes={61: "big"}, accumulate_grad_batches=2)
    # batch 61 belongs to optimizer step 30; the spike is seen once, for that step
    assert [e["step"] for e in guard.events] == [30] and guard.events[0]["batch_idx"] == 61


def test_reads_unscaled_loss_under_fp16() -> None:
    """Lightning hands on_before_backward the *scaled* loss under fp16; the guard must judge the real one."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    losses: list[float] = []

    class Recorder(TinyRegressor):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            losses.append(float(loss.detach()))
            return loss

    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=4096.0))
    guard = SpikeGuard(window=16)
    torch.manual_seed(0)
    trainer = pl.Trainer(
        max_steps=20,
        callbacks=[guard],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        enable_checkpointing=False,
        plugins=[plugin],
    )
    trainer.fit(Recorder(**PLAIN), torch.utils.data.DataLoader(SpikyData(20), batch_size=8))
    window = list(guard.detectors["loss"].values)
    assert window == pytest.approx(losses[-len(window) :], rel=1e-5)
    assert max(window) < 100 and guard.events == []  # not ~4096x the loss


class RankSpikyData(SpikyData):
    """Batch 20 spikes on rank 0 only (the rank is read when the sample is fetched)."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return x, (y + 1000.0 if rank == 0 and i // self.batch == 20 else y)


class _DumpEvents(Callback):
    def __init__(self, guard: SpikeGuard, out: str) -> None:
        self.guard, self.out = guard, out

    def on_train_end(self, trainer, pl_module) -> None:
        import json

        path = f"{self.out}/rank{trainer.global_rank}.json"
        with open(path, "w") as f:
            json.dump({"skipped": [s["step"] for s in self.guard.skipped], "events": self.guard.events}, f)


@pytest.mark.slow
@pytest.mark.distributed
def test_ranks_agree_when_only_one_rank_spikes(tmp_path) -> None:
    """Under DDP only rank 0's batch 20 spikes (loss-only monitor); rank 1 must drop that update too,
    or the replicas would diverge."""
    import json

    data = RankSpikyData(30)
    guard = SpikeGuard(window=16, monitor=("loss",))
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[guard, _DumpEvents(guard, str(tmp_path))],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        enable_checkpointing=False,
        use_distributed_sampler=False,  # every rank reads the whole dataset in order
    )
    trainer.fit(TinyRegressor(**PLAIN), torch.utils.data.DataLoader(data, batch_size=8))
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["skipped"] == r1["skipped"] == [20]


def test_rewind_refuses_sharded_checkpoint_strategies_at_setup() -> None:
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    deepspeed = DeepSpeedStrategy.__new__(DeepSpeedStrategy)  # recognised by type: no DeepSpeed install needed
    sharded = (FSDPStrategy(state_dict_type="sharded"), deepspeed, ModelParallelStrategy())
    for strategy in sharded:
        with pytest.raises(ValueError, match=r"rewind.*folder.*action='skip'"):
            SpikeGuard(action="rewind").setup(SimpleNamespace(strategy=strategy), None, "fit")
        SpikeGuard(action="skip").setup(SimpleNamespace(strategy=strategy), None, "fit")  # skip/stop are fine
    for whole in (FSDPStrategy(state_dict_type="full"), ModelParallelStrategy(save_distributed_checkpoint=False)):
        SpikeGuard(action="rewind").setup(SimpleNamespace(strategy=whole), None, "fit")


def test_rewind_uses_the_newest_verified_kit_checkpoint(tmp_path) -> None:
    from kit.callbacks import KitCheckpoint

    ckpt = KitCheckpoint(dirpath=str(tmp_path), every_n_train_steps=10, keep_last=5)
    guard = SpikeGuard(action="rewind", window=32, skip_batches=2)
    _trainer, module, log = run(guard, 60, spikes={45: "big"}, extra=[ckpt])
    assert guard.events[0]["rewound_to"]  # step00000040.ckpt or last.ckpt, its hard link at the time
    saved = torch.load(tmp_path / "step00000040.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(log.before[46], torch.cat([saved[k].reshape(-1) for k in module.state_dict()]))


def test_stop_report_has_a_loss_plot_with_the_spike(tmp_path) -> None:
    report = tmp_path / "spikes.md"
    guard = SpikeGuard(action="stop", window=32, report_path=str(report))
    run(guard, 60, spikes={40: "big"})
    png = report.with_suffix(".png")
    assert png.stat().st_size > 5_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert len(guard.history) == 41 and guard.history[40][0] == 40
