"""The decoder-layer classes of a ``transformers`` model, read from the model itself (torch only).

A ``transformers`` model lists the module classes that must stay whole on one device in ``_no_split_modules``
(``{"LlamaDecoderLayer"}``, ``{"GPTNeoXLayer"}``...): exactly the units FSDP should wrap and activation
checkpointing should recompute. :func:`decoder_layer_classes` resolves those names to the classes found in the
loaded model, so no dotted import path has to be written for an architecture the kit does not implement.

Example:
    >>> from torch import nn
    >>> class Layer(nn.Linear): ...
    >>> class Net(nn.Module):
    ...     _no_split_modules = ["Layer"]
    ...     def __init__(self): super().__init__(); self.layers = nn.ModuleList([Layer(2, 2)])
    >>> [c.__name__ for c in decoder_layer_classes(Net())]
    ['Layer']
"""

from __future__ import annotations

from torch import nn

__all__ = ["decoder_layer_classes"]


def decoder_layer_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The classes named by ``_no_split_modules`` anywhere in ``model`` that occur among its submodules.

    Args:
        model: a ``transformers`` model, or any module that holds one (a LightningModule, a ``peft`` wrapper).

    Returns:
        The set of classes (non-empty).

    Raises:
        ValueError: no submodule declares ``_no_split_modules``, or none of the named classes occurs; the
            message lists what was found and says to pass the block classes explicitly.
    """
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise ValueError(
            f"{type(model).__name__} declares no decoder-layer class that it holds (_no_split_modules: "
            f"{sorted(names) or 'none'}); pass the block classes explicitly, e.g. "
            "blocks=['my_project.model.Block']"
        )
    return classes
