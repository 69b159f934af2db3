"""Trust: a checkpoint is data, never code; runs never clobber each other; resume is honest.

Every hostile checkpoint here carries a payload whose unpickling would write a marker file; each test checks that
the marker never appears, whatever the path the checkpoint takes into the kit.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pathlib
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TinyRegressor, make_trainer, regression_loader
from test_cli import kit

from kit.callbacks.checkpoint import KitCheckpoint
from kit.checkpoint import Manifest, find_latest, newest_good, resolve_init_from
from kit.checkpoint.atomic import temp_owner_alive, temp_path
from kit.checkpoint.manifest import CheckpointEntry, UnusableCheckpointsError, delete_checkpoint_files
from kit.checkpoint.runs import claim_version
from kit.checkpoint.safe_load import CheckpointLoadError, UnsafeCheckpointError, load_checkpoint
from kit.checkpoint.sweep import sweep


class Payload:
    """Unpickling this writes ``path``: the proof that a checkpoint ran code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (pathlib.Path(self.path).write_text, ("pwned",))


def _hostile(path: Path, marker: Path, **extra) -> Path:
    """A checkpoint that looks like a Lightning one, with a payload among its values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "global_step": 1, "payload": Payload(marker), **extra}, path)
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- checkpoints are data ------------------------------------------------------------------------------------


def test_a_payload_is_refused_in_one_line_naming_the_file(tmp_path):
    marker = tmp_path / "marker"
    ckpt = _hostile(tmp_path / "evil.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"refused to load .*evil\.ckpt: it needs pickled") as err:
        load_checkpoint(ckpt)
    assert "\n" not in str(err.value) and "Unsupported global" in str(err.value)  # what it refused
    assert not marker.exists()


def test_a_truncated_checkpoint_is_one_line(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(64)}}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointLoadError, match=r"cannot read checkpoint .*cut\.ckpt") as err:
        load_checkpoint(cut)
    assert "\n" not in str(err.value)


def test_init_from_by_path_never_runs_a_payload(tmp_path):
    from kit.models.sequence_classifier import SequenceClassifier

    marker = tmp_path / "marker"
    ckpt = _hostile(tmp_path / "pre.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match="pre.ckpt"):
        SequenceClassifier(init_from=str(ckpt), num_classes=2)
    assert not marker.exists()


def test_init_from_by_recipe_name_with_a_stray_file_never_runs_a_payload(tmp_path, monkeypatch):
    from kit.models.sequence_classifier import SequenceClassifier

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    _hostile(tmp_path / "runs" / "bert-tiny-pretrain" / "stray.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match="stray.ckpt"):
        SequenceClassifier(init_from="bert-tiny-pretrain", num_classes=2)
    assert not marker.exists()


def test_kit_doctor_refuses_a_payload(tmp_path, capsys):
    from kit.cli.commands.doctor import main as doctor

    marker = tmp_path / "marker"
    ckpt = _hostile(tmp_path / "evil.ckpt", marker)
    assert doctor(["--ckpt", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "evil.ckpt" in err and "pickled" in err and "problem(s)" not in err
    assert not marker.exists()


def test_checkpoint_hyper_parameters_never_pick_the_class_or_add_paths():
    from kit.cli.main import trusted_hparams

    config = {"model": {"class_path": "kit.models.CausalLM", "init_args": {"lr": 1e-3}}}
    swap = {"_class_path": "kit.models.sequence_classifier.SequenceClassifier", "init_from": "/x/evil.ckpt"}
    with pytest.warns(UserWarning, match=r"ignored its hyper-parameters .*SequenceClassifier"):
        assert trusted_hparams(swap, config, "a.ckpt") == {}
    same = {"_class_path": "kit.models.CausalLM", "lr": 3e-4, "init_from": "/x/evil.ckpt", "save_dir": "/etc"}
    with pytest.warns(UserWarning, match=r"dropped .*init_from='/x/evil.ckpt'.*save_dir='/etc'"):
        kept = trusted_hparams(same, config, "a.ckpt")
    assert kept == {"class_path": "kit.models.CausalLM", "dict_kwargs": {"lr": 3e-4}}
    given = {"model": {"class_path": "kit.models.CausalLM", "init_args": {"init_from": "mine.ckpt"}}}
    ok = trusted_hparams({"_class_path": "kit.models.CausalLM", "init_from": "mine.ckpt"}, given, "a.ckpt")
    assert ok["dict_kwargs"] == {"init_from": "mine.ckpt"}  # the user's own value stays


def _manifest(folder: Path, entries: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "checkpoints": entries}))


def _entry(name: str, step: int, path: Path | None = None, when: float = 0.0) -> dict:
    from kit.checkpoint import checksum

    files = checksum(path) if path is not None and path.exists() else {"": [1, "0" * 64]}
    return {"name": name, "step": step, "kind": "step", "time": when, "files": files}


def test_manifest_names_outside_the_folder_are_ignored_and_never_picked(tmp_path):
    marker = tmp_path / "marker"
    evil = _hostile(tmp_path / "elsewhere" / "evil.ckpt", marker)
    run = tmp_path / "runs" / "r" / "version_0" / "checkpoints"
    run.mkdir(parents=True)
    good = run / "step00000002.ckpt"
    torch.save({"state_dict": {}, "global_step": 2}, good)
    future = time.time() + 10**6
    _manifest(
        run,
        [
            _entry("step00000002.ckpt", 2, good),
            _entry(str(evil), 999, evil, future),  # an absolute name with a future time
            _entry("../../../../elsewhere/evil.ckpt", 998, evil, future),
        ],
    )
    with pytest.warns(UserWarning, match=r"ignored 2 entries .*not a plain file name"):
        assert find_latest(tmp_path / "runs", strict=True) == good
    with pytest.warns(UserWarning, match="not a plain file name"):
        assert newest_good(run) == good
        assert resolve_init_from(str(tmp_path / "runs" / "r")) == good
    assert not marker.exists()


def test_pruning_never_follows_a_manifest_name_out_of_the_folder(tmp_path):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "precious.txt").write_text("keep me")
    folder = tmp_path / "c"
    _manifest(folder, [_entry("../victim", 0), _entry(str(victim), 0)])
    ckpt = KitCheckpoint(dirpath=str(folder), every_n_train_steps=1, keep_last=1)
    with pytest.warns(UserWarning, match="not a plain file name"):
        trainer = make_trainer(tmp_path, [ckpt], max_steps=4, enable_checkpointing=True)
        trainer.fit(TinyRegressor(), regression_loader())
    assert (victim / "sub" / "precious.txt").read_text() == "keep me"
    names = set(Manifest(folder).entries)
    assert names == {"step00000004.ckpt", "last.ckpt"}


def test_deleting_a_checkpoint_removes_only_its_listed_files(tmp_path):
    sharded = tmp_path / "step00000002.ckpt"
    (sharded / "shards").mkdir(parents=True)
    (sharded / "shards" / "rank0.pt").write_bytes(b"a")
    (sharded / "mine.txt").write_text("not listed")
    delete_checkpoint_files(tmp_path, CheckpointEntry(sharded.name, files={"shards/rank0.pt": [1, "x"]}))
    assert not (sharded / "shards").exists()  # emptied, so removed
    assert (sharded / "mine.txt").read_text() == "not listed"  # never a folder tree
    delete_checkpoint_files(tmp_path, CheckpointEntry("..", files={"": [1, "x"]}))
    assert tmp_path.exists()


def test_init_from_checks_the_vocabulary_and_names_both_sizes(tmp_path):
    from kit.models.sequence_classifier import SequenceClassifier, check_vocabulary
    from kit.nn import GPT, GPTConfig

    config = GPTConfig.from_name("debug", causal=False, vocab_size=64)
    state = {f"model.{k}": v for k, v in GPT(config).state_dict().items()}
    ckpt = tmp_path / "pre.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"config": asdict(config)}}, ckpt)
    with pytest.raises(ValueError, match=r"vocabulary has 64 tokens but the data's tokenizer has 512"):
        check_vocabulary(load_checkpoint(ckpt), None, 512)
    bigger = GPTConfig.from_name("debug", causal=False, vocab_size=128)
    with pytest.raises(ValueError, match=r"vocabulary has 64 tokens but model.config.vocab_size is 128"):
        SequenceClassifier(config=bigger, init_from=str(ckpt), num_classes=2)
    clf = SequenceClassifier(init_from=str(ckpt), num_classes=2)  # the same vocabulary loads
    assert clf.config.vocab_size == 64


def test_pipe_urls_are_refused_unless_opted_in(tmp_path):
    from kit.datamodules.webdataset import WebDataModule

    marker = tmp_path / "marker"
    with pytest.raises(ValueError, match=r"runs a shell command .*allow_pipe=True"):
        WebDataModule(train_urls=f"pipe:touch {marker}")
    with pytest.raises(ValueError, match="allow_pipe"):
        WebDataModule(train_urls=[str(tmp_path / "a.tar")], val_urls=[f"pipe:touch {marker}"])
    dm = WebDataModule(train_urls=[f"pipe:cat {tmp_path / 'a.tar'}"], allow_pipe=True)
    assert dm.train_shards == [f"pipe:cat {tmp_path / 'a.tar'}"]
    assert not marker.exists()


# -- runs never clobber each other -----------------------------------------------------------------------------


def _claim(root: str, barrier, out) -> None:
    barrier.wait()
    out.put(claim_version(root))


def test_processes_claiming_at_once_get_distinct_versions(tmp_path):
    ctx = mp.get_context("fork")  # the children only call claim_version
    n = 4
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert got == list(range(n))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"version_{i}" for i in range(n)]


def test_temp_names_carry_the_process_and_a_random_part(tmp_path):
    a, b = temp_path(tmp_path / "step1.ckpt"), temp_path(tmp_path / "step1.ckpt")
    assert a != b and f".{os.getpid()}." in a.name and a.name.startswith(".step1.ckpt.tmp-")
    assert temp_owner_alive(a)
    dead = a.with_name(a.name.replace(f".{os.getpid()}.", f".{_dead_pid()}."))
    assert not temp_owner_alive(dead)


def test_checkpoints_are_not_staged_in_tmpdir(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))  # $TMPDIR unusable
    ckpt = KitCheckpoint(dirpath=str(tmp_path / "c"), every_n_train_steps=2)
    trainer = make_trainer(tmp_path, [ckpt], max_steps=4, enable_checkpointing=True)
    trainer.fit(TinyRegressor(), regression_loader())
    assert torch.load(tmp_path / "c" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_the_manifest_is_saved_before_files_go_and_last_before_its_rename(tmp_path, monkeypatch):
    import kit.callbacks.checkpoint as module

    folder = tmp_path / "c"
    seen = []
    real_delete, real_commit = module.delete_checkpoint_files, module.commit

    def delete(where, entry):
        seen.append(("delete", entry.name, entry.name in Manifest(folder).entries))
        real_delete(where, entry)

    def commit(tmp, target):
        if Path(target).name == "last.ckpt":
            seen.append(("last", Path(target).name, "last.ckpt" in Manifest(folder).entries))
        real_commit(tmp, target)

    monkeypatch.setattr(module, "delete_checkpoint_files", delete)
    monkeypatch.setattr(module, "commit", commit)
    ckpt = KitCheckpoint(dirpath=str(folder), every_n_train_steps=1, keep_last=1)
    make_trainer(tmp_path, [ckpt], max_steps=3, enable_checkpointing=True).fit(
        TinyRegressor(), regression_loader()
    )
    deletes = [s for s in seen if s[0] == "delete"]
    lasts = [s for s in seen if s[0] == "last"]
    assert deletes and not any(listed for _, _, listed in deletes)  # already gone from the manifest
    assert lasts and all(listed for _, _, listed in lasts)  # recorded before the rename


def test_the_next_start_sweeps_what_a_kill_left(tmp_path):
    folder = tmp_path / "c"
    ckpt = KitCheckpoint(dirpath=str(folder), every_n_train_steps=2, keep_last=2)
    make_trainer(tmp_path, [ckpt], max_steps=4, enable_checkpointing=True).fit(
        TinyRegressor(), regression_loader()
    )
    host_tmp = temp_path(folder / "step00000006.ckpt").name.rsplit(".", 2)[0]
    dead_tmp = folder / f"{host_tmp}.{_dead_pid()}.deadbeef"
    dead_tmp.write_bytes(b"half a checkpoint")
    live_tmp = temp_path(folder / "step00000008.ckpt")  # this process: still writing
    live_tmp.write_bytes(b"in progress")
    (folder / "step00000006.ckpt").write_bytes((folder / "step00000004.ckpt").read_bytes())  # never listed
    manifest = Manifest(folder)
    manifest.entries["step00000001.ckpt"] = CheckpointEntry("step00000001.ckpt", 1, files={"": [1, "0" * 64]})
    manifest.save()  # lists a deleted file
    os.replace(
        folder / "step00000002.ckpt", folder / "last.ckpt"
    )  # last.ckpt: not the file its entry describes
    notes = sweep(folder)
    text = "; ".join(notes)
    assert dead_tmp.name in text and "step00000006.ckpt" in text and "step00000001.ckpt" in text
    assert "last.ckpt" in text
    assert not dead_tmp.exists() and live_tmp.exists() and not (folder / "step00000006.ckpt").exists()
    assert set(Manifest(folder).entries) == {"step00000004.ckpt"}
    assert newest_good(folder).name == "step00000004.ckpt"
    assert sweep(folder) == []  # nothing left to sweep


def test_a_folder_another_live_run_writes_is_not_swept(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    torch.save({"global_step": 2}, folder / "step00000002.ckpt")  # unlisted, but the writer is alive
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / "manifest.json").write_text(
            json.dumps({"format": 1, "writer": f"{os.uname().nodename} {other.pid}", "checkpoints": []})
        )
        assert sweep(folder) == [] and (folder / "step00000002.ckpt").exists()
    finally:
        other.kill()
        other.wait()
    assert sweep(folder) and not (folder / "step00000002.ckpt").exists()


# -- resume is honest ------------------------------------------------------------------------------------------


def _trainer_for(root: Path) -> SimpleNamespace:
    logger = SimpleNamespace(save_dir=str(root.parent), name=root.name)
    return SimpleNamespace(logger=logger, is_global_zero=True, default_root_dir=str(root))


def test_ckpt_path_last_with_every_checkpoint_corrupt_is_an_error_listing_each(tmp_path, capsys):
    from kit.cli.main import resolve_ckpt_path

    root = tmp_path / "runs" / "gpt-tiny"
    folder = root / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    for step in (2, 4):
        torch.save({"global_step": step}, folder / f"step{step:08d}.ckpt")
    m = Manifest(folder)
    for step in (2, 4):
        m.add(f"step{step:08d}.ckpt", step)
    m.save()
    for step in (2, 4):
        (folder / f"step{step:08d}.ckpt").write_bytes(b"corrupt")
    with pytest.raises(UnusableCheckpointsError) as err:
        resolve_ckpt_path("last", _trainer_for(root))
    message = str(err.value)
    assert "step00000002.ckpt" in message and "step00000004.ckpt" in message and "truncated" in message
    assert "from scratch" not in capsys.readouterr().out
    empty = tmp_path / "runs" / "fresh"
    assert resolve_ckpt_path("last", _trainer_for(empty)) is None  # none exist: from scratch
    assert "starting from scratch" in capsys.readouterr().out


def test_cli_errors_are_one_line_without_a_traceback(tmp_path, capsys, monkeypatch):
    from kit.cli.main import _user_error, main

    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--trainer.max_steps", "abc"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith('kit fit: error: Parser key "trainer.max_steps"') and "Expected a <class 'int'>" in err
    )
    assert len(err.splitlines()) <= 4 and "usage:" not in err
    cut = tmp_path / "cut.ckpt"
    torch.save({"w": torch.ones(64)}, cut)
    cut.write_bytes(cut.read_bytes()[:100])
    try:
        torch.load(cut, weights_only=True)
    except RuntimeError as load_error:
        assert _user_error(load_error)  # a checkpoint that cannot be read: one line
    assert not _user_error(RuntimeError("a bug in training"))  # other errors keep their traceback


def _kit(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """The kit command, one thread, whatever its exit code (these tests expect refusals)."""
    return kit(args, cwd, {"OMP_NUM_THREADS": "1"}, timeout=timeout, check=False)


TINY = [
    "--trainer.max_steps=2",
    "--trainer.limit_val_batches=0",
    "--trainer.enable_progress_bar=false",
    "--model.init_args.config.n_layer=1",
    "--model.init_args.config.n_embd=16",
    "--model.init_args.config.n_head=2",
    "--model.init_args.config.block_size=16",
    "--model.init_args.warmup_steps=1",
    "--data.init_args.vocab_size=280",
    "--data.init_args.block_size=16",
    "--data.init_args.batch_size=2",
]


def test_an_explicit_corrupt_ckpt_path_is_one_line_before_lightning_loads_it(tmp_path):
    cut = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.ones(256)}}, cut)
    cut.write_bytes(cut.read_bytes()[:300])
    proc = _kit(["fit", *TINY, f"--ckpt_path={cut}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cut.ckpt is unusable" in proc.stderr and "Traceback" not in proc.stderr


def test_a_ckpt_path_payload_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "marker"
    evil = _hostile(tmp_path / "evil.ckpt", marker)
    proc = _kit(["fit", *TINY, f"--ckpt_path={evil}"], tmp_path)
    assert proc.returncode == 2 and not marker.exists()
    assert "refused to load" in proc.stderr and "evil.ckpt" in proc.stderr and "Traceback" not in proc.stderr


def test_lightning_configuration_errors_are_one_line(tmp_path, capsys, monkeypatch):
    import pickle

    from kit.cli.main import _user_error, main

    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--trainer.max_steps=-5", "--data.init_args.vocab_size=280"]) == 2
    err = capsys.readouterr().err
    assert "kit fit: error: MisconfigurationException: `max_steps` must be a non-negative integer" in err
    assert "Traceback" not in err and "--debug" in err
    assert _user_error(pickle.UnpicklingError("bad"))


def test_two_fits_of_one_recipe_started_together_get_their_own_folders(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kit.cli", "fit", *TINY]
    procs = [
        subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    ]
    procs.append(
        subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    )
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    root = tmp_path / "runs" / "gpt-tiny"
    assert sorted(p.name for p in root.iterdir()) == ["version_0", "version_1"]
    for version in root.iterdir():
        folder = version / "checkpoints"
        assert set(Manifest(folder).entries) >= {"step00000002.ckpt", "last.ckpt"}
        assert newest_good(folder) is not None and (version / "config.yaml").is_file()
        assert not [p for p in folder.iterdir() if ".tmp-" in p.name]
    logs = {line.split("logs:", 1)[1].strip() for out in outs for line in out.splitlines() if "logs:" in line}
    assert logs == {"runs/gpt-tiny/version_0", "runs/gpt-tiny/version_1"}


def test_a_ckpt_path_whose_hyper_parameters_swap_the_class_runs_nothing(tmp_path):
    proc = _kit(["fit", *TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = tmp_path / "runs" / "gpt-tiny" / "version_0" / "checkpoints" / "last.ckpt"
    marker = tmp_path / "marker"
    payload = _hostile(tmp_path / "payload.ckpt", marker)
    state = torch.load(last, weights_only=True)
    hp = state["hyper_parameters"]
    hp["_class_path"] = "kit.models.sequence_classifier.SequenceClassifier"
    hp["init_from"] = str(payload)
    hostile = tmp_path / "hostile.ckpt"
    torch.save(state, hostile)
    proc = _kit(["fit", *TINY, "--trainer.max_steps=3", f"--ckpt_path={hostile}"], tmp_path)
    assert not marker.exists()
    assert "ignored its hyper-parameters" in proc.stderr and "SequenceClassifier" in proc.stderr
    assert proc.returncode == 0, proc.stderr[-3000:]  # the configured CausalLM resumed from the weights


def test_a_sharded_run_says_plainly_why_it_has_no_sample_and_runs_no_collective():
    from lightning.pytorch.strategies import ModelParallelStrategy

    from kit.cli.main import _sample_line

    class Model:
        def generate_text(self, *args, **kwargs):
            raise AssertionError("a sharded model must not be sampled on one rank")

    data = SimpleNamespace(tokenizer=object())
    for rank_zero in (True, False):
        trainer = SimpleNamespace(world_size=2, strategy=ModelParallelStrategy(), is_global_zero=rank_zero)
        line = _sample_line(trainer, Model(), data)
        assert line.startswith("  sample: none (the model is sharded over 2 ranks by ModelParallelStrategy")
    single = SimpleNamespace(world_size=1, strategy=None, is_global_zero=True)

    class Small:
        def generate_text(self, tokenizer, prompt, max_new_tokens):
            return prompt + "world"

    assert _sample_line(single, Small(), data) == "  sample: The world"


def test_a_copied_run_folder_keeps_its_last_checkpoint(tmp_path):
    import shutil

    folder = tmp_path / "c"
    ckpt = KitCheckpoint(dirpath=str(folder), every_n_train_steps=2, keep_last=2)
    make_trainer(tmp_path, [ckpt], max_steps=4, enable_checkpointing=True).fit(
        TinyRegressor(), regression_loader()
    )
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)  # no hard links survive the copy
    assert not os.path.samefile(copy / "last.ckpt", copy / "step00000004.ckpt")
    assert sweep(copy) == [] and (copy / "last.ckpt").exists()
