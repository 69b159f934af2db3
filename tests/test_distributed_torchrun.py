"""Two "nodes" on one machine: ``torchrun --nnodes 2 --nproc-per-node 1`` over localhost, gloo on CPU.

Each node trains the kit's GPT with Lightning for a few steps using a kit strategy preset by name (or plain
``ddp`` plus the GradientCompression callback) and writes what it saw; the test checks both ranks joined one
world, stayed in sync, and that the compression ratio was logged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

WORKER = r"""
import json, sys
import torch
import lightning.pytorch as pl
import kit.parallel.strategies  # registers the presets
from kit.callbacks.compression import GradientCompression
from kit.nn import GPTConfig
from kit.models.gpt import CausalLM

strategy, hook, out = sys.argv[1], sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
torch.manual_seed(0)
x = torch.randint(0, 64, (32, 17))
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:, :-1], x[:, 1:]), batch_size=4)
model = CausalLM(GPTConfig.from_name("debug"), lr=1e-2, warmup_steps=1, max_steps=4)
callback = GradientCompression(hook=hook)
trainer = pl.Trainer(
    accelerator="cpu", devices=1, num_nodes=2, strategy=strategy, max_steps=4, callbacks=[callback],
    logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
)
trainer.fit(model, data)
checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
result = {
    "rank": trainer.global_rank, "world": trainer.world_size, "strategy": type(trainer.strategy).__name__,
    "ratio": float(callback.stats.ratio), "logged": "compression/ratio" in trainer.callback_metrics,
    "checksum": checksum, "steps": trainer.global_step,
}
open(f"{out}/rank{trainer.global_rank}.json", "w").write(json.dumps(result))
"""


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("strategy", "hook", "min_ratio", "cls"),
    # 1-bit: one sign bit plus one fp32 scale per 32 entries (issue 9's default layout) = 2 bits an entry, 16x
    [("ddp-topk", "topk", 20.0, "CompressedDDPStrategy"), ("ddp", "1bit", 15.0, "DDPStrategy")],
)
def test_torchrun_two_nodes(tmp_path: Path, strategy: str, hook: str, min_ratio: float, cls: str) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            [
                torchrun,
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                str(script),
                strategy,
                hook,
                str(tmp_path),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("torchrun launch timed out after 120 s")
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world"] == 2 and r["steps"] == 4 and r["strategy"] == cls for r in results)
    assert results[0]["checksum"] == pytest.approx(results[1]["checksum"], rel=1e-6)  # replicas in sync
    assert all(r["logged"] and r["ratio"] >= min_ratio for r in results)
