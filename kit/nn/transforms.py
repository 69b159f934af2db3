"""Training transforms, applied to a built network in one place and one order (torchtitan's ``parallelize``).

Each transform is independent and optional; :func:`apply_transforms` runs the enabled ones in this order, and a
new transform takes a slot here rather than a branch inside the model:

1. parameter-efficient fine-tuning (``peft=``: LoRA, QLoRA, bottleneck adapters, prompt tuning;
   ``kit.nn.peft.apply_peft``): they freeze the backbone and change which parameters train, so they come
   first and everything after sees the final module tree.
2. activation checkpointing: each block (``kit.nn.Block`` by default) is wrapped so its activations
   are recomputed in backward instead of stored. Selective forms: only every k-th block (``every=k``), or only
   a sublayer of each chosen block (``"attention"``: ``block.attn``; ``"ffn"``: ``block.mlp``), trading less
   memory saved for less recomputation. Every layer kind is covered as it is (RMSNorm, SwiGLU, grouped-query
   attention; rotary angles are recomputed from the positions inside each attention layer, so the
   recomputation needs no state from outside the block).
3. compile: ``nn.Module.compile()`` in place, after the tree is final, so the compiled graph includes the
   checkpointing; state-dict keys stay unchanged.
4. sharding (FSDP): *slot*, done today by the Trainer's strategy (``fsdp-zero3``) around the result; it wraps
   the same block classes and must come last. Do not turn on both this step's checkpointing and the
   strategy's.

Example:
    >>> from kit.nn import GPT, GPTConfig
    >>> model = apply_transforms(GPT(GPTConfig.from_name("debug")), activation_checkpointing=True)
    >>> type(model.blocks[0]).__name__
    'CheckpointWrapper'
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)

from kit.nn.config import CHECKPOINT_MODES
from kit.nn.gpt import Block
from kit.nn.peft import PeftConfig, apply_peft

__all__ = ["CHECKPOINT_MODES", "apply_transforms", "checkpoint_blocks"]


_PARTS = {"attention": "attn", "ffn": "mlp"}


def _default_blocks() -> tuple[type[nn.Module], ...]:
    return (Block,)


def checkpoint_blocks(
    model: nn.Module,
    blocks: Iterable[type[nn.Module]] | None = None,
    *,
    every: int = 1,
    part: str = "full",
) -> nn.Module:
    """Wrap submodules of a ``blocks`` class in place so they recompute their activations in backward.

    Uses PyTorch's non-reentrant checkpoint wrapper (as torchtitan and Lightning's FSDP do): parameter
    values, gradients and ``state_dict`` keys are those of the unwrapped model.

    Args:
        model: the network.
        blocks: module classes to checkpoint; default ``(kit.nn.Block,)``.
        every: checkpoint the blocks whose index (in ``model.modules()`` order) is a multiple of ``every``.
        part: ``"full"`` wraps the whole block; ``"attention"`` / ``"ffn"`` wrap only its ``attn`` / ``mlp``.

    Returns:
        ``model``, modified in place.

    Raises:
        ValueError: if no submodule of ``model`` is an instance of ``blocks`` (the transform would do nothing),
            on ``every < 1``, an unknown ``part``, or a block without the ``part``'s attribute.

    Example:
        >>> from kit.nn import GPT, GPTConfig
        >>> model = checkpoint_blocks(GPT(GPTConfig.from_name("debug")), every=2, part="ffn")
        >>> [type(b.mlp).__name__ for b in model.blocks]
        ['CheckpointWrapper', 'MLP']
    """
    if every < 1:
        raise ValueError(f"every={every} must be >= 1 (1: every block)")
    if part not in ("full", *_PARTS):
        raise ValueError(f"part={part!r} is not one of {['full', *_PARTS]}")
    classes = tuple(blocks) if blocks is not None else _default_blocks()
    if not any(isinstance(m, classes) for m in model.modules()):
        raise ValueError(
            f"no submodule of {type(model).__name__} is one of {[c.__name__ for c in classes]}; "
            "pass the model's transformer block class as blocks=(MyBlock,)"
        )
    chosen = [m for m in model.modules() if isinstance(m, classes)][::every]
    if part != "full":
        attr = _PARTS[part]
        missing = [type(b).__name__ for b in chosen if not isinstance(getattr(b, attr, None), nn.Module)]
        if missing:
            raise ValueError(
                f"activation checkpointing part={part!r} needs a .{attr} submodule, which {missing[0]} lacks; "
                "use part='full'"
            )
        chosen = [getattr(b, attr) for b in chosen]
    targets = {id(m) for m in chosen}
    apply_activation_checkpointing(
        model,
        checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: id(m) in targets,
    )
    return model


def apply_transforms(
    model: nn.Module,
    *,
    activation_checkpointing: bool | str = False,
    compile: bool = False,
    blocks: Iterable[type[nn.Module]] | None = None,
    checkpoint_every: int = 1,
    peft: PeftConfig | None = None,
) -> nn.Module:
    """Apply the enabled training transforms to ``model`` in the module docstring's order.

    Args:
        model: a built network (``kit.nn.GPT`` or any ``nn.Module`` made of blocks).
        activation_checkpointing: step 2: False/``"none"``, True/``"full"`` (whole blocks), ``"attention"`` or
            ``"ffn"`` (that sublayer of each block).
        compile: ``torch.compile`` the network in place (step 3).
        blocks: the block classes step 2 wraps; default ``(kit.nn.Block,)``.
        checkpoint_every: step 2 on every k-th block only.
        peft: the parameter-efficient method of step 1 (``kit.nn.peft.PeftConfig``); None trains all.

    Returns:
        ``model``, transformed in place (returned so calls chain); for LoRA/QLoRA a ``peft.PeftModel`` around it.

    Raises:
        ValueError: if checkpointing is asked for and ``model`` has no ``blocks``.

    Example:
        >>> from kit.nn import GPT, GPTConfig
        >>> apply_transforms(GPT(GPTConfig.from_name("debug"))).config.n_layer
        2
    """
    if peft is not None:  # 1.
        model = apply_peft(model, peft)
    mode = {True: "full", False: "none"}.get(activation_checkpointing, activation_checkpointing)
    if mode not in CHECKPOINT_MODES:
        raise ValueError(
            f"activation_checkpointing={activation_checkpointing!r} is not one of {CHECKPOINT_MODES}"
        )
    if mode != "none":  # 2.
        checkpoint_blocks(model, blocks, every=checkpoint_every, part=mode)
    if compile:  # 3.
        model.compile()
    # 4. sharding: slot (the Trainer's FSDP strategy wraps the result)
    return model
