"""kit.checkpoint (atomic write, manifest, recovery, RNG, compatibility) and the KitCheckpoint callback."""

from __future__ import annotations

import errno
import os
import signal

import lightning.pytorch as pl
import pytest
import torch
from conftest import BatchRecorder, TinyRegressor, make_trainer, regression_loader
from lightning.pytorch.callbacks import ModelCheckpoint

from kit.callbacks.checkpoint import KitCheckpoint
from kit.checkpoint import (
    CheckpointWriteError,
    Manifest,
    atomic_write,
    capture_rng,
    describe_mismatch,
    find_latest,
    newest_good,
    resolve_checkpoint,
    restore_rng,
    upgrade_checkpoint,
    verify,
)


def _fit(tmp_path, ckpt: KitCheckpoint, steps: int = 6, model=None, ckpt_path=None, **kw) -> pl.Trainer:
    trainer = make_trainer(tmp_path, [ckpt], max_steps=steps, enable_checkpointing=True, **kw)
    trainer.fit(model or TinyRegressor(), regression_loader(), regression_loader(n=16), ckpt_path=ckpt_path)
    return trainer


# -- the core ---------------------------------------------------------------------------------------------


def test_atomic_write_failure_keeps_the_previous_file_and_says_so(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_write(target, lambda p: p.write_bytes(b"good"))

    def disk_full(path):
        path.write_bytes(b"half")  # a partial write, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointWriteError, match=r"last.ckpt failed .*No space left.*is intact"):
        atomic_write(target, disk_full)
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_atomic_write_replaces_a_sharded_folder_whole(tmp_path):
    target = tmp_path / "step10.ckpt"
    for content in ("old", "new"):
        atomic_write(target, lambda p, c=content: (p.mkdir(), (p / "shard0").write_text(c)))
    assert (target / "shard0").read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_truncated_or_corrupt_newest_falls_back_with_a_warning_naming_both(tmp_path):
    for step in (1, 2, 3):
        torch.save({"step": step, "w": torch.randn(100)}, tmp_path / f"step{step}.ckpt")
    manifest = Manifest(tmp_path)
    for step in (1, 2, 3):
        manifest.add(f"step{step}.ckpt", step=step)
    manifest.save()
    assert newest_good(tmp_path).name == "step3.ckpt"
    data = (tmp_path / "step3.ckpt").read_bytes()
    (tmp_path / "step3.ckpt").write_bytes(data[: len(data) // 2])  # truncated
    raw = bytearray((tmp_path / "step2.ckpt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte
    (tmp_path / "step2.ckpt").write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=r"step3.ckpt \(.*truncated.*step2.ckpt \(.*corrupt.*step1.ckpt"):
        assert newest_good(tmp_path).name == "step1.ckpt"
    with pytest.warns(UserWarning, match=r"step3.ckpt is unusable .*previous good one.*step1.ckpt"):
        assert resolve_checkpoint(tmp_path / "step3.ckpt").name == "step1.ckpt"


def test_without_a_manifest_torch_zip_crcs_catch_corruption(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"w": torch.arange(1000.0)}, path)
    assert verify(path) is None
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert verify(path) is not None


def test_rng_round_trip_covers_python_numpy_torch():
    import random

    import numpy as np

    state = capture_rng()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_mismatch_report_lists_keys_and_shapes():
    text = describe_mismatch(
        {"a.weight": torch.zeros(4, 8), "b": torch.zeros(1)},
        {"a.weight": torch.zeros(4, 16), "c": torch.zeros(1)},
    )
    assert "a.weight checkpoint (4, 16) vs model (4, 8)" in text and "['b']" in text and "['c']" in text
    assert describe_mismatch({"a": torch.zeros(2)}, {"a": torch.ones(2)}) is None


def test_old_checkpoints_load_with_a_note_and_newer_ones_are_refused():
    assert "RNG states are not restored" in upgrade_checkpoint({"state_dict": {}})[0]
    with pytest.raises(ValueError, match="newer than this kit"):
        upgrade_checkpoint({"kit": {"format": 99, "kit_version": "9.0"}})


# -- the callback -----------------------------------------------------------------------------------------


def test_keeps_last_k_and_best_k_with_a_verified_manifest(tmp_path):
    ckpt = KitCheckpoint(dirpath=str(tmp_path / "c"), every_n_train_steps=1, keep_last=2, monitor="val_loss")
    _fit(tmp_path, ckpt, steps=6, val_check_interval=2, limit_val_batches=2)
    names = sorted(p.name for p in (tmp_path / "c").glob("*.ckpt"))
    periodic = [n for n in names if n.startswith("step")]
    assert periodic == ["step00000005.ckpt", "step00000006.ckpt"]
    assert "last.ckpt" in names and any(n.startswith("epoch=") for n in names)  # the best by val_loss
    manifest = Manifest(tmp_path / "c")
    assert sorted(manifest.entries) == names
    assert all(verify(tmp_path / "c" / e.name, e.files) is None for e in manifest.entries.values())
    assert torch.load(tmp_path / "c" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert find_latest(tmp_path).parent == tmp_path / "c"


def test_a_failed_write_raises_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = KitCheckpoint(dirpath=str(tmp_path / "c"), every_n_train_steps=2, keep_last=3)
    trainer = make_trainer(tmp_path, [ckpt], max_steps=6, enable_checkpointing=True)
    import kit.callbacks.checkpoint as module

    real = module.save_torch_file  # the single-file write, straight into the checkpoint folder

    def flaky(checkpoint, path, **kw):
        if checkpoint["global_step"] >= 4:
            real(checkpoint, path, **kw)
            with open(path, "r+b") as f:
                f.truncate(100)  # half written when the disk filled up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(checkpoint, path, **kw)

    monkeypatch.setattr(module, "save_torch_file", flaky)
    with pytest.raises(CheckpointWriteError, match=r"step00000004.ckpt failed .*No space left"):
        trainer.fit(TinyRegressor(), regression_loader())
    good = newest_good(tmp_path / "c")
    assert good.name in ("last.ckpt", "step00000002.ckpt")
    assert torch.load(good, weights_only=True)["global_step"] == 2
    assert not [p for p in (tmp_path / "c").iterdir() if ".tmp-" in p.name]  # no temporaries


def test_resume_into_a_different_model_names_keys_and_shapes(tmp_path):
    ckpt = KitCheckpoint(dirpath=str(tmp_path / "c"), every_n_train_steps=2)
    _fit(tmp_path, ckpt, steps=2)
    with pytest.raises(ValueError, match=r"net.0.weight checkpoint \(16, 8\) vs model \(32, 8\)"):
        _fit(
            tmp_path,
            KitCheckpoint(dirpath=str(tmp_path / "d")),
            steps=4,
            model=TinyRegressor(hidden=32),
            ckpt_path=str(tmp_path / "c" / "last.ckpt"),
        )


def test_a_plain_model_checkpoint_file_resumes_with_a_note(tmp_path):
    trainer = make_trainer(
        tmp_path,
        [ModelCheckpoint(dirpath=str(tmp_path / "old"), save_last=True)],
        max_steps=2,
        enable_checkpointing=True,
    )
    trainer.fit(TinyRegressor(), regression_loader())
    with pytest.warns(UserWarning, match="RNG states are not restored"):
        trainer = _fit(
            tmp_path,
            KitCheckpoint(dirpath=str(tmp_path / "new")),
            steps=4,
            ckpt_path=str(tmp_path / "old" / "last.ckpt"),
        )
    assert trainer.global_step == 4


def test_async_save_writes_the_same_checkpoint(tmp_path):
    states = {}
    for mode in (False, True):
        ckpt = KitCheckpoint(dirpath=str(tmp_path / str(mode)), every_n_train_steps=3, async_save=mode)
        torch.manual_seed(0)
        _fit(tmp_path, ckpt, steps=6)
        states[mode] = torch.load(tmp_path / str(mode) / "step00000006.ckpt", weights_only=True)
        assert newest_good(tmp_path / str(mode)) is not None and len(ckpt.save_times) >= 2
    for key, value in states[False]["state_dict"].items():
        assert torch.equal(value, states[True]["state_dict"][key])
    assert (
        states[False]["optimizer_states"][0]["state"].keys()
        == states[True]["optimizer_states"][0]["state"].keys()
    )


def test_sigterm_saves_at_the_next_step_and_stops_cleanly(tmp_path, capsys):
    class Preempt(pl.Callback):
        validations = 0

        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

        def on_validation_start(self, trainer, *args):
            self.validations += 1

    preempt = Preempt()
    before = signal.getsignal(signal.SIGTERM)
    ckpt = KitCheckpoint(dirpath=str(tmp_path / "c"), every_n_train_steps=100)
    trainer = make_trainer(
        tmp_path,
        [preempt, ckpt],
        max_steps=50,
        enable_checkpointing=True,
        val_check_interval=5,
        check_val_every_n_epoch=None,
        limit_val_batches=2,
    )
    trainer.fit(TinyRegressor(), regression_loader(), regression_loader())
    assert ckpt.preempted_by == "SIGTERM" and trainer.global_step == 3
    assert (
        preempt.validations == 0
    )  # no validation on the way out (Lightning validates when should_stop is set)
    assert torch.load(tmp_path / "c" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_a_preemption_save_callback_takes_over_and_saves_through_the_checkpoint(tmp_path):
    """PreemptionSave composed by the recipe (KitCheckpoint's own off, or on and then ignored) stops the same way."""
    from kit.callbacks import PreemptionSave

    for own in (False, True):

        class Preempt(pl.Callback):
            handlers: list = []

            def on_train_batch_end(self, trainer, *args):
                self.handlers.append(signal.getsignal(signal.SIGTERM))
                if trainer.global_step == 3:
                    os.kill(os.getpid(), signal.SIGTERM)

        before = signal.getsignal(signal.SIGTERM)
        preempt, save = Preempt(), PreemptionSave()
        ckpt = KitCheckpoint(dirpath=str(tmp_path / f"c{own}"), every_n_train_steps=100, preemption=own)
        trainer = make_trainer(tmp_path, [preempt, save, ckpt], max_steps=50, enable_checkpointing=True)
        trainer.fit(TinyRegressor(), regression_loader())
        assert trainer.global_step == 3 and save.preempted_by == "SIGTERM" and save.preemptions == 1
        assert ckpt.preempted_by == "SIGTERM"  # the checkpoint reports the callback that stopped the run
        assert {h.__self__ for h in preempt.handlers} == {save}  # one handler: the composed one stayed off
        assert torch.load(tmp_path / f"c{own}" / "last.ckpt", weights_only=True)["global_step"] == 3
        assert signal.getsignal(signal.SIGTERM) is before
        assert trainer.callback_metrics["preemption/stop"] == 1.0


def test_preemption_without_a_checkpoint_stops_and_says_nothing_was_saved(tmp_path, caplog):
    from kit.callbacks import PreemptionSave

    class Preempt(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    save = PreemptionSave()
    with pytest.warns(UserWarning, match="no checkpoint callback that saves on demand"):
        trainer = make_trainer(tmp_path, [Preempt(), save], max_steps=50)
        trainer.fit(TinyRegressor(), regression_loader())
    assert trainer.global_step == 2 and save.preempted_by == "SIGTERM"
    with pytest.raises(ValueError, match="every_n_steps=0"):
        PreemptionSave(every_n_steps=0)


def test_the_old_watchdog_and_preemption_arguments_warn_and_still_compose(tmp_path):
    from kit.callbacks import HangWatchdog, PreemptionSave

    with pytest.warns(DeprecationWarning, match=r"HangWatchdog\(timeout_s=30\)"):
        ckpt = KitCheckpoint(hang_timeout_s=30)
    assert isinstance(ckpt._watchdog, HangWatchdog) and ckpt._watchdog.timeout_s == 30
    with pytest.warns(DeprecationWarning, match=r"PreemptionSave\(every_n_steps=4\).*preemption=False"):
        ckpt = KitCheckpoint(preemption_every_n_steps=4)
    assert isinstance(ckpt._own_preemption, PreemptionSave) and ckpt._own_preemption.every_n_steps == 4
    assert KitCheckpoint(preemption=False)._own_preemption is None
    with pytest.raises(ValueError, match="hang_timeout_s=0"):
        KitCheckpoint(hang_timeout_s=0)
    with pytest.raises(ValueError, match="timeout_s=-1"):
        HangWatchdog(timeout_s=-1)


def test_the_watchdog_counts_idle_time_and_names_the_newest_checkpoint(tmp_path):
    import time

    from kit.callbacks import HangWatchdog

    dog = HangWatchdog(timeout_s=60)
    ckpt = KitCheckpoint(dirpath=str(tmp_path / "c"), every_n_train_steps=2)
    trainer = make_trainer(tmp_path, [dog, ckpt], max_steps=4, enable_checkpointing=True)
    trainer.fit(TinyRegressor(), regression_loader())
    assert dog._thread is None  # stopped at teardown
    assert 0 < dog.max_idle_s < 60 and trainer.callback_metrics["watchdog/max_idle_s"] > 0
    message = dog.message(trainer, idle=75.0)
    assert "no training step finished" in message and "--ckpt_path last" in message
    assert str(tmp_path / "c" / "last.ckpt") in message and "after step 4" in message
    dog._beat = time.monotonic() - 5
    dog.beat()
    assert dog.max_idle_s >= 5


def test_sharded_folder_checkpoints_take_the_same_atomic_path(tmp_path, monkeypatch):
    """A strategy that saves folders of shards (as FSDP/DeepSpeed do) goes through the same write and manifest."""
    ckpt = KitCheckpoint(dirpath=str(tmp_path / "c"), every_n_train_steps=2, keep_last=2)
    trainer = make_trainer(tmp_path, [ckpt], max_steps=6, enable_checkpointing=True)

    def save_shards(checkpoint, path, **kw):
        os.makedirs(path)
        state = checkpoint["state_dict"]
        for rank, keys in enumerate((list(state)[:2], list(state)[2:])):
            torch.save({k: state[k] for k in keys}, os.path.join(path, f"rank{rank}.pt"))
        torch.save({k: v for k, v in checkpoint.items() if k != "state_dict"}, os.path.join(path, "meta.pt"))

    monkeypatch.setattr(trainer.strategy, "save_checkpoint", save_shards)
    trainer.fit(TinyRegressor(), regression_loader())
    folder = tmp_path / "c"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "last.ckpt",
        "manifest.json",
        "step00000004.ckpt",
        "step00000006.ckpt",
    ]
    entry = Manifest(folder).entries["step00000006.ckpt"]
    assert sorted(entry.files) == ["meta.pt", "rank0.pt", "rank1.pt"] and (folder / "last.ckpt").is_dir()
    assert newest_good(folder).name in ("last.ckpt", "step00000006.ckpt")
    (folder / "step00000006.ckpt" / "rank1.pt").write_bytes(b"")  # a lost shard
    (folder / "last.ckpt" / "rank1.pt").write_bytes(b"")
    with pytest.warns(UserWarning, match="rank1.pt is 0 bytes"):
        assert newest_good(folder).name == "step00000004.ckpt"


def test_the_final_step_is_saved_and_linked_as_last_even_after_a_best_k_save(tmp_path):
    ckpt = KitCheckpoint(dirpath=str(tmp_path / "c"), every_n_train_steps=50, monitor="val_loss")
    _fit(tmp_path, ckpt, steps=6, val_check_interval=3, limit_val_batches=1)  # best-k saves step 6 first
    assert torch.load(tmp_path / "c" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert (tmp_path / "c" / "step00000006.ckpt").exists()


@pytest.mark.slow  # three Trainer runs of the tiny GPT: ~10 s idle
def test_benchmark_runs_small_and_reports_each_measure(tmp_path) -> None:
    from benchmarks import checkpoint as bench

    result = bench.main(
        [
            "--models",
            "tiny",
            "--steps",
            "2",
            "--every",
            "1",
            "--repeats",
            "1",
            "--block",
            "16",
            "--dir",
            str(tmp_path),
        ]
    )
    rows = result["rows"]
    assert [r["mode"] for r in rows] == ["sync", "async"]
    for row in rows:
        assert row["saves"] == 2 and row["MB"] > 0 and row["load ms"] > 0 and row["write ms"] > 0
        median, spread = row["hook ms [min, max]"].split(" [")
        low, high = (float(v.replace(",", "")) for v in spread.rstrip("]").split(", "))
        assert low <= float(median.replace(",", "")) <= high
    assert list(tmp_path.iterdir()) == []  # every run's checkpoints removed


def test_resume_at_the_end_of_an_epoch_cut_short_starts_the_next_epoch_order(tmp_path):
    """limit_train_batches ends each epoch before the loader does; a checkpoint of that last step (periodic, before
    the epoch's validation, or best-k, after it) must resume with the next epoch's permutation, not the rest of
    the old one (which the loader's restored state would continue)."""
    from torchdata.stateful_dataloader import StatefulDataLoader
    from torchdata.stateful_dataloader.sampler import RandomSampler

    def fit(folder: str, ckpt_path=None) -> list[int]:
        ds = torch.utils.data.TensorDataset(torch.arange(48).float())
        train = StatefulDataLoader(
            ds, batch_size=4, sampler=RandomSampler(ds, generator=torch.Generator().manual_seed(0))
        )
        val = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.arange(8).float()), batch_size=4
        )
        ckpt = KitCheckpoint(
            dirpath=str(tmp_path / folder),
            every_n_train_steps=5,
            keep_last=3,
            monitor="val_loss",
            save_top_k=-1,
            filename="best-{step}",
        )
        model = BatchRecorder()
        trainer = make_trainer(
            None, [ckpt], max_steps=12, enable_checkpointing=True, limit_train_batches=5, limit_val_batches=2
        )
        trainer.fit(model, train, val, ckpt_path=ckpt_path)
        return model.seen

    straight = fit("ref")
    for name, step in (("step00000005.ckpt", 5), ("step00000010.ckpt", 10), ("best-step=5.ckpt", 5)):
        resumed = fit(f"from-{name}", str(tmp_path / "ref" / name))
        assert straight[: 4 * step] + resumed == straight, name


def test_async_copy_keeps_tied_weights_tied() -> None:
    """The async path's CPU copy stores a tied embedding/head once, as a synchronous torch.save does."""
    import io

    from kit.checkpoint.async_writer import to_cpu

    emb = torch.nn.Parameter(torch.randn(64, 8))
    state = {"state_dict": {"wte.weight": emb.detach(), "lm_head.weight": emb.detach(), "b": torch.zeros(3)}}
    copy = to_cpu(state)
    assert copy["state_dict"]["wte.weight"] is copy["state_dict"]["lm_head.weight"]
    assert copy["state_dict"]["wte.weight"].data_ptr() != emb.data_ptr()  # a copy, not the live tensor

    def size(obj) -> int:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.tell()

    assert size(copy) <= size(state)
