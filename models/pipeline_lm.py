"""``PipelineCausalLM``: ``CausalLM`` trained as a pipeline of stages (``kit.parallel.pipeline``) under Lightning.

Use it with the ``pipeline`` strategy preset (``kit.parallel.strategies.PipelineStrategy``), which gives the module
a ``(pipeline_parallel, data_parallel, tensor_parallel)`` device mesh. Each rank builds the full GPT on the CPU and
:func:`~kit.parallel.pipeline.parallelize_pipeline` keeps its stage, tensor-parallel over ``tensor_parallel`` and
FSDP2-sharded over ``data_parallel`` when those are larger than 1 (DP x PP x TP), and moves it to its device.
One training step, on every rank:

1. the schedule (GPipe or 1F1B, ``n_microbatches`` per data-parallel replica's batch) runs forward and backward;
   the loss exists on the last stage; FSDP2 averages the gradients over the data-parallel replicas;
2. ``sync_tied_grads`` adds the tied embedding/head gradient between the first and last stage;
3. ``clip_grad_norm_`` clips by the global norm over all stages (``gradient_clip_val`` of the module, since the
   Trainer's own clipping needs automatic optimization);
4. the optimizer and LR scheduler step (manual optimization: the schedule runs the backward itself);
5. the last stage broadcasts the loss to its pipeline group so that rank 0's logger and progress bar show it
   (averaged over the data-parallel replicas: the global batch's loss).

With tied embeddings the last stage's head is a copy of the embedding (kept equal by step 2); it is put in the
optimizer's no-decay group, as the embedding is.

Validation and test are pipelined too, forward only (``schedule.eval``, GPipe order, the largest micro-batch count
up to ``n_microbatches`` that divides the batch; one schedule per batch shape). Checkpoints: the strategy saves a
distributed checkpoint; each stage writes its own blocks under the full model's keys (``model.blocks.5...``).
``predict_step`` is not pipelined: predict with ``CausalLM`` from the saved weights.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from kit._compat import attached_trainer
from kit.models.gpt import CausalLM
from kit.parallel.pipeline import (
    GPTStage,
    Pipeline,
    build_schedule,
    lm_loss,
    parallelize_pipeline,
    pipeline_eval,
)
from kit.parallel.tensor import DP_DIM, PP_DIM, mesh_dim

__all__ = ["PipelineCausalLM"]


def _eval_microbatches(batch: int, n_microbatches: int) -> int:
    """The largest micro-batch count <= ``n_microbatches`` that splits ``batch`` evenly (a last, smaller batch)."""
    return max(m for m in range(1, min(batch, n_microbatches) + 1) if batch % m == 0)


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
        self._pipe: Pipeline | None = None
        self._eval_schedules: dict[tuple, object] = {}

    def configure_model(self) -> None:
        mesh = self.device_mesh
        if mesh is None and attached_trainer(self) is None:
            # CausalLM.__init__'s eager build: the full GPT, cut into stages once the strategy's mesh is there (so
            # the weights are those CausalLM would start from with the same seed)
            return super().configure_model()
        if mesh is None or PP_DIM not in (mesh.mesh_dim_names or ()):
            raise ValueError(
                "PipelineCausalLM needs a device mesh with a 'pipeline_parallel' dimension; use "
                "--trainer.strategy=pipeline (kit.parallel.strategies.PipelineStrategy)"
            )
        if self._pipe is not None:
            return
        super().configure_model()  # checks the data's vocab / block size, then self._parallelize(mesh)

    def _parallelize(self, mesh: object) -> None:
        """Cut the full GPT (``self.model``) to this rank's stage, TP/FSDP2 inside it (``parallelize_pipeline``)."""
        self._pipe = parallelize_pipeline(
            self.model,
            mesh,
            n_microbatches=self.n_microbatches,
            schedule=self.schedule_name,
            device=self.device,
            activation_checkpointing=self.config.activation_checkpointing,
            checkpoint_every=self.config.checkpoint_every,
            compile=self.hparams.compile,
        )
        self.model = self._pipe.stage
        self.model._kit_parallelized = True

    def _from_last_stage(self, loss: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """The last stage's loss on every rank of its pipeline, averaged over the data-parallel replicas."""
        value = loss.detach().float() if loss is not None else torch.zeros((), device=device)
        dist.broadcast(value, src=self._pipe.last_rank, group=self._pipe.group)
        dp = mesh_dim(self.device_mesh, DP_DIM)
        if dp is not None and dp.size() > 1:
            dist.all_reduce(value, group=dp.get_group())
            value /= dp.size()
        return value

    def configure_optimizers(self) -> dict:
        config = super().configure_optimizers()
        # the last stage's copy of a tied embedding is an nn.Linear weight, which param_groups would decay; the
        # embedding it mirrors is not decayed, and the two must take the same update
        tied = {id(p) for p in (self._pipe.tied_copy if self._pipe is not None else [])}
        if tied:
            decay, no_decay = config["optimizer"].param_groups[:2]
            no_decay["params"] += [p for p in decay["params"] if id(p) in tied]
            decay["params"] = [p for p in decay["params"] if id(p) not in tied]
        return config

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        idx, targets = batch
        loss, norm = self._pipe.step(idx, targets, self.gradient_clip_val)
        if norm is not None:
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.lr_schedulers().step()
        value = self._from_last_stage(loss, idx.device)
        self.log("train/loss", value, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/ppl", torch.exp(value), on_step=True, on_epoch=False)
        return value

    def _eval_loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss, pipelined forward only, on every rank of the pipeline."""
        stage: GPTStage = self.model
        if stage.n_stages == 1:
            return lm_loss(stage(idx), targets).detach()
        m = _eval_microbatches(idx.size(0), self.n_microbatches)
        key = (tuple(idx.shape), m)
        if key not in self._eval_schedules:  # torch's stages fix their buffers' shapes on the first run
            self._eval_schedules[key] = build_schedule(
                stage, n_microbatches=m, schedule="gpipe", device=self.device, group=self._pipe.group
            )
        loss = pipeline_eval(self._eval_schedules[key], stage, idx, targets)
        return self._from_last_stage(loss, idx.device)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        idx, targets = batch
        self.val_loss.update(self._eval_loss(idx, targets), weight=idx.numel())

    def predict_step(self, batch, batch_idx: int):
        raise NotImplementedError(
            "PipelineCausalLM does not pipeline predict; load the checkpoint into CausalLM and predict there"
        )
