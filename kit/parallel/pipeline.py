"""Pipeline parallelism for the kit's GPT on ``torch.distributed.pipelining`` (no home-made runtime).

Pieces, each a small function over torch's ``PipelineStage`` / ``ScheduleGPipe`` / ``Schedule1F1B``:

- :func:`stage_bounds` splits ``n_layer`` blocks into ``p`` contiguous, near-equal runs (earlier stages take
  the remainder; the first stage also holds the embeddings and the last the head, as in torchtitan's
  default split).
- :class:`GPTStage` is one stage's slice of a ``kit.nn.GPT``: the same submodules under the same
  names, so ``state_dict`` keys are the full model's (``blocks.5.attn.qkv.weight``) and the union of the
  stages' checkpoints is a single-GPU checkpoint.
- :func:`build_schedule` wraps a stage in ``PipelineStage`` and a schedule (``"gpipe"`` or ``"1f1b"``) with
  ``n_microbatches``; the loss runs on the last stage, per micro-batch, and torch scales the gradients by
  ``1 / n_microbatches`` so they equal the full batch's mean-loss gradients.
- :func:`pipeline_step` runs one forward+backward on any stage (inputs on the first, targets on the last),
  :func:`pipeline_eval` one forward only.
- :func:`sync_tied_grads` adds the tied embedding/head gradient across the first and last stage (Megatron's
  "embedding group" all-reduce): with ``tie_embeddings`` the two copies receive the same update, as one
  shared parameter would.
- :func:`clip_grad_norm_` clips by the *global* norm: each stage's sum of squares is all-reduced over the
  pipeline group (the tied head counted once) before the scale is applied.
- :func:`parallelize_pipeline` composes them with :func:`kit.parallel.tensor.parallelize` on one
  ``(pipeline_parallel, data_parallel, tensor_parallel)`` mesh (3D: TP and FSDP2 inside each stage) and returns
  a :class:`Pipeline` whose ``step`` runs schedule, tied sync and clip.

The pipeline bubble of GPipe and 1F1B is ``(p - 1) / (m + p - 1)`` of the step for ``p`` stages and ``m``
micro-batches (:func:`kit.health.planner.bubble_fraction`); 1F1B keeps at most ``p`` micro-batches of
activations alive instead of ``m``.

Example:
    >>> stage_bounds(n_layer=10, n_stages=4)
    [(0, 3), (3, 6), (6, 8), (8, 10)]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from kit._compat import schedule_loss_fn

__all__ = [
    "SCHEDULES",
    "GPTStage",
    "Pipeline",
    "build_schedule",
    "clip_grad_norm_",
    "lm_loss",
    "parallelize_pipeline",
    "pipeline_eval",
    "pipeline_rows",
    "pipeline_step",
    "stage_bounds",
    "sync_tied_grads",
]

SCHEDULES = ("gpipe", "1f1b")


def stage_bounds(n_layer: int, n_stages: int) -> list[tuple[int, int]]:
    """Half-open block ranges ``[(start, stop), ...]``, one per stage, contiguous and near-equal.

    Raises:
        ValueError: if there are more stages than blocks, or ``n_stages < 1``.
    """
    if n_stages < 1 or n_stages > n_layer:
        raise ValueError(
            f"n_stages={n_stages} must be in [1, n_layer={n_layer}]: every stage needs at least one block; "
            "lower pipeline_parallel_size or raise n_layer"
        )
    base, extra = divmod(n_layer, n_stages)
    bounds, start = [], 0
    for s in range(n_stages):
        stop = start + base + (1 if s < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


class GPTStage(nn.Module):
    """Stage ``stage_index`` of ``n_stages`` of a ``kit.nn.GPT``, sharing (not copying) its modules.

    The first stage maps token ids to embeddings, every stage runs its blocks, the last applies ``ln_f`` and
    ``lm_head`` and returns logits. Blocks sit in a ``ModuleDict`` keyed by their index in the full model.

    Args:
        model: the full GPT (build it on the ``meta`` device and ``to_empty`` the stage for big models).
        stage_index: this stage, from 0.
        n_stages: pipeline size p.

    Example:
        >>> from kit.nn import GPT, GPTConfig
        >>> stage = GPTStage(GPT(GPTConfig.from_name("debug")), 1, 2)
        >>> sorted(stage.state_dict())[:2]
        ['blocks.1.attn.proj.bias', 'blocks.1.attn.proj.weight']
    """

    def __init__(self, model: nn.Module, stage_index: int, n_stages: int) -> None:
        super().__init__()
        if not 0 <= stage_index < n_stages:
            raise ValueError(f"stage_index={stage_index} must be in [0, n_stages={n_stages})")
        self.config = model.config
        self.stage_index, self.n_stages = stage_index, n_stages
        self.is_first, self.is_last = stage_index == 0, stage_index == n_stages - 1
        start, stop = stage_bounds(len(model.blocks), n_stages)[stage_index]
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in range(start, stop)})
        if self.is_first:
            self.wte, self.wpe, self.drop = model.wte, model.wpe, model.drop
        if self.is_last:
            self.ln_f = model.ln_f
            self.lm_head = model.lm_head
            if self.is_first is False and model.lm_head.weight is model.wte.weight:
                # the tie cannot span processes: the head gets its own copy, kept equal by sync_tied_grads
                self.lm_head = nn.Linear(model.config.n_embd, model.config.vocab_size, bias=False)
                with torch.no_grad():
                    self.lm_head.weight.copy_(model.wte.weight)
        self.tied = bool(model.config.tie_embeddings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_first:
            x = self.wte(x)
            if (
                self.wpe is not None
            ):  # learned positions; a rotary model's attention layers place tokens instead
                x = x + self.wpe(torch.arange(x.size(1), device=x.device))
            x = self.drop(x)
        for block in self.blocks.values():
            x = block(x)
        if self.is_last:
            x = self.lm_head(self.ln_f(x))
        return x


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean next-token cross-entropy of one micro-batch, as ``CausalLM`` computes it (fp32 logits)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), label_smoothing=label_smoothing
    )


def build_schedule(
    stage: GPTStage,
    *,
    n_microbatches: int,
    schedule: str = "1f1b",
    device: torch.device | str = "cpu",
    group: Any = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lm_loss,
) -> Any:
    """``PipelineStage`` + ``ScheduleGPipe``/``Schedule1F1B`` for one stage.

    Args:
        stage: this rank's :class:`GPTStage`.
        n_microbatches: micro-batches per step m; the batch must divide by it. 1F1B needs ``m >= p``.
        schedule: ``"gpipe"`` (all forwards, then all backwards) or ``"1f1b"``.
        device: this rank's device.
        group: the pipeline process group (None: the default group).
        loss_fn: ``loss_fn(logits, targets)`` per micro-batch on the last stage.

    Raises:
        ValueError: for an unknown schedule or 1F1B with fewer micro-batches than stages.
    """
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not one of {SCHEDULES}")
    if n_microbatches < 1:
        raise ValueError(f"n_microbatches={n_microbatches} must be >= 1")
    if schedule == "1f1b" and n_microbatches < stage.n_stages:
        raise ValueError(
            f"1F1B needs n_microbatches >= pipeline stages ({n_microbatches} < {stage.n_stages}); raise "
            "n_microbatches or use schedule='gpipe'"
        )
    pipe_stage = PipelineStage(stage, stage.stage_index, stage.n_stages, torch.device(device), group=group)
    cls = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B
    return cls(pipe_stage, n_microbatches=n_microbatches, loss_fn=loss_fn)


def pipeline_step(
    schedule: Any, stage: GPTStage, idx: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor | None:
    """One pipelined forward + backward of a batch; every stage of the pipeline calls it with the same batch.

    Returns:
        The batch's mean loss on the last stage (the mean of the micro-batch losses), None on the others.
    """
    if stage.n_stages == 1:  # torch's schedules need two stages; one stage is a plain step
        loss = schedule_loss_fn(schedule)(stage(idx), targets)
        loss.backward()
        return loss.detach()
    return _run_schedule(schedule.step, stage, idx, targets)


def pipeline_eval(
    schedule: Any, stage: GPTStage, idx: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor | None:
    """One pipelined forward of a batch, no backward (validation/test); needs two stages or more.

    Returns:
        The batch's mean loss on the last stage (the mean of the micro-batch losses), None on the others.
    """
    return _run_schedule(schedule.eval, stage, idx, targets)


def _run_schedule(run: Any, stage: GPTStage, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    # a schedule's step/eval takes the inputs on the first stage, the targets on the last, nothing in between
    losses: list[torch.Tensor] = []
    if stage.is_first:
        run(idx)
    elif stage.is_last:
        run(target=targets, losses=losses)
    else:
        run()
    return torch.stack([x.detach() for x in losses]).mean() if stage.is_last else None


@dataclass
class Pipeline:
    """One rank's share of a (data x) pipeline (x tensor) parallel GPT, from :func:`parallelize_pipeline`.

    Attributes:
        stage: this rank's :class:`GPTStage` (tensor-parallel and/or FSDP2-sharded when the mesh says so).
        schedule: its GPipe / 1F1B schedule (run it with :func:`pipeline_step`).
        group: the pipeline process group (the ranks holding the other stages of this rank's replica and TP slice).
        embedding_group: the (first, last) stage group for :func:`sync_tied_grads`; None untied or with one stage.
        last_rank: the global rank of this pipeline's last stage (where the loss lives).
        tied_copy: the parameters :func:`clip_grad_norm_` must not count twice (the last stage's tied head copy).
    """

    stage: GPTStage
    schedule: Any
    group: Any
    embedding_group: Any
    last_rank: int
    tied_copy: list[torch.Tensor] = field(default_factory=list)

    def step(self, idx: torch.Tensor, targets: torch.Tensor, max_norm: float | None = None) -> tuple:
        """Forward + backward of one batch, the tied-gradient sync and the global clip (the optimizer is yours).

        Returns:
            ``(loss, norm)``: the batch's mean loss on the last stage (None elsewhere) and the pre-clip global
            gradient norm (None when ``max_norm`` is None).
        """
        loss = pipeline_step(self.schedule, self.stage, idx, targets)
        sync_tied_grads(self.stage, embedding_group=self.embedding_group)
        norm = None
        if max_norm is not None:
            norm = clip_grad_norm_(self.stage.parameters(), max_norm, self.group, exclude=self.tied_copy)
        return loss, norm


def pipeline_rows(device_mesh: Any) -> list[list[int]]:
    """Global ranks of every pipeline in a mesh with a ``"pipeline_parallel"`` dimension, stage order.

    Example:
        >>> import types  # a stand-in with DeviceMesh's two attributes used here
        >>> mesh = types.SimpleNamespace(mesh=torch.arange(8).reshape(2, 2, 2),
        ...                              mesh_dim_names=("pipeline_parallel", "data_parallel", "tensor_parallel"))
        >>> pipeline_rows(mesh)
        [[0, 4], [1, 5], [2, 6], [3, 7]]
    """
    from kit.parallel.tensor import PP_DIM

    names = list(device_mesh.mesh_dim_names or ())
    if PP_DIM not in names:
        raise ValueError(f"device mesh dimensions {names} have no {PP_DIM!r}")
    ranks = device_mesh.mesh.movedim(names.index(PP_DIM), -1)
    return ranks.reshape(-1, ranks.size(-1)).tolist()


def parallelize_pipeline(
    model: nn.Module,
    device_mesh: Any,
    *,
    n_microbatches: int,
    schedule: str = "1f1b",
    device: torch.device | str = "cpu",
    activation_checkpointing: bool | str = False,
    checkpoint_every: int = 1,
    compile: bool = False,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lm_loss,
) -> Pipeline:
    """Cut a GPT into this rank's pipeline stage and apply TP / FSDP2 inside it: DP x PP x TP on one mesh.

    The pieces are the 1-D and 2-D ones: :class:`GPTStage` takes this rank's blocks (``pipeline_parallel``
    coordinate), :func:`kit.parallel.tensor.parallelize` shards the stage over ``tensor_parallel`` (Megatron plan,
    sequence parallel: stages exchange their local ``(B, T / tp, C)`` sequence shard) and ``fully_shard``s it over
    ``data_parallel`` (FSDP2, which ``PipelineStage`` drives across micro-batches), and :func:`build_schedule`
    runs it over the pipeline group. Must be called on every rank (it builds process groups).

    Args:
        model: the full GPT (built identically on every rank, e.g. from the same seed).
        device_mesh: a mesh with a ``"pipeline_parallel"`` dimension and optionally ``"data_parallel"`` and
            ``"tensor_parallel"`` (``PipelineStrategy`` builds ``(pipeline, data, tensor)``).
        n_microbatches: micro-batches per step (of each data-parallel replica's batch).
        schedule: ``"1f1b"`` or ``"gpipe"``.
        device: this rank's device.
        activation_checkpointing: recompute blocks in backward (``parallelize``'s modes: True/"full",
            "attention", "ffn").
        checkpoint_every: checkpoint every k-th block only.
        compile: ``torch.compile`` each block.
        loss_fn: the per-micro-batch loss on the last stage.

    Returns:
        This rank's :class:`Pipeline`.

    Example:
        >>> mesh = init_device_mesh("cuda", (2, 2, 2), mesh_dim_names=("pipeline_parallel", "data_parallel",
        ...                         "tensor_parallel"))  # doctest: +SKIP
        >>> pipe = parallelize_pipeline(GPT(config), mesh, n_microbatches=4)  # doctest: +SKIP
        >>> loss, norm = pipe.step(idx, targets, max_norm=1.0); optimizer.step()  # doctest: +SKIP
    """
    from kit.parallel.tensor import DP_DIM, PP_DIM, TP_DIM, mesh_dim, parallelize

    rows = pipeline_rows(device_mesh)
    pp = device_mesh[PP_DIM]
    stage = GPTStage(model, pp.get_local_rank(), pp.size()).to(device)
    sizes = {
        name: (m.size() if (m := mesh_dim(device_mesh, name)) is not None else 1) for name in (DP_DIM, TP_DIM)
    }
    checkpointing = activation_checkpointing not in (False, "none")
    if sizes[DP_DIM] > 1 or sizes[TP_DIM] > 1 or checkpointing or compile:
        parallelize(
            stage,
            device_mesh,
            tp=sizes[TP_DIM] > 1,
            fsdp=sizes[DP_DIM] > 1,
            activation_checkpointing=activation_checkpointing,
            checkpoint_every=checkpoint_every,
            compile=compile,
            # keep a stage's gathered parameters from the first micro-batch's forward to the last backward
            # (torchtitan's choice under PP): resharding would all-gather the stage again for every micro-batch
            reshard_after_forward=pp.size() == 1,
        )
    group = pp.get_group()
    sched = build_schedule(
        stage, n_microbatches=n_microbatches, schedule=schedule, device=device, group=group, loss_fn=loss_fn
    )
    embedding_group, me = None, dist.get_rank()
    if stage.tied and pp.size() > 1:
        for row in rows:  # every rank takes part in creating every group, in the same order
            new = dist.new_group([row[0], row[-1]])
            if me in row:
                embedding_group = new
    last_rank = next(row[-1] for row in rows if me in row)
    tied_copy = [stage.lm_head.weight] if stage.tied and stage.is_last and not stage.is_first else []
    return Pipeline(stage, sched, group, embedding_group, last_rank, tied_copy)


def sync_tied_grads(stage: GPTStage, group: Any = None, embedding_group: Any = None) -> None:
    """Sum the tied embedding/head gradient between the first and last stage (no-op untied or p = 1).

    Args:
        stage: this rank's stage.
        group: the pipeline group (None: default group).
        embedding_group: a process group of exactly the first and last stage's ranks; build it once with
            ``dist.new_group([first, last])`` on every rank (collective) and pass it in.
    """
    if not stage.tied or stage.n_stages == 1 or not (stage.is_first or stage.is_last):
        return
    param = stage.wte.weight if stage.is_first else stage.lm_head.weight
    if param.grad is None:
        param.grad = torch.zeros_like(param)
    with torch.no_grad():
        # under TP/FSDP both copies are placed alike (Shard(0) over the vocabulary, then the data-parallel
        # shard), so this rank's local block on the first stage is the same rows as its partner's on the last
        grad = param.grad.to_local() if isinstance(param.grad, DTensor) else param.grad
        dist.all_reduce(grad, group=embedding_group)


def clip_grad_norm_(
    parameters: Iterable[torch.Tensor],
    max_norm: float,
    group: Any = None,
    exclude: Iterable[torch.Tensor] = (),
) -> torch.Tensor:
    """Clip gradients of every stage by their joint L2 norm; returns that global norm (pre-clip).

    Args:
        parameters: this stage's parameters.
        max_norm: the norm bound.
        group: the pipeline process group the squares are summed over (None: the default group; no
            communication when torch.distributed is not initialised).
        exclude: parameters whose square is not added here (a tied copy already counted on another stage),
            though they are still scaled.
    """
    params = [p for p in parameters if p.grad is not None]
    skip = {id(p) for p in exclude}
    device = params[0].grad.device if params else torch.device("cpu")
    sq = torch.zeros((), device=device, dtype=torch.float32)
    # DTensor gradients (TP / FSDP2 inside a stage): sum the squares per placement, then one full_tensor() each
    # reduces the partial sums over the stage's data x tensor mesh (replicated ones counted once)
    partial: dict[tuple, DTensor] = {}
    for p in params:
        if id(p) in skip:
            continue
        part = p.grad.detach().float().pow(2).sum()
        if isinstance(part, DTensor):
            key = (part.device_mesh, part.placements)
            partial[key] = partial[key] + part if key in partial else part
        else:
            sq += part
    for part in partial.values():
        sq += part.full_tensor()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sq, group=group)
    norm = sq.sqrt()
    scale = max_norm / (norm.item() + 1e-6)
    if scale < 1 and math.isfinite(norm.item()):
        for p in params:
            p.grad.detach().mul_(scale)
    return norm
