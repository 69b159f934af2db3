"""The README and the guides in docs/ are executable: every ```bash block's commands run through a real
subprocess, bounded.

Convention (documented in docs/development.md). An HTML comment on the line right above a
```bash fence tags the block; several tags may share one comment, separated by ``;``:

- no tag: the block runs in the full sweep (``pytest -m slow tests/test_readme.py``).
- ``<!-- readme-test: fast -->``: it also runs in the default ``pytest -m "not slow"`` (keep these cheap).
- ``<!-- readme-test: skip (why) -->``: never run (installs, GPUs, clusters, a command that runs the tests).
- ``<!-- readme-test: skip-lines REGEX -->``: lines matching REGEX are not run (illustrative placeholders
  such as ``my_project.MyModule``); the rest of the block runs.

Each command (comment lines dropped, ``\\`` continuations joined) runs with ``bash -e`` in a sandbox folder
holding the corpora the examples name (``raw/``, ``notes/``, ``my_corpus/``, ``data/train``, ``data/val``);
one sandbox per page (``README.md``, ``docs/x.md``), its blocks run in page order, so a later block can use what
an earlier one on the same page wrote (``clean.jsonl``, ``runs/gpt-tiny/version_0/checkpoints/last.ckpt``).
``kit fit|validate|test|predict`` are bounded: a ``kit`` shim first on ``PATH`` appends ``BOUND`` (3 steps,
2 batches per evaluation), and the last value of an option wins, so a command keeps every other argument it
shows. Block ids name the page and the line: ``README.md:19``, ``docs/data.md:8``.

The same file keeps the README a front door (at most ``README_MAX_LINES`` lines, a link to every guide, links
that resolve), keeps tracker numbers and accounts of how the work was done out of README, docs and changelog,
and checks that the result blocks of ``docs/benchmarks.md`` are the committed files in ``benchmarks/results/``.
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
DOCS = ROOT / "docs"
CHANGELOG = ROOT / "CHANGELOG.md"
README_MAX_LINES = 400
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
    page: str = "README.md"

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def parse_blocks(text: str, page: str = "README.md") -> list[Block]:
    """Every ```bash block of ``page`` with its tags and its commands (comments dropped, continuations joined).

    Example:
        >>> [b.commands for b in parse_blocks("```bash\nkit recipes  # list\n```\n")]
        [['kit recipes']]
    """
    blocks = []
    for m in _FENCE.finditer(text):
        block = Block(line=text[: m.start("body")].count("\n"), commands=[], page=page)
        for tag in (t.strip() for t in (m["tags"] or "").split(";") if t.strip()):
            if tag == "fast":
                block.fast = True
            elif tag.startswith("skip-lines "):
                block.skip_lines.append(tag.removeprefix("skip-lines ").strip())
            elif tag.startswith("skip"):
                block.skip = tag.removeprefix("skip").strip(" ()") or "tagged skip"
            else:
                raise ValueError(f"{block.id}: unknown readme-test tag {tag!r}")
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
    """The folder and environment a page's commands run in; returns the environment."""
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


def pages() -> list[Path]:
    """The executable pages: the README, then every guide in docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def page_name(path: Path) -> str:
    """``README.md``, ``docs/data.md``: a page's path from the repository root (any other path as it is)."""
    path = path.resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


BLOCKS = {page_name(p): parse_blocks(p.read_text(), page_name(p)) for p in pages()}
FAST_PAGES = [name for name, blocks in BLOCKS.items() if any(b.fast and not b.skip for b in blocks)]
RUN_PAGES = [name for name, blocks in BLOCKS.items() if any(b.commands and not b.skip for b in blocks)]


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
    with pytest.raises(ValueError, match="docs/x.md:2: unknown readme-test tag"):
        parse_blocks("<!-- readme-test: fsat -->\n```bash\nkit\n```\n", "docs/x.md")
    assert parse_blocks("text\n\n```bash\nkit\n```\n", "docs/x.md")[0].id == "docs/x.md:3"
    assert FAST_PAGES, "tag at least one cheap block fast"
    assert any(name.startswith("docs/") for name in BLOCKS), "docs/ holds the guides; none was found"


@pytest.mark.parametrize("page", FAST_PAGES)
def test_fast_blocks_run_as_written(page: str, tmp_path) -> None:
    env = make_sandbox(tmp_path)
    for block in [b for b in BLOCKS[page] if b.fast and not b.skip]:
        run_block(block, tmp_path, env)


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES)
def test_every_block_runs_as_written(page: str, tmp_path) -> None:
    """The full sweep of one page, in page order, in one sandbox (a later block may use an earlier one's output)."""
    env = make_sandbox(tmp_path)
    for block in [b for b in BLOCKS[page] if not b.skip]:
        run_block(block, tmp_path, env)


