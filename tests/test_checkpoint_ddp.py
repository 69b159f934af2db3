"""KitCheckpoint under DDP (two gloo processes on CPU, launched as Lightning's external launcher expects).

- Preemption: only rank 1 receives SIGTERM; both ranks agree at the next step, rank 0 writes one checkpoint
  of that step, and both exit cleanly.
- A rank dies: rank 1 exits abruptly; rank 0 does not hang: it exits non-zero within a bounded time (the
  watchdog's ``hang_timeout_s``, or gloo noticing the closed peer first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port

WORKER = r"""
import json, os, signal, sys
import torch
import lightning.pytorch as pl
from torch import nn
from kit.callbacks.checkpoint import KitCheckpoint

mode, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
torch.manual_seed(0)

class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 1)
    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

class Fault(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_rank == 1 and trainer.global_step == 3:
            if mode == "preempt":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                os._exit(1)

x = torch.randn(256, 4)
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
ckpt = KitCheckpoint(dirpath=f"{out}/ckpt", every_n_train_steps=1000, hang_timeout_s=8)
trainer = pl.Trainer(
    accelerator="cpu", devices=1, num_nodes=2, strategy="ddp", max_steps=40, callbacks=[Fault(), ckpt],
    logger=False, enable_progress_bar=False, enable_model_summary=False,
)
trainer.fit(Net(), data)
result = {"rank": trainer.global_rank, "step": trainer.global_step, "preempted_by": ckpt.preempted_by}
open(f"{out}/rank{trainer.global_rank}.json", "w").write(json.dumps(result))
"""


def _launch(tmp_path: Path, mode: str) -> tuple[list[subprocess.Popen], float]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "WORLD_SIZE": "2", "NODE_RANK": str(rank), "LOCAL_RANK": "0",
            "GROUP_RANK": str(rank),
        }
        procs.append(subprocess.Popen(
            [sys.executable, str(script), mode, str(tmp_path)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    return procs, time.monotonic()


def _wait(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a rank still ran after {timeout} s")
    return outputs


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_on_one_rank_stops_both_at_the_same_step(tmp_path):
    procs, _ = _launch(tmp_path, "preempt")
    outputs = _wait(procs)
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results[0]["step"] == results[1]["step"] == 3  # the step boundary right after the signal
    assert results[1]["preempted_by"] == "SIGTERM" and results[0]["preempted_by"] == "another rank"
    assert (tmp_path / "ckpt" / "step00000003.ckpt").exists() and "Resume with" in outputs[0]


@pytest.mark.slow
@pytest.mark.distributed
def test_a_dead_rank_does_not_leave_the_other_hanging(tmp_path):
    procs, start = _launch(tmp_path, "die")
    outputs = _wait(procs)
    assert procs[1].returncode == 1
    assert procs[0].returncode != 0, outputs[0][-3000:]  # rank 0 gave up instead of blocking for 30 minutes
    assert not (tmp_path / "rank0.json").exists()
    assert time.monotonic() - start < 200
