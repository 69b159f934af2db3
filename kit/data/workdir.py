"""Where ``kit data clean`` reads, works and writes, so that it never loses or multiplies data.

- :func:`check_output` refuses an output that is one of the inputs or matches an input glob.
- :func:`own_files` names what a clean run writes itself (its output, the output's temporary file, its
  record, work folders), so :func:`input_files` leaves them out when an input folder holds them: a rerun
  with ``-o`` inside the input folder reads what the first run read.
- :class:`WorkFolder` is the hidden folder beside the output (or in ``work_dir``) that holds the per-shard
  files. One run owns it at a time (its process id is recorded); a run that finds one left by a killed run
  removes it and says so, or, with ``resume``, keeps the shards that run finished.
- :func:`atomic_output` writes beside the output and renames at the end, so an output is whole or absent.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.jsonl").write_text('{"text": "x"}\\n')
    >>> check_output([str(d / "*.jsonl")], d / "b.jsonl")
    Traceback (most recent call last):
    ...
    ValueError: output ... matches the input glob ...; write the output outside the inputs
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from kit.data.text import resolve_paths

__all__ = [
    "WorkFolder",
    "atomic_output",
    "check_output",
    "input_files",
    "mark_output",
    "naming",
    "own_files",
    "plan_digest",
    "save_done",
]

WORK_PREFIX = ".kit-clean-"  # work folders; the name ends in the output's name
LEGACY_WORK_PREFIX = "kit-clean-"  # work folders of earlier versions (tempfile.mkdtemp names)
RECORD_SUFFIX = ".kit-clean.json"  # beside an output: its size and time, so a rerun knows it as its own
_LEGACY_FILE = re.compile(r"\d{6}\.(jsonl|raw|len|digest|sig)|(exact|bands)-\d{4}\.part")


def _has_magic(entry: str) -> bool:
    return any(ch in entry for ch in "*?[")


def _glob_match(pattern: str, path: Path) -> bool:
    """Whether ``glob.glob(pattern, recursive=True)`` would list ``path`` (existing or not)."""
    pat = Path(os.path.abspath(os.path.expanduser(pattern))).parts
    parts = Path(os.path.abspath(path)).parts

    def match(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(parts)
        if pat[i] == "**":
            return any(match(i + 1, k) for k in range(j, len(parts) + 1))
        return j < len(parts) and fnmatch.fnmatchcase(parts[j], pat[i]) and match(i + 1, j + 1)

    return match(0, 0)


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return Path(os.path.abspath(a)) == Path(os.path.abspath(b))


def check_output(inputs: str | os.PathLike | Iterable[str | os.PathLike], output: Path) -> None:
    """Refuse an output that is named as an input, matches an input glob, or is an input folder's file.

    An existing output found inside an input folder is allowed only when it is this command's own earlier
    output (:func:`mark_output` recorded it); the run then leaves it out of the inputs.

    Raises:
        ValueError: one line naming the output and the input it collides with.
    """
    entries = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    for entry in map(str, entries):
        if _has_magic(entry):
            if _glob_match(entry, output):
                raise ValueError(
                    f"output {str(output)!r} matches the input glob {entry!r}; write the output outside "
                    "the inputs"
                )
            continue
        path = Path(os.path.expanduser(entry))
        if path.is_dir():
            inside = Path(os.path.abspath(output)).is_relative_to(os.path.abspath(path))
            if inside and output.is_file() and not is_own_output(output):
                raise ValueError(
                    f"output {str(output)!r} is a file of the input folder {entry!r} and not an earlier "
                    "output of kit data clean; writing it would replace input data: choose another -o"
                )
        elif _same(path, output):
            raise ValueError(f"output {str(output)!r} is the input {entry!r}; choose another -o")


def _record_path(output: Path) -> Path:
    return output.with_name(f".{output.name}{RECORD_SUFFIX}")


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def mark_output(output: Path) -> None:
    """Record beside ``output`` that this command wrote it, as it is now (size and modification time)."""
    _record_path(output).write_text(json.dumps(_stamp(output)) + "\n")


def is_own_output(output: Path) -> bool:
    """Whether ``output`` is, unchanged, a file :func:`mark_output` recorded."""
    try:
        return json.loads(_record_path(output).read_text()) == _stamp(output)
    except (OSError, ValueError):
        return False


def own_files(path: Path, output: Path) -> bool:
    """Whether ``path`` is something a clean run writes: the output, its temporary file or a work folder's."""
    if (
        _same(path, output)
        or path.name.startswith(f".{output.name}.tmp-")
        or path.name.endswith(RECORD_SUFFIX)
    ):
        return True
    return any(p.startswith((WORK_PREFIX, LEGACY_WORK_PREFIX)) for p in path.parent.parts)


