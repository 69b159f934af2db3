"""Text loading and cleaning: the embedded corpus, user files, and ``clean_text``."""

from __future__ import annotations

import glob
import html
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "LoadReport",
    "clean_text",
    "embedded_corpus",
    "is_binary",
    "iter_documents",
    "load_texts",
    "resolve_paths",
]

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
        if "&" not in cleaned and "<" not in cleaned and unicodedata.is_normalized("NFKC", cleaned):
            return cleaned  # no entity, no tag, already NFKC: another pass would change nothing
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
    """What the document reader read and skipped: counts a user can check against their expectations.

    ``kit fit`` (``TextDataModule``), ``kit data`` and ``kit doctor`` all read through
    :func:`iter_documents` and show :meth:`problems`, so a bad JSON line is counted and worded the same
    everywhere.
    """

    files: int = 0
    documents: int = 0
    bytes_read: int = 0
    replaced_bytes: int = 0
    empty_skipped: int = 0
    invalid_json: int = 0
    missing_text: int = 0
    binary_files: int = 0
    skipped_files: list[str] = field(default_factory=list)  # "path:line (reason)" of each skipped record

    def merge(self, other: LoadReport) -> None:
        """Add another report's counts (one report per source, merged for the whole corpus)."""
        for name in (
            "files",
            "documents",
            "bytes_read",
            "replaced_bytes",
            "empty_skipped",
            "invalid_json",
            "missing_text",
            "binary_files",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.skipped_files += other.skipped_files

    def problems(self) -> str | None:
        """One line naming what was skipped or replaced, or None when nothing was.

        Example:
            >>> LoadReport(invalid_json=1, skipped_files=["c.jsonl:2 (invalid JSON)"]).problems()
            "skipped 1 invalid JSON line(s): ['c.jsonl:2 (invalid JSON)']"
        """
        parts = []
        if self.invalid_json:
            parts.append(f"{self.invalid_json} invalid JSON line(s)")
        if self.missing_text:
            parts.append(f"{self.missing_text} JSON record(s) without a string text field")
        if self.binary_files:
            parts.append(f"{self.binary_files} binary file(s)")
        if self.empty_skipped:
            parts.append(f"{self.empty_skipped} empty document(s)")
        line = f"skipped {', '.join(parts)}" if parts else ""
        if self.skipped_files:
            # whole files first: one binary file weighs more than any number of bad lines
            files = [f for f in self.skipped_files if f.endswith("(binary file)")]
            shown = (files + [f for f in self.skipped_files if not f.endswith("(binary file)")])[:5]
            line += f": {shown}" + (" ..." if len(self.skipped_files) > 5 else "")
        if self.replaced_bytes:
            line += ("; " if line else "") + (
                f"{self.replaced_bytes} undecodable byte sequence(s) replaced with U+FFFD"
            )
        return line or None


# Like git: a NUL byte in the first 8000 bytes makes a file binary (an executable, an archive, an image),
# unless a UTF-16/32 byte-order mark says it is text in a wide encoding.
_SNIFF_BYTES = 8000
_WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff")


def is_binary(raw: bytes) -> bool:
    """Whether ``raw`` (a file's bytes, or its start) looks like a binary file rather than text.

    Example:
        >>> is_binary(b"\x7fELF\x02\x01\x01\x00"), is_binary("héllo".encode())
        (True, False)
    """
    return b"\0" in raw[:_SNIFF_BYTES] and not raw.startswith(_WIDE_BOMS)


def _decode(raw: bytes, report: LoadReport) -> str:
    text = raw.decode("utf-8", errors="replace")
    # U+FFFD already present in valid UTF-8 is counted too; that is rare and harmless for a report.
    report.replaced_bytes += text.count("\ufffd")
    return text


def iter_documents(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    report: LoadReport | None = None,
    text_key: str = "text",
) -> Iterator[tuple[str, str, int]]:
    """Stream ``(name, text, raw_bytes)`` from files, folders or globs: the kit's one document reader.

    ``.jsonl`` files give one document per line (its ``text_key`` field, named ``path:line``), read line by
    line so a file larger than memory is fine; other files are one document each. Undecodable bytes become
    U+FFFD. Blank lines are ignored; a line that is not JSON, or has no string ``text_key`` field, is
    skipped and counted in ``report`` (``invalid_json``, ``missing_text``, ``skipped_files``); so is a
    binary file (:func:`is_binary`: an executable or archive that a glob picked up), as ``binary_files``.

    Args:
        paths: files, folders (text suffixes only) or globs (:func:`resolve_paths`).
        report: filled in as documents are read (``files``, ``bytes_read``, ``replaced_bytes`` and the
            skips); ``documents`` is left to the caller, which may drop more.
        text_key: the JSONL field that holds the text.

    Raises:
        FileNotFoundError: a path matches nothing.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "d.jsonl"
        >>> _ = f.write_text('{"text": "a"}\\nnot json\\n')
        >>> report = LoadReport()
        >>> [text for _, text, _ in iter_documents(f, report)], report.invalid_json
        (['a'], 1)
    """

    report = report if report is not None else LoadReport()
    files = resolve_paths(paths)
    report.files += len(files)
    for path in files:
        if path.suffix != ".jsonl":
            raw = path.read_bytes()
            report.bytes_read += len(raw)
            if is_binary(raw):
                report.binary_files += 1
                report.skipped_files.append(f"{path} (binary file)")
                continue
            yield str(path), _decode(raw, report), len(raw)
            continue
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                report.bytes_read += len(raw)
                value = jsonl_text(_decode(raw, report), text_key, f"{path}:{lineno}", report)
                if value is not None:
                    yield f"{path}:{lineno}", value, len(raw)


def load_texts(
    paths: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
    lowercase: bool = False,
    clean: bool = True,
) -> tuple[dict[str, str], LoadReport]:
    """Read documents from files, folders or globs (or the embedded corpus when ``paths`` is None).

    Files are read by :func:`iter_documents` (``.jsonl``: one document per line, its ``text`` field; bad
    lines skipped and counted); documents that are empty after cleaning are skipped and counted too.

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
        items = ((name, text) for name, text, _ in iter_documents(paths, report))
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


def jsonl_text(line: str, text_key: str, place: str, report: LoadReport) -> str | None:
    """The ``text_key`` string of one JSONL line, or None: blank lines silently, bad ones counted on ``report``
    (``invalid_json`` / ``missing_text``, and ``place`` with the reason in ``skipped_files``).

    Example:
        >>> from types import SimpleNamespace
        >>> r = SimpleNamespace(invalid_json=0, missing_text=0, skipped_files=[])
        >>> jsonl_text('{"text": "hi"}', "text", "f:1", r), jsonl_text("{", "text", "f:2", r), r.skipped_files
        ('hi', None, ['f:2 (invalid JSON)'])
    """
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        report.invalid_json += 1
        report.skipped_files.append(f"{place} (invalid JSON)")
        return None
    value = record.get(text_key) if isinstance(record, dict) else None
    if not isinstance(value, str):
        report.missing_text += 1
        report.skipped_files.append(f"{place} (no string {text_key!r} field)")
        return None
    return value
