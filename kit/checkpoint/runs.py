"""Run folders: each run claims its own ``version_N`` with an exclusive ``mkdir``.

Loggers pick the next version by listing the folder, so two runs started at the same moment pick the same
one and interleave their checkpoints, metrics and configs. :func:`claim_version` creates the folder itself:
``mkdir`` fails for all but one process, and the others move on to the next number.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> claim_version(root), claim_version(root)
    (0, 1)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["claim_version"]

_VERSION = re.compile(r"version_(\d+)")


def claim_version(root: str | os.PathLike, attempts: int = 10_000) -> int:
    """Create ``root/version_N`` for the lowest free ``N`` above every existing version and return ``N``.

    Args:
        root: the folder holding the runs' version folders (``<save_dir>/<name>``); created if missing.
        attempts: numbers tried before giving up.

    Raises:
        OSError: no folder could be created (permissions, a file in the way), naming the path.

    Example:
        >>> claim_version("/tmp/kit-doc-runs")  # doctest: +SKIP
        3
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    found = [int(m.group(1)) for p in root.iterdir() if (m := _VERSION.fullmatch(p.name))]
    n = max(found) + 1 if found else 0
    for _ in range(attempts):
        try:
            os.mkdir(root / f"version_{n}")
        except FileExistsError:
            n += 1
            continue
        return n
    raise OSError(f"could not claim a version folder under {root} after {attempts} tries; clean up {root}")
