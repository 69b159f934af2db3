"""What a killed run leaves in its checkpoint folder, and the sweep that removes it at the next start.

A kill can land between any two steps of a save. The save's order keeps every state recoverable (the
temporary file is complete before its rename; the manifest is saved before old files are deleted; ``last.ckpt``
is recorded before its rename), and :func:`sweep` clears the rest:

- temporary files and folders (``.<name>.tmp-<host>.<pid>.<random>``) whose writer is no longer running;
- periodic checkpoints (``step<N>.ckpt``) that are complete but not listed, because the kill came before the
  manifest was saved (or after it forgot them, before they were deleted);
- manifest entries whose files are gone;
- a ``last.ckpt`` that is not the file its entry describes (the kill came between recording and renaming it).

The manifest names the process that saved it last (``writer``); a folder whose writer is alive (or on another
machine) is left alone, so two runs never sweep each other.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / ".step00000002.ckpt.tmp-otherhost.1.abcd1234").write_bytes(b"x")
    >>> sweep(d)
    []
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from kit.checkpoint.atomic import TMP_MARK, remove_path, temp_owner_alive
from kit.checkpoint.manifest import (
    MANIFEST_NAME,
    CheckpointEntry,
    Manifest,
    checksum,
    delete_checkpoint_files,
    verify,
)

__all__ = ["folder_in_use", "sweep"]

PERIODIC = re.compile(r"step\d+\.ckpt")
_LEGACY_TMP = re.compile(r"\.tmp-(step\d+|link)$")


def folder_in_use(folder: str | os.PathLike) -> bool:
    """Whether another process that may still be running wrote the manifest of ``folder`` last."""
    try:
        host, pid = str(Manifest(folder).writer).split()
    except ValueError:
        return False
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's writer: it cannot be checked from here, so it counts as alive
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _stale_temp(path: Path) -> bool:
    name = path.name
    if not name.startswith(".") or TMP_MARK not in name:
        return False
    return bool(_LEGACY_TMP.search(name)) or not temp_owner_alive(path)


def _last_is_stale(folder: Path, manifest: Manifest) -> bool:
    """``last.ckpt`` is listed but is not the checkpoint its entry describes."""
    entry = manifest.entries.get("last.ckpt")
    last = folder / "last.ckpt"
    if entry is None or not last.exists():
        return False
    for other in manifest.entries.values():
        if other.name != "last.ckpt" and other.files == entry.files and (folder / other.name).exists():
            try:
                if os.path.samefile(last, folder / other.name):
                    return False  # the hard link its entry describes: no need to hash it
            except OSError:
                pass
    # not that link (a copied run folder has none): stale only if its bytes differ from the entry
    return verify(last, entry.files) is not None


def sweep(folder: str | os.PathLike) -> list[str]:
    """Remove what an interrupted save left in the checkpoint ``folder`` (see the module docstring).

    Nothing happens in a folder without a manifest, or one another live process writes into.

    Args:
        folder: a checkpoint folder (the one holding ``manifest.json``).

    Returns:
        One line per thing removed (empty when the folder was clean), for the caller to report.
    """
    folder = Path(folder)
    if not (folder / MANIFEST_NAME).is_file() or folder_in_use(folder):
        return []
    notes: list[str] = []
    for path in sorted(folder.iterdir()):
        if _stale_temp(path):
            remove_path(path)
            notes.append(f"removed the temporary {path.name} of an interrupted save")
    manifest = Manifest(folder)
    changed = False
    for name, _entry in list(manifest.entries.items()):
        if not (folder / name).exists():
            manifest.remove(name)
            changed = True
            notes.append(f"dropped manifest entry {name} (its file is gone)")
    if _last_is_stale(folder, manifest):
        manifest.remove("last.ckpt")
        changed = True
        remove_path(folder / "last.ckpt")
        notes.append(
            "removed last.ckpt, left stale by an interrupted save (the newest step checkpoint holds its state)"
        )
    if changed:
        manifest.save()
    if not manifest.clean:
        return notes  # an unreadable manifest lists nothing: every checkpoint would look unlisted
    for path in sorted(folder.iterdir()):
        if PERIODIC.fullmatch(path.name) and path.name not in manifest.entries and not path.is_symlink():
            if path.is_file():
                path.unlink()
            else:
                delete_checkpoint_files(folder, CheckpointEntry(path.name, files=checksum(path)))
            notes.append(f"removed {path.name}, a checkpoint the manifest does not list (interrupted save)")
    return notes
