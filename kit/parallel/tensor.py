"""Tensor parallelism (Megatron-style, on DTensor) plus FSDP2 for the kit's GPT: :func:`parallelize`.

Built on ``torch.distributed.tensor.parallel`` (``parallelize_module`` with column/row-parallel styles and
``SequenceParallel``) and ``torch.distributed.fsdp.fully_shard`` (FSDP2), torchtitan-style: nothing here
moves a tensor by hand, the styles say where each tensor lives and DTensor inserts the collectives.

The plan for each ``kit.nn.Block`` over the ``tensor_parallel`` mesh dimension (Megatron-LM,
Shoeybi et al. 2019; sequence parallelism from Korthikanti et al. 2022):

==================  ==================================================================================
module              placement
==================  ==================================================================================
``ln_1``, ``ln_2``  ``SequenceParallel``: the residual stream and the norms are split along the sequence
``attn``            input gathered to the full sequence (``PrepareModuleInput``: Shard(1) -> Replicate)
``attn.qkv``        column-parallel (plain ``Shard(0)``): the fused weight is grouped by key/value head
                    (for each KV head: its query heads' rows, its k rows, its v rows; Megatron's
                    head-major (head, q|k|v, head_dim) order when ``n_kv_head == n_head``; see
                    ``DenseAttention``), so each rank's contiguous rows are ``n_kv_head / tp`` whole
                    groups, and the full tensor is the single-GPU weight. ``tp`` must divide
                    ``n_kv_head``: a key/value head is never split (multi-query attention cannot use TP)
``attn.proj``       row-parallel, output reduce-scattered back to Shard(1) (sequence parallel)
``mlp``             input gathered (as ``attn``); ``mlp.fc`` (MLP) or ``mlp.gate`` and ``mlp.up``
                    (SwiGLU) column-, ``mlp.proj`` row-parallel
==================  ==================================================================================

Outside the blocks: ``wte`` is a vocab-parallel embedding (row-parallel: each rank holds ``V / tp`` rows,
the partial lookups are all-reduced); ``wpe`` is replicated (``block_size x d``, small; a ``Replicate``
DTensor, so every parameter is a DTensor for ``clip_grad_norm_``); ``blocks[0]``
slices the replicated embedding output to its sequence shard (no communication); ``ln_f`` is sequence
parallel; ``lm_head`` is column-parallel over the vocabulary (the same ``Shard(0)`` as ``wte``, so tied
weights stay one parameter) and its logits are all-gathered to ``Replicate`` so ``CausalLM``'s plain
``cross_entropy`` works. torchtitan keeps them vocab-sharded and uses ``loss_parallel``; that saves the
all-gather of ``B x T x V`` logits but needs the loss computed inside a ``loss_parallel()`` context on a
DTensor, which ``CausalLM._loss`` (a ``.view`` and ``.float`` on the logits) does not do.

:func:`parallelize` applies four independent transforms in torchtitan's order: :func:`apply_tp` (tensor
parallel) -> :func:`apply_ac` (activation checkpointing) -> :func:`apply_compile` -> :func:`apply_fsdp`
(``fully_shard`` per block, then the root). FSDP2 must see the final module tree, and compile must see the
checkpoint wrappers.

Example:
    >>> from kit.nn import GPT, GPTConfig
    >>> tp_plan(GPT(GPTConfig.from_name("debug")))["blocks.0.attn.qkv"].__class__.__name__
    'ColwiseParallel'
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
from torch.distributed.tensor.parallel.style import ParallelStyle

__all__ = [
    "DP_DIM",
    "PP_DIM",
    "TP_DIM",
    "apply_ac",
    "apply_compile",
    "apply_fsdp",
    "apply_tp",
    "check_tp_sizes",
    "mesh_dim",
    "parallelize",
    "tp_plan",
]

# Mesh dimension names: Lightning's ModelParallelStrategy names the first two; the pipeline preset adds PP_DIM.
DP_DIM = "data_parallel"
TP_DIM = "tensor_parallel"
PP_DIM = "pipeline_parallel"


def tp_plan(model: nn.Module, *, sequence_parallel: bool = True) -> dict[str, ParallelStyle]:
    """The ``parallelize_module`` plan for a ``kit.nn.GPT`` (see the module docstring's table).

    Args:
        model: the GPT (dense attention, MLP or SwiGLU feed-forward), or one ``kit.parallel.pipeline.GPTStage`` of
            it (only the stage's own embeddings, blocks and head are planned).
        sequence_parallel: split norms and the residual stream along the sequence (Korthikanti et al.);
            False keeps them replicated (Megatron's original plan: all-reduce after each row-parallel layer).

    Returns:
        Fully qualified module name -> parallel style.

    Raises:
        ValueError: for blocks whose attention or feed-forward the plan does not know (MoE, sliding window):
            their projections are not named ``qkv``/``proj`` and ``fc``/``proj`` or ``gate``/``up``/``proj``.
    """
    seq = Shard(1) if sequence_parallel else Replicate()
    blocks = list(model.blocks.named_children())  # a GPT's ModuleList, or a pipeline stage's ModuleDict
    plan: dict[str, ParallelStyle | None] = {}
    if getattr(model, "wte", None) is not None:  # a GPT, or the first pipeline stage
        plan["wte"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())
        if sequence_parallel and blocks:
            plan[f"blocks.{blocks[0][0]}"] = PrepareModuleInput(
                input_layouts=(Replicate(),), desired_input_layouts=(Shard(1),), use_local_output=True
            )
    # a later pipeline stage receives the previous stage's local (B, T / tp, C) sequence shard as it is
    if getattr(model, "lm_head", None) is not None:  # a GPT, or the last pipeline stage
        plan["ln_f"] = SequenceParallel() if sequence_parallel else None
        plan["lm_head"] = ColwiseParallel(input_layouts=seq, output_layouts=Replicate())
    for i, block in blocks:
        columns = {"attn": _columns(block, "attn", i), "mlp": _columns(block, "mlp", i)}
        p = f"blocks.{i}"
        if sequence_parallel:
            plan[f"{p}.ln_1"] = SequenceParallel()
            plan[f"{p}.ln_2"] = SequenceParallel()
            for part in ("attn", "mlp"):
                plan[f"{p}.{part}"] = PrepareModuleInput(
                    input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_output=True
                )
        for part, names in columns.items():
            for name in names:
                plan[f"{p}.{part}.{name}"] = ColwiseParallel()
            plan[f"{p}.{part}.proj"] = RowwiseParallel(output_layouts=seq)
    return {k: v for k, v in plan.items() if v is not None}


# the column-parallel projections of each sublayer the plan knows (the row-parallel one is always `proj`)
_COLUMNS = {"attn": (("qkv",),), "mlp": (("fc",), ("gate", "up"))}


def _columns(block: nn.Module, part: str, index: str) -> tuple[str, ...]:
    """The column-parallel Linear names of ``block.<part>`` (``qkv``; ``fc``, or ``gate`` and ``up``)."""
    sub = getattr(block, part, None)

    def linear(name: str) -> bool:
        return isinstance(getattr(sub, name, None), nn.Linear)

    for names in _COLUMNS[part]:
        if linear("proj") and all(linear(n) for n in names):
            return names
    known = " or ".join(str([*names, "proj"]) for names in _COLUMNS[part])
    raise ValueError(
        f"blocks.{index}.{part} is {type(sub).__name__}, which has no nn.Linear {known}; tensor parallelism knows "
        "the dense attention and the MLP / SwiGLU feed-forward only: use attention='dense', ffn='mlp' or "
        "'swiglu', or pass tp=False"
    )


def mesh_dim(device_mesh: Any, name: str) -> Any | None:
    """The sub-mesh called ``name`` (``"data_parallel"``, ``"tensor_parallel"``...), or None if absent."""
    names = getattr(device_mesh, "mesh_dim_names", None) or ()
    return device_mesh[name] if name in names else None


def apply_tp(model: nn.Module, tp_mesh: Any, *, sequence_parallel: bool = True) -> nn.Module:
    """Megatron tensor parallelism (and sequence parallelism) over ``tp_mesh`` with :func:`tp_plan`.

    Args:
        model: a ``kit.nn.GPT`` or a ``kit.parallel.pipeline.GPTStage`` of it.
        tp_mesh: the 1-D ``tensor_parallel`` mesh.
        sequence_parallel: see :func:`tp_plan`.

    Returns:
        ``model``, sharded in place; tied ``wte``/``lm_head`` weights stay one parameter and ``wpe`` becomes a
        replicated DTensor, so every parameter is a DTensor.

    Raises:
        ValueError: if the head or key/value head count, vocabulary, feed-forward width or (with sequence
            parallelism) ``block_size`` does not divide by the mesh size (:func:`check_tp_sizes`).

    Example:
        >>> tp_mesh = init_device_mesh("cuda", (4,), mesh_dim_names=("tensor_parallel",))  # doctest: +SKIP
        >>> model = apply_tp(GPT(config), tp_mesh["tensor_parallel"])  # doctest: +SKIP
    """
    check_tp_sizes(model.config, tp_mesh.size(), sequence_parallel)
    head, wte = getattr(model, "lm_head", None), getattr(model, "wte", None)
    tied = head is not None and wte is not None and head.weight is wte.weight
    parallelize_module(model, tp_mesh, tp_plan(model, sequence_parallel=sequence_parallel))
    if tied:  # both styles place the weight Shard(0) over the vocabulary: keep one parameter
        model.lm_head.weight = model.wte.weight
    if getattr(model, "wpe", None) is not None:
        # every parameter a DTensor (wpe replicated), so clip_grad_norm_ and optimizers see one kind of tensor
        distribute_module(
            model.wpe,
            tp_mesh,
            input_fn=lambda mod, inputs, mesh: tuple(
                DTensor.from_local(t, mesh, [Replicate()]) for t in inputs
            ),
            output_fn=lambda mod, outputs, mesh: outputs.to_local(),
        )
    return model


def check_tp_sizes(cfg: Any, size: int, sequence_parallel: bool = True) -> None:
    """Raise unless a ``GPTConfig`` splits evenly over ``size`` tensor-parallel ranks.

    Each rank must get whole key/value groups (``n_kv_head``, see the module docstring), whole query heads, an
    equal share of the vocabulary and of the feed-forward width, and (with sequence parallelism) of the sequence.

    Raises:
        ValueError: naming the value that does not divide and the sizes that would.

    Example:
        >>> from kit.nn import GPTConfig
        >>> check_tp_sizes(GPTConfig.from_name("llama-debug"), 2)
        >>> check_tp_sizes(GPTConfig.from_name("llama-debug"), 4)
        Traceback (most recent call last):
        ...
        ValueError: n_kv_head=2 does not divide by tensor_parallel_size=4: each rank needs whole key/value heads (and their query groups); pick a tensor-parallel size in [1, 2]
    """
    kv = getattr(cfg, "kv_heads", cfg.n_head)
    if kv != cfg.n_head and kv % size:  # grouped-query; multi-head configs get the n_head message below
        raise ValueError(
            f"n_kv_head={kv} does not divide by tensor_parallel_size={size}: each rank needs whole key/value heads "
            f"(and their query groups); pick a tensor-parallel size in {[t for t in range(1, kv + 1) if kv % t == 0]}"
        )
    hidden = getattr(cfg, "ffn_hidden", None) or cfg.mlp_ratio * cfg.n_embd
    for what, value in (
        ("n_head", cfg.n_head),
        ("vocab_size", cfg.vocab_size),
        ("mlp hidden", hidden),
    ):
        if value % size:
            raise ValueError(
                f"{what}={value} does not divide by tensor_parallel_size={size}; pick a tensor-parallel "
                "size that divides the head count and the (padded) vocabulary, e.g. vocab 50304 = 2^7 * 393"
            )
    if sequence_parallel and cfg.block_size % size:
        raise ValueError(f"block_size={cfg.block_size} does not divide by tensor_parallel_size={size}")


def apply_ac(model: nn.Module, mode: bool | str = "full", *, every: int = 1) -> nn.Module:
    """Activation checkpointing of the blocks (``kit.nn.transforms.checkpoint_blocks``).

    Args:
        model: anything with a ``blocks`` container of transformer blocks.
        mode: True/``"full"`` (the whole block), ``"attention"`` or ``"ffn"`` (that sublayer only); False/
            ``"none"`` leaves the model as it is.
        every: checkpoint every k-th block only.

    Returns:
        ``model``, wrapped in place.

    Example:
        >>> from kit.nn import GPT, GPTConfig
        >>> model = apply_ac(GPT(GPTConfig.from_name("debug")), "full")
        >>> type(model.blocks[0]).__name__
        'CheckpointWrapper'
    """
    mode = {True: "full", False: "none"}.get(mode, mode)
    if mode != "none":
        from kit.nn.transforms import checkpoint_blocks

        checkpoint_blocks(model, every=every, part=mode)
    return model


def apply_compile(model: nn.Module) -> nn.Module:
    """``torch.compile`` each block on its own (torchtitan's way: FSDP2's hooks stay outside the graphs).

    Example:
        >>> model = apply_compile(GPT(config))  # doctest: +SKIP
    """
    for name, block in list(model.blocks.named_children()):
        model.blocks.register_module(name, torch.compile(block))
    return model


def apply_fsdp(
    model: nn.Module,
    dp_mesh: Any,
    *,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """FSDP2 (``fully_shard``) over ``dp_mesh``: each block a unit, then the root.

    Args:
        model: the model, after any tensor parallelism, checkpointing and compile (FSDP2 must see the final
            module tree).
        dp_mesh: the data-parallel mesh.
        param_dtype: ``MixedPrecisionPolicy`` parameter dtype (None: keep the parameters').
        reduce_dtype: gradient reduce dtype (None: the parameter dtype).
        reshard_after_forward: free the gathered blocks after forward and gather again in backward (ZeRO-3);
            False keeps them until backward (one all-gather per step; what pipeline stages use).

    Returns:
        ``model``, sharded in place.

    Example:
        >>> model = apply_fsdp(model, mesh["data_parallel"], param_dtype=torch.bfloat16)  # doctest: +SKIP
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for block in model.blocks.children():
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    return model


def parallelize(
    model: nn.Module,
    device_mesh: Any,
    *,
    tp: bool = True,
    fsdp: bool = True,
    activation_checkpointing: bool | str = False,
    checkpoint_every: int = 1,
    compile: bool = False,
    sequence_parallel: bool = True,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Apply tensor parallelism, activation checkpointing, compile and FSDP2 to a kit GPT, in that order.

    :func:`apply_tp`, :func:`apply_ac`, :func:`apply_compile` and :func:`apply_fsdp`, each skipped when not asked
    for or when its mesh dimension is absent; call them yourself for another order or model.

    Args:
        model: a ``kit.nn.GPT`` (on CPU, CUDA or the meta device), or one pipeline stage of it
            (``kit.parallel.pipeline.GPTStage``: the 3D case, see ``kit.parallel.pipeline.parallelize_pipeline``).
        device_mesh: a ``DeviceMesh`` with dimensions named ``"data_parallel"`` and/or ``"tensor_parallel"``
            (Lightning's ``ModelParallelStrategy`` builds it; a 1-D mesh without names is taken as data parallel);
            other named dimensions (``"pipeline_parallel"``) are ignored here.
        tp: shard layers over ``tensor_parallel`` (skipped when that dimension has size 1).
        fsdp: ``fully_shard`` every block and the root over ``data_parallel`` (the whole mesh when unnamed).
        activation_checkpointing: recompute each block in backward (``kit.nn.transforms``): True/``"full"``,
            ``"attention"`` or ``"ffn"`` (that sublayer only), False/``"none"``.
        checkpoint_every: checkpoint every k-th block only.
        compile: ``torch.compile`` each block (per-block, as torchtitan, so FSDP2's hooks stay outside).
        sequence_parallel: see :func:`tp_plan`.
        param_dtype: FSDP2 ``MixedPrecisionPolicy`` parameter dtype (None: keep the parameters' dtype).
        reduce_dtype: FSDP2 gradient reduce dtype (None: the parameter dtype).
        reshard_after_forward: see :func:`apply_fsdp`; ``parallelize_pipeline`` passes False, as torchtitan does
            under pipeline parallelism, where every micro-batch would otherwise re-gather the stage.

    Returns:
        ``model``, parallelized in place.

    Raises:
        ValueError: if the mesh has neither dimension to use, or the head count / width / vocabulary does not
            divide by the tensor-parallel size.

    Example:
        >>> from torch.distributed.device_mesh import init_device_mesh  # doctest: +SKIP
        >>> mesh = init_device_mesh("cuda", (2, 4), mesh_dim_names=("data_parallel", "tensor_parallel"))  # doctest: +SKIP
        >>> model = parallelize(GPT(config), mesh, activation_checkpointing=True)  # doctest: +SKIP
    """
    tp_mesh, dp_mesh = _meshes(device_mesh, tp=tp, fsdp=fsdp)
    if tp_mesh is not None:
        apply_tp(model, tp_mesh, sequence_parallel=sequence_parallel)
    apply_ac(model, activation_checkpointing, every=checkpoint_every)
    if compile:
        apply_compile(model)
    if dp_mesh is not None:
        apply_fsdp(
            model,
            dp_mesh,
            param_dtype=param_dtype,
            reduce_dtype=reduce_dtype,
            reshard_after_forward=reshard_after_forward,
        )
    return model


def _meshes(device_mesh: Any, *, tp: bool, fsdp: bool) -> tuple[Any | None, Any | None]:
    """``(tp_mesh, dp_mesh)`` that :func:`parallelize` uses; None for a step to skip."""
    names = getattr(device_mesh, "mesh_dim_names", None) or ()
    tp_mesh = mesh_dim(device_mesh, TP_DIM)
    dp_mesh = mesh_dim(device_mesh, DP_DIM) if names else device_mesh
    if tp_mesh is None and not names and not fsdp:
        raise ValueError("device_mesh has no 'tensor_parallel' dimension and fsdp=False: nothing to do")
    use_tp = tp and tp_mesh is not None and tp_mesh.size() > 1
    return (tp_mesh if use_tp else None), (dp_mesh if fsdp else None)
