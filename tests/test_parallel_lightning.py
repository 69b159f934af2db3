"""The ``fsdp2-tp`` and ``pipeline`` presets end to end: Lightning's ModelParallelStrategy on CPU (gloo), under torchrun.

``CausalLM.configure_model`` sees the strategy's device mesh and applies ``kit.parallel.tensor.parallelize``;
``PipelineCausalLM`` cuts the GPT into stages (TP / FSDP2 inside them when the mesh says so). Each run trains 4
steps (global batch 4, clipping at 0.5) with a checkpoint every 2 and a validation pass per epoch (6 examples:
a full batch and a smaller one, so the pipeline builds a second eval schedule), resumes from
the step-2 checkpoint and wants the same weights after step 4 (fp32, no dropout). The pipeline runs also compare
their last training loss, validation loss and weights with a one-process ``CausalLM`` run of the same model and data.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import torchrun

WORKER = r"""
import json, sys
import torch
import lightning.pytorch as pl
import kit.parallel.strategies  # registers fsdp2-tp and pipeline
from kit.nn import GPTConfig
from kit.models.gpt import CausalLM
from lightning.pytorch.callbacks import ModelCheckpoint

out, preset, world, opts = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
torch.set_num_threads(1)
DP = opts.get("dp", 1)

def data(n=8):
    x = torch.randint(0, 64, (8, 17), generator=torch.Generator().manual_seed(0))[:n]  # 2 steps an epoch
    ds = torch.utils.data.TensorDataset(x[:, :-1], x[:, 1:])
    return torch.utils.data.DataLoader(ds, batch_size=4 // DP)  # a global batch of 4 over the replicas

def fit(steps, ckpt_in=None):
    # seed 0 for the weights and for Lightning's distributed sampler, which otherwise shuffles with whatever
    # PL_GLOBAL_SEED this process inherited (an earlier seed_everything in the launching process sets it)
    pl.seed_everything(0, verbose=False)
    if preset == "pipeline":
        from kit.models.pipeline_lm import PipelineCausalLM
        from kit.parallel.strategies import PipelineStrategy
        model = PipelineCausalLM(GPTConfig.from_name("debug"), lr=1e-2, warmup_steps=1, max_steps=4,
                                 n_microbatches=2, gradient_clip_val=0.5)
        strategy = PipelineStrategy(pipeline_parallel_size=opts["pp"], tensor_parallel_size=opts.get("tp", 1))
        clip = None  # PipelineCausalLM clips itself (manual optimization)
    else:  # fsdp2-tp auto: data_parallel = nodes (1), tensor_parallel = devices (2); activation checkpointing on,
        # so CausalLM's eager (checkpoint-wrapped) build is rebuilt before the TP plan
        model = CausalLM(GPTConfig.from_name("debug", activation_checkpointing=True), lr=1e-2, warmup_steps=1,
                         max_steps=4)
        strategy, clip = preset, 0.5
    trainer = pl.Trainer(accelerator="cpu", devices=world, strategy=strategy, max_steps=steps, logger=False,
                         gradient_clip_val=clip, num_sanity_val_steps=0,
                         callbacks=[ModelCheckpoint(dirpath=f"{out}/ck", every_n_train_steps=2, save_top_k=-1, filename="{step}")], enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data(), data(6), ckpt_path=ckpt_in)  # validation: a last, smaller batch
    full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in model.model.state_dict().items()}
    kinds = sorted({type(p).__name__ for p in model.model.parameters()})
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return trainer, full, kinds, metrics

trainer, straight, kinds, metrics = fit(4)
trainer2, resumed, _, metrics2 = fit(4, ckpt_in=f"{out}/ck/step=2.ckpt")  # the step-2 checkpoint of the run above
diff = max((straight[k] - resumed[k]).abs().max().item() for k in straight)
mesh = trainer.strategy.device_mesh
rank = trainer.global_rank
torch.save(straight, f"{out}/weights{rank}.pt")
result = {"rank": rank, "metrics": metrics, "metrics2": metrics2, "keys": sorted(straight), "kinds": kinds, "diff": diff, "steps": trainer2.global_step,
          "mesh": list(mesh.mesh_dim_names), "shape": list(mesh.shape), "coord": mesh.get_coordinate(), "strategy": type(trainer.strategy).__name__}
