"""The lookups behind every layer family: a registered name or a class, a layer built from a ``GPTConfig``,
and a variant's sub-config given as a dataclass or a plain dict (YAML, a checkpoint's hyper-parameters).

The registry contract: a class registered in ``ATTENTION``, ``FFN`` or ``DEPTH`` takes explicit constructor
arguments and has a ``from_config(config)`` classmethod that reads them from a ``GPTConfig``;
:func:`build_layer` calls it. A class without its own ``from_config`` is called as ``cls(config)``: one
written against the whole config, or a subclass of a kit layer that redefines ``__init__`` (the ``from_config``
it inherits would not know the new signature).
"""

from __future__ import annotations

import difflib
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from torch import nn

if TYPE_CHECKING:
    from kit.nn.config import GPTConfig

__all__ = ["build_layer", "coerce_config", "resolve"]

T = TypeVar("T")


def resolve(kind: str | type[nn.Module], registry: dict[str, type[nn.Module]], field: str) -> type[nn.Module]:
    """The class registered under ``kind``, or ``kind`` itself when it is already a module class.

    Args:
        kind: a registered name (``"dense"``) or an ``nn.Module`` subclass.
        registry: name -> class table of one layer family.
        field: the ``GPTConfig`` field that chooses this family, for the error message.

    Returns:
        The module class.

    Raises:
        ValueError: if ``kind`` is neither a registered name nor an ``nn.Module`` subclass.
    """
    if isinstance(kind, type) and issubclass(kind, nn.Module):
        return kind
    if isinstance(kind, str) and kind in registry:
        return registry[kind]
    raise ValueError(
        f"{field}={kind!r} is not one of {sorted(registry)}; set GPTConfig.{field} to one of them"
    )


def build_layer(cls: type[nn.Module], config: GPTConfig) -> nn.Module:
    """An instance of ``cls`` for ``config``: ``cls.from_config(config)``, or ``cls(config)`` without one.

    ``from_config`` counts only when it is defined no higher in the class hierarchy than ``__init__``.

    Args:
        cls: a layer class, e.g. from :func:`~kit.nn.layers.get_ffn`.
        config: the model's ``GPTConfig``.

    Returns:
        The layer.

    Example:
        >>> from kit.nn import GPTConfig
        >>> from kit.nn.layers import get_ffn
        >>> build_layer(get_ffn("mlp"), GPTConfig.from_name("debug")).fc.out_features
        128
    """
    return cls.from_config(config) if _has_own_from_config(cls) else cls(config)


def _has_own_from_config(cls: type) -> bool:
    """True when, walking from ``cls`` up, a ``from_config`` comes before (or beside) an ``__init__``."""
    for klass in cls.__mro__:
        if "from_config" in vars(klass):
            return True
        if "__init__" in vars(klass):
            return False
    return False


def coerce_config(value: object, cls: type[T], key: str) -> T:
    """``value`` as the sub-config dataclass ``cls``: an instance as is, a dict (YAML, a checkpoint) rebuilt.

    Args:
        value: a ``cls`` instance or a mapping of its field names.
        cls: the sub-config dataclass (``MoEConfig``...).
        key: its ``GPTConfig`` field name, for error messages.

    Returns:
        A ``cls`` instance (validated by its ``__post_init__``).

    Raises:
        ValueError: for an unknown key (naming the close matches) or a value of another type.

    Example:
        >>> from kit.nn.layers.moe import MoEConfig
        >>> coerce_config({"experts": 4}, MoEConfig, "moe").experts
        4
    """
    if isinstance(value, cls):
        return value
    if is_dataclass(value) and not isinstance(value, type):  # e.g. another dataclass with the same fields
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    if not isinstance(value, dict):
        raise ValueError(f"{key}={value!r} must be a {cls.__name__} or a dict of its fields")
    check_keys(value, [f.name for f in fields(cls)], key)
    return cls(**value)


def check_keys(given: dict[str, Any], known: list[str], where: str) -> None:
    """Raise for the first key of ``given`` not in ``known``, naming the close matches and the valid keys."""
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f"did you mean {close}? " if close else ""
            raise ValueError(f"unknown key {name!r} in {where}; {hint}valid keys: {sorted(known)}")
