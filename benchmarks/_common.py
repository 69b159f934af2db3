"""Helpers shared by the benchmarks: thread pinning, interleaved repeats, median and spread, progress.

Every benchmark is ``benchmarks/<name>.py`` with ``main(argv: list[str]) -> dict``; the harness
(``python -m benchmarks`` / ``kit bench``) pins torch's threads before calling it and writes the result
into a run folder. Use :func:`interleave` to time the sides of a comparison in alternating order,
:func:`summarize` to report their median and spread, and :func:`progress` for a line on stderr per unit
of work, so a long benchmark is never silent.

Example:
    >>> pin_threads(1)
    1
    >>> times = interleave({"a": lambda: 1.0, "b": lambda: 2.0}, repeats=2, label="demo", quiet=True)
    >>> summarize(times["b"])["median"]
    2.0
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable

import torch

# the harness sets this before main(argv) runs, so progress lines carry the benchmark's name
_CURRENT = {"name": "bench", "start": time.perf_counter()}


def pin_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: 1 on CPU, unchanged on CUDA) and return the count in force.

    On shared CPU cores, N threads per process oversubscribe them and timings swing 3-100x between runs;
    one thread per process gives reproducible ratios. The count is recorded in every result
    (``threads``), so a figure always says what it was measured with.
    """
    if threads is None and not torch.cuda.is_available():
        threads = 1
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads={threads} must be >= 1")
        torch.set_num_threads(threads)
        # OpenMP/MKL in child processes (DataLoader workers, gloo ranks) follow the same count
        os.environ["OMP_NUM_THREADS"] = str(threads)
    return torch.get_num_threads()


def device_name() -> str:
    """The CUDA device's name, or the CPU with its torch thread count."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def cuda_sync() -> None:
    """Wait for queued CUDA kernels so a timer covers them; nothing on CPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def progress(message: str) -> None:
    """One progress line on stderr: ``[bench NAME +12.3s] message`` (stdout stays the result table)."""
    elapsed = time.perf_counter() - _CURRENT["start"]
    print(f"[bench {_CURRENT['name']} +{elapsed:.1f}s] {message}", file=sys.stderr, flush=True)


def set_current(name: str) -> None:
    """Name the running benchmark for :func:`progress` and restart its clock (the harness calls this)."""
    _CURRENT["name"], _CURRENT["start"] = name, time.perf_counter()


def interleave(
    sides: dict[str, Callable[[], float | Iterable[float]]],
    repeats: int,
    label: str = "",
    quiet: bool = False,
) -> dict[str, list[float]]:
    """Run every side ``repeats`` times, alternating the order (A B, B A, ...), and collect measurements.

    Each side is a callable returning one measurement or an iterable of them (e.g. per-step times).
    Alternating the order keeps a slow drift of the machine (thermal, other jobs) from favouring one side.

    Args:
        sides: side name -> callable that runs it once.
        repeats: rounds; each round runs every side once.
        label: shown in the progress lines.
        quiet: no progress lines.

    Returns:
        side name -> all measurements in run order.
    """
    if repeats < 1:
        raise SystemExit(f"--repeats={repeats} must be >= 1")
    names = list(sides)
    out: dict[str, list[float]] = {n: [] for n in names}
    total, done = repeats * len(names), 0
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            done += 1
            if not quiet:
                progress(
                    f"{label + ': ' if label else ''}{name} (repeat {r + 1}/{repeats}, run {done}/{total})"
                )
            value = sides[name]()
            out[name] += [float(v) for v in value] if isinstance(value, Iterable) else [float(value)]
    return out


def summarize(values: list[float]) -> dict[str, float]:
    """Median, min, max and relative spread ``(max - min) / median`` of repeated measurements."""
    if not values:
        raise ValueError("no measurements to summarise")
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {
        "median": med,
        "min": lo,
        "max": hi,
        "spread_pct": 100 * (hi - lo) / abs(med) if med else float("nan"),
        "n": len(values),
    }


def timing_config(name: str, block_size: int, fallback_vocab: int = 512):
    """``GPTConfig.from_name(name)`` for timing runs: dropout off, ``block_size`` set, a vocabulary if it has none."""
    from kit.nn import GPTConfig

    overrides = {"block_size": block_size, "dropout": 0.0, "attn_dropout": 0.0, "embd_dropout": 0.0}
    if GPTConfig.from_name(name).vocab_size is None:
        overrides["vocab_size"] = fallback_vocab
    return GPTConfig.from_name(name, **overrides)
