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
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "TMP_MARK",
    "CheckpointWriteError",
    "atomic_write",
    "commit",
    "fsync_tree",
    "remove_path",
    "save_torch_file",
    "temp_owner_alive",
    "temp_path",
]

# temporary names: ``.<target>.tmp-<host>.<pid>.<random>``, so a sweep can tell a dead writer's leftovers from a
# live one's, and two processes never pick the same name
TMP_MARK = ".tmp-"


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
    tmp = temp_path(target)
    try:
        write(tmp)
        commit(tmp, target)
    except BaseException as err:
        remove_path(tmp)
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise write_error(target, err) from err


def _host() -> str:
    return socket.gethostname().split(".")[0].replace("-", "_") or "host"


def temp_path(target: str | os.PathLike) -> Path:
    """A hidden temporary path beside ``target`` carrying this host, this process id and a random part.

    Example:
        >>> temp_path("/run/ckpt/step10.ckpt").name.startswith(".step10.ckpt.tmp-")
        True
    """
    target = Path(target)
    return target.parent / f".{target.name}{TMP_MARK}{_host()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def temp_owner_alive(path: str | os.PathLike) -> bool:
    """Whether the process that named the temporary ``path`` (see :func:`temp_path`) may still be writing it.

    A name from another host, or one this module did not make, counts as alive: only a dead writer's leftovers
    on this machine are safe to remove.
    """
    name = Path(path).name
    if TMP_MARK not in name:
        return True
    parts = name.rsplit(TMP_MARK, 1)[1].split(".")
    if len(parts) != 3 or parts[0] != _host() or not parts[1].isdigit():
        return True
    pid = int(parts[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def save_torch_file(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` straight into a new file at ``path`` (in the checkpoint folder), then fsync it.

    Nothing is staged in memory or in ``$TMPDIR`` first: the bytes are written once, where they stay, and a
    full disk is reported against the checkpoint folder itself.

    Raises:
        FileExistsError: ``path`` exists (temporary names are unique, so another writer owns it).
    """
    import torch

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


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
