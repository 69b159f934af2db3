"""The quick start's figures are what its command prints today.

The README's quick start runs ``kit fit`` (the embedded default recipe, seeded) and quotes the summary it ends
with. The slow test runs that command as a fresh machine would (default thread settings, an empty tokenizer
cache, a new folder) and compares every figure the README quotes from the summary (validation loss and
perplexity, the unigram baseline, and the best checkpoint's step and loss when its name is shown) with what the
run prints, to the printed digits: the run is seeded, so the same code gives the same digits.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Variables that pin thread counts; a fresh machine has none of them set.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
_FIGURES = {
    "val_loss": re.compile(r"^\s*val loss:\s+(?P<loss>\d+\.\d+)\s+\(perplexity (?P<ppl>\d+\.\d+)\)", re.M),
    "baseline": re.compile(
        r"^\s*unigram baseline val loss:\s+(?P<loss>\d+\.\d+)\s+\(perplexity (?P<ppl>\d+\.\d+)\)", re.M
    ),
    "best": re.compile(
        r"^\s*best checkpoint:\s+\S*?best-step(?P<step>\d+)-val(?P<loss>\d+\.\d+)\.ckpt", re.M
    ),
}


def summary_figures(text: str) -> dict[str, tuple[str, ...]]:
    """The figures of a ``kit fit`` summary, as the printed strings (so a comparison is exact to the digit).

    Example:
        >>> summary_figures("  val loss:        4.8278  (perplexity 124.94)\\n")["val_loss"]
        ('4.8278', '124.94')
    """
    found = {}
    for name, pattern in _FIGURES.items():
        matches = pattern.findall(text)
        if len(matches) > 1:
            raise ValueError(f"{len(matches)} '{name}' lines in one summary; expected one")
        if matches:
            found[name] = tuple(matches[0])
    return found


def readme_quickstart() -> str:
    """The README's quick-start section (from its heading to the next ``## `` heading)."""
    text = README.read_text()
    start = text.index("## Quick start")
    end = text.index("\n## ", start + 1)
    return text[start:end]


REQUIRED = ("val_loss", "baseline")


def test_the_readme_quotes_a_parseable_summary() -> None:
    quoted = summary_figures(readme_quickstart())
    assert set(REQUIRED) <= set(quoted), f"the quick start quotes {sorted(quoted)}; it must show {REQUIRED}"


def test_summary_figures_parses_a_summary_and_refuses_two() -> None:
    out = (
        "kit fit finished\n  best checkpoint: runs/gpt-tiny/version_0/checkpoints/best-step600-val4.828.ckpt\n"
        "  val loss:        4.8278  (perplexity 124.94)\n  unigram baseline val loss: 6.2241  (perplexity 504.78)\n"
    )
    assert summary_figures(out) == {
        "val_loss": ("4.8278", "124.94"),
        "baseline": ("6.2241", "504.78"),
        "best": ("600", "4.828"),
    }
    with pytest.raises(ValueError, match="2 'val_loss' lines"):
        summary_figures(out + "  val loss: 1.0000  (perplexity 2.72)\n")


@pytest.mark.slow
@pytest.mark.serial  # default threads beside another busy worker spin-wait: 3x slower measured, see .ci/run
def test_the_quick_start_prints_the_figures_the_readme_quotes(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update({"KIT_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"})
    proc = subprocess.run(
        [sys.executable, "-m", "kit.cli", "fit"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, (
        f"kit fit exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    printed, quoted = summary_figures(proc.stdout), summary_figures(readme_quickstart())
    assert set(printed) == set(_FIGURES), (
        f"kit fit's summary lacks {set(_FIGURES) - set(printed)}:\n{proc.stdout[-2000:]}"
    )
    printed = {name: printed[name] for name in quoted}  # every figure the README quotes, none it leaves out
    assert printed == quoted, (
        f"README.md's quick start quotes {quoted}, kit fit printed {printed}: copy the new summary into the README"
    )
