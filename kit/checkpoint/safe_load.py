"""Loading a checkpoint as data: ``torch.load(weights_only=True)`` and one-line errors.

A checkpoint is a pickle. Loading one with ``weights_only=False`` runs whatever its author put in it, so the
kit never does: tensors, numbers, strings and containers load; a file that needs any other Python object is
refused with one line that names it and the reason.

Example:
    >>> import tempfile, pathlib, torch
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "w.ckpt"
    >>> torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    >>> load_checkpoint(path)["state_dict"]["w"].tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["CheckpointLoadError", "UnsafeCheckpointError", "load_checkpoint"]


class CheckpointLoadError(ValueError):
    """A checkpoint file could not be read (truncated, corrupt, not a checkpoint)."""


class UnsafeCheckpointError(CheckpointLoadError):
    """A checkpoint needs pickled Python objects beyond tensors and plain data, so loading it could run code."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _pickle_reason(err: BaseException) -> str:
    """The line of torch's weights-only error that names the object it refused."""
    for line in str(err).splitlines():
        if "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:", 1)[1].strip()
            return reason.split(" by default", 1)[0][:200]  # "Unsupported global: GLOBAL x was not an allowed global"
    return _first_line(err)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, with errors that name the file and say what to do.

    Args:
        path: the checkpoint file.
        map_location: ``torch.load``'s.

    Returns:
        What the file holds (a dict for a Lightning checkpoint).

    Raises:
        UnsafeCheckpointError: the file needs pickled objects (a class, a function, a ``__reduce__`` payload);
            nothing of it ran.
        CheckpointLoadError: the file is truncated, corrupt or not a torch checkpoint.
        FileNotFoundError: no such file.

    Example:
        >>> load_checkpoint("missing.ckpt")  # doctest: +SKIP
        FileNotFoundError: ...
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it needs pickled Python objects, not only tensors and plain data "
            f"({_pickle_reason(err)}); a checkpoint is data, so the kit loads it with weights_only=True. "
            "Re-save its tensors from code you trust (torch.save of a state_dict)"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointLoadError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {_first_line(err)} (truncated or corrupt?); "
            "pick another checkpoint or rewrite this one"
        ) from err
