"""The strategy and pipelining sections of kit._compat: each private attribute the kit relies on still exists and
means what the kit assumes, on the installed torch and Lightning (a release that renames one fails here)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from kit import _compat
from kit.parallel.comm_hooks import CommHookConfig, topk_hook
from kit.parallel.strategies import CompressedDDPStrategy


def test_ddp_comm_hook_is_what_the_strategy_was_built_with() -> None:
    assert _compat.ddp_comm_hook(DDPStrategy()) == (None, None)
    state = object()
    assert _compat.ddp_comm_hook(DDPStrategy(ddp_comm_state=state, ddp_comm_hook=topk_hook)) == (
        state,
        topk_hook,
    )
    strategy = CompressedDDPStrategy(CommHookConfig(hook="topk"))
    assert _compat.ddp_comm_hook(strategy) == (strategy.comm_state, topk_hook)


def test_set_ddp_kwarg_default_keeps_what_the_user_set() -> None:
    mine, default = DDPStrategy(bucket_cap_mb=5), DDPStrategy()
    for strategy in (mine, default):
        _compat.set_ddp_kwarg_default(strategy, "bucket_cap_mb", 1024)
    # the dict DDPStrategy unpacks into DistributedDataParallel(...) in configure_ddp
    assert mine._ddp_kwargs["bucket_cap_mb"] == 5 and default._ddp_kwargs["bucket_cap_mb"] == 1024


def test_model_parallel_internals() -> None:
    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)
    assert _compat.tensor_parallel_size(strategy) == 2
    assert _compat.tensor_parallel_size(ModelParallelStrategy()) == "auto"
    assert callable(getattr(strategy, "_setup_distributed", None))  # what setup_distributed calls

    import lightning.pytorch as pl

    module = pl.LightningModule()
    strategy.connect(module)
    mesh = object()  # any mesh: the strategy and the module only hold it
    _compat.set_device_mesh(strategy, mesh, data_parallel_size=3)
    assert strategy.device_mesh is mesh and module.device_mesh is mesh


def test_checkpoint_metadata_file_is_the_one_lightning_writes(tmp_path: Path) -> None:
    assert _compat.checkpoint_metadata_file(tmp_path) == tmp_path / "meta.pt"


def test_schedule_loss_fn_is_the_one_the_schedule_was_built_with(tmp_path: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (logits - targets).pow(2).mean()

    mine = not dist.is_initialized()  # an earlier test in this process may have left a one-process group up
    if mine:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        group = dist.new_group([0])
        stage = PipelineStage(torch.nn.Linear(2, 2), 0, 1, torch.device("cpu"), group=group)
        schedule = ScheduleGPipe(stage, n_microbatches=2, loss_fn=loss_fn)
        assert _compat.schedule_loss_fn(schedule) is loss_fn
    finally:
        if mine:
            dist.destroy_process_group()


def test_compat_imports_without_lightning() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('lightning', 'pytorch_lightning', 'lightning_fabric'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import kit._compat as c\n"
        "print(sorted(c.__all__))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "schedule_loss_fn" in proc.stdout and "ddp_comm_hook" in proc.stdout
