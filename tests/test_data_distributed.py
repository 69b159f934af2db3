"""Two ranks (torchrun, gloo on CPU) through Lightning DDP: TemperatureSampler and WebDataModule split the data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

from kit.data.sampling import TemperatureSampler
from kit.data.shards import write_shards

WORKER = r"""
import json, sys
import torch
from torch.utils.data import DataLoader, TensorDataset
from conftest import BatchRecorder, make_trainer  # tests/ is on the ranks' PYTHONPATH
from kit.data.sampling import TemperatureSampler
from kit.datamodules.webdataset import WebDataModule

out, shards = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)


def fit(loader):
    model = BatchRecorder()  # per-sample ids: x for the sampler's 1-D batches, x[:, 0] for the shards' (B, T)
    trainer = make_trainer(devices=2, strategy="ddp", max_steps=-1, max_epochs=1)
    trainer.fit(model, loader)
    return trainer, model.seen


groups = [0] * 40 + [1] * 8
sampler = TemperatureSampler(groups, temperature=3.0, seed=7)  # world size and rank from torch.distributed
trainer, seen = fit(DataLoader(TensorDataset(torch.arange(48)), batch_size=4, sampler=sampler))
wrapped = type(trainer.train_dataloader.sampler).__name__
dm = WebDataModule(shards + "/train-*.tar", batch_size=5, shuffle_buffer=0)
_, firsts = fit(dm.train_dataloader())
result = {"rank": trainer.global_rank, "world": sampler.num_replicas, "seen": seen, "sampler": wrapped, "wds": firsts}
open(f"{out}/rank{trainer.global_rank}.json", "w").write(json.dumps(result))
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_split_sampler_and_shards(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    samples = (
        {"__key__": f"{i:05d}", "input_ids.npy": np.arange(i, i + 9, dtype=np.int32)} for i in range(40)
    )
    write_shards(samples, str(tmp_path / "train-%04d.tar"), max_count=10)  # 4 shards: 2 per rank
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    # the ranks run the script from tmp_path: put tests/ (conftest's shared modules) on their import path
    pythonpath = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": pythonpath}
    cmd = [
        torchrun,
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        str(script),
        str(tmp_path),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["sampler"] == "TemperatureSampler"  # Lightning did not re-wrap it
    # each rank saw its own positions of the one global draw, equal in number
    draw = TemperatureSampler(
        [0] * 40 + [1] * 8, temperature=3.0, seed=7, num_replicas=2, rank=0
    ).global_indices(0)
    assert ranks[0]["seen"] == draw[0::2].tolist() and ranks[1]["seen"] == draw[1::2].tolist()
    # webdataset: split_by_node gives each rank two whole shards, disjoint and covering
    a, b = set(ranks[0]["wds"]), set(ranks[1]["wds"])
    assert len(ranks[0]["wds"]) == len(ranks[1]["wds"]) == 20
    assert a.isdisjoint(b) and a | b == set(range(40))
