"""``PipelineCausalLM``: ``CausalLM`` trained as a pipeline of stages (``kit.parallel.pipeline``) under Lightning.

Use it with the ``pipeline`` strategy preset (``kit.parallel.strategies.PipelineStrategy``), which gives the module
a device mesh with a ``pipeline_parallel`` dimension. Each rank builds the full GPT on the CPU, keeps its
:class:`~kit.parallel.pipeline.GPTStage` and moves only that to its device. One training step, on every rank:

1. ``pipeline_step`` runs the schedule (GPipe or 1F1B, ``n_microbatches``); the loss exists on the last stage;
2. ``sync_tied_grads`` adds the tied embedding/head gradient between the first and last stage;
3. ``clip_grad_norm_`` clips by the global norm over all stages (``gradient_clip_val`` of the module, since the
   Trainer's own clipping needs automatic optimization);
4. the optimizer and LR scheduler step (manual optimization: the schedule runs the backward itself);
5. the last stage broadcasts the loss to its pipeline group so that rank 0's logger and progress bar show it.

Data parallel x pipeline (more processes than stages) is refused for now: the stage replicas' gradients would
need FSDP2 or an all-reduce over ``data_parallel``, which is not wired yet. Checkpoints: the strategy saves a distributed checkpoint; each stage writes its own blocks under the full
model's keys (``model.blocks.5...``). Validation is not pipelined (not supported yet): run it with
``limit_val_batches=0`` or validate the saved weights with ``CausalLM``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from kit.models.gpt import GPT, CausalLM
from kit.parallel.pipeline import GPTStage, build_schedule, clip_grad_norm_, pipeline_step, sync_tied_grads
from kit.parallel.tensor import PP_DIM

__all__ = ["PipelineCausalLM"]


class PipelineCausalLM(CausalLM):
    """``CausalLM`` whose network is one pipeline stage per rank.

    Args:
        n_microbatches: micro-batches per step (the batch must divide by it; 1F1B needs at least the stage count).
        pipeline_schedule: ``"1f1b"`` or ``"gpipe"`` (``schedule`` is CausalLM's LR schedule).
        gradient_clip_val: global-norm clip across stages (None: no clipping).
        **kwargs: ``CausalLM``'s arguments.
    """

    def __init__(
        self,
        *args,
        n_microbatches: int = 4,
        pipeline_schedule: str = "1f1b",
        gradient_clip_val: float | None = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False
        self.n_microbatches, self.schedule_name = n_microbatches, pipeline_schedule
        self.gradient_clip_val = gradient_clip_val
        self._schedule = None

    def configure_model(self) -> None:
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None and self._trainer is None:
            return  # CausalLM.__init__ builds eagerly; a stage waits for the strategy's mesh
        if mesh is None or PP_DIM not in (mesh.mesh_dim_names or ()):
            raise ValueError(
                "PipelineCausalLM needs a device mesh with a 'pipeline_parallel' dimension; use "
                "--trainer.strategy=pipeline (kit.parallel.strategies.PipelineStrategy)"
            )
        if self._schedule is not None:
            return
        if mesh.mesh_dim_names[0] == "data_parallel" and mesh["data_parallel"].size() > 1:
            raise ValueError(
                f"data_parallel_size={mesh['data_parallel'].size()}: PipelineCausalLM does not reduce gradients "
                "across pipeline replicas yet; set pipeline_parallel_size to the number of processes"
            )
        self.model, self._device_mesh = None, None  # hide the mesh: CausalLM would tensor-parallelize
        try:
            super().configure_model()  # the full GPT (vocab from the datamodule when needed)
        finally:
            self._device_mesh = mesh
        full: GPT = self.model
        pp = mesh[PP_DIM]
        self._pp_group = pp.get_group()
        stage = GPTStage(full, pp.get_local_rank(), pp.size()).to(self.device)
        self.model = stage
        self._schedule = build_schedule(
            stage,
            n_microbatches=self.n_microbatches,
            schedule=self.schedule_name,
            device=self.device,
            group=self._pp_group,
        )
        # one (first, last) group per pipeline: every rank takes part in building every group
        self._embedding_group = None
        ranks = mesh.mesh.reshape(-1, pp.size()) if mesh.mesh.dim() > 1 else mesh.mesh.reshape(1, -1)
        for row in ranks.tolist():
            group = dist.new_group([row[0], row[-1]]) if len(row) > 1 else None
            if dist.get_rank() in row:
                self._embedding_group = group
        self._last_rank = dist.get_process_group_ranks(self._pp_group)[-1]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        stage: GPTStage = self.model
        opt = self.optimizers()
        idx, targets = batch
        loss = pipeline_step(self._schedule, stage, idx, targets)
        sync_tied_grads(stage, embedding_group=self._embedding_group)
        if self.gradient_clip_val is not None:
            tied_copy = [stage.lm_head.weight] if stage.tied and stage.is_last and not stage.is_first else []
            norm = clip_grad_norm_(
                stage.parameters(), self.gradient_clip_val, self._pp_group, exclude=tied_copy
            )
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.lr_schedulers().step()
        value = loss if loss is not None else torch.zeros((), device=idx.device)
        dist.broadcast(value, src=self._last_rank, group=self._pp_group)  # logged from the last stage
        self.log("train/loss", value, prog_bar=True, on_step=True, on_epoch=False)
        return value

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        raise NotImplementedError(
            "pipelined validation is not supported yet; set limit_val_batches=0 and validate the checkpoint "
            "with CausalLM"
        )

    def on_validation_epoch_end(self) -> None:
        return None
