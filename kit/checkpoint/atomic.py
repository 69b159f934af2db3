"""Atomic checkpoint writes: temporary file or folder, fsync, rename.

POSIX ``rename`` replaces a file atomically within one file system, so the target either keeps its old
content or holds the new one in full. A folder (sharded checkpoint) cannot be renamed over a non-empty
folder, so the old one is first moved aside under a hidden name and removed only after the new one is in
place; a crash between the two renames leaves the old folder recoverable under ``.<name>.old-*``.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write(d / "a.txt", lambda tmp: tmp.write_text("hello"))
    >>> (d / "a.txt").read_text()
    'hello'
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["CheckpointWriteError", "atomic_write", "commit", "fsync_tree", "remove_path"]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous checkpoint at the same path is untouched."""


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # some file systems refuse to open folders; their rename is then the best we have
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync a file, or every file and folder under a folder, so the data is on disk before the rename."""
    path = Path(path)
    if path.is_dir():
        for root, _, files in os.walk(path):
            for name in files:
                _fsync_path(Path(root) / name)
            _fsync_path(Path(root))
    elif path.exists():
        _fsync_path(path)


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file, link or folder if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def atomic_write(target: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary path next to ``target``, fsync it, then rename it to ``target``.

    ``write`` may create a file or a folder at ``tmp``. On any failure the temporary path is removed and
    ``target`` (if it existed) is left exactly as it was.

    Args:
        target: final path of the checkpoint file or folder.
        write: writes the checkpoint to the path it is given.

    Raises:
        CheckpointWriteError: ``write`` or the rename failed (disk full, permission, ...); the message names the
            target, the cause and that the previous checkpoint is intact.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = target.parent / f".{target.name}.tmp-{tag}"
    try:
        write(tmp)
        commit(tmp, target)
    except BaseException as err:
        remove_path(tmp)
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise write_error(target, err) from err


def write_error(target: Path, err: BaseException) -> CheckpointWriteError:
    """The error raised when writing ``target`` failed with ``err``."""
    state = "is intact" if Path(target).exists() else "did not exist"
    return CheckpointWriteError(
        f"writing checkpoint {target} failed ({type(err).__name__}: {err}); the previous checkpoint at that "
        f"path {state}. Free disk space or check permissions on {Path(target).parent}, then resume from the last "
        "good checkpoint"
    )


def commit(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """fsync the complete file or folder ``tmp`` and rename it to ``target`` (see the module docstring)."""
    tmp, target = Path(tmp), Path(target)
    if not tmp.exists():
        raise FileNotFoundError(f"the writer produced nothing at {tmp}")
    fsync_tree(tmp)
    if tmp.is_dir() and target.exists():
        aside = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, aside)
        os.replace(tmp, target)
        remove_path(aside)
    else:
        if target.is_dir() and not target.is_symlink():
            remove_path(target)  # a folder replaced by a file (the strategy changed between runs)
        os.replace(tmp, target)
    _fsync_path(target.parent)
