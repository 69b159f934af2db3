"""The one lookup behind every layer factory: a registered name or a class, or an error listing the names."""

from __future__ import annotations

from torch import nn


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