# --- the README is a front door; the docs hold the rest ------------------------------------------------------

_LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} (?P<title>.+?)\s*$", re.M)
_CODE = re.compile(r"```.*?```", re.S)
# Tracker references and accounts of how the work was done ("issue 15", "#12", "the session's GPU time").
_PROCESS_WORDS = re.compile(r"\bissues?\b|\bsessions?\b|(?<![\w&`])#\d+\b", re.I)


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens.

    Example:
        >>> slug("GradientHealth and `kit doctor`: 2 checks")
        'gradienthealth-and-kit-doctor-2-checks'
    """
    text = re.sub(r"[`*]|<[^>]+>", "", title).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m["title"]) for m in _HEADING.finditer(_CODE.sub("", path.read_text()))}


def broken_links(path: Path) -> list[str]:
    """The relative links of a Markdown file whose file or heading anchor does not exist."""
    broken = []
    for m in _LINK.finditer(_CODE.sub("", path.read_text())):
        target = m["target"]
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: checked by nobody here
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target} (no file {dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {page_name(dest)})")
    return broken


def user_pages() -> list[Path]:
    return [*pages(), CHANGELOG]


def without_result_blocks(text: str) -> str:
    return re.sub(r"<!-- results:[\w.\-]+ -->\n.*?<!-- /results -->", "", text, flags=re.S)


def test_readme_is_short_and_links_every_guide() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, over {README_MAX_LINES}: move the detail to a page in docs/ and link it"
    )
    text = README.read_text()
    missing = [page_name(p) for p in sorted(DOCS.glob("*.md")) if f"]({page_name(p)}" not in text]
    assert not missing, f"README.md does not link {missing}; add them to its 'Read more' table"
    assert "](CHANGELOG.md)" in text, "README.md does not link CHANGELOG.md"


def test_the_readme_table_lists_the_seven_methods_with_links() -> None:
    text = README.read_text()
    section = text[text.index("## The seven methods") :]
    rows = re.findall(r"^\| (\d)\. [a-z]+ \|.*\]\((?:docs/[\w-]+\.md|#[\w-]+)\) \|$", section, re.M)
    assert rows == [str(i) for i in range(1, 8)], (
        "the seven-methods table needs rows 1-7, each ending in a link"
    )


@pytest.mark.parametrize("path", user_pages(), ids=page_name)
def test_links_resolve(path: Path) -> None:
    assert path.exists(), f"{page_name(path)} is missing"
    assert not broken_links(path), f"{page_name(path)}: broken links {broken_links(path)}"


def test_the_link_checker_finds_a_missing_file_and_a_missing_heading(tmp_path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n## Some `code` here\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#some-code-here) [gone](nope.md) [bad](a.md#nothing) [web](https://x.y/z)\n")
    found = broken_links(page)
    assert len(found) == 2 and "nope.md" in found[0] and "#nothing" in found[1]


@pytest.mark.parametrize("path", user_pages(), ids=page_name)
def test_no_tracker_numbers_or_accounts_of_the_work(path: Path) -> None:
    hits = []
    for number, line in enumerate(without_result_blocks(path.read_text()).splitlines(), 1):
        hits += [f"{number}: {line.strip()[:100]}" for _ in _PROCESS_WORDS.finditer(line)]
    assert not hits, f"{page_name(path)} speaks of trackers or of how the work was done: {hits}"


def test_the_process_word_check_catches_what_it_should() -> None:
    caught = ["GPU performance suite (issue 15)", "see #12", "the session's GPU time", "the monitoring issue"]
    clean = ["`#` ratio 0.1", "&#39; entity", "seeds 0, 1, 2", "a bash script: #!/bin/bash", "tissues"]
    assert all(_PROCESS_WORDS.search(s) for s in caught)
    assert not any(_PROCESS_WORDS.search(s) for s in clean)


def test_docs_result_blocks_match_the_committed_results() -> None:
    """The figures a results block shows are its file's (``python -m benchmarks --publish`` refreshes them)."""
    from benchmarks.__main__ import RESULTS, readme_block

    text = (DOCS / "benchmarks.md").read_text()
    blocks = re.findall(r"<!-- results:([\w.\-]+) -->\n(.*?)<!-- /results -->", text, re.S)
    assert blocks, "docs/benchmarks.md holds no <!-- results:FILE.md --> block"
    for name, body in blocks:
        assert body == readme_block((RESULTS / name).read_text()), (
            f"docs/benchmarks.md block {name} differs from benchmarks/results/{name}; run --publish"
        )
    for path in pages():
        if path.name != "benchmarks.md":
            assert "<!-- results:" not in path.read_text(), (
                f"{page_name(path)} pastes a results block: link docs/benchmarks.md instead"
            )
