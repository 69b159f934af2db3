"""``kit bench NAME``: run one benchmark from the repository's ``benchmarks/`` folder."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch to ``python -m benchmarks``; ``benchmarks/`` is a folder of the repository, not of the wheel."""
    try:
        from benchmarks.__main__ import main as bench_main
    except ModuleNotFoundError:
        print(
            "kit bench: the benchmarks/ folder is not importable; run it from the repository root",
            file=sys.stderr,
        )
        return 2
    return bench_main(list(sys.argv[1:] if argv is None else argv))
