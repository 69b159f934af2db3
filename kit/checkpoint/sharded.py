"""Asynchronous sharded checkpoints (``torch.distributed.checkpoint``) that stay atomic.

Every rank calls ``start_async_save`` with the same temporary folder: DCP copies each rank's tensors (its
shards) to CPU before returning, so training may change the live ones at once, and writes them in a
background thread. DCP's write ends with a collective (every rank's results gathered on the coordinator, which
writes ``.metadata``), so once any rank's future is done every rank's files are on disk. Rank zero then calls
``finish_async_save`` in its own writer thread: it waits for that future, writes the non-tensor part of the
checkpoint beside the shards, and the caller renames the folder into place (``kit.checkpoint.atomic.commit``):
the final name only ever holds a complete checkpoint.

DCP runs collectives from its background thread; under training that also runs collectives, give it its own
process group (``torch.distributed.new_group(backend="gloo")``), or the two threads' collectives interleave.

Example:
    >>> import tempfile, pathlib, torch
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> future = start_async_save({"model": {"w": torch.ones(2)}}, d / ".tmp")  # one process: no collectives
    >>> finish_async_save(future, d / ".tmp", {"global_step": 3}, "meta.pt")
    >>> sorted(p.name for p in (d / ".tmp").iterdir())
    ['.metadata', '__0_0.distcp', 'meta.pt']
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

__all__ = ["finish_async_save", "start_async_save"]


def start_async_save(state: dict[str, Any], folder: str | os.PathLike, process_group: Any = None) -> Future:
    """Stage ``state`` on CPU and write it with DCP into ``folder`` in the background; every rank calls this.

    Args:
        state: the tensors to shard-save (e.g. ``{"model": ..., "optimizer_0": ...}``; DTensors save their shards).
        folder: the temporary folder, the same path on every rank.
        process_group: the group for DCP's collectives (see the module docstring); ``None``: the default one,
            or no collectives when ``torch.distributed`` is not initialised.

    Returns:
        DCP's future, done when this rank's write and the checkpoint's metadata are on disk.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    Path(folder).mkdir(parents=True, exist_ok=True)
    single = not (dist.is_available() and dist.is_initialized())
    return dcp.async_save(state, checkpoint_id=str(folder), process_group=process_group, no_dist=single)


def finish_async_save(
    future: Future,
    folder: str | os.PathLike,
    extra: dict[str, Any] | None = None,
    extra_name: str = "meta.pt",
) -> None:
    """Rank zero, off the training thread: wait for every rank's shards, then ``torch.save(extra)`` beside them.

    Raises:
        whatever DCP raised for any rank's write (the caller removes ``folder`` and reports it).
    """
    future.result()
    if extra is not None:
        torch.save(extra, Path(folder) / extra_name)
