"""Background checkpoint writes: a CPU copy of the state, and one writer thread that runs writes in order.

The training step waits only for :func:`to_cpu`; :class:`AsyncWriter` then writes, fsyncs and renames on its
own thread, one job after another, and :meth:`AsyncWriter.drain` waits for them and re-raises the first
failure as a :class:`~kit.checkpoint.atomic.CheckpointWriteError`. A job submitted with ``exclusive=True``
first waits for the ones in flight, so memory holds at most one CPU copy of the state.

Example:
    >>> import torch
    >>> writer = AsyncWriter()
    >>> copy = to_cpu({"w": torch.ones(2)})
    >>> writer.submit(lambda state: state["w"].sum(), copy)
    >>> writer.drain(); writer.shutdown()
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from kit.checkpoint.atomic import CheckpointWriteError, write_error

__all__ = ["AsyncWriter", "to_cpu"]


def to_cpu(obj: Any, memo: dict | None = None) -> Any:
    """A deep copy of a checkpoint with every tensor cloned to CPU (what an asynchronous save must wait for).

    Tensors that are the same view of the same storage (tied weights: the embedding and the LM head) get one
    copy, so the file stores them once, as a synchronous ``torch.save`` of the original would.

    Example:
        >>> import torch
        >>> w = torch.ones(2)
        >>> copy = to_cpu({"a": w, "b": w})
        >>> copy["a"] is copy["b"], copy["a"] is w
        (True, False)
    """
    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        key = (
            obj.untyped_storage().data_ptr(),
            obj.storage_offset(),
            tuple(obj.shape),
            obj.stride(),
            obj.dtype,
        )
        if key not in memo:
            memo[key] = obj.detach().to("cpu", copy=True)
        return memo[key]
    if isinstance(obj, dict):
        return {k: to_cpu(v, memo) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v, memo) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu(v, memo) for v in obj)
    return obj


class AsyncWriter:
    """One background thread that runs checkpoint jobs in submission order.

    Args:
        folder: the checkpoint folder, named in the error when a job fails with something other than a
            ``CheckpointWriteError`` (may be set later, once it is known).
        thread_name: prefix of the writer thread's name (shown in stack dumps).

    Example:
        >>> writer, done = AsyncWriter("checkpoints"), []
        >>> writer.submit(done.append, "written")
        >>> writer.drain(); done
        ['written']
        >>> writer.shutdown()
    """

    def __init__(self, folder: str | os.PathLike | None = None, thread_name: str = "kit-ckpt") -> None:
        self.folder, self.thread_name = folder, thread_name
        self._executor: ThreadPoolExecutor | None = None
        self._futures: list[Future] = []

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet drained."""
        return len(self._futures)

    def submit(self, fn: Callable[..., Any], *args: Any, exclusive: bool = False) -> None:
        """Queue ``fn(*args)`` on the writer thread; ``exclusive``: first wait for every job in flight.

        Raises:
            CheckpointWriteError: with ``exclusive``, when a job in flight failed.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.thread_name)
        if exclusive:
            self.drain()
        self._futures.append(self._executor.submit(fn, *args))

    def drain(self) -> None:
        """Wait for every queued job; re-raise the first failure.

        Raises:
            CheckpointWriteError: the first job that failed.
        """
        futures, self._futures = self._futures, []
        errors = [f.exception() for f in futures]
        err = next((e for e in errors if e is not None), None)
        if err is not None:
            raise err if isinstance(err, CheckpointWriteError) else write_error(Path(self.folder or "."), err)

    def shutdown(self) -> None:
        """Stop the thread once its queued jobs finish (call :meth:`drain` first to see their errors)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
