"""Every private Lightning, torch or torchmetrics attribute the kit reads, one small function each.

A release of any of these libraries may rename or drop a private attribute without notice. Keeping each read
here, behind a function that names the public API it waits for and the versions it was tested on, means a
break shows up in one place and in ``tests/test_compat.py``, not silently in a callback. Nothing outside this
module reads a private attribute of a framework object (a test greps for it).

Strategies are recognised by what they do (:func:`strategy_traits`), never by class-name strings.

Private hooks the kit overrides (no public hook does the job; each reads framework state only through here):

- ``kit.parallel.strategies.CompressedDDPStrategy._register_ddp_hooks``: Lightning's ``DDPStrategy`` registers
  a comm hook on CUDA only; the override registers the kit's hooks on any device (gloo on CPU included),
  reading the hook through :func:`ddp_comm_hook`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__: list[str] = []


# --- trainer, loops and checkpoint internals -------------------------------------------------------------



# --- GradScaler and torchmetrics -------------------------------------------------------------------------



# --- strategies: traits, DDP and ModelParallel internals -------------------------------------------------


def ddp_comm_hook(strategy: Any) -> tuple[Any, Any]:
    """The ``(state, hook)`` a ``DDPStrategy`` was built with (``ddp_comm_state=``, ``ddp_comm_hook=``).

    Example:
        >>> from lightning.pytorch.strategies import DDPStrategy
        >>> ddp_comm_hook(DDPStrategy())
        (None, None)
    """
    # public API: none yet (DDPStrategy takes both in __init__ and uses them only in _register_ddp_hooks).
    # tested: lightning 2.6.6 (``_ddp_comm_state``, ``_ddp_comm_hook``).
    return strategy._ddp_comm_state, strategy._ddp_comm_hook


def set_ddp_kwarg_default(strategy: Any, name: str, value: Any) -> None:
    """Pass ``name=value`` to ``DistributedDataParallel`` unless the strategy was built with ``name`` already.

    For defaults that depend on the device, known only at setup (after ``__init__``).

    Example:
        >>> from lightning.pytorch.strategies import DDPStrategy
        >>> set_ddp_kwarg_default(DDPStrategy(bucket_cap_mb=5), "bucket_cap_mb", 1024)  # keeps 5
    """
    # public API: ``DDPStrategy(**kwargs)`` at construction; none once the strategy exists.
    # tested: lightning 2.6.6 (``_ddp_kwargs``).
    strategy._ddp_kwargs.setdefault(name, value)


def setup_distributed(strategy: Any) -> None:
    """Initialise the process group of a ``ModelParallelStrategy`` (what its ``setup_environment`` does first).

    Example:
        >>> setup_distributed(trainer.strategy)  # doctest: +SKIP
    """
    # public API: none yet (``setup_environment`` initialises the group and builds its own 2-D mesh in one call).
    # tested: lightning 2.6.6 (``ModelParallelStrategy._setup_distributed``).
    strategy._setup_distributed()


def tensor_parallel_size(strategy: Any) -> int | str:
    """The ``tensor_parallel_size`` a ``ModelParallelStrategy`` was built with (an int, or ``"auto"``).

    Example:
        >>> from lightning.pytorch.strategies import ModelParallelStrategy
        >>> tensor_parallel_size(ModelParallelStrategy(tensor_parallel_size=2))
        2
    """
    # public API: none yet (the strategy keeps its constructor's sizes private until its mesh exists).
    # tested: lightning 2.6.6 (``_tensor_parallel_size``).
    return strategy._tensor_parallel_size


def set_device_mesh(strategy: Any, mesh: Any, data_parallel_size: int) -> None:
    """Install ``mesh`` as a ``ModelParallelStrategy``'s device mesh, where ``strategy.device_mesh`` and the
    LightningModule's ``device_mesh`` read it (for meshes of other shapes than Lightning's 2-D one).

    Example:
        >>> set_device_mesh(strategy, init_device_mesh("cuda", (2, 2, 2)), data_parallel_size=2)  # doctest: +SKIP
    """
    # public API: none yet (``setup_environment`` builds a (data, tensor) mesh and has no setter for another).
    # tested: lightning 2.6.6 (``_data_parallel_size``, ``_device_mesh``, ``LightningModule._device_mesh``).
    strategy._data_parallel_size = data_parallel_size
    strategy._device_mesh = mesh
    strategy.lightning_module._device_mesh = mesh


def checkpoint_metadata_file(folder: Path) -> Path:
    """The file of a Lightning distributed checkpoint folder that holds the non-tensor trainer state.

    Example:
        >>> checkpoint_metadata_file(Path("ckpt")).name
        'meta.pt'
    """
    # public API: none yet. tested: lightning 2.6.6 (``lightning.fabric.utilities.load._METADATA_FILENAME``).
    from lightning.fabric.utilities.load import _METADATA_FILENAME

    return Path(folder) / _METADATA_FILENAME


__all__ += [
    "checkpoint_metadata_file",
    "ddp_comm_hook",
    "set_ddp_kwarg_default",
    "set_device_mesh",
    "setup_distributed",
    "tensor_parallel_size",
]


# --- torch.distributed pipelining --------------------------------------------------------------------------


def schedule_loss_fn(schedule: Any) -> Callable[..., Any]:
    """The ``loss_fn`` a ``torch.distributed.pipelining`` schedule was built with.

    Example:
        >>> schedule_loss_fn(ScheduleGPipe(stage, n_microbatches=4, loss_fn=lm_loss)) is lm_loss  # doctest: +SKIP
        True
    """
    # public API: none yet (schedules take ``loss_fn`` in __init__ and expose no accessor).
    # tested: torch 2.13.0 (``_PipelineSchedule._loss_fn``).
    return schedule._loss_fn


__all__ += ["schedule_loss_fn"]
