"""Text loading and cleaning: the embedded corpus, user files, and ``clean_text``."""

from __future__ import annotations

import glob
import html
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LoadReport", "clean_text", "embedded_corpus", "load_texts", "resolve_paths"]

_TAG = re.compile(r"<[^>]*>")
# Control characters except tab/newline; they are noise in every corpus we have seen.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*(?:\n\s*)+")

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text", ".jsonl")


def clean_text(text: str, lowercase: bool = False) -> str:
    """Normalise one document: NFKC, HTML tags and entities out, control characters out, whitespace collapsed.

    Line structure survives (single newlines stay, runs of blank lines become one blank line), spaces and
    tabs collapse to one space, and leading/trailing whitespace goes. The function is idempotent:
    ``clean_text(clean_text(t)) == clean_text(t)``.

    Args:
        text: raw document.
        lowercase: also lower-case the result.

    Returns:
        The cleaned document (possibly empty).

    Example:
        >>> clean_text("<p>Hello&nbsp;&amp;   <b>world</b></p>\\x07")
        'Hello & world'
    """
    # Entities, NFKC and lower-casing can each create input for another step ("&amp;lt;", fullwidth "＜",
    # "&AMP;"), so the steps run to a fixed point; that is what makes the function idempotent.
    for _ in range(16):
        cleaned = _clean_once(text, lowercase)
        if cleaned == text:
            break
        text = cleaned
    return text


def _clean_once(text: str, lowercase: bool) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = html.unescape(text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _TAG.sub(" ", text)
    text = _CONTROL.sub(" ", text)
    if lowercase:
        text = text.lower()
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def embedded_corpus() -> dict[str, str]:
    """The corpus every CPython ships: ``pydoc_data.topics``, 79 documentation topics (~465 KB).

    Topic sizes run from ~200 B to ~62 KB, a natural long tail.

    Returns:
        ``{topic_name: text}`` in a stable (sorted) order.
    """
    from pydoc_data.topics import topics

    return {name: topics[name] for name in sorted(topics)}


def resolve_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files, folders (recursively, text suffixes only) and globs into a sorted file list.

    Raises:
        FileNotFoundError: a path or glob matches nothing; the message names it.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for entry in paths:
        entry = os.path.expanduser(str(entry))
        if any(ch in entry for ch in "*?["):
            matched = sorted(Path(p) for p in glob.glob(entry, recursive=True) if Path(p).is_file())
            if not matched:
                raise FileNotFoundError(
                    f"glob {entry!r} matched no files; check the pattern or the working directory"
                )
            files += matched
        elif Path(entry).is_dir():
            matched = sorted(p for p in Path(entry).rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if not matched:
                raise FileNotFoundError(
                    f"folder {entry!r} holds no text files ({', '.join(TEXT_SUFFIXES)}); point data.paths at the files"
                )
            files += matched
        elif Path(entry).is_file():
            files.append(Path(entry))
        else:
            raise FileNotFoundError(f"data path {entry!r} does not exist; pass a file, folder or glob")
    return files


@dataclass
class LoadReport:
    """What ``load_texts`` read: counts a user can check against their expectations."""

    files: int = 0
    documents: int = 0
    bytes_read: int = 0
    replaced_bytes: int = 0
    empty_skipped: int = 0
    skipped_files: list[str] = field(default_factory=list)


def _iter_file_documents(path: Path, report: LoadReport) -> Iterator[tuple[str, str]]:
    raw = path.read_bytes()
    report.bytes_read += len(raw)
    text = raw.decode("utf-8", errors="replace")
    # U+FFFD already present in valid UTF-8 is counted too; that is rare and harmless for a report.
    report.replaced_bytes += text.count("\ufffd")
    if path.suffix == ".jsonl":
        import json

        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                report.skipped_files.append(f"{path}:{lineno} (invalid JSON)")
                continue
            value = record.get("text") if isinstance(record, dict) else None
            if not isinstance(value, str):
                report.skipped_files.append(f"{path}:{lineno} (no string 'text' field)")
                continue
            yield f"{path}:{lineno}", value
    else:
        yield str(path), text


def load_texts(
    paths: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
    lowercase: bool = False,
    clean: bool = True,
) -> tuple[dict[str, str], LoadReport]:
    """Read documents from files, folders or globs (or the embedded corpus when ``paths`` is None).

    ``.jsonl`` files contribute one document per line (its ``text`` field); other files are one document each.
    Undecodable bytes are replaced with U+FFFD and counted; documents that are empty after cleaning are
    skipped and counted.

    Returns:
        ``({name: cleaned_text}, LoadReport)``.

    Raises:
        FileNotFoundError: a path matches nothing.
        ValueError: nothing usable is left; the message gives the counts.
    """
    report = LoadReport()
    if paths is None:
        items: Iterable[tuple[str, str]] = embedded_corpus().items()
    else:
        files = resolve_paths(paths)
        report.files = len(files)
        items = (doc for f in files for doc in _iter_file_documents(f, report))
    docs: dict[str, str] = {}
    for name, text in items:
        if clean:
            text = clean_text(text, lowercase=lowercase)
        if not text.strip():
            report.empty_skipped += 1
            continue
        docs[name] = text
    report.documents = len(docs)
    if not docs:
        raise ValueError(
            f"the corpus is empty: {report.files} file(s), {report.bytes_read} bytes, "
            f"{report.empty_skipped} empty document(s) after cleaning; point data.paths at text files"
        )
    return docs, report
