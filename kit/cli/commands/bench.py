"""``kit bench NAME``: run one benchmark from the repository's ``benchmarks/`` folder.

``benchmarks/`` is a folder of the repository, not of the installed package, so ``kit bench`` finds it
itself: first in the current directory or one above it, then beside the ``kit`` package of an editable
install (``pip install -e .``). It then runs ``python -P -m benchmarks ARGS`` in a child process with that
repository first on ``PYTHONPATH`` and the current directory unchanged (results land in ``./runs/bench/``).
The child has its own ``sys.path`` and module table, so this process's are never edited; ``-P`` (no current
directory on the path) and ``PYTHONPATH`` make the repository's ``benchmarks`` win over any other package of
that name the environment holds.

Example:
    >>> find_repository() is not None  # from a checkout  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["bench_command", "find_repository", "main"]


def find_repository(start: Path | None = None) -> Path | None:
    """The folder holding ``benchmarks/__main__.py``: the current directory or a parent, else the editable checkout."""
    start = (start or Path.cwd()).resolve()
    import kit

    candidates = [start, *start.parents, Path(kit.__file__).resolve().parent.parent]
    for folder in candidates:
        if (folder / "benchmarks" / "__main__.py").is_file():
            return folder
    return None


def bench_command(repo: Path, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The child's command line and environment: ``python -P -m benchmarks ARGV`` with ``repo`` first on the path.

    Args:
        repo: the repository holding ``benchmarks/``.
        argv: the arguments after ``kit bench``.

    Returns:
        ``(command, environment)`` for ``subprocess``.

    Example:
        >>> cmd, env = bench_command(Path("/src/kit"), ["precision"])
        >>> cmd[1:], env["PYTHONPATH"].split(os.pathsep)[0]
        (['-P', '-m', 'benchmarks', 'precision'], '/src/kit')
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo), *filter(None, [env.get("PYTHONPATH")])])
    return [sys.executable, "-P", "-m", "benchmarks", *argv], env


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m benchmarks`` from the repository that holds ``benchmarks/``; returns its exit status."""
    repo = find_repository()
    if repo is None:
        print(
            "kit bench: no benchmarks/ folder here, above here, or beside the installed kit package; "
            "benchmarks ship with the repository, not the wheel: clone it and `pip install -e .`",
            file=sys.stderr,
        )
        return 2
    command, env = bench_command(repo, list(sys.argv[1:] if argv is None else argv))
    return subprocess.call(command, env=env)
