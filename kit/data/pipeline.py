"""Streaming data pipeline: clean -> filter -> exact dedup -> near dedup, with a report.

Documents flow through one at a time, so a corpus larger than memory only costs the dedup indexes
(16 bytes per kept document for exact dedup, one MinHash signature plus LSH entries for near dedup). Each
text is normalised once for both dedup steps. For many processes and indexes on disk, the same decisions
come from ``kit.data.scaleout.clean_corpus`` (``kit data clean --workers N``).

Example:
    >>> pipe = DataPipeline(filters=[], near_dedup=False)
    >>> kept = list(pipe.process(["<b>Hello</b> world", "hello world!", ""]))
    >>> kept, pipe.report.docs_out, sorted(pipe.report.removed.items())
    (['Hello world'], 1, [('clean:empty', 1), ('exact_dup', 1)])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kit.data.dedup import ExactDeduplicator, MinHashDeduplicator, fingerprint
from kit.data.filters import DocFilter, FilterChain, default_filters

__all__ = ["STAGES", "DataPipeline", "PipelineReport", "utf8_len"]

# The steps whose CPU time PipelineReport.seconds records, in pipeline order.
STAGES = ("clean", "filters", "normalise + exact dedup", "MinHash signatures", "LSH index")

Document = str | dict[str, Any]


def utf8_len(text: str) -> int:
    """Length of ``text`` in UTF-8 bytes, without encoding it when it is ASCII.

    Example:
        >>> utf8_len("abc"), utf8_len("é")
        (3, 2)
    """
    return len(text) if text.isascii() else len(text.encode("utf-8"))


@dataclass
class PipelineReport:
    """What a pipeline run did: documents and bytes in and out, and what each step removed.

    ``removed`` maps a reason (``"clean:empty"``, ``"length:min_chars"``, ``"gopher_quality:stop_words"``,
    ``"exact_dup"``, ``"near_dup"``, ...) to a document count; ``examples`` keeps up to ``keep_examples``
    removed texts per reason (truncated to 300 characters). ``seconds`` is the CPU time of this process per
    step (:data:`STAGES`), for finding where the time goes; it is left out of :meth:`to_dict`, which describes
    the data only. ``near_dup_capped`` counts the kept documents whose near-dedup search stopped at
    ``max_candidates`` per band (:class:`kit.data.dedup.MinHashDeduplicator`): a templated corpus shows it.
    """

    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    minhash: dict[str, float | int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    near_dup_capped: int = 0

    def add_seconds(self, stage: str, start: float) -> float:
        """Add the CPU time since ``start`` (a ``time.process_time()``) to ``stage``; return the time now."""
        now = time.process_time()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - start
        return now

    def removed_pct(self, reason: str) -> float:
        """Share of input documents removed for ``reason``, in percent."""
        return 100.0 * self.removed.get(reason, 0) / max(self.docs_in, 1)

    def by_step(self) -> dict[str, int]:
        """Removed counts summed per step (the part of each reason before ``:``)."""
        out: dict[str, int] = {}
        for reason, n in self.removed.items():
            out[reason.split(":")[0]] = out.get(reason.split(":")[0], 0) + n
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "removed": {
                r: {"docs": n, "pct": round(self.removed_pct(r), 3)} for r, n in self.removed.items()
            },
            "examples": self.examples,
            "minhash": self.minhash,
            "near_dup_capped": self.near_dup_capped,
        }

    def format(self) -> str:
        """A plain-text table for terminals and logs."""
        keep = 100.0 * self.docs_out / max(self.docs_in, 1)
        lines = [
            f"documents: {self.docs_in:,} in -> {self.docs_out:,} out ({keep:.1f}% kept)",
            f"bytes:     {self.bytes_in:,} in -> {self.bytes_out:,} out",
            f"{'removed by':<40} {'docs':>10} {'%':>7}",
        ]
        for reason, n in sorted(self.removed.items(), key=lambda kv: -kv[1]):
            lines.append(f"{reason:<40} {n:>10,} {self.removed_pct(reason):>6.2f}%")
        if self.minhash:
            lines.append(
                f"near dedup: {self.minhash['num_perm']} perms = {self.minhash['bands']} bands x "
                f"{self.minhash['rows']} rows, word {self.minhash['ngram']}-grams, "
                f"LSH threshold ~{self.minhash['lsh_threshold']:.3f}"
            )
        if self.near_dup_capped:
            lines.append(
                f"near dedup compared {self.near_dup_capped:,} document(s) with only the "
                f"{self.minhash.get('max_candidates', 0)} most recent kept documents of a crowded LSH bucket "
                "(max_candidates; a templated corpus crowds buckets)"
            )
        return "\n".join(lines)


class DataPipeline:
    """Clean, filter and deduplicate a stream of documents.

    Args:
        filters: a ``FilterChain``, a list of filters / ``keep(text)`` callables, or ``None`` for
            ``default_filters()`` (length, Gopher quality, Gopher repetition). ``[]`` disables filtering.
        clean: ``True`` for ``kit.data.text.clean_text``, ``False`` to skip, or any ``str -> str`` callable.
        lowercase: passed to ``clean_text`` when ``clean=True``.
        exact_dedup: drop documents whose normalised text was seen before.
        near_dedup: drop MinHash near-duplicates of earlier documents.
        minhash: keyword arguments for ``MinHashDeduplicator`` (ngram, bands, rows, seed, verify, ...).
        keep_examples: removed texts to keep per reason in the report.
        text_key: the field holding the text when documents are dicts (jsonl records).

    Example:
        >>> docs, report = DataPipeline(filters=[]).run(["a b c d e f", "a b c d e f"])
        >>> len(docs), report.removed
        (1, {'exact_dup': 1})
    """

    def __init__(
        self,
        filters: DocFilter | Iterable[DocFilter | Callable[[str], bool]] | None = None,
        clean: bool | Callable[[str], str] = True,
        lowercase: bool = False,
        exact_dedup: bool = True,
        near_dedup: bool = True,
        minhash: dict[str, Any] | None = None,
        keep_examples: int = 0,
        text_key: str = "text",
    ) -> None:
        if filters is None:
            self.filter: DocFilter = default_filters()
        elif isinstance(filters, DocFilter):
            self.filter = filters
        else:
            self.filter = FilterChain(filters)
        if clean is True:
            from kit.data.text import clean_text

            self._clean: Callable[[str], str] | None = lambda t: clean_text(t, lowercase=lowercase)
        elif clean is False:
            self._clean = None
        else:
            self._clean = clean
        self._exact = ExactDeduplicator() if exact_dedup else None
        self._near = MinHashDeduplicator(**(minhash or {})) if near_dedup else None
        if keep_examples < 0:
            raise ValueError(f"keep_examples={keep_examples} must be >= 0")
        self.keep_examples = keep_examples
        self.text_key = text_key
        self.report = PipelineReport(minhash=self._near.describe() if self._near is not None else {})

    def record_removed(self, reason: str, text: str) -> None:
        """Count a removal for ``reason`` and keep ``text`` as an example while there is room."""
        self.report.removed[reason] = self.report.removed.get(reason, 0) + 1
        if self.keep_examples:
            bucket = self.report.examples.setdefault(reason, [])
            if len(bucket) < self.keep_examples:
                bucket.append(text[:300])

    def screen(self, text: str) -> tuple[str, str | None]:
        """Clean and filter one text without touching the report or the dedup indexes.

        Returns:
            ``(cleaned_text, None)`` if it passes, else ``(cleaned_text, reason)``.
        """
        return self.screen_many([text])[0]

    def screen_many(self, texts: Sequence[str]) -> list[tuple[str, str | None]]:
        """:meth:`screen` for a batch: filters with batched work (the repetition rules) run once over it."""
        rep = self.report
        start = time.process_time()
        cleaned = [self._clean(t) for t in texts] if self._clean is not None else list(texts)
        start = rep.add_seconds("clean", start)
        reasons: list[str | None] = [None if t.strip() else "clean:empty" for t in cleaned]
        todo = [i for i, why in enumerate(reasons) if why is None]
        for i, why in zip(todo, self.filter.reasons([cleaned[i] for i in todo])):
            reasons[i] = why
        rep.add_seconds("filters", start)
        return list(zip(cleaned, reasons))

    def check(self, text: str) -> tuple[str, str | None]:
        """Run one text through every step, updating the report and dedup indexes.

        Returns:
            ``(cleaned_text, None)`` if kept, else ``(cleaned_text, reason)``.
        """
        return self.admit(text, *self.screen(text))

    def admit(self, raw: str, text: str, reason: str | None) -> tuple[str, str | None]:
        """Count a screened text (``raw`` before cleaning, ``text`` after) and run it through dedup."""
        return self.admit_many([raw], [(text, reason)])[0]

    def admit_many(
        self, raws: Sequence[str], screened: Sequence[tuple[str, str | None]]
    ) -> list[tuple[str, str | None]]:
        """:meth:`admit` for a batch, in order; the MinHash signatures of the batch are one vectorised pass.

        The decisions are those of :meth:`admit` called once per text: exact dedup never depends on near
        dedup, and near dedup sees the documents in input order.

        Args:
            raws: the texts before cleaning (for the byte counts and the report's examples).
            screened: ``(cleaned_text, reason)`` per text, from :meth:`screen_many`.

        Returns:
            ``(cleaned_text, None)`` per kept text, else ``(cleaned_text, reason)``.
        """
        rep = self.report
        reasons = [reason for _, reason in screened]
        if self._exact is not None or self._near is not None:
            start = time.process_time()
            todo = [i for i, reason in enumerate(reasons) if reason is None]
            prints = [fingerprint(screened[i][0]) for i in todo]  # one normalisation for both dedup steps
            if self._exact is not None:
                for i, (_, digest) in zip(todo, prints):
                    if not self._exact.add_digest(digest):
                        reasons[i] = "exact_dup"
            start = rep.add_seconds("normalise + exact dedup", start)
            if self._near is not None:
                near = [(i, norm) for i, (norm, _) in zip(todo, prints) if reasons[i] is None]
                sigs = self._near.hasher.signatures([norm for _, norm in near])
                start = rep.add_seconds("MinHash signatures", start)
                keys = [rep.docs_in + i + 1 for i, _ in near]  # the document's 1-based position in the stream
                for (i, _), hit in zip(near, self._near.add_signatures(keys, sigs)):
                    if hit is not None:
                        reasons[i] = "near_dup"
                rep.near_dup_capped = self._near.cap_hits
                rep.add_seconds("LSH index", start)
        out = []
        for raw, (text, _), reason in zip(raws, screened, reasons):
            rep.docs_in += 1
            rep.bytes_in += utf8_len(raw)
            if reason is not None:
                self.record_removed(reason, raw)
            else:
                rep.docs_out += 1
                rep.bytes_out += utf8_len(text)
            out.append((text, reason))
        return out

    def process(self, docs: Iterable[Document], batch_size: int = 256) -> Iterator[Document]:
        """Yield the kept documents (same type as the input; dicts get their text field replaced).

        Documents are screened and hashed ``batch_size`` at a time (the batched filters' sorts and the MinHash
        pass serve the whole batch) and deduplicated in input order, so the result does not depend on
        ``batch_size``.

        Raises:
            KeyError: a dict document lacks ``text_key``.
        """
        batch: list[Document] = []
        for doc in docs:
            if isinstance(doc, dict) and self.text_key not in doc:
                raise KeyError(f"document has no {self.text_key!r} field (keys: {sorted(doc)}); set text_key")
            batch.append(doc)
            if len(batch) >= batch_size:
                yield from self._process_batch(batch)
                batch = []
        yield from self._process_batch(batch)

    def _process_batch(self, batch: list[Document]) -> Iterator[Document]:
        raws = [str(d[self.text_key]) if isinstance(d, dict) else d for d in batch]
        for doc, (text, reason) in zip(batch, self.admit_many(raws, self.screen_many(raws))):
            if reason is None:
                yield {**doc, self.text_key: text} if isinstance(doc, dict) else text

    def run(self, docs: Iterable[Document]) -> tuple[list[Document], PipelineReport]:
        """Process everything into a list; convenient for corpora that fit in memory."""
        kept = list(self.process(docs))
        return kept, self.report
