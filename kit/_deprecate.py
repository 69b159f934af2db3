"""Old import paths that still work for one release, each with a ``DeprecationWarning`` naming the new one."""

from __future__ import annotations

import importlib
import warnings

__all__ = ["moved", "moved_module"]


def moved(old: str, module: str, name: str) -> object:
    """``name`` from ``module``, warning that ``old`` is deprecated (called from a module ``__getattr__``)."""
    warnings.warn(
        f"{old} moved to {module}.{name}; import it from there (the old path goes in the next release)",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(importlib.import_module(module), name)


def moved_module(old: str, new: str) -> None:
    """Warn, at import of a shim module ``old``, that its contents live in ``new``."""
    warnings.warn(
        f"{old} moved to {new}; import from there (the old path goes in the next release)",
        DeprecationWarning,
        stacklevel=3,
    )
