"""Webdataset shards: writing them, listing them, and surviving corrupt ones.

Example:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> paths = write_shards(({"__key__": f"{i:04d}", "txt": f"doc {i}"} for i in range(5)),
    ...                      os.path.join(d, "part-%06d.tar"), max_count=2)
    >>> len(paths), [n for n, _ in (check_shard(p)[:2] for p in paths)]
    (3, [True, True, True])
"""

from __future__ import annotations

import glob
import io
import os
import tarfile
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import webdataset as wds

__all__ = ["ShardErrorHandler", "check_shard", "expand_urls", "write_shards"]


def write_shards(
    samples: Iterable[Mapping[str, Any]],
    pattern: str,
    max_count: int = 10_000,
    max_size: float = 1e9,
    start_shard: int = 0,
) -> list[str]:
    """Write samples into tar shards named by ``pattern`` (e.g. ``out/train-%06d.tar``).

    A new shard starts when the current one holds ``max_count`` samples or ``max_size`` bytes. Each sample is
    a dict with a unique ``"__key__"`` and one entry per file: ``bytes`` are stored as is, ``str`` as UTF-8,
    ``dict``/``list`` under a ``.json`` key as JSON, numpy arrays under ``.npy`` keys as ``.npy``
    (webdataset's default encoder).

    Args:
        samples: the stream of samples (consumed once; constant memory).
        pattern: printf-style path with one integer field.
        max_count: samples per shard at most.
        max_size: bytes per shard at most (approximate: checked between samples).
        start_shard: number of the first shard.

    Returns:
        Paths of the shards written, in order.

    Raises:
        ValueError: ``pattern`` lacks an integer field, or a limit is not positive.
    """
    if "%" not in pattern:
        raise ValueError(f"pattern={pattern!r} needs an integer field such as 'train-%06d.tar'")
    if max_count < 1 or max_size <= 0:
        raise ValueError(f"max_count={max_count} and max_size={max_size} must be positive")
    os.makedirs(os.path.dirname(os.path.abspath(pattern % start_shard)), exist_ok=True)
    paths: list[str] = []
    with wds.ShardWriter(
        pattern, maxcount=max_count, maxsize=max_size, start_shard=start_shard, verbose=0
    ) as sink:
        for sample in samples:
            sink.write(dict(sample))
            if sink.fname not in paths:
                paths.append(sink.fname)
    return paths


def expand_urls(urls: str | Iterable[str]) -> list[str]:
    """Expand brace patterns (``shard-{000..009}.tar``), local globs and lists into a flat URL list.

    Remote URLs (``http://``, ``s3://``, ``pipe:``) are kept as given. Local paths that do not exist are kept
    too (webdataset reports them when opened, and the error handler decides).

    Raises:
        ValueError: the list is empty or a glob matches nothing.
    """
    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in items:
        for url in wds.shardlists.expand_urls(item):
            if "://" not in url and not url.startswith("pipe:") and any(c in url for c in "*?["):
                matched = sorted(glob.glob(url))
                if not matched:
                    raise ValueError(f"shard glob {url!r} matched no files; check the path")
                out += matched
            else:
                out.append(url)
    if not out:
        raise ValueError(f"no shards in {urls!r}; pass paths, globs, brace patterns or URLs of .tar shards")
    return out


def check_shard(path: str) -> tuple[bool, int, str | None]:
    """Read a local shard to the end.

    Returns:
        ``(ok, samples_read, error)``; ``samples_read`` counts distinct keys seen before any error.
    """
    keys: set[str] = set()
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if member.isreg():
                    f = tar.extractfile(member)
                    if f is not None:
                        f.read()
                    keys.add(member.name.split(".", 1)[0])
    except (tarfile.TarError, OSError, EOFError) as exc:
        return False, len(keys), f"{type(exc).__name__}: {exc}"
    return True, len(keys), None


class ShardErrorHandler:
    """Webdataset exception handler: skip a corrupt or truncated shard with a warning and a count, or raise.

    Pass it as ``handler=`` to webdataset stages. Counts are per process (each DataLoader worker has its
    own copy); ``kit.datamodules.webdataset.WebDataModule`` reports them.

    Args:
        mode: ``"warn"`` (skip and warn), ``"skip"`` (skip silently, still counted) or ``"raise"``.
        max_errors: raise anyway after this many errors (a wrong path pattern should not silently yield
            nothing); ``None`` for no limit.

    Example:
        >>> h = ShardErrorHandler("skip")
        >>> h(ValueError("truncated @ part-000001.tar")), h.errors
        (True, 1)
    """

    _MODES = ("warn", "skip", "raise")

    def __init__(self, mode: str = "warn", max_errors: int | None = None) -> None:
        if mode not in self._MODES:
            raise ValueError(f"mode={mode!r}; choose one of {self._MODES}")
        self.mode, self.max_errors = mode, max_errors
        self.errors = 0
        self.messages: list[str] = []

    def __call__(self, exn: Exception) -> bool:
        if self.mode == "raise":
            raise exn
        self.errors += 1
        message = f"{type(exn).__name__}: {exn}"
        if len(self.messages) < 20:
            self.messages.append(message)
        if self.max_errors is not None and self.errors > self.max_errors:
            raise RuntimeError(
                f"{self.errors} shard errors exceed max_errors={self.max_errors}; last: {message}"
            ) from exn
        if self.mode == "warn":
            warnings.warn(f"skipping corrupt shard data ({self.errors} so far): {message}", stacklevel=2)
        return True


def _tar_bytes(files: Mapping[str, bytes]) -> bytes:
    """A tar archive in memory (test helper for building shards by hand)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
