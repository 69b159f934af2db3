"""Entry point: ``python -m benchmarks <name> [args...]``.

A benchmark is a module ``benchmarks/<name>.py`` with ``main(argv: list[str]) -> dict``. The dict
holds ``title`` (str), ``rows`` (list of flat dicts, one table row each), and optionally
``notes`` (list of str) and ``device`` (str). This harness writes it as JSON and as a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def available() -> list[str]:
    here = Path(__file__).resolve().parent
    # gpu_* are standalone scripts (python benchmarks/gpu_x.py), not harness benchmarks
    names = (m.name for m in pkgutil.iter_modules([str(here)]))
    return sorted(n for n in names if not n.startswith(("_", "gpu_")))


def to_markdown(result: dict) -> str:
    """Render a benchmark result dict as a Markdown section with one table."""
    lines = [f"# {result['title']}", ""]
    if result.get("device"):
        lines += [f"Device: {result['device']}", ""]
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


def run(name: str, argv: list[str], out_dir: Path = RESULTS, suffix: str = "") -> dict:
    """Run benchmark ``name`` and write ``<name><suffix>.json`` / ``.md`` under ``out_dir``."""
    if name not in available():
        raise SystemExit(f"unknown benchmark {name!r}; choose one of: {', '.join(available())}")
    module = importlib.import_module(f"benchmarks.{name}")
    start = time.perf_counter()
    result = module.main(argv)
    result.setdefault("wall_s", round(time.perf_counter() - start, 1))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{name}{suffix}.md").write_text(to_markdown(result))
    print(to_markdown(result))
    print(f"wrote {out_dir / (name + suffix)}.json and .md")
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks", add_help=False)
    parser.add_argument("name", nargs="?")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--suffix", default="", help="appended to the result file names, e.g. -h200")
    parser.add_argument("-h", "--help", action="store_true")
    args, rest = parser.parse_known_args(argv)
    if (args.help and not args.name) or not args.name:
        print("usage: python -m benchmarks <name> [--out DIR] [--suffix S] [benchmark args]\n")
        print("benchmarks: " + ", ".join(available()))
        return 0
    if args.help:
        rest.append("--help")
    run(args.name, rest, args.out, args.suffix)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
