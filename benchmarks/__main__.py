"""Entry point: ``python -m benchmarks <name> [args...]`` (also ``kit bench <name>``).

A benchmark is a module ``benchmarks/<name>.py`` with ``main(argv: list[str]) -> dict``. The dict
holds ``title`` (str), ``rows`` (list of flat dicts, one table row each), and optionally
``notes`` (list of str), ``device`` (str) and a ``plot`` (path of a PNG it wrote into ``out_dir()``).

The harness pins torch's threads first (``--threads``, default 1 on CPU; the count lands in the result as
``threads``), prints progress on stderr, and writes ``<name>.json`` and ``<name>.md`` into a fresh run
folder, ``runs/bench/<UTC time>/`` under the current directory; it never writes over the committed
``benchmarks/results/``. ``--publish`` copies a run folder's files into ``benchmarks/results/`` and
refreshes every docs/benchmarks.md block fenced by ``<!-- results:FILE.md -->`` ... ``<!-- /results -->`` from them,
so the figures in docs/benchmarks.md are the files' figures:

    python -m benchmarks monitor_overhead                      # -> runs/bench/<time>/monitor_overhead.{json,md}
    python -m benchmarks --publish runs/bench/<time>           # -> benchmarks/results/ + docs/benchmarks.md blocks
    python -m benchmarks monitor_overhead --publish            # both in one go
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import re
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "docs" / "benchmarks.md"  # the page whose result blocks --publish refreshes
_OUT: dict[str, Path] = {}
_BLOCK = re.compile(r"(<!-- results:(?P<file>[\w.\-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def available() -> list[str]:
    # gpu_* are standalone scripts (python benchmarks/gpu_x.py), not harness benchmarks
    names = (m.name for m in pkgutil.iter_modules([str(HERE)]))
    return sorted(n for n in names if not n.startswith(("_", "gpu_")))


def out_dir() -> Path:
    """The folder the running benchmark writes into (for plots and extra files)."""
    return _OUT.get("dir", Path.cwd())


def new_run_dir(root: Path | None = None) -> Path:
    """A fresh ``runs/bench/<UTC time>`` folder (suffixed if two runs start in the same second)."""
    root = root or Path.cwd() / "runs" / "bench"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path, n = root / stamp, 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{n}"
    return path


def to_markdown(result: dict) -> str:
    """Render a benchmark result dict as a Markdown section with one table."""
    lines = [f"# {result['title']}", ""]
    if result.get("device"):
        threads = f", {result['threads']} torch thread(s)" if "threads" in result else ""
        lines += [f"Device: {result['device']}{threads}", ""]
    rows = result.get("rows", [])
    if rows:
        cols: list[str] = []
        for row in rows:
            cols += [c for c in row if c not in cols]
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for row in rows:
            lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |")
        lines.append("")
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


def run(
    name: str, argv: list[str], out_dir: Path | None = None, suffix: str = "", threads: int | None = None
) -> dict:
    """Run benchmark ``name`` and write ``<name><suffix>.json`` / ``.md`` under ``out_dir`` (a new run folder by default)."""
    if name not in available():
        raise SystemExit(f"unknown benchmark {name!r}; choose one of: {', '.join(available())}")
    from benchmarks._common import pin_threads, progress, set_current

    # `python -m benchmarks` runs this file as __main__; a benchmark that imports benchmarks.__main__ for out_dir()
    # must get this module (and its _OUT), not a second copy
    sys.modules.setdefault("benchmarks.__main__", sys.modules[__name__])
    out_dir = Path(out_dir) if out_dir is not None else new_run_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    _OUT["dir"] = out_dir
    set_current(name)
    pinned = pin_threads(threads)
    progress(f"start: {pinned} torch thread(s), writing to {out_dir}")
    module = importlib.import_module(f"benchmarks.{name}")
    start = time.perf_counter()
    result = module.main(argv)
    result.setdefault("wall_s", round(time.perf_counter() - start, 1))
    result.setdefault("threads", pinned)
    plot = out_dir / Path(str(result.get("plot") or "")).name
    if suffix and result.get("plot") and plot.is_file() and not plot.stem.endswith(suffix):
        # the suffix names the run's files, its picture included, so a second run's PNG cannot overwrite the first's
        plot = plot.replace(plot.with_name(f"{plot.stem}{suffix}{plot.suffix}"))
        result["plot"] = plot.name
    (out_dir / f"{name}{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{name}{suffix}.md").write_text(to_markdown(result))
    print(to_markdown(result))
    print(f"wrote {out_dir / (name + suffix)}.json and .md")
    return result


def refresh_readme(readme: Path = README, results: Path = RESULTS) -> list[str]:
    """Rewrite each ``<!-- results:FILE.md -->`` block of ``readme`` with ``results/FILE.md``; returns the files used.

    The file's ``# title`` line becomes a bold line so the block sits inside any README section.
    """
    text = readme.read_text()
    used: list[str] = []

    def fill(m: re.Match) -> str:
        path = results / m["file"]
        if not path.exists():
            raise SystemExit(
                f"README block names {m['file']}, which is not in {results}; publish that run first"
            )
        used.append(m["file"])
        return m[1] + readme_block(path.read_text()) + m[4]

    new = _BLOCK.sub(fill, text)
    if new != text:
        readme.write_text(new)
    return used


def readme_block(markdown: str) -> str:
    """A results Markdown file as it appears inside the README (title in bold, not a heading)."""
    lines = markdown.rstrip("\n").splitlines()
    if lines and lines[0].startswith("# "):
        lines[0] = f"**{lines[0][2:]}**"
    return "\n".join(lines) + "\n"


def publish(run_dir: Path, results: Path = RESULTS, readme: Path = README) -> list[Path]:
    """Copy a run folder's ``.json``/``.md``/``.png`` into ``results`` and refresh the result blocks of docs/benchmarks.md."""
    run_dir = Path(run_dir)
    files = sorted(p for p in run_dir.glob("*") if p.suffix in (".json", ".md", ".png"))
    if not files:
        raise SystemExit(f"{run_dir} holds no benchmark results; run one first (python -m benchmarks NAME)")
    results.mkdir(parents=True, exist_ok=True)
    copied = [Path(shutil.copy2(p, results / p.name)) for p in files]
    used = refresh_readme(readme, results) if readme.exists() else []
    for p in copied:
        print(f"published {p}")
    if used:
        print(f"refreshed README blocks from: {', '.join(sorted(set(used)))}")
    return copied


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks", add_help=False)
    parser.add_argument("name", nargs="?")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/bench/<UTC time>)")
    parser.add_argument("--suffix", default="", help="appended to the result file names, e.g. -h200")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU)")
    parser.add_argument(
        "--publish",
        nargs="?",
        const="",
        default=None,
        metavar="RUN_DIR",
        help="copy RUN_DIR's results into benchmarks/results and refresh docs/benchmarks.md (after NAME: this run's)",
    )
    parser.add_argument("-h", "--help", action="store_true")
    args, rest = parser.parse_known_args(argv)
    if args.publish and not args.name:
        publish(Path(args.publish))
        return 0
    if (args.help and not args.name) or not args.name:
        print(
            "usage: python -m benchmarks <name> [--threads N] [--out DIR] [--suffix S] [--publish] [benchmark args]\n"
            "       python -m benchmarks --publish RUN_DIR\n"
        )
        print("benchmarks: " + ", ".join(available()))
        return 0
    if args.help:
        rest.append("--help")
    run(args.name, rest, args.out, args.suffix, args.threads)
    if args.publish is not None:
        publish(Path(args.publish) if args.publish else _OUT["dir"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
