"""``manifest.json``: every checkpoint in a folder with its step, kind and per-file SHA-256.

The manifest is rewritten atomically after each checkpoint lands, so it only ever lists complete
checkpoints. On load, ``newest_good`` walks the entries newest first (highest step, then the file's own
modification time) and returns the first whose files still match their checksums; each skipped (truncated,
corrupt, missing) one is named in a warning together with the one used instead.

A manifest is data from disk, so its names are not trusted: an entry whose name is not a plain file name
(``../x``, ``/abs/x``, ``a/b``) or whose file list leaves the checkpoint is ignored with a warning, and
:func:`delete_checkpoint_files` removes only the files an entry lists, by exact name, never a folder tree.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "step1.ckpt").write_bytes(b"one")
    >>> m = Manifest(d); _ = m.add("step1.ckpt", step=1); m.save()
    >>> newest_good(d).name
    'step1.ckpt'
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import time
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path

from kit.checkpoint.atomic import atomic_write

__all__ = [
    "MANIFEST_NAME",
    "CheckpointEntry",
    "Manifest",
    "UnusableCheckpointsError",
    "checksum",
    "delete_checkpoint_files",
    "find_latest",
    "is_plain_name",
    "newest_good",
    "resolve_checkpoint",
    "verify",
]


class UnusableCheckpointsError(FileNotFoundError):
    """Checkpoints exist, but none of them verifies; the message lists each with its reason."""


def is_plain_name(name: object) -> bool:
    """Whether ``name`` is a plain file name: no folder part, not ``.``/``..``, not absolute.

    Example:
        >>> is_plain_name("step00000010.ckpt"), is_plain_name("../victim"), is_plain_name("/etc/passwd")
        (True, False, False)
    """
    if not isinstance(name, str) or name in ("", ".", "..") or "\x00" in name:
        return False
    return "/" not in name and "\\" not in name and not os.path.isabs(name)


def _plain_relative(rel: object) -> bool:
    """A file inside a checkpoint folder: relative, no ``..`` part (``""`` is the single-file checkpoint)."""
    if rel == "":
        return True
    if not isinstance(rel, str) or "\x00" in rel or "\\" in rel or os.path.isabs(rel):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))

MANIFEST_NAME = "manifest.json"
_CHUNK = 8 << 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def checksum(path: str | os.PathLike) -> dict[str, list]:
    """``{relative file: [bytes, sha256]}`` for a checkpoint file (key ``""``) or every file in a folder."""
    path = Path(path)
    if path.is_file():
        return {"": [path.stat().st_size, _sha256(path)]}
    out = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        out[file.relative_to(path).as_posix()] = [file.stat().st_size, _sha256(file)]
    return out


@dataclasses.dataclass
class CheckpointEntry:
    """One checkpoint in a manifest. ``kind`` is ``"step"``, ``"best"``, ``"last"`` or ``"preempt"``."""

    name: str
    step: int = 0
    epoch: int = 0
    kind: str = "step"
    time: float = 0.0
    score: float | None = None
    files: dict[str, list] = dataclasses.field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(size for size, _ in self.files.values())


def verify(path: str | os.PathLike, files: dict[str, list] | None = None) -> str | None:
    """Why the checkpoint at ``path`` is unusable, or ``None`` when it is complete.

    With ``files`` (from a manifest) every file's size and SHA-256 must match. Without, a single-file
    checkpoint written by ``torch.save`` (a zip archive) has each member's CRC checked.
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    if files is None:
        if path.is_file():
            try:
                with zipfile.ZipFile(path) as z:
                    bad = z.testzip()
            except (zipfile.BadZipFile, OSError) as err:
                return f"not a readable torch checkpoint ({err})"
            return f"CRC mismatch in {bad}" if bad else None
        return None  # a folder without a manifest: nothing to check against
    for rel, record in files.items():
        if not _plain_relative(rel) or not isinstance(record, (list, tuple)) or len(record) != 2:
            return f"its manifest entry is malformed ({rel!r}: {record!r})"
        size, digest = record
        file = path / rel if rel else path
        if not file.is_file():
            return f"file {rel or path.name} is missing"
        actual = file.stat().st_size
        if actual != size:
            return f"{rel or path.name} is {actual} bytes, the manifest says {size} (truncated?)"
        if _sha256(file) != digest:
            return f"{rel or path.name} does not match its SHA-256 (corrupt)"
    return None