def input_files(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    output: Path,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """:func:`kit.data.text.resolve_paths` without the files a clean run writes itself (:func:`own_files`).

    A folder or glob also leaves out the earlier outputs of this command (:func:`mark_output` recorded them,
    unchanged since), with a line through ``log``; a file named on its own is always read.

    Raises:
        FileNotFoundError: an input matches nothing, or nothing is left.
    """
    entries = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    paths: list[Path] = []
    earlier: list[Path] = []
    for entry in entries:
        named = not _has_magic(str(entry)) and not Path(os.path.expanduser(str(entry))).is_dir()
        for path in resolve_paths(entry):
            if own_files(path, output):
                continue
            if not named and is_own_output(path):
                earlier.append(path)
                continue
            paths.append(path)
    if earlier and log:
        log(f"left out {len(earlier)} earlier output(s) of kit data clean found in the inputs: {earlier[:3]}")
    if not paths:
        raise FileNotFoundError(
            f"the inputs hold no files besides this command's own output and work files ({output}); "
            "pass the corpus files"
        )
    return paths


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkFolder:
    """The per-shard files of one clean run: ``<root>/.kit-clean-<output name>``, owned by one process.

    Args:
        root: the folder to hold it (``work_dir``, or the output's folder).
        output: the output file it serves.
        log: called with one line for what a user should know (a stale folder removed or resumed).

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> with WorkFolder(root, root / "out.jsonl").claim("plan-1", resume=False) as work:
        ...     work.path.name, work.finished()
        ('.kit-clean-out.jsonl', {})
    """

    def __init__(self, root: Path, output: Path, log: Callable[[str], None] | None = None) -> None:
        self.path = root / f"{WORK_PREFIX}{output.name}"
        self.root = root
        self.log = log or (lambda line: None)
        self.keep = False  # leave the folder for --resume (set on an interrupt)

    def _owner(self) -> int | None:
        try:
            return int((self.path / "owner").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _sweep_legacy(self) -> None:
        """Work folders of earlier versions (``kit-clean-XXXXXXXX``) that hold only shard files."""
        for old in self.root.glob(f"{LEGACY_WORK_PREFIX}*"):
            if old.is_dir() and all(_LEGACY_FILE.fullmatch(f.name) for f in old.iterdir()):
                shutil.rmtree(old, ignore_errors=True)
                self.log(f"removed the stale work folder {old} left by a killed run")

    @contextmanager
    def claim(self, plan: str, resume: bool) -> Iterator[WorkFolder]:
        """Own the folder for one run; remove it at the end (kept after an interrupt, for ``resume``).

        Args:
            plan: a digest of the inputs, settings and pieces; finished shards are reused only under the
                same plan.
            resume: keep the shards a killed run finished instead of removing its folder.

        Raises:
            RuntimeError: a live process owns the folder.
        """
        owner = self._owner()
        if owner is not None and owner != os.getpid() and _alive(owner):
            raise RuntimeError(
                f"another kit data clean (process {owner}) is writing through {self.path}; wait for it or "
                "choose another -o"
            )
        self._sweep_legacy()
        if self.path.exists():
            self._take_over(plan, resume)
        elif resume:
            self.log(
                f"nothing to resume: no work folder {self.path} of an earlier run; starting from the beginning"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "owner").write_text(f"{os.getpid()}\n")
        (self.path / "plan").write_text(plan + "\n")
        try:
            yield self
        except KeyboardInterrupt:
            self.keep = True
            raise
        finally:
            if not self.keep:
                shutil.rmtree(self.path, ignore_errors=True)

    def _take_over(self, plan: str, resume: bool) -> None:
        done = len(list(self.path.glob("*.done")))
        try:
            same = (self.path / "plan").read_text().strip() == plan
        except OSError:
            same = False
        if resume and same:
            self.log(f"resuming: {done} finished shard(s) in {self.path} are reused")
            return
        why = (
            "the inputs or settings changed since, so its shards cannot be reused"
            if resume
            else "--resume would reuse its finished shards"
        )
        shutil.rmtree(self.path)
        self.log(
            f"removed the stale work folder {self.path} ({done} finished shard(s)) of a killed run; {why}"
        )

    def finished(self) -> dict[int, dict[str, Any]]:
        """``{shard index: its saved result}`` for the shards whose files are complete."""
        out = {}
        for path in self.path.glob("*.done"):
            try:
                out[int(path.stem)] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # cut short: the shard runs again
        return out


def save_done(folder: Path, index: int, result: dict[str, Any]) -> None:
    """Mark shard ``index`` complete (after its files are closed); written whole or not at all."""
    tmp = folder / f"{index:06d}.done.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, folder / f"{index:06d}.done")


def stable(obj: Any, depth: int = 0) -> Any:
    """``obj`` as plain data that is the same in every process: sets sorted, objects as their class and fields.

    ``pickle`` and ``repr`` are not: a set's order follows the per-process string hash seed.

    Example:
        >>> stable({"b": {3, 1}, "a": (1.5, None)})
        [['a', [1.5, None]], ['b', [1, 3]]]
    """
    if depth > 20 or obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj if not isinstance(obj, bytes) else obj.hex()
    if isinstance(obj, dict):
        return sorted(([stable(k, depth + 1), stable(v, depth + 1)] for k, v in obj.items()), key=repr)
    if isinstance(obj, (set, frozenset)):
        return sorted((stable(v, depth + 1) for v in obj), key=repr)
    if isinstance(obj, (list, tuple)):
        return [stable(v, depth + 1) for v in obj]
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    fields = getattr(obj, "__dict__", None)
    if fields is None:
        return [kind, getattr(obj, "__qualname__", None)]  # a function or a builtin: its name
    return [kind, getattr(obj, "__qualname__", None), stable(fields, depth + 1)]


def plan_digest(parts: Iterable[Any]) -> str:
    """A digest of what decides the shard files: input files (name, size, time), pieces and settings."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(stable(part), default=repr).encode())
    return h.hexdigest()


@contextmanager
def atomic_output(output: Path) -> Iterator[IO[str]]:
    """Write ``output`` through a temporary file beside it, renamed into place when the block succeeds."""
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Give an ``OSError`` raised inside the block the path it concerns, when it names none.

    A write that fills the disk raises ``OSError(ENOSPC)`` with no file name; the user needs the folder.

    Example:
        >>> try:
        ...     with naming("/data/out"):
        ...         raise OSError(28, "No space left on device")
        ... except OSError as err:
        ...     err.filename
        '/data/out'
    """
    try:
        yield
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
