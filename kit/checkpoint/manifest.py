"""``manifest.json``: every checkpoint in a folder with its step, kind and per-file SHA-256.

The manifest is rewritten atomically after each checkpoint lands, so it only ever lists complete
checkpoints. On load, ``newest_good`` walks the entries newest first and returns the first whose files
still match their checksums; each skipped (truncated, corrupt, missing) one is named in a warning together
with the one used instead.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "step1.ckpt").write_bytes(b"one")
    >>> m = Manifest(d); _ = m.add("step1.ckpt", step=1); m.save()
    >>> newest_good(d).name
    'step1.ckpt'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
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
    "checksum",
    "find_latest",
    "newest_good",
    "resolve_checkpoint",
    "verify",
]

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
    for rel, (size, digest) in files.items():
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
            for raw in data.get("checkpoints", []):
                entry = CheckpointEntry(
                    **{k: raw[k] for k in raw if k in CheckpointEntry.__dataclass_fields__}
                )
                self.entries[entry.name] = entry

    def add(
        self, name: str, step: int, epoch: int = 0, kind: str = "step", score: float | None = None
    ) -> CheckpointEntry:
        """Record the checkpoint ``folder/name`` (already written in full) with fresh checksums."""
        entry = CheckpointEntry(
            name, int(step), int(epoch), kind, time.time(), score, checksum(self.folder / name)
        )
        self.entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        self.entries.pop(name, None)

    def newest_first(self, kinds: Iterable[str] | None = None) -> list[CheckpointEntry]:
        kinds = set(kinds) if kinds is not None else None
        found = [e for e in self.entries.values() if kinds is None or e.kind in kinds]
        return sorted(found, key=lambda e: (e.step, e.time), reverse=True)

    def save(self) -> None:
        from kit import __version__

        data = {
            "format": 1,
            "kit_version": __version__,
            "checkpoints": [
                dataclasses.asdict(e) for e in sorted(self.entries.values(), key=lambda e: e.time)
            ],
        }
        text = json.dumps(data, indent=1)
        atomic_write(self.folder / MANIFEST_NAME, lambda tmp: tmp.write_text(text))


def _pick(candidates: list[tuple[Path, dict | None]], wanted: str | None = None) -> Path | None:
    """The first candidate that verifies; warn about each one skipped, naming the one used."""
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
    if skipped:
        warnings.warn(f"no usable checkpoint: {'; '.join(skipped)}", stacklevel=3)
    return None


def _folder_candidates(folder: Path) -> list[tuple[float, int, Path, dict | None]]:
    """(time, step, path, files) of every checkpoint in ``folder``: manifest entries, else ``*.ckpt`` by mtime."""
    manifest = Manifest(folder)
    out = [(e.time, e.step, folder / e.name, e.files) for e in manifest.entries.values()]
    if not out:
        out = [(p.stat().st_mtime, -1, p, None) for p in folder.glob("*.ckpt") if p.is_file()]
    return out


def newest_good(folder: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in one folder (highest step, then newest), or ``None``."""
    cands = _folder_candidates(Path(folder))
    cands.sort(key=lambda c: (c[1], c[0]), reverse=True)
    return _pick([(p, f) for _, _, p, f in cands])


def find_latest(root: str | os.PathLike) -> Path | None:
    """The most recently written complete checkpoint in any folder under ``root`` (e.g. ``runs/gpt-tiny``).

    Every run writes under its own version folder; this looks at all their manifests (and bare ``*.ckpt``
    files where a folder has none) and returns the newest checkpoint that verifies.
    """
    root = Path(root)
    if not root.exists():
        return None
    folders = {p.parent for p in root.rglob(MANIFEST_NAME)} | {p.parent for p in root.rglob("*.ckpt")}
    cands = [c for folder in folders for c in _folder_candidates(folder)]
    cands.sort(key=lambda c: (c[0], c[1]), reverse=True)
    return _pick([(p, f) for _, _, p, f in cands])


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
    others.sort(key=lambda c: (c[1], c[0]), reverse=True)
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
