"""The ``fsdp2-tp`` and ``pipeline`` presets end to end: Lightning's ModelParallelStrategy on CPU (gloo), 2 processes by torchrun.

``CausalLM.configure_model`` sees the strategy's device mesh and applies ``kit.parallel.tensor.parallelize``;
the test trains 4 steps with a checkpoint every 2, resumes from the step-2 checkpoint, and wants the same
weights after step 4 (fp32, no dropout).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import pytest

WORKER = r"""
import json, sys
import torch
import lightning.pytorch as pl
import kit.parallel.strategies  # registers fsdp2-tp
from kit.models.gpt import CausalLM, GPTConfig

out, preset = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)

def data():
    x = torch.randint(0, 64, (8, 17), generator=torch.Generator().manual_seed(0))  # 2 steps an epoch
    ds = torch.utils.data.TensorDataset(x[:, :-1], x[:, 1:])
    return torch.utils.data.DataLoader(ds, batch_size=4)

from lightning.pytorch.callbacks import ModelCheckpoint

def fit(steps, ckpt_in=None):
    torch.manual_seed(0)
    if preset == "pipeline":
        from kit.models.pipeline_lm import PipelineCausalLM
        model = PipelineCausalLM(GPTConfig.from_name("debug"), lr=1e-2, warmup_steps=1, max_steps=4,
                                 n_microbatches=2, gradient_clip_val=0.5)
    else:
        model = CausalLM(GPTConfig.from_name("debug"), lr=1e-2, warmup_steps=1, max_steps=4)
    strategy = preset  # fsdp2-tp auto: data_parallel = nodes (1), tensor_parallel = devices (2); pipeline: 2 stages
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=steps, logger=False,
                         limit_val_batches=0,
                         callbacks=[ModelCheckpoint(dirpath=f"{out}/ck", every_n_train_steps=2, save_top_k=-1, filename="{step}")], enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data(), ckpt_path=ckpt_in)
    full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in model.model.state_dict().items()}
    kinds = sorted({type(p).__name__ for p in model.model.parameters()})
    loss = float(trainer.callback_metrics["train/loss"])
    return trainer, full, kinds, loss

trainer, straight, kinds, loss = fit(4)
trainer2, resumed, _, loss2 = fit(4, ckpt_in=f"{out}/ck/step=2.ckpt")  # the step-2 checkpoint of the run above
diff = max((straight[k] - resumed[k]).abs().max().item() for k in straight)
mesh = trainer.strategy.device_mesh
result = {"rank": trainer.global_rank, "loss": loss, "loss2": loss2, "keys": sorted(straight), "kinds": kinds, "diff": diff, "steps": trainer2.global_step,
          "mesh": list(mesh.mesh_dim_names), "shape": list(mesh.shape), "strategy": type(trainer.strategy).__name__}
open(f"{out}/rank{trainer.global_rank}.json", "w").write(json.dumps(result))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    ("preset", "mesh", "kind"),
    [
        ("fsdp2-tp", ["data_parallel", "tensor_parallel"], "DTensor"),
        ("pipeline", ["data_parallel", "pipeline_parallel"], "Parameter"),
    ],
)
def test_preset_trains_and_resumes_exactly(tmp_path, preset: str, mesh: list, kind: str) -> None:
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not on PATH")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        f"--master-port={_free_port()}",
        str(script),
        str(tmp_path),
        preset,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for res in results:
        assert res["mesh"] == mesh and res["shape"] == [1, 2]
        assert res["kinds"] == [kind]  # fsdp2-tp: every parameter was parallelized by configure_model
        assert res["steps"] == 4
        assert res["diff"] <= 1e-6  # resume from the checkpoint continues the same run (0.0 seen on CPU)
        assert res["loss"] == pytest.approx(res["loss2"], abs=1e-5)
    assert results[0]["loss"] == pytest.approx(results[1]["loss"])  # the last stage's loss reached rank 0
    if preset == "pipeline":  # each stage holds (and checkpoints) its own blocks only
        assert (
            "blocks.0.attn.qkv.weight" in results[0]["keys"]
            and "blocks.1.attn.qkv.weight" in results[1]["keys"]
        )
        assert not set(results[0]["keys"]) & {k for k in results[1]["keys"] if k.startswith("blocks.")}
