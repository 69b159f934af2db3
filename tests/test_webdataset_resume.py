"""WebDataModule resumes mid-epoch exactly without ``epoch_length`` (an unsized stream), in process.

Lightning fetches one batch ahead of an unsized loader; the loader's saved state must be the state after the
batches training used, not after the one fetched ahead. Each case stops a run at a step (a periodic checkpoint
mid-epoch, or the final-step save at the end of fit), resumes a fresh Trainer, model and datamodule from it, and
checks the samples seen equal an uninterrupted run's, across an epoch boundary (detshuffle's seed + epoch).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BatchRecorder, make_trainer

from kit.callbacks.checkpoint import KitCheckpoint
from kit.checkpoint import newest_good
from kit.data.shards import write_shards
from kit.datamodules.webdataset import WebDataModule, _ConsumedStateLoader

STEPS = 20  # 12 batches per epoch: one epoch boundary


@pytest.fixture(scope="module")
def urls(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("wds")
    samples = (
        {"__key__": f"{i:05d}", "input_ids.npy": np.arange(i, i + 9, dtype=np.int32)} for i in range(60)
    )
    write_shards(samples, str(root / "train-%04d.tar"), max_count=10)
    return str(root / "train-{0000..0005}.tar")


def _fit(urls: str, root, max_steps: int, ckpt_path=None, every: int = 7) -> list[int]:
    data = WebDataModule(urls, batch_size=5, shuffle_buffer=8, seed=4)
    model = BatchRecorder()
    ckpt = KitCheckpoint(dirpath=str(root), every_n_train_steps=every, keep_last=3)
    trainer = make_trainer(None, [ckpt], max_steps=max_steps, enable_checkpointing=True)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    assert isinstance(trainer.train_dataloader, _ConsumedStateLoader)
    return model.seen


@pytest.fixture(scope="module")
def uninterrupted(urls, tmp_path_factory) -> list[int]:
    seen = _fit(urls, tmp_path_factory.mktemp("ref"), STEPS)
    assert len(seen) == STEPS * 5 and sorted(seen[:60]) == list(range(60))
    return seen


@pytest.mark.parametrize(
    "stop, resume_from",
    [
        (9, 7),
        (16, 14),
        (9, 9),
    ],  # periodic checkpoints in epochs 0 and 1; the final-step save of a finished fit
)
def test_unsized_stream_resumes_where_training_stopped(urls, uninterrupted, tmp_path, stop, resume_from):
    first = _fit(urls, tmp_path, stop)
    path = tmp_path / f"step{resume_from:08d}.ckpt"
    assert path.exists() and newest_good(tmp_path) is not None
    second = _fit(urls, tmp_path / "resumed", STEPS, ckpt_path=str(path))
    assert first[: resume_from * 5] + second == uninterrupted


def test_state_is_the_consumed_one_not_the_fetched_ahead_one(urls):
    data = WebDataModule(urls, batch_size=5, shuffle_buffer=0, shard_shuffle=False)
    ahead = [1]
    loader = _ConsumedStateLoader(data.train_dataloader().dataset, batch_size=5, pending=lambda: ahead[0])
    it = iter(loader)
    next(it), next(it), next(it)  # training used 2, the fetcher holds the 3rd
    assert loader.state_dict()["dataset_state"]["position"] == 10
    ahead[0] = 0
    assert loader.state_dict()["dataset_state"]["position"] == 15
    ahead[0] = None  # a fetcher it does not know: the loader's own state, and a warning
    with pytest.warns(UserWarning, match="may skip up to one batch"):
        assert loader.state_dict()["dataset_state"]["position"] == 15


@pytest.mark.parametrize("epoch_length", [None, 12])
def test_resume_at_the_end_of_an_epoch_cut_short_starts_the_next_epoch(urls, tmp_path, epoch_length):
    """limit_train_batches=5 ends each epoch mid-stream; resuming from its last step starts the next epoch's
    order (as the uninterrupted run does), not the rest of the old one."""

    def fit(folder: str, ckpt_path=None) -> list[int]:
        data = WebDataModule(urls, batch_size=5, shuffle_buffer=8, seed=4, epoch_length=epoch_length)
        model = BatchRecorder()
        ckpt = KitCheckpoint(dirpath=str(tmp_path / folder), every_n_train_steps=1, keep_last=20)
        trainer = make_trainer(None, [ckpt], max_steps=12, enable_checkpointing=True, limit_train_batches=5)
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
        return model.seen

    straight = fit("ref")
    for step in (4, 5, 10):
        resumed = fit(f"from{step}", str(tmp_path / "ref" / f"step{step:08d}.ckpt"))
        assert straight[: 5 * step] + resumed == straight, step
