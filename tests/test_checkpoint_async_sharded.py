"""Asynchronous sharded checkpoints: KitCheckpoint(async_save=True) under Lightning's ModelParallelStrategy (FSDP2
``fully_shard`` over a data-parallel mesh) on CPU with gloo, launched by torchrun.

The worker slows every shard write down (a slow disk: ``FileSystemWriter.write_data`` sleeps first) and each
step a little less than half that, so:
- the async save's stall (what the training step waited) stays well under one write, while a synchronous
  save's stall is at least one write (2 ranks, slow test);
- the folders hold every rank's shards, ``.metadata`` and ``meta.pt``, match the manifest's checksums, and no
  temporary folder is left;
- resuming from the async step-4 checkpoint ends bitwise equal to the straight run (and, 2 ranks, to a resume
  from the synchronous checkpoint of the same step);
- a write failing on every rank (disk full, simulated) raises ``CheckpointWriteError`` on every rank at the next
  save, removes the temporary folder and leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import torchrun

WORKER = r"""
import json, sys, time
import torch
import lightning.pytorch as pl
from torch import nn
from lightning.pytorch.strategies import ModelParallelStrategy
import torch.distributed.checkpoint.filesystem as dcp_fs
from kit.callbacks.checkpoint import KitCheckpoint
from kit.checkpoint import Manifest, verify

out, world, full = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "full"
accelerator = sys.argv[4] if len(sys.argv) > 4 else "cpu"  # benchmarks/gpu_checkpoint.py: cuda
torch.set_num_threads(1)
WRITE_DELAY = 0.6 if full else 0.35
STEP_S = 0.4 if full else 0.2  # two steps between saves outlast one write: no async save waits for the last
_write = dcp_fs.FileSystemWriter.write_data
FAIL = {"armed": False}
def slow_write(self, plan, planner):  # a slow disk: every rank's shard write takes WRITE_DELAY s longer
    time.sleep(WRITE_DELAY)
    if FAIL["armed"] and "step00000004" in str(self.path):
        raise OSError(28, "No space left on device (simulated)")
    return _write(self, plan, planner)
dcp_fs.FileSystemWriter.write_data = slow_write

class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    def configure_model(self):
        from torch.distributed.fsdp import fully_shard
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)
    def training_step(self, batch, batch_idx):
        time.sleep(STEP_S)
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)
    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.01)

x = torch.randn(8 * world, 8, generator=torch.Generator().manual_seed(1))
data = lambda: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)

def fit(folder, async_save, ckpt_path=None, steps=6):
    ckpt = KitCheckpoint(dirpath=f"{out}/{folder}", every_n_train_steps=2, keep_last=2, async_save=async_save)
    trainer = pl.Trainer(accelerator=accelerator, devices=world, strategy=ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1),
                         max_steps=steps, callbacks=[ckpt], logger=False, enable_progress_bar=False, enable_model_summary=False)
    model = Net()
    trainer.fit(model, data(), ckpt_path=ckpt_path)
    full = {k: v.full_tensor().clone() for k, v in model.net.state_dict().items()}
    return trainer, ckpt, full

t, a, straight = fit("async", True)
_, _, resumed = fit("resumed", True, ckpt_path=f"{out}/async/step00000004.ckpt")
if full:
    _, s, sync_weights = fit("sync", False)
    _, _, resumed_sync = fit("resumed-sync", False, ckpt_path=f"{out}/sync/step00000004.ckpt")
FAIL["armed"] = True
try:
    fit("fail", True)
    failed = None
except Exception as err:
    failed = f"{type(err).__name__}: {err}"
res = {
    "failed": failed,
    "rank": t.global_rank,
    "resumed_exact": all(torch.equal(straight[k], resumed[k]) for k in straight),
    "async_stall": [r["stall_s"] for r in a.save_times],
}
if full:
    res["same_as_sync"] = all(torch.equal(straight[k], sync_weights[k]) for k in straight)
    res["resumed_same"] = all(torch.equal(resumed_sync[k], resumed[k]) for k in straight)
    res["sync_stall"] = [r["stall_s"] for r in s.save_times]
if t.is_global_zero:
    import os
    m = Manifest(f"{out}/async")
    res["entries"] = {n: e.kind for n, e in m.entries.items()}
    res["bad"] = {n: verify(f"{out}/async/{n}", e.files) for n, e in m.entries.items()}
    res["files"] = sorted(os.listdir(f"{out}/async"))
    res["step6"] = sorted(os.listdir(f"{out}/async/step00000006.ckpt"))
    res["fail_files"] = sorted(os.listdir(f"{out}/fail"))
    fm = Manifest(f"{out}/fail")
    res["fail_entries"] = {n: verify(f"{out}/fail/{n}", e.files) for n, e in fm.entries.items()}
open(f"{out}/rank{t.global_rank}.json", "w").write(json.dumps(res))
"""


def _run(tmp_path: Path, world: int, mode: str, accelerator: str = "cpu") -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = torchrun(script, world, tmp_path, world, mode, accelerator, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]


def _check(results: list[dict], world: int, write_delay: float) -> None:
    for res in results:
        assert res["resumed_exact"], "resuming from the async checkpoint did not continue the same run"
        # no step waited for a whole write; the typical one waited for the copy to CPU only
        stalls = sorted(res["async_stall"])
        assert len(stalls) == 3 and stalls[-1] < write_delay and stalls[1] < write_delay / 2, stalls
        assert res["failed"].startswith("CheckpointWriteError: writing checkpoint ")
        assert "step00000004.ckpt" in res["failed"] and "No space left on device (simulated)" in res["failed"]
    zero = results[0]
    assert set(zero["entries"]) == {"step00000004.ckpt", "step00000006.ckpt", "last.ckpt"}  # keep_last=2
    assert all(problem is None for problem in zero["bad"].values()), zero["bad"]
    assert zero["files"] == ["last.ckpt", "manifest.json", "step00000004.ckpt", "step00000006.ckpt"]
    assert zero["step6"] == sorted([".metadata", "meta.pt", *(f"__{r}_0.distcp" for r in range(world))])
    # the failed save: no temporary folder, the step-2 checkpoint (and last.ckpt) still verify
    assert zero["fail_files"] == ["last.ckpt", "manifest.json", "step00000002.ckpt"]
    assert zero["fail_entries"] == {"step00000002.ckpt": None, "last.ckpt": None}


def test_async_sharded_save_one_rank(tmp_path) -> None:
    _check(_run(tmp_path, 1, "quick"), 1, 0.35)


@pytest.mark.slow
@pytest.mark.distributed
def test_async_sharded_save_two_ranks_fsdp2(tmp_path) -> None:
    results = _run(tmp_path, 2, "full")
    _check(results, 2, 0.6)
    for res in results:
        assert res["same_as_sync"] and res["resumed_same"]
        assert min(res["sync_stall"]) >= 0.6  # a synchronous save waits for the whole (slowed) write
