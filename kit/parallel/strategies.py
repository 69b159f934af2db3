"""Named strategy presets, registered in Lightning's ``StrategyRegistry`` on ``import kit.parallel.strategies``.

After the import, ``Trainer(strategy="ddp-topk")`` or ``--trainer.strategy=fsdp-zero3`` works beside
Lightning's own names:

| name | what it is | pick it when |
| --- | --- | --- |
| ``ddp-powersgd`` | DDP + PowerSGD rank 4 (dense for the first 10 steps) | model fits one GPU, inter-node bandwidth is the bottleneck |
| ``ddp-topk`` | DDP + top-1% per chunk, two-phase all-reduce, error feedback | very slow links, SGD-type optimizers |
| ``ddp-1bit`` | DDP + 1-bit sign + scale, two-phase all-reduce, error feedback | as top-k; ~97% cut at any W |
| ``ddp-1bit-adam`` | DDP + 1-bit Adam (dense warm-up, frozen variance, 1-bit momentum) | Adam/AdamW training on slow links |
| ``ddp-fp16`` | DDP + fp16 all-reduce | a safe 2x cut on any DDP job |
| ``fsdp-zero3`` | FSDP FULL_SHARD, one unit per transformer block, bf16 params, block activation checkpointing, sharded checkpoints | model + optimizer state do not fit one GPU |
| ``fsdp2-tp`` | Lightning's ``ModelParallelStrategy``: FSDP2 over ``data_parallel_size`` x Megatron tensor parallel over ``tensor_parallel_size`` (default: nodes x GPUs per node); ``CausalLM`` applies ``kit.parallel.tensor.parallelize`` | a layer's matmuls are worth splitting inside a node (large width), or ZeRO-3's per-layer gathers dominate |
| ``pipeline`` | blocks split into stages over the processes (torch.distributed.pipelining), with ``kit.models.pipeline_lm.PipelineCausalLM``; ``tensor_parallel_size`` and the leftover data-parallel replicas (FSDP2) make it 3D | the model does not fit a node even tensor-parallel |
| ``deepspeed-zero3`` / ``deepspeed-zero3-offload`` | DeepSpeed ZeRO-3 (+ CPU offload of params and optimizer) | FSDP is not enough, or GPU memory is tiny and CPU RAM is large |

Example:
    >>> import kit.parallel.strategies  # registers the names  # doctest: +SKIP
    >>> trainer = pl.Trainer(strategy="ddp-powersgd", devices=8)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    StrategyRegistry,
)
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kit._compat import (
    checkpoint_metadata_file,
    ddp_comm_hook,
    set_ddp_kwarg_default,
    set_device_mesh,
    setup_distributed,
    tensor_parallel_size,
)
from kit.parallel.comm_hooks import (
    DEFAULT_COMM,
    UNSET,
    CommHookConfig,
    CommStats,
    OneBitAdamHookState,
    Unset,
    comm_config,
    make_comm_hook,
    onebit_adam_hook,
)
from kit.parallel.onebit_adam import OneBitAdam, OneBitAdamW

__all__ = [
    "PRESETS",
    "CompressedDDPStrategy",
    "FSDPZero3Strategy",
    "ModelBlocks",
    "OneBitAdamStrategy",
    "PipelineStrategy",
    "block_classes",
    "register_presets",
]


class CompressedDDPStrategy(DDPStrategy):
    """DDP with a gradient-compression comm hook from :mod:`kit.parallel.comm_hooks`, with byte accounting.

    Unlike Lightning's ``DDPStrategy(ddp_comm_hook=...)``, which registers hooks only on CUDA, this registers
    the hook on any device (gloo on CPU included), builds a fresh hook state per Trainer, and exposes the
    byte counters as ``comm_stats`` (logged by :class:`kit.callbacks.compression.GradientCompression`).

    Args:
        comm: the hook and its settings (:class:`kit.parallel.comm_hooks.CommHookConfig`; default PowerSGD
            rank 4). YAML: ``comm: {hook: topk, topk_ratio: 0.01}``.
        hook: deprecated, use ``comm`` (as are the six below; each is the ``CommHookConfig`` field of that name).
        topk_ratio: deprecated.
        powersgd_rank: deprecated.
        powersgd_start_iter: deprecated.
        scheme: deprecated.
        per_tensor_scale: deprecated.
        block: deprecated.
        **kwargs: anything ``DDPStrategy`` takes (``process_group_backend``, ``find_unused_parameters``...).

    Raises:
        ValueError: for an unknown hook or invalid setting.
        TypeError: for ``comm`` and flat settings together.

    Example:
        >>> strategy = CompressedDDPStrategy(CommHookConfig(hook="topk", topk_ratio=0.01))
        >>> strategy.comm_stats.ratio, strategy.comm_state.ratio
        (1.0, 0.01)
    """

    def __init__(
        self,
        comm: CommHookConfig = DEFAULT_COMM,
        hook: Literal["allreduce", "fp16", "bf16", "powersgd", "topk", "1bit"] | None = None,
        topk_ratio: float | None = None,
        powersgd_rank: int | None = None,
        powersgd_start_iter: int | None = None,
        scheme: Literal["2phase", "allgather"] | None = None,
        per_tensor_scale: bool | None = None,
        block: int | Unset | None = UNSET,
        **kwargs: Any,
    ) -> None:
        self.comm = comm_config(
            comm,
            type(self).__name__,
            hook=hook,
            topk_ratio=topk_ratio,
            powersgd_rank=powersgd_rank,
            powersgd_start_iter=powersgd_start_iter,
            scheme=scheme,
            per_tensor_scale=per_tensor_scale,
            block=block,
        )
        state, fn = make_comm_hook(self.comm.hook, self.comm)
        super().__init__(ddp_comm_state=state, ddp_comm_hook=fn, **kwargs)
        self.hook = self.comm.hook
        self.comm_state = state  # read (and checkpointed) by kit.callbacks.compression.GradientCompression
        self.comm_stats: CommStats = state.stats

    def configure_ddp(self) -> None:
        if self.hook == "powersgd" and self.root_device.type != "cuda":
            # torch's PowerSGD chains collectives in future callbacks; over gloo two buckets in flight can
            # interleave them differently on each rank (a collective mismatch). One bucket avoids that.
            set_ddp_kwarg_default(self, "bucket_cap_mb", 1024)
        super().configure_ddp()

    def _register_ddp_hooks(self) -> None:
        # overrides a private hook (listed in kit._compat): Lightning registers comm hooks on CUDA only
        if self.root_device.type == "cuda":
            return super()._register_ddp_hooks()
        state, hook = ddp_comm_hook(self)
        if isinstance(self.model, DistributedDataParallel) and hook is not None:
            self.model.register_comm_hook(state, hook)
        return None


_ADAM_KEYS = ("params", "lr", "betas", "eps", "weight_decay", "initial_lr")


class OneBitAdamStrategy(CompressedDDPStrategy):
    """DDP for 1-bit Adam: dense gradient all-reduce during the warm-up, then only compressed momenta.

    The model's ``torch.optim.Adam``/``AdamW`` is replaced by :class:`kit.parallel.onebit_adam.OneBitAdam`/
    ``OneBitAdamW`` with the same parameter groups and hyper-parameters (its LR schedulers follow it), so any
    recipe that trains with AdamW runs 1-bit Adam with ``--trainer.strategy=ddp-1bit-adam``. A model that
    already returns a ``OneBitAdam`` keeps it (and its ``freeze_step``). The DDP hook
    (:func:`kit.parallel.comm_hooks.onebit_adam_hook`) all-reduces gradients until the optimizer's
    ``freeze_step``, then sends nothing: the optimizer averages the momentum with the two-phase 1-bit
    all-reduce. ``comm_stats`` counts both, so ``GradientCompression`` logs the whole-run ratio.

    Args:
        freeze_step: optimizer steps of plain Adam (dense all-reduce) before compression starts; the paper
            uses 15-25% of the run.
        compress: what the 1-bit all-reduce carries (:class:`kit.parallel.onebit_adam.OneBitAdam`):
            ``"update"`` (``m / sqrt(v_frozen)``, default), ``"momentum"`` (the paper's) or ``"none"``.
        scale: the 1-bit scale, ``"mean"`` (default) or ``"l2"`` (DeepSpeed's); ``compress="momentum",
            scale="l2"`` reproduces DeepSpeed's former ``OnebitAdam``.
        **kwargs: anything ``DDPStrategy`` takes.

    Raises:
        ValueError: if ``freeze_step < 1``; at setup, if the model's optimizer is not Adam/AdamW/OneBitAdam,
            uses AMSGrad, or there is more than one optimizer.

    Example:
        >>> OneBitAdamStrategy(freeze_step=60).freeze_step
        60
    """

    def __init__(
        self,
        freeze_step: int = 1000,
        compress: Literal["update", "momentum", "none"] = "update",
        scale: Literal["mean", "l2"] = "mean",
        **kwargs: Any,
    ) -> None:
        if freeze_step < 1:
            raise ValueError(f"freeze_step={freeze_step} must be >= 1; the variance needs a dense warm-up")
        if compress not in ("update", "momentum", "none") or scale not in ("mean", "l2"):
            raise ValueError(
                f"compress={compress!r} / scale={scale!r}: choose compress from 'update', 'momentum', 'none' "
                "and scale from 'mean', 'l2'"
            )
        self.compress, self.scale = compress, scale
        state = OneBitAdamHookState()
        DDPStrategy.__init__(self, ddp_comm_state=state, ddp_comm_hook=onebit_adam_hook, **kwargs)
        self.hook = "1bit-adam"
        self.freeze_step = freeze_step
        self.comm_state = state
        self.comm_stats: CommStats = state.stats

    def setup_optimizers(self, trainer: Any) -> None:
        super().setup_optimizers(trainer)
        if len(self.optimizers) != 1:
            raise ValueError(
                f"ddp-1bit-adam drives one optimizer, the model configured {len(self.optimizers)}; return one "
                "Adam/AdamW (or OneBitAdam) from configure_optimizers"
            )
        old = self.optimizers[0]
        new = old if isinstance(old, OneBitAdam) else self._convert(old)
        for config in self.lr_scheduler_configs:
            if getattr(config.scheduler, "optimizer", None) is old:
                config.scheduler.optimizer = new
        new.stats = self.comm_stats
        self.comm_state.optimizer = new
        self.optimizers = [new]

    def _convert(self, old: torch.optim.Optimizer) -> OneBitAdam:
        if not isinstance(old, torch.optim.Adam | torch.optim.AdamW):
            raise ValueError(
                f"ddp-1bit-adam needs Adam or AdamW, the model's optimizer is {type(old).__name__}; return "
                "torch.optim.AdamW or kit.parallel.onebit_adam.OneBitAdamW from configure_optimizers"
            )
        if any(g.get("amsgrad") for g in old.param_groups):
            raise ValueError("ddp-1bit-adam does not support amsgrad=True (1-bit Adam freezes the variance)")
        # torch>=2.x makes Adam(decoupled_weight_decay=True) an AdamW; AdamW is a subclass of Adam there
        decoupled = isinstance(old, torch.optim.AdamW) or old.defaults.get("decoupled_weight_decay", False)
        cls = OneBitAdamW if decoupled else OneBitAdam
        groups = [{k: v for k, v in g.items() if k in _ADAM_KEYS} for g in old.param_groups]
        d = old.defaults
        return cls(
            groups,
            lr=d["lr"],
            betas=d["betas"],
            eps=d["eps"],
            weight_decay=d["weight_decay"],
            freeze_step=self.freeze_step,
            compress=self.compress,
            scale=self.scale,
        )


def block_classes(blocks: Iterable[str | type[nn.Module]] | None = None) -> set[type[nn.Module]]:
    """The module classes FSDP wraps (and checkpoints), given as classes or dotted names.

    Args:
        blocks: classes, or dotted paths for YAML (``"transformers.models.llama.modeling_llama.LlamaDecoderLayer"``);
            None means the kit's own ``kit.nn.Block`` (imported here, not at module import).

    Returns:
        The set of classes, one per entry.

    Raises:
        ValueError: if an entry does not import, is not an ``nn.Module`` class, or ``blocks`` is empty. A wrap
            policy that silently matches nothing would train an unsharded model.

    Example:
        >>> sorted(c.__name__ for c in block_classes([nn.Linear, "torch.nn.LayerNorm"]))
        ['LayerNorm', 'Linear']
    """
    if blocks is None:
        from kit.nn import Block

        return {Block}
    found: set[type[nn.Module]] = set()
    for entry in blocks:
        cls = entry
        if isinstance(entry, str):
            module_name, _, cls_name = entry.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module_name), cls_name)
            except (ImportError, AttributeError, ValueError) as err:
                raise ValueError(
                    f"block {entry!r} does not import ({err}); pass the block class itself, or its full dotted "
                    "path, e.g. blocks=['my_project.model.Block']"
                ) from None
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(
                f"block {entry!r} is not an nn.Module class; pass your model's transformer block class"
            )
        found.add(cls)
    if not found:
        raise ValueError(
            "blocks is empty; pass your model's transformer block classes, or None for the kit's Block"
        )
    return found


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class ModelBlocks:
    """An FSDP wrap (and checkpoint) policy whose block classes are read from the model it is first called on:
    the classes its ``_no_split_modules`` name (:func:`kit.nn.hf_layers.decoder_layer_classes`).

    Example:
        >>> policy = ModelBlocks()
        >>> policy(module=model, recurse=True, nonwrapped_numel=0)  # doctest: +SKIP
        True
    """

    def __init__(self) -> None:
        self.classes: tuple[type[nn.Module], ...] | None = None

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int, **kwargs: Any) -> bool:
        if self.classes is None:  # FSDP calls the policy on the root module first
            from kit.nn.hf_layers import decoder_layer_classes

            self.classes = tuple(decoder_layer_classes(module))
        return True if recurse else isinstance(module, self.classes)


class FSDPZero3Strategy(FSDPStrategy):
    """FSDP FULL_SHARD (ZeRO-3) preset for transformer models.

    Every transformer block becomes one FSDP unit and is activation-checkpointed; parameters are gathered
    in ``param_dtype`` while gradients are reduced in fp32; checkpoints are saved sharded (one file per
    rank, no full gather on rank 0).

    Args:
        blocks: the block classes to wrap and checkpoint, or their dotted paths (for YAML); None (default) is
            the kit's ``kit.nn.Block``. Pass your own (``[LlamaDecoderLayer]`` or
            ``["transformers.models.llama.modeling_llama.LlamaDecoderLayer"]``) for other models, or ``"auto"``:
            the decoder-layer classes the model itself declares (``_no_split_modules`` of a ``transformers``
            model, :func:`kit.nn.hf_layers.decoder_layer_classes`), read when FSDP wraps it.
        param_dtype: ``"bf16"``, ``"fp16"``, ``"fp32"`` or ``"trainer"`` (follow ``Trainer(precision=...)``).
        activation_checkpointing: recompute each block in backward.
        state_dict_type: ``"sharded"`` (default) or ``"full"``.
        cpu_offload: offload parameters to CPU.
        **kwargs: anything ``FSDPStrategy`` takes.

    Raises:
        ValueError: if ``param_dtype`` is unknown or a block does not resolve to a module class.
    """

    def __init__(
        self,
        blocks: list[str | type[nn.Module]] | Literal["auto"] | None = None,
        param_dtype: Literal["bf16", "fp16", "fp32", "trainer"] = "bf16",
        activation_checkpointing: bool = True,
        state_dict_type: Literal["full", "sharded"] = "sharded",
        cpu_offload: bool = False,
        **kwargs: Any,
    ) -> None:
        if param_dtype not in (*_DTYPES, "trainer"):
            raise ValueError(
                f"param_dtype={param_dtype!r} is not supported; choose bf16, fp16, fp32 or trainer"
            )
        classes = ModelBlocks() if blocks == "auto" else block_classes(blocks)
        mixed = None
        if param_dtype != "trainer":
            from torch.distributed.fsdp import MixedPrecision

            dtype = _DTYPES[param_dtype]
            mixed = MixedPrecision(param_dtype=dtype, reduce_dtype=torch.float32, buffer_dtype=dtype)
        super().__init__(
            sharding_strategy="FULL_SHARD",
            auto_wrap_policy=classes,
            activation_checkpointing_policy=classes if activation_checkpointing else None,
            mixed_precision=mixed,
            state_dict_type=state_dict_type,
            cpu_offload=cpu_offload,
            **kwargs,
        )
        self.block_classes = classes


class PipelineStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` whose device mesh is ``(pipeline_parallel, data_parallel, tensor_parallel)``, for
    :class:`kit.models.pipeline_lm.PipelineCausalLM` (which builds its stage and schedule from the mesh: DP x PP x TP).

    Rank order puts tensor parallelism innermost (neighbouring ranks: one node), then data, then pipeline
    outermost (stages across nodes, where only activations cross), as torchtitan's mesh and ``kit plan``'s layout.

    Args:
        pipeline_parallel_size: stages p (``"auto"``: every process not used by tensor parallelism, so no data
            parallelism).
        tensor_parallel_size: tensor-parallel ranks inside each stage (1: none).
        save_distributed_checkpoint: each rank writes its stage's shard (default).
        **kwargs: ``process_group_backend``, ``timeout``.

    Raises:
        ValueError: if the world size does not divide by ``pipeline_parallel_size * tensor_parallel_size``; the
            rest of the processes are data-parallel replicas.
    """

    def __init__(
        self,
        pipeline_parallel_size: int | Literal["auto"] = "auto",
        tensor_parallel_size: int = 1,
        save_distributed_checkpoint: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )
        self.pipeline_parallel_size = pipeline_parallel_size

    def setup_environment(self) -> None:
        from lightning.pytorch.strategies.parallel import ParallelStrategy
        from torch.distributed.device_mesh import init_device_mesh

        ParallelStrategy.setup_environment(self)
        setup_distributed(self)
        tp = int(tensor_parallel_size(self))
        pp = (
            self.world_size // tp
            if self.pipeline_parallel_size == "auto"
            else int(self.pipeline_parallel_size)
        )
        if tp < 1 or pp < 1 or self.world_size % (pp * tp):
            raise ValueError(
                f"pipeline_parallel_size={pp} x tensor_parallel_size={tp} does not divide the world size "
                f"{self.world_size}; pick sizes whose product divides it (the rest is data parallel)"
            )
        dp = self.world_size // (pp * tp)
        mesh = init_device_mesh(
            self.root_device.type,
            (pp, dp, tp),
            mesh_dim_names=("pipeline_parallel", "data_parallel", "tensor_parallel"),
        )
        set_device_mesh(self, mesh, data_parallel_size=dp)

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        """The optimizer state flattened to ``{"state.<fqn>.exp_avg": ..., "param_groups.<fqn>.lr": ...}``: the
        stages own distinct parameter names, and the nested form lost ``param_groups`` entries on load."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(flatten_optimizer_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self.model, optimizer, options=options)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Load this stage's shard of a distributed checkpoint (Lightning's loader wants DTensor modules; a
        stage's parameters are plain tensors, each stage owning distinct keys)."""
        from pathlib import Path

        from torch.distributed.checkpoint import load as dcp_load
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(self.broadcast(checkpoint_path))
        if not path.is_dir():
            raise ValueError(
                f"{path} is not a distributed checkpoint folder; the pipeline preset saves and resumes folders "
                "(save_distributed_checkpoint=True)"
            )
        state = {"state_dict": get_model_state_dict(self.model)}
        dcp_load(state, checkpoint_id=path)
        self.model.load_state_dict(state["state_dict"], strict=self.lightning_module.strict_loading)
        for idx, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{idx}"
            options = StateDictOptions(flatten_optimizer_state_dict=True)
            optim_state = {key: get_optimizer_state_dict(self.model, optimizer, options=options)}
            dcp_load(optim_state, checkpoint_id=path)
            set_optimizer_state_dict(
                self.model, optimizer, optim_state_dict=optim_state[key], options=options
            )
        return torch.load(checkpoint_metadata_file(path), weights_only=True)  # a checkpoint is data, never code


PRESETS: dict[str, tuple[type, str, dict[str, Any]]] = {
    "ddp-powersgd": (
        CompressedDDPStrategy,
        "DDP + PowerSGD rank 4 (dense first 10 steps)",
        {"comm": CommHookConfig(hook="powersgd")},
    ),
    "ddp-topk": (
        CompressedDDPStrategy,
        "DDP + top-1% per chunk, two-phase all-reduce, worker+server error feedback",
        {"comm": CommHookConfig(hook="topk")},
    ),
    "ddp-1bit": (
        CompressedDDPStrategy,
        "DDP + 1-bit sign+scale, two-phase all-reduce, worker+server error feedback",
        {"comm": CommHookConfig(hook="1bit")},
    ),
    "ddp-fp16": (
        CompressedDDPStrategy,
        "DDP + fp16 gradient all-reduce",
        {"comm": CommHookConfig(hook="fp16")},
    ),
    "ddp-1bit-adam": (
        OneBitAdamStrategy,
        "DDP + 1-bit Adam: dense warm-up, then frozen variance and 1-bit two-phase momentum averaging",
        {},
    ),
    "fsdp-zero3": (
        FSDPZero3Strategy,
        "FSDP FULL_SHARD, block wrapping, bf16, activation ckpt, sharded ckpt",
        {},
    ),
    "fsdp2-tp": (
        ModelParallelStrategy,
        "FSDP2 over data_parallel x tensor parallel over tensor_parallel (kit.parallel.tensor.parallelize)",
        # distributed checkpoints (ModelParallelStrategy's default): each rank writes its own shards
        {},
    ),
    "pipeline": (
        PipelineStrategy,
        "pipeline stages (torch.distributed.pipelining) x data (FSDP2) x tensor parallel, for PipelineCausalLM",
        {},
    ),
    "deepspeed-zero3": (DeepSpeedStrategy, "DeepSpeed ZeRO stage 3", {"stage": 3}),
    "deepspeed-zero3-offload": (
        DeepSpeedStrategy,
        "DeepSpeed ZeRO stage 3 with CPU offload of parameters and optimizer state",
        {"stage": 3, "offload_optimizer": True, "offload_parameters": True},
    ),
}


def register_presets(registry: Any = StrategyRegistry) -> list[str]:
    """Register (or re-register) every preset in ``registry``; idempotent.

    Args:
        registry: Lightning's ``StrategyRegistry`` (or a test double).

    Returns:
        The registered names.
    """
    for name, (cls, description, params) in PRESETS.items():
        registry.register(name, cls, description=description, override=True, **params)
    return list(PRESETS)


register_presets()