class Manifest:
    """The manifest of one checkpoint folder (read on construction, written by ``save``)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.entries: dict[str, CheckpointEntry] = {}
        self.clean = True  # read whole: no unreadable file, no ignored entry
        self.writer: str | None = None  # "<host> <pid>" of the process that saved it last
        path = self.folder / MANIFEST_NAME
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (json.JSONDecodeError, OSError) as err:
                warnings.warn(
                    f"ignoring unreadable {path} ({err}); checkpoints there are verified by CRC only",
                    stacklevel=2,
                )
                data = {}
                self.clean = False
            self.writer = data.get("writer") if isinstance(data, dict) else None
            ignored = []
            for raw in data.get("checkpoints", []) if isinstance(data, dict) else []:
                if not isinstance(raw, dict):
                    continue
                entry = CheckpointEntry(
                    **{k: raw[k] for k in raw if k in CheckpointEntry.__dataclass_fields__}
                )
                files = entry.files if isinstance(entry.files, dict) else {"?": None}
                if not is_plain_name(entry.name) or not all(map(_plain_relative, files)):
                    ignored.append(repr(entry.name))
                    continue
                self.entries[entry.name] = entry
            if ignored:
                self.clean = False
                warnings.warn(
                    f"{path}: ignored {len(ignored)} entr{'y' if len(ignored) == 1 else 'ies'} whose name is not a "
                    f"plain file name in this folder: {', '.join(ignored[:5])}; a manifest only lists files beside it",
                    stacklevel=2,
                )

    def add(
        self, name: str, step: int, epoch: int = 0, kind: str = "step", score: float | None = None
    ) -> CheckpointEntry:
        """Record the checkpoint ``folder/name`` (already written in full) with fresh checksums."""
        entry = CheckpointEntry(
            name, int(step), int(epoch), kind, time.time(), score, checksum(self.folder / name)
        )
        self.entries[name] = entry
        return entry

    def remove(self, name: str) -> CheckpointEntry | None:
        """Forget ``name``; returns its entry (``None`` when it was not listed)."""
        return self.entries.pop(name, None)

    def newest_first(self, kinds: Iterable[str] | None = None) -> list[CheckpointEntry]:
        kinds = set(kinds) if kinds is not None else None
        found = [e for e in self.entries.values() if kinds is None or e.kind in kinds]
        return sorted(found, key=lambda e: (e.step, e.time), reverse=True)

    def save(self) -> None:
        from kit import __version__

        data = {
            "format": 1,
            "kit_version": __version__,
            "writer": f"{socket.gethostname()} {os.getpid()}",
            "checkpoints": [
                dataclasses.asdict(e) for e in sorted(self.entries.values(), key=lambda e: e.time)
            ],
        }
        text = json.dumps(data, indent=1)
        atomic_write(self.folder / MANIFEST_NAME, lambda tmp: tmp.write_text(text))


def delete_checkpoint_files(folder: str | os.PathLike, entry: CheckpointEntry) -> None:
    """Delete the checkpoint ``entry`` from ``folder``: the files it lists, by exact name, and then its folder
    only if that is left empty. Never a folder tree, never a link's target, never a name outside ``folder``.
    """
    if not is_plain_name(entry.name):
        return
    target = Path(folder) / entry.name
    if target.is_symlink() or target.is_file():
        target.unlink(missing_ok=True)
        return
    if not target.is_dir():
        return
    for rel in entry.files:
        if rel and _plain_relative(rel):
            file = target / rel
            if file.is_symlink() or file.is_file():
                file.unlink(missing_ok=True)
    # the sub-folders the listed files lived in, deepest first; rmdir only removes empty ones
    for sub in sorted({p for rel in entry.files if rel for p in Path(rel).parents}, key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            os.rmdir(target / sub)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _pick(
    candidates: list[tuple[Path, dict | None]], wanted: str | None = None, strict: bool = False
) -> Path | None:
    """The first candidate that verifies; warn about each one skipped, naming the one used.

    With ``strict``, candidates that all fail raise :class:`UnusableCheckpointsError` listing each reason.
    """
    skipped: list[str] = []
    for path, files in candidates:
        problem = verify(path, files)
        if problem is None:
            if skipped:
                warnings.warn(
                    f"checkpoint(s) {'; '.join(skipped)} unusable; using the previous good checkpoint {path}",
                    stacklevel=3,
                )
            return path
        skipped.append(f"{path} ({problem})")
    if skipped and strict:
        raise UnusableCheckpointsError(
            f"{len(skipped)} checkpoint(s) found, none usable: {'; '.join(skipped)}. Remove or repair them, or "
            "pass --ckpt_path with a checkpoint that verifies"
        )
    if skipped:
        warnings.warn(f"no usable checkpoint: {'; '.join(skipped)}", stacklevel=3)
    return None


def _folder_candidates(folder: Path) -> list[tuple[int, float, Path, dict | None]]:
    """(step, mtime, path, files) of every checkpoint in ``folder``: manifest entries, else its ``*.ckpt`` files.

    The time is the file's own modification time, never a time the manifest claims.
    """
    manifest = Manifest(folder)
    # a symbolic link could point anywhere on the machine: only files that live in the folder are candidates
    entries = [e for e in manifest.entries.values() if not (folder / e.name).is_symlink()]
    out = [(e.step, _mtime(folder / e.name), folder / e.name, e.files) for e in entries]
    if not out:
        out = [(-1, _mtime(p), p, None) for p in folder.glob("*.ckpt") if p.is_file() and not p.is_symlink()]
    return out


def newest_good(folder: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in one folder (highest step, then newest file), or ``None``."""
    cands = _folder_candidates(Path(folder))
    cands.sort(key=lambda c: (c[0], c[1]), reverse=True)
    return _pick([(p, f) for _, _, p, f in cands])


