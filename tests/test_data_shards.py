"""Shard writing, corrupt-shard handling and the streaming WebDataModule."""

from __future__ import annotations

import os
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from conftest import BatchRecorder, make_trainer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit.data.shards import ShardErrorHandler, check_shard, expand_urls, write_shards
from kit.datamodules.webdataset import WebDataModule


@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=25),
    st.integers(1, 7),
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_shards_round_trip_byte_exact(tmp_path_factory, payloads, max_count):
    out = tmp_path_factory.mktemp("rt")
    samples = [{"__key__": f"s{i:05d}", "bin": p, "txt": f"t{i}"} for i, p in enumerate(payloads)]
    paths = write_shards(samples, str(out / "part-%04d.tar"), max_count=max_count)
    assert len(paths) == -(-len(payloads) // max_count)
    read = list(wds.DataPipeline(wds.SimpleShardList(paths), wds.tarfile_to_samples()))
    assert [r["__key__"] for r in read] == [s["__key__"] for s in samples]
    assert [r["bin"] for r in read] == payloads
    assert [r["txt"].decode() for r in read] == [s["txt"] for s in samples]


def test_max_size_splits_shards(tmp_path):
    samples = ({"__key__": f"{i:04d}", "bin": os.urandom(2000)} for i in range(20))
    paths = write_shards(samples, str(tmp_path / "p-%03d.tar"), max_size=10_000)
    assert len(paths) >= 4
    assert all(check_shard(p)[0] for p in paths)
    assert sum(check_shard(p)[1] for p in paths) == 20
    with pytest.raises(ValueError, match="integer field"):
        write_shards([], str(tmp_path / "no-field.tar"))


def test_expand_urls(tmp_path):
    for i in range(3):
        (tmp_path / f"s-{i}.tar").write_bytes(b"")
    assert expand_urls(str(tmp_path / "s-*.tar")) == [str(tmp_path / f"s-{i}.tar") for i in range(3)]
    assert expand_urls("data/x-{000..002}.tar") == ["data/x-000.tar", "data/x-001.tar", "data/x-002.tar"]
    assert expand_urls(["https://host/a.tar", "pipe:cat b.tar"]) == ["https://host/a.tar", "pipe:cat b.tar"]
    with pytest.raises(ValueError, match="no shards"):
        expand_urls([])
    with pytest.raises(ValueError, match="matched no files"):
        expand_urls(str(tmp_path / "none-*.tar"))


def _lm_shards(root: Path, n: int = 60, per_shard: int = 10, block: int = 8) -> list[str]:
    samples = (
        {"__key__": f"{i:05d}", "input_ids.npy": np.arange(i, i + block + 1, dtype=np.int32)}
        for i in range(n)
    )
    return write_shards(samples, str(root / "train-%04d.tar"), max_count=per_shard)


def _firsts(loader) -> list[int]:
    return [int(v) for x, _ in loader for v in x[:, 0]]


def test_corrupt_shard_warned_counted_or_raised(tmp_path):
    paths = _lm_shards(tmp_path)
    raw = Path(paths[2]).read_bytes()
    Path(paths[2]).write_bytes(raw[: len(raw) // 2 + 100])  # truncated mid-member
    assert not check_shard(paths[2])[0]
    dm = WebDataModule(str(tmp_path / "train-*.tar"), batch_size=4, shuffle_buffer=0, shard_shuffle=False)
    with pytest.warns(UserWarning, match="corrupt shard"):
        seen = _firsts(dm.train_dataloader())
    assert dm.shard_errors == 1
    assert set(range(0, 20)) | set(range(30, 60)) <= set(seen) and len(seen) < 60
    strict = WebDataModule(paths, batch_size=4, on_error="raise")
    with pytest.raises(tarfile.ReadError):
        _firsts(strict.train_dataloader())
    silent = WebDataModule(paths, batch_size=4, on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _firsts(silent.train_dataloader())
    assert silent.shard_errors == 1


def test_handler_limits():
    h = ShardErrorHandler("skip", max_errors=1)
    assert h(ValueError("a"))
    with pytest.raises(RuntimeError, match="max_errors=1"):
        h(ValueError("b"))
    with pytest.raises(ValueError, match="mode"):
        ShardErrorHandler("ignore")


def test_datamodule_errors():
    with pytest.raises(ValueError, match="no shards"):
        WebDataModule([])
    with pytest.raises(ValueError, match="epoch_length"):
        WebDataModule("x-{0..3}.tar", resampled=True)
    with pytest.raises(ValueError, match="decode"):
        WebDataModule("x.tar", decode="json")


def test_deterministic_order_per_seed_and_epoch(tmp_path):
    _lm_shards(tmp_path)
    urls = str(tmp_path / "train-{0000..0005}.tar")

    def run(seed: int) -> tuple[list[int], list[int]]:
        dm = WebDataModule(urls, batch_size=5, shuffle_buffer=16, seed=seed)
        loader = dm.train_dataloader()
        return _firsts(loader), _firsts(loader)

    e0, e1 = run(0)
    assert sorted(e0) == list(range(60)) and sorted(e1) == list(range(60))
    assert e0 != list(range(60)) and e0 != e1  # shuffled, and reshuffled the next epoch
    assert run(0) == (e0, e1)  # same seed, same order
    assert run(1)[0] != e0


def test_split_by_node_and_worker(tmp_path, monkeypatch):
    _lm_shards(tmp_path)
    urls = str(tmp_path / "train-*.tar")
    seen = []
    for rank in range(2):
        monkeypatch.setattr(wds.utils, "pytorch_worker_info", lambda group=None, r=rank: (r, 2, 0, 1))
        dm = WebDataModule(urls, batch_size=5, shuffle_buffer=0, shard_shuffle=False)
        seen.append(_firsts(dm.train_dataloader()))
    assert len(seen[0]) == len(seen[1]) == 30
    assert set(seen[0]).isdisjoint(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(60))


def test_workers_and_resampled(tmp_path):
    _lm_shards(tmp_path)
    urls = str(tmp_path / "train-*.tar")
    dm = WebDataModule(urls, batch_size=5, num_workers=2, shuffle_buffer=8)
    assert sorted(_firsts(dm.train_dataloader())) == list(range(60))
    res = WebDataModule(urls, batch_size=4, resampled=True, epoch_length=7, shuffle_buffer=8)
    loader = res.train_dataloader()
    a = _firsts(loader)
    assert len(a) == 28
    assert (
        _firsts(
            WebDataModule(
                urls, batch_size=4, resampled=True, epoch_length=7, shuffle_buffer=8
            ).train_dataloader()
        )
        == a
    )


def test_trains_with_lightning(tmp_path):
    paths = _lm_shards(tmp_path, n=40, block=8)
    dm = WebDataModule(paths[:3], val_urls=paths[3:], batch_size=5, shuffle_buffer=8)
    model = BatchRecorder(ids=False)  # one (B, T) input_ids batch per training step
    trainer = make_trainer(tmp_path, max_steps=-1, max_epochs=2)
    trainer.fit(model, datamodule=dm)
    assert len(model.seen) == 12 and "val_loss" in trainer.callback_metrics
    assert WebDataModule(paths, decode="text").decode == "text"