open(f"{out}/rank{rank}.json", "w").write(json.dumps(result))
"""

PP_MESH = ["pipeline_parallel", "data_parallel", "tensor_parallel"]


def _one_process_reference() -> tuple[dict, dict]:
    """The same model, data, schedule and clipping trained by ``CausalLM`` in this process."""
    import lightning.pytorch as pl

    from kit.models.gpt import CausalLM
    from kit.nn import GPTConfig

    torch.manual_seed(0)
    model = CausalLM(GPTConfig.from_name("debug"), lr=1e-2, warmup_steps=1, max_steps=4)
    x = torch.randint(0, 64, (8, 17), generator=torch.Generator().manual_seed(0))
    ds = torch.utils.data.TensorDataset(x[:, :-1], x[:, 1:])
    # the order Lightning's distributed sampler gives the parallel runs (shuffled, seed 0 as the worker's
    # seed_everything sets it, one per epoch); with
    # data parallelism each replica takes every dp-th example of it, so a global batch holds the same examples
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler)
    val_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x[:6, :-1], x[:6, 1:]), batch_size=4
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        use_distributed_sampler=False,
        max_steps=4,
        gradient_clip_val=0.5,
        logger=False,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader, val_loader)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return metrics, {k: v.detach().clone() for k, v in model.model.state_dict().items()}


def _run(tmp_path, preset: str, world: int, opts: dict) -> list[dict]:
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = torchrun(script, world, tmp_path, preset, world, json.dumps(opts), timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]


def _check_resume(results: list[dict], mesh: list, shape: list, kind: str) -> None:
    for res in results:
        assert res["mesh"] == mesh and res["shape"] == shape
        assert res["kinds"] == [kind]  # every parameter was parallelized by configure_model as the mesh says
        assert res["steps"] == 4
        assert res["diff"] <= 1e-6  # resume from the checkpoint continues the same run (0.0 seen on CPU)
        assert res["metrics"]["train/loss"] == pytest.approx(res["metrics2"]["train/loss"], abs=1e-5)
    # the last stage's loss (averaged over data-parallel replicas) reached every rank
    assert len({round(res["metrics"]["train/loss"], 6) for res in results}) == 1


def _check_against_one_process(tmp_path, results: list[dict]) -> None:
    ref_metrics, ref_weights = _one_process_reference()
    for res in results:
        for key in ("train/loss", "val/loss"):  # the last step's training loss; validation after step 4
            assert res["metrics"][key] == pytest.approx(ref_metrics[key], abs=1e-5), key
    for (
        res
    ) in results:  # every rank's weights after 4 steps: the one-process model's (lm_head: the tied copy)
        weights = torch.load(tmp_path / f"weights{res['rank']}.pt")
        for name, w in weights.items():
            ref = ref_weights["wte.weight" if name == "lm_head.weight" else name]
            torch.testing.assert_close(w, ref, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp2_tp_matches_one_process_and_resumes_exactly(tmp_path) -> None:
    results = _run(tmp_path, "fsdp2-tp", 2, {})
    _check_resume(results, ["data_parallel", "tensor_parallel"], [1, 2], "DTensor")
    _check_against_one_process(tmp_path, results)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    ("opts", "world"),
    [
        ({"pp": 2}, 2),
        ({"pp": 2, "dp": 2}, 4),  # the 4-process data x pipeline run
        ({"pp": 2, "dp": 2, "tp": 2}, 8),  # 3D: pipeline x data (FSDP2) x tensor in one Lightning run
    ],
    ids=["pp2", "pp2xdp2", "pp2xdp2xtp2"],
)
def test_pipeline_preset_matches_one_process_and_resumes_exactly(tmp_path, opts: dict, world: int) -> None:
    results = _run(tmp_path, "pipeline", world, opts)
    shape = [opts["pp"], opts.get("dp", 1), opts.get("tp", 1)]
    plain = shape[1] == shape[2] == 1  # one replica, no TP: the stage keeps plain parameters
    _check_resume(results, PP_MESH, shape, "Parameter" if plain else "DTensor")
    _check_against_one_process(tmp_path, results)  # val/loss: pipelined forward-only validation
    stages = {res["coord"][0]: res for res in results}
    assert "blocks.0.attn.qkv.weight" in stages[0]["keys"] and "blocks.1.attn.qkv.weight" in stages[1]["keys"]
    assert not set(stages[0]["keys"]) & {k for k in stages[1]["keys"] if k.startswith("blocks.")}