def find_latest(root: str | os.PathLike, strict: bool = False) -> Path | None:
    """The newest complete checkpoint in any folder under ``root`` (e.g. ``runs/gpt-tiny``).

    Every run writes under its own version folder; this looks at all their manifests (and bare ``*.ckpt``
    files where a folder has none), ranks them by step, then by the file's modification time, and returns
    the first that verifies. Only files inside ``root`` are candidates.

    Args:
        root: the folder searched.
        strict: when checkpoints exist but none verifies, raise instead of returning ``None``.

    Raises:
        UnusableCheckpointsError: with ``strict``, checkpoints exist and none verifies (each listed with why).
    """
    root = Path(root)
    if not root.exists():
        return None
    folders = {p.parent for p in root.rglob(MANIFEST_NAME)} | {p.parent for p in root.rglob("*.ckpt")}
    cands = [c for folder in folders for c in _folder_candidates(folder)]
    cands.sort(key=lambda c: (c[0], c[1]), reverse=True)
    return _pick([(p, f) for _, _, p, f in cands], strict=strict)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` if it verifies, else the newest good checkpoint beside it (with a warning naming both).

    Raises:
        FileNotFoundError: neither ``path`` nor any checkpoint beside it is usable.
    """
    path = Path(path)
    entry = Manifest(path.parent).entries.get(path.name)
    problem = verify(path, entry.files if entry is not None else None)
    if problem is None:
        return path
    others = [c for c in _folder_candidates(path.parent) if c[2] != path]
    others.sort(key=lambda c: (c[0], c[1]), reverse=True)
    good = _pick([(p, f) for _, _, p, f in others])
    if good is None:
        raise FileNotFoundError(
            f"checkpoint {path} is unusable ({problem}) and no good checkpoint lies beside it"
        )
    warnings.warn(
        f"checkpoint {path} is unusable ({problem}); resuming from the previous good one, {good}",
        stacklevel=2,
    )
    return good


def entry_for(path: str | os.PathLike) -> CheckpointEntry | None:
    path = Path(path)
    return Manifest(path.parent).entries.get(path.name)
