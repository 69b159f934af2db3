"""Pipeline parallelism for the kit's GPT on ``torch.distributed.pipelining`` (no home-made runtime).

Pieces, each a small function over torch's ``PipelineStage`` / ``ScheduleGPipe`` / ``Schedule1F1B``:

- :func:`stage_bounds` splits ``n_layer`` blocks into ``p`` contiguous, near-equal runs (earlier stages take
  the remainder; the first stage also holds the embeddings and the last the head, as in torchtitan's
  default split).
- :class:`GPTStage` is one stage's slice of a ``kit.models.gpt.GPT``: the same submodules under the same
  names, so ``state_dict`` keys are the full model's (``blocks.5.attn.qkv.weight``) and the union of the
  stages' checkpoints is a single-GPU checkpoint.
- :func:`build_schedule` wraps a stage in ``PipelineStage`` and a schedule (``"gpipe"`` or ``"1f1b"``) with
  ``n_microbatches``; the loss runs on the last stage, per micro-batch, and torch scales the gradients by
  ``1 / n_microbatches`` so they equal the full batch's mean-loss gradients.
- :func:`pipeline_step` runs one forward+backward on any stage (inputs on the first, targets on the last).
- :func:`sync_tied_grads` adds the tied embedding/head gradient across the first and last stage (Megatron's
  "embedding group" all-reduce): with ``tie_embeddings`` the two copies receive the same update, as one
  shared parameter would.
- :func:`clip_grad_norm_` clips by the *global* norm: each stage's sum of squares is all-reduced over the
  pipeline group (the tied head counted once) before the scale is applied.

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
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SCHEDULES",
    "GPTStage",
    "build_schedule",
    "clip_grad_norm_",
    "lm_loss",
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
    """Stage ``stage_index`` of ``n_stages`` of a ``kit.models.gpt.GPT``, sharing (not copying) its modules.

    The first stage maps token ids to embeddings, every stage runs its blocks, the last applies ``ln_f`` and
    ``lm_head`` and returns logits. Blocks sit in a ``ModuleDict`` keyed by their index in the full model.

    Args:
        model: the full GPT (build it on the ``meta`` device and ``to_empty`` the stage for big models).
        stage_index: this stage, from 0.
        n_stages: pipeline size p.

    Example:
        >>> from kit.models.gpt import GPT, GPTConfig
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
            pos = torch.arange(x.size(1), device=x.device)
            x = self.drop(self.wte(x) + self.wpe(pos))
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
        loss = schedule._loss_fn(stage(idx), targets)
        loss.backward()
        return loss.detach()
    losses: list[torch.Tensor] = []
    if stage.is_first:
        schedule.step(idx)
    elif stage.is_last:
        schedule.step(target=targets, losses=losses)
    else:
        schedule.step()
    return torch.stack([x.detach() for x in losses]).mean() if stage.is_last else None


def _first_last_group(stage: GPTStage, group: Any) -> Any:
    ranks = dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))
    return ranks[0], ranks[-1]


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
    dist.all_reduce(param.grad, group=embedding_group)


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
    for p in params:
        if id(p) not in skip:
            sq += p.grad.detach().float().pow(2).sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sq, group=group)
    norm = sq.sqrt()
    scale = max_norm / (norm + 1e-6)
    if scale < 1 and math.isfinite(norm.item()):
        for p in params:
            p.grad.detach().mul_(scale)
    return norm
