"""The README is executable: every ```bash block's commands run through a real subprocess, bounded.

Convention (documented in the README's Development section). An HTML comment on the line right above a
```bash fence tags the block; several tags may share one comment, separated by ``;``:

- no tag: the block runs in the full sweep (``pytest -m slow tests/test_readme.py``).
- ``<!-- readme-test: fast -->``: it also runs in the default ``pytest -m "not slow"`` (keep these cheap).
- ``<!-- readme-test: skip (why) -->``: never run (installs, GPUs, clusters, a command that runs the tests).
- ``<!-- readme-test: skip-lines REGEX -->``: lines matching REGEX are not run (illustrative placeholders
  such as ``my_project.MyModule``); the rest of the block runs.

Each command (comment lines dropped, ``\\`` continuations joined) runs with ``bash -e`` in a sandbox folder
holding the corpora the README's examples name (``raw/``, ``notes/``, ``my_corpus/``, ``data/train``,
``data/val``); blocks run in README order in one sandbox, so a later block can use what an earlier one wrote
(``clean.jsonl``, ``runs/gpt-tiny/checkpoints/last.ckpt``). ``kit fit|validate|test|predict`` are bounded:
a ``kit`` shim first on ``PATH`` appends ``BOUND`` (3 steps, 2 batches per evaluation), and the last value
of an option wins, so a README command keeps every other argument it shows.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BOUND = [
    "--trainer.max_steps=3",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.limit_predict_batches=2",
    "--trainer.enable_progress_bar=false",
]
_FENCE = re.compile(
    r"(?:<!-- readme-test: (?P<tags>[^>]*?) -->\n)?```(?P<lang>bash|sh)\n(?P<body>.*?)```", re.S
)


@dataclass
class Block:
    line: int
    commands: list[str]
    fast: bool = False
    skip: str | None = None
    skip_lines: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"README.md:{self.line}"


def parse_blocks(text: str) -> list[Block]:
    """Every ```bash block with its tags and its commands (comments dropped, continuations joined)."""
    blocks = []
    for m in _FENCE.finditer(text):
        block = Block(line=text[: m.start("body")].count("\n"), commands=[])
        for tag in (t.strip() for t in (m["tags"] or "").split(";") if t.strip()):
            if tag == "fast":
                block.fast = True
            elif tag.startswith("skip-lines "):
                block.skip_lines.append(tag.removeprefix("skip-lines ").strip())
            elif tag.startswith("skip"):
                block.skip = tag.removeprefix("skip").strip(" ()") or "tagged skip"
            else:
                raise ValueError(f"README.md:{block.line}: unknown readme-test tag {tag!r}")
        joined = re.sub(r"\s*\\\n\s*", " ", m["body"])
        for raw in joined.splitlines():
            command = _strip_comment(raw).strip()
            if command and not any(re.search(p, command) for p in block.skip_lines):
                block.commands.append(command)
        blocks.append(block)
    return blocks


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment``; a ``#`` inside quotes or inside a word stays."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def make_sandbox(path: Path) -> dict[str, str]:
    """The folder and environment the README's commands run in; returns the environment."""
    from kit.data.text import embedded_corpus

    docs = list(embedded_corpus().items())
    (path / "raw").mkdir()
    with open(path / "raw" / "part-0.jsonl", "w") as f:
        for _, text in docs[:40]:
            f.write(json.dumps({"text": text}) + "\n")
    for folder, chosen in (
        ("notes", docs[40:50]),
        ("my_corpus/a", docs[:30]),
        ("my_corpus/b", docs[30:60]),
        ("data/train", docs[:60]),
        ("data/val", docs[60:]),
    ):
        (path / folder).mkdir(parents=True)
        for name, text in chosen:
            (path / folder / f"{name}.txt").write_text(text)
    bin_dir = path / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "kit"
    shim.write_text(
        "#!/bin/bash\n"
        'case "$1" in\n'
        f'  fit|validate|test|predict) exec "{sys.executable}" -m kit.cli "$@" {" ".join(BOUND)} ;;\n'
        f'  *) exec "{sys.executable}" -m kit.cli "$@" ;;\n'
        "esac\n"
    )
    shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.setdefault("KIT_CACHE", str(ROOT / ".kit_cache"))
    env.update({"WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"})
    return env


def run_block(block: Block, sandbox: Path, env: dict[str, str], timeout: int = 600) -> None:
    for command in block.commands:
        proc = subprocess.run(
            ["bash", "-ec", command], cwd=sandbox, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, (
            f"{block.id}: `{command}` exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )


BLOCKS = parse_blocks(README.read_text())


def test_the_convention_parses_tags_comments_and_continuations() -> None:
    text = (
        "<!-- readme-test: fast; skip-lines my_project -->\n```bash\n"
        "kit plan --list-gpus   # a comment\nkit fit --model my_project.M\n"
        "kit data clean 'raw/**/*.jsonl' \\\n     -o clean.jsonl\n# only a comment\n```\n"
        "<!-- readme-test: skip (needs a GPU) -->\n```bash\nkit fit --trainer.accelerator gpu\n```\n"
        "```bash\nkit fit --data.init_args.paths 'a#b'  # hash inside quotes stays\n```\n"
    )
    fast, skipped, plain = parse_blocks(text)
    assert fast.fast and fast.commands == [
        "kit plan --list-gpus",
        "kit data clean 'raw/**/*.jsonl' -o clean.jsonl",
    ]
    assert skipped.skip == "needs a GPU" and not plain.fast and plain.skip is None
    assert plain.commands == ["kit fit --data.init_args.paths 'a#b'"]
    with pytest.raises(ValueError, match="unknown readme-test tag 'fsat'"):
        parse_blocks("<!-- readme-test: fsat -->\n```bash\nkit\n```\n")
    assert BLOCKS and any(b.fast for b in BLOCKS), "tag at least one cheap README block fast"


def test_fast_readme_blocks_run_as_written(tmp_path) -> None:
    env = make_sandbox(tmp_path)
    for block in [b for b in BLOCKS if b.fast and not b.skip]:
        run_block(block, tmp_path, env)


@pytest.mark.slow
def test_every_readme_block_runs_as_written(tmp_path) -> None:
    """The full sweep, in README order, in one sandbox (a later block may use an earlier block's output)."""
    env = make_sandbox(tmp_path)
    for block in [b for b in BLOCKS if not b.skip]:
        run_block(block, tmp_path, env)
