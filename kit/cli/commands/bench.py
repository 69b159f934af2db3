"""``kit bench NAME``: run one benchmark from the repository's ``benchmarks/`` folder.

``benchmarks/`` is a folder of the repository, not of the installed package, so ``kit bench`` finds it
itself: first in the current directory or one above it, then beside the ``kit`` package of an editable
install (``pip install -e .``). It then puts that repository on ``sys.path`` and hands over to
``python -m benchmarks``; it works from the repository root and from any other directory.
"""

from __future__ import annotations

import sys
from pathlib import Path


def find_repository(start: Path | None = None) -> Path | None:
    """The folder holding ``benchmarks/__main__.py``: the current directory or a parent, else the editable checkout."""
    start = (start or Path.cwd()).resolve()
    import kit

    candidates = [start, *start.parents, Path(kit.__file__).resolve().parent.parent]
    for folder in candidates:
        if (folder / "benchmarks" / "__main__.py").is_file():
            return folder
    return None


def main(argv: list[str] | None = None) -> int:
    """Dispatch to ``python -m benchmarks`` after putting the repository that holds ``benchmarks/`` on ``sys.path``."""
    repo = find_repository()
    if repo is None:
        print(
            "kit bench: no benchmarks/ folder here, above here, or beside the installed kit package; "
            "benchmarks ship with the repository, not the wheel: clone it and `pip install -e .`",
            file=sys.stderr,
        )
        return 2
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    loaded = sys.modules.get("benchmarks")
    if (
        loaded is not None
        and Path(getattr(loaded, "__file__", "") or "").resolve().parent != repo / "benchmarks"
    ):
        # another package named ``benchmarks`` was imported first; load the repository's instead
        for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
            del sys.modules[name]
    from benchmarks.__main__ import main as bench_main

    return bench_main(list(sys.argv[1:] if argv is None else argv))
