"""Clean, filter and deduplicate a corpus over many processes, with the dedup indexes on disk.

``kit data clean --workers N`` runs here. Two phases, like datatrove's MinHash pipeline:

1. **Per shard, in parallel** (one input file = one shard, large JSONL files cut into pieces of whole lines;
   ``workers`` processes, this one included, largest shards first): clean, filter, and for every document
   that passes, its exact digest (16 bytes) and MinHash signature (``num_perm`` x 4 bytes, a batch of
   documents per vectorised pass); the LSH band keys (``bands`` x 8 bytes) follow in the merge. All of it
   goes to files in a work folder: about 0.6 KB per document at the defaults, so memory does not grow with
   the corpus.
2. **One global merge**: exact digests and band keys are partitioned by hash into files small enough to sort
   in memory; sorting finds every document's earlier twin (exact) and its previous document in each LSH
   bucket (near). A pass in document order then makes the streaming pipeline's decisions: a document is a
   near duplicate if an earlier *kept* document shares a band and (with ``verify``) its estimated Jaccard
   similarity reaches the threshold; per band, only the ``max_candidates`` most recent kept documents are
   compared, so a templated corpus stays linear (:class:`kit.data.dedup.MinHashDeduplicator`). So the output is the same as :class:`kit.data.pipeline.DataPipeline`
   run over the shards in order, cross-shard duplicates included, whatever ``workers`` is.

What stays in memory: one byte per document (its decision), 32 bytes per LSH bucket collision (a document
sharing a band with an earlier one: rare outside near duplicates and templated pages, and at most ``bands``
per document: 448 B at the defaults), the signatures (all of them when they total at most 64 MB, about
150,000 documents at 112 permutations, which makes the walk about 3x faster; else the last 8192 read, 3.7 MB),
and one partition at a time (``records_in_memory`` records of 16-24 bytes, plus the sort's copies).

The work files live in a hidden folder beside the output (:mod:`kit.data.workdir`): a killed run's folder is
removed at the next start, or reused with ``resume``; the output is renamed into place at the end.

Example:
    >>> import tempfile, pathlib, json
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.txt").write_text("hello world " * 30)
    >>> _ = (d / "b.txt").write_text("Hello, world! " * 30)
    >>> stats = clean_corpus([d], d / "out.jsonl", CleanSettings(filters=[]), workers=1)
    >>> stats.report.docs_out, stats.report.removed
    (1, {'exact_dup': 1})
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import resource
import sys
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import SimpleQueue
from typing import IO, Any

import numpy as np

from kit.data.dedup import fingerprint
from kit.data.filters import DocFilter
from kit.data.pipeline import DataPipeline, PipelineReport, utf8_len
from kit.data.text import LoadReport, iter_documents, jsonl_text
from kit.data.workdir import (
    WorkFolder,
    atomic_output,
    check_output,
    input_files,
    mark_output,
    naming,
    plan_digest,
    save_done,
)

__all__ = ["CleanSettings", "CleanStats", "clean_corpus", "peak_rss_mb"]

Progress = Callable[[str, int, int], None]  # (stage, advance, total)


@dataclass
class CleanSettings:
    """What :func:`clean_corpus` does to each document: the :class:`DataPipeline` arguments, picklable.

    Args:
        filters: ``None`` for ``default_filters()``, ``[]`` for none, or filters / a ``FilterChain``
            (module-level objects, so worker processes can unpickle them).
        clean: run ``clean_text`` first.
        lowercase: passed to ``clean_text``.
        exact_dedup: drop repeats of a normalised text.
        near_dedup: drop MinHash near duplicates of earlier kept documents.
        minhash: ``MinHashDeduplicator`` arguments (ngram, bands, rows, seed, verify, verify_threshold).
        keep_examples: removed texts kept per reason in the report.
        text_key: the JSONL field holding the text.
    """

    filters: DocFilter | Sequence[Any] | None = None
    clean: bool = True
    lowercase: bool = False
    exact_dedup: bool = True
    near_dedup: bool = True
    minhash: dict[str, Any] = field(default_factory=dict)
    keep_examples: int = 0
    text_key: str = "text"

    def pipeline(self) -> DataPipeline:
        """The single-process pipeline that makes the same decisions."""
        return DataPipeline(
            filters=self.filters,
            clean=self.clean,
            lowercase=self.lowercase,
            exact_dedup=self.exact_dedup,
            near_dedup=self.near_dedup,
            minhash=self.minhash,
            keep_examples=self.keep_examples,
            text_key=self.text_key,
        )


@dataclass
class CleanStats:
    """What :func:`clean_corpus` did: the report, the reader's counts, and its resources."""

    report: PipelineReport
    reader: LoadReport
    shards: int
    workers: int
    index_bytes: int  # signatures, band keys, digests and text lengths written to the work folder
    peak_rss_mb: float  # the main process
    peak_worker_rss_mb: (
        float  # the largest spawned worker process (0 with one worker: all runs in the main one)
    )
    pieces: int = 0  # work units of the parallel phase: files, and pieces of large JSONL files
    near_dup_compared: int = 0  # kept signatures compared while verifying near duplicates (the cap bounds it)

    def bytes_per_doc(self) -> float:
        return self.index_bytes / max(self.report.docs_in, 1)


@dataclass
class _Shard:
    """One unit of phase-1 work: a whole input file, or a piece of a JSONL file (whole lines)."""

    index: int
    path: str
    folder: str
    settings: CleanSettings
    start: int = 0  # byte offset of the piece's first line
    end: int | None = None  # byte offset after its last line; None: the whole file, read by iter_documents
    first_line: int = 1  # the 1-based number of the piece's first line in the file


@dataclass
class _ShardResult:
    index: int
    n_pass: int
    bytes_read: int
    report: PipelineReport
    reader: LoadReport
    peak_rss_mb: float = 0.0  # of the process that screened it, when it finished
    pid: int = 0  # that process

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _ShardResult:
        """A result saved by a run that was killed later (``resume``); it counts as screened elsewhere."""
        return cls(
            **{**data, "report": PipelineReport(**data["report"]), "reader": LoadReport(**data["reader"])}
        )


def _split_points(path: Path, piece_bytes: int) -> list[tuple[int, int, int]]:
    """``(start, end, first_line)``: a JSONL file in ``round(size / piece_bytes)`` pieces of about equal size,
    each cut just after a newline (one piece when that rounds to at most 1)."""
    size = path.stat().st_size
    count = round(size / max(piece_bytes, 1))
    pieces: list[tuple[int, int, int]] = []
    start, line = 0, 1
    with open(path, "rb") as f:
        for k in range(1, count):
            target = size * k // count
            if target <= start:
                continue
            f.seek(target - 1)
            f.readline()  # to the start of the next line (a cut right after a newline stays there)
            end = f.tell()
            if end >= size:
                break
            f.seek(start)
            pieces.append((start, end, line))
            line += f.read(end - start).count(b"\n")
            start = end
    pieces.append((start, size, line))
    return pieces


def _iter_piece(task: _Shard, report: LoadReport, text_key: str) -> Iterator[tuple[str, str, int]]:
    """``iter_documents`` over the lines of one piece of a JSONL file: the same names (``path:line``), texts,
    skips and counts, so the pieces of a file read together give what the whole file gives."""
    if task.end is None:
        yield from iter_documents([task.path], report, text_key)
        return
    report.files += task.start == 0
    with open(task.path, "rb") as f:
        f.seek(task.start)
        pos, lineno = task.start, task.first_line
        while pos < task.end:
            raw = f.readline()
            pos, lineno = pos + len(raw), lineno + 1
            report.bytes_read += len(raw)
            line = raw.decode("utf-8", errors="replace")
            report.replaced_bytes += line.count("\ufffd")
            value = jsonl_text(line, text_key, f"{task.path}:{lineno - 1}", report)
            if value is not None:
                yield f"{task.path}:{lineno - 1}", value, len(raw)


def _tasks(paths: list[Path], folder: Path, settings: CleanSettings, piece_bytes: int | None) -> list[_Shard]:
    """Work units in input order: each file, JSONL files cut in pieces of about ``piece_bytes``."""
    tasks: list[_Shard] = []
    for path in paths:
        if piece_bytes is None or path.suffix != ".jsonl":
            tasks.append(_Shard(len(tasks), str(path), str(folder), settings))
            continue
        for start, end, line in _split_points(path, piece_bytes):
            tasks.append(_Shard(len(tasks), str(path), str(folder), settings, start, end, line))
    return tasks


def _task_bytes(task: _Shard) -> int:
    return (task.end - task.start) if task.end is not None else Path(task.path).stat().st_size


def _screen_shard(task: _Shard) -> _ShardResult:
    """Phase 1 for one shard: clean, filter, fingerprint; everything that passes goes to disk, then a
    ``.done`` file that lets a resumed run skip the shard."""
    with naming(task.folder):
        result = _screen_files(task)
        save_done(Path(task.folder), task.index, result.to_json())
    return result


def _screen_files(task: _Shard) -> _ShardResult:
    settings = task.settings
    pipe = settings.pipeline()
    near = pipe._near
    reader = LoadReport()
    base = Path(task.folder) / f"{task.index:06d}"
    n_pass, block = 0, 4096
    digests: list[bytes] = []
    sigs: list[np.ndarray] = []  # (docs, num_perm) blocks
    lengths: list[int] = []
    with (
        open(f"{base}.jsonl", "w", encoding="utf-8") as texts,
        open(f"{base}.raw", "w", encoding="utf-8") as raws,
        open(f"{base}.len", "wb") as len_f,
        open(f"{base}.digest", "wb") as dig_f,
        open(f"{base}.sig", "wb") as sig_f,
    ):

        def flush() -> None:
            dig_f.write(b"".join(digests))
            len_f.write(np.asarray(lengths, dtype="<i8").tobytes())
            if sigs:
                sig_f.write(np.concatenate(sigs).tobytes())
            digests.clear()
            sigs.clear()
            lengths.clear()

        def screen(batch: list[tuple[str, str]]) -> None:
            nonlocal n_pass
            rep = pipe.report
            norms: list[bytes] = []
            for (name, text), (cleaned, reason) in zip(batch, pipe.screen_many([t for _, t in batch])):
                rep.docs_in += 1
                rep.bytes_in += utf8_len(text)
                if reason is not None:
                    pipe.record_removed(reason, text)
                    continue
                n_pass += 1
                # the output line itself, so the serial write phase copies bytes instead of re-encoding JSON
                texts.write(json.dumps({"id": name, settings.text_key: cleaned}, ensure_ascii=False) + "\n")
                lengths.append(utf8_len(cleaned))
                if settings.keep_examples:
                    raws.write(json.dumps(text[:300], ensure_ascii=False) + "\n")
                norm, digest = fingerprint(cleaned)
                digests.append(digest)
                norms.append(norm)
            if near is not None and norms:
                sigs.append(near.hasher.signatures(norms))  # the whole batch in one vectorised pass
            if len(digests) >= block:
                flush()

        batch: list[tuple[str, str]] = []
        for name, text, _ in _iter_piece(task, reader, settings.text_key):
            batch.append((name, text))
            if len(batch) >= 256:
                screen(batch)
                batch = []
        screen(batch)
        flush()
    return _ShardResult(
        task.index, n_pass, reader.bytes_read, pipe.report, reader, peak_rss_mb(), os.getpid()
    )


class _Partitions:
    """Append fixed-size records to ``n`` files by a hash column, then read them back one file at a time."""

    def __init__(self, folder: Path, name: str, n: int, dtype: np.dtype) -> None:
        self.paths = [folder / f"{name}-{i:04d}.part" for i in range(n)]
        self.files = [open(p, "wb") for p in self.paths]  # noqa: SIM115 - closed in close()
        self.n, self.dtype = n, dtype

    def add(self, records: np.ndarray, hash_column: np.ndarray) -> None:
        part = (hash_column % np.uint64(self.n)).astype(np.int64)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.n + 1))
        for i in range(self.n):
            if bounds[i + 1] > bounds[i]:
                self.files[i].write(records[order[bounds[i] : bounds[i + 1]]].tobytes())

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __iter__(self):
        for p in self.paths:
            yield np.fromfile(p, dtype=self.dtype)
            p.unlink()


class _Merge:
    """Phase 2: global exact and near decisions from the shard files; one byte per document in memory."""

    _EXACT = np.dtype([("h0", "<u8"), ("h1", "<u8"), ("idx", "<i8")])
    _BAND = np.dtype([("key", "<u8"), ("slot", "<i8")])
    _SIG_CACHE = 8192
    _SIG_IN_MEMORY = 64 << 20  # bytes: up to this, every signature is read into one array for the walk

    def __init__(
        self, folder: Path, shards: list[_ShardResult], settings: CleanSettings, records: int
    ) -> None:
        self.folder, self.settings = folder, settings
        pipe = settings.pipeline()
        self.near = pipe._near
        self.counts = np.array([s.n_pass for s in shards], dtype=np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(self.counts)))
        self.total = int(self.offsets[-1])
        self.records = records  # records per partition held in memory at once
        self.decision = np.zeros(self.total, dtype=np.uint8)  # 0 kept, 1 exact_dup, 2 near_dup
        self._sig_files: dict[int, int] = {}  # shard -> open file descriptor
        self._cache: np.ndarray | None = None  # signatures read, row i % _SIG_CACHE (see _signatures)
        self._cached = np.empty(0, dtype=np.int64)  # the document in each row, or -1
        self._all: np.ndarray | None = None  # every signature, when they fit _SIG_IN_MEMORY
        self.cap_hits = 0  # documents whose LSH walk stopped at max_candidates in some band
        self.compared = 0  # kept signatures compared while verifying: the work the cap bounds

    def _base(self, shard: int) -> Path:
        return self.folder / f"{shard:06d}"

    def _chunks(self, shard: int, suffix: str, width: int, dtype: str):
        """(first global index, array) blocks of a shard's fixed-width file, read without mapping it.

        Blocks hold about 256k values, so their temporaries (band keys: a few uint64 copies) stay a few MB.
        """
        rows = max(256, (1 << 18) // width)
        n = int(self.counts[shard])
        with open(f"{self._base(shard)}.{suffix}", "rb") as f:
            for start in range(0, n, rows):
                count = min(rows, n - start)
                block = np.fromfile(f, dtype=dtype, count=count * width).reshape(count, width)
                yield int(self.offsets[shard]) + start, block

    def exact(self, progress: Progress | None) -> None:
        parts = _Partitions(self.folder, "exact", max(1, math.ceil(self.total / self.records)), self._EXACT)
        for shard in range(len(self.counts)):
            for first, block in self._chunks(shard, "digest", 2, "<u8"):
                rec = np.empty(len(block), dtype=self._EXACT)
                rec["h0"], rec["h1"] = block[:, 0], block[:, 1]
                rec["idx"] = np.arange(first, first + len(block))
                parts.add(rec, rec["h0"])
        parts.close()
        for rec in parts:
            rec = rec[np.lexsort((rec["idx"], rec["h1"], rec["h0"]))]
            same = (rec["h0"][1:] == rec["h0"][:-1]) & (rec["h1"][1:] == rec["h1"][:-1])
            self.decision[rec["idx"][1:][same]] = 1
            if progress:
                progress("exact dedup", 1, parts.n)

    def _signatures(self, docs: list[int]) -> np.ndarray:
        """``(len(docs), num_perm)`` signatures through a direct-mapped cache of ``_SIG_CACHE`` rows (document
        ``i`` in row ``i % _SIG_CACHE``; 3.7 MB at the defaults): a bucket's walk reads its most recent kept
        documents again and again, and recent documents never evict each other. When every signature fits in
        ``_SIG_IN_MEMORY`` bytes they are all in memory (``_all``) and this is one indexing."""
        if self._all is not None:
            return self._all[np.asarray(docs, dtype=np.int64)]
        if self._cache is None:
            self._cache = np.empty((self._SIG_CACHE, self.near.num_perm), dtype=np.uint32)
            self._cached = np.full(self._SIG_CACHE, -1, dtype=np.int64)
        idx = np.asarray(docs, dtype=np.int64)
        rows = idx % self._SIG_CACHE
        for k in np.flatnonzero(self._cached[rows] != idx).tolist():
            self._cache[rows[k]] = self._read_signature(int(idx[k]))
            self._cached[rows[k]] = idx[k]
        out = self._cache[rows]
        for k in np.flatnonzero(self._cached[rows] != idx).tolist():  # two of these documents share a row
            out[k] = self._read_signature(int(idx[k]))
        return out

    def _read_signature(self, idx: int) -> np.ndarray:
        shard = int(np.searchsorted(self.offsets, idx, side="right")) - 1
        if shard not in self._sig_files:
            self._sig_files[shard] = os.open(f"{self._base(shard)}.sig", os.O_RDONLY)
        width = self.near.num_perm * 4
        raw = os.pread(self._sig_files[shard], width, (idx - int(self.offsets[shard])) * width)
        return np.frombuffer(raw, dtype=np.uint32)

    def close(self) -> None:
        for fd in self._sig_files.values():
            os.close(fd)
        self._sig_files.clear()

    def near_dups(self, progress: Progress | None) -> None:
        near = self.near
        bands = near.bands
        n_parts = max(1, math.ceil(self.total * bands / self.records))
        parts = _Partitions(self.folder, "bands", n_parts, self._BAND)
        from kit.data.dedup import band_keys

        for shard in range(len(self.counts)):
            for first, sigs in self._chunks(shard, "sig", near.num_perm, "<u4"):
                keys = band_keys(sigs, bands, near.rows, near.seed)  # (docs, bands)
                rec = np.empty(keys.size, dtype=self._BAND)
                rec["key"] = keys.ravel()
                idx = np.arange(first, first + len(sigs), dtype=np.int64)
                rec["slot"] = (idx[:, None] * bands + np.arange(bands)).ravel()
                parts.add(rec, rec["key"])
        parts.close()
        link_slot, link_prev = [], []
        for rec in parts:
            rec = rec[np.lexsort((rec["slot"], rec["key"]))]
            same = rec["key"][1:] == rec["key"][:-1]
            link_slot.append(rec["slot"][1:][same])
            link_prev.append(rec["slot"][:-1][same] // bands)  # the previous document in the same bucket
            if progress:
                progress("near dedup: sort bands", 1, n_parts)
        # The links are the one structure that grows with the data (with its near duplicates, not its size):
        # 32 bytes each once walked (slot, previous document, latest kept document, its link). Temporaries are dropped as soon as they are used, so building them peaks
        # at about 32 bytes per link rather than several copies.
        slots = np.concatenate(link_slot) if link_slot else np.empty(0, np.int64)
        link_slot.clear()
        prevs = np.concatenate(link_prev) if link_prev else np.empty(0, np.int64)
        link_prev.clear()
        order = np.argsort(slots, kind="stable")
        slots = slots[order]
        prevs = prevs[order]
        del order
        # compact int64 arrays, searched with bisect: no per-link Python objects
        slot_links, prev_links = array("q"), array("q")
        slot_links.frombytes(memoryview(slots).cast("B"))
        del slots
        prev_links.frombytes(memoryview(prevs).cast("B"))
        del prevs
        if self.total * near.num_perm * 4 <= self._SIG_IN_MEMORY:  # one array: a lookup is one indexing
            files = [np.fromfile(f"{self._base(s)}.sig", dtype="<u4") for s in range(len(self.counts))]
            self._all = np.concatenate(files or [np.empty(0, np.uint32)]).reshape(self.total, near.num_perm)
        self._walk(slot_links, prev_links, bands)
        self._all = None

    def _walk(self, slots: array, prevs: array, bands: int) -> None:
        """In document order: near duplicate iff one of the ``max_candidates`` most recent earlier kept
        documents of a shared bucket verifies.

        Each link keeps the latest kept document before it in its bucket and that document's own link, so a
        walk follows positions, with one search per link of the new document rather than per step.
        """
        near, decision = self.near, self.decision
        below = array("q", bytes(8 * len(slots)))  # per link: latest kept document before it in the bucket
        below_at = array("q", bytes(8 * len(slots)))  # per link: that document's link in the bucket, or -1

        def link(doc: int, band: int) -> int:  # position of (doc, band) among the links, or -1
            slot = doc * bands + band
            t = bisect_left(slots, slot)
            return t if t < len(slots) and slots[t] == slot else -1

        def latest_kept(band: int, doc: int) -> tuple[int, int]:  # at or before ``doc``, and its link
            t = link(doc, band)
            if decision[doc] == 0:
                return doc, t
            return (-1, -1) if t < 0 else (below[t], below_at[t])

        cap = near.max_candidates if near.max_candidates is not None else len(decision) + 1
        t = 0
        while t < len(slots):
            j = slots[t] // bands
            end = t
            while end < len(slots) and slots[end] // bands == j:
                end += 1
            if decision[j] == 0:
                walk: list[int] = []  # band by band, the bucket's kept documents, most recent first, capped
                capped = False
                for u in range(t, end):
                    i, k = latest_kept(slots[u] % bands, prevs[u])
                    if i >= 0 and not near.verify:
                        decision[j] = 2
                        break
                    stop = len(walk) + cap
                    while i >= 0 and len(walk) < stop:
                        walk.append(i)
                        i, k = (-1, -1) if k < 0 else (below[k], below_at[k])
                    capped |= i >= 0
                if walk and self._verifies(walk, j):
                    decision[j] = 2
                self.cap_hits += capped and decision[j] == 0
            for u in range(t, end):
                below[u], below_at[u] = latest_kept(slots[u] % bands, prevs[u])
            t = end

    def _verifies(self, walk: list[int], doc: int) -> bool:
        """Whether one of ``walk``'s documents reaches the similarity threshold with ``doc`` (as
        ``signature_similarity``); one signature lookup for all of them."""
        self.compared += len(walk)
        sigs = self._signatures([*walk, doc])
        share = np.count_nonzero(sigs[:-1] == sigs[-1], axis=1) / self.near.num_perm
        return bool((share >= self.near.verify_threshold).any())


def _run_tasks(tasks: list[_Shard], spawned: int) -> Iterator[_ShardResult]:
    """Screen every task, ``spawned`` worker processes plus this one, largest tasks first.

    This process works too, so the workers' start-up (a fresh interpreter importing the kit) overlaps useful
    work. Tasks are handed out one at a time as processes free up, from one queue of the largest first, so
    no process is left alone with a big one at the end. Results come in the order they finish.
    """
    if spawned <= 0:
        yield from map(_screen_shard, tasks)
        return
    queue = deque(sorted(tasks, key=_task_bytes, reverse=True))
    done: SimpleQueue = SimpleQueue()  # results and errors, from the pool's callback thread

    def submit() -> None:
        try:
            task = queue.popleft()  # atomic: this thread and the pool's callback thread both take tasks
        except IndexError:
            return
        pool.apply_async(_screen_shard, (task,), callback=finished, error_callback=done.put)

    def finished(res: _ShardResult) -> None:
        done.put(res)
        submit()  # the worker that just finished gets the next task at once

    pool = multiprocessing.get_context("spawn").Pool(spawned)
    try:
        for _ in range(spawned):
            submit()
        left = len(tasks)
        while left:
            try:
                task: _Shard | None = queue.popleft()
            except IndexError:
                task = None
            if task is not None:
                left -= 1
                yield _screen_shard(task)
            # collect what the workers finished; wait for them once this process has nothing left to take
            while left and (not done.empty() or task is None):
                item = done.get()
                if isinstance(item, BaseException):
                    raise item
                left -= 1
                yield item
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def peak_rss_mb() -> float:
    """This process's peak resident set in MB.

    ``VmHWM`` from ``/proc/self/status`` where there is one: ``getrusage``'s ``ru_maxrss`` survives ``execve``,
    so a process started from a large parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale / 1024


def clean_corpus(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    output: str | os.PathLike,
    settings: CleanSettings | None = None,
    workers: int = 1,
    work_dir: str | os.PathLike | None = None,
    records_in_memory: int = 4_000_000,
    progress: Progress | None = None,
    piece_bytes: int | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> CleanStats:
    """Clean, filter and deduplicate ``inputs`` into ``output`` (JSONL ``{"id", text_key}``), shards in parallel.

    The output is never an input (refused), and what a run writes itself (the output, its temporary file,
    work folders) is never read as input, so a rerun with the output inside an input folder gives the same
    output. The output is written to a temporary file beside it and renamed at the end: it is whole or
    absent. The shard files go to a hidden work folder (``.kit-clean-<output name>``) removed at the end;
    one left by a killed run is removed at the next start (``log`` says so), or with ``resume`` its
    finished shards are reused.

    Args:
        inputs: files, folders or globs; each file is one shard.
        output: the JSONL file to write.
        settings: what to do to each document (default: the kit's default pipeline).
        workers: processes for the per-shard phase, this one included; ``1`` runs it all in this process.
            The others are spawned, so a script that calls this with ``workers > 1`` needs the
            ``if __name__ == "__main__":`` guard.
        work_dir: the folder that holds the work folder; default: the output's folder. It needs about
            1 KB per document.
        records_in_memory: partition size for the merge's sorts (24 or 16 bytes per record).
        progress: called as ``progress(stage, advance, total)``.
        piece_bytes: with ``workers > 1``, JSONL files of at least 1.5 times this size are cut into pieces
            of about this size (whole lines), so the workers share large files too and finish together;
            default: a sixteenth of each worker's share of the input, between 512 KB and 256 MB. The output
            does not depend on it.
        resume: reuse the shards that a killed run with the same inputs, settings and ``workers`` finished.
        log: called with one line for each thing a user should know (a stale work folder removed, a resume).

    Returns:
        :class:`CleanStats`.

    Raises:
        ValueError: ``workers < 1``, or the output is one of the inputs.
        FileNotFoundError: an input matches nothing.
        RuntimeError: another live run writes the same output.
        OSError: a folder cannot be written (read-only, a file in the way, a full disk); it names the path.
    """
    if workers < 1:
        raise ValueError(f"workers={workers} must be >= 1")
    settings = settings or CleanSettings()
    output = Path(output)
    check_output(inputs, output)
    paths = input_files(inputs, output, log)
    output.parent.mkdir(parents=True, exist_ok=True)
    root = Path(work_dir) if work_dir else output.parent
    root.mkdir(parents=True, exist_ok=True)
    total_bytes = sum(p.stat().st_size for p in paths)
    if workers > 1 and piece_bytes is None:
        piece_bytes = min(max(total_bytes // (16 * workers), 1 << 19), 256 << 20)
    piece_bytes = piece_bytes if workers > 1 else None
    work = WorkFolder(root, output, log)
    with work.claim(_plan(paths, settings, piece_bytes), resume):
        folder = work.path
        tasks = _tasks(paths, folder, settings, piece_bytes)
        results: list[_ShardResult] = [None] * len(tasks)  # type: ignore[list-item]
        for index, saved in work.finished().items():
            if index < len(tasks):
                results[index] = _ShardResult.from_json(saved)
                if progress:
                    progress("clean + filter + signatures", results[index].bytes_read, total_bytes)
        todo = [t for t in tasks if results[t.index] is None]
        spawned = min(workers, len(todo)) - 1
        for res in _run_tasks(todo, spawned):
            results[res.index] = res
            if progress:
                progress("clean + filter + signatures", res.bytes_read, total_bytes)
        with naming(folder):
            index_bytes = sum(
                f.stat().st_size for f in folder.iterdir() if f.suffix in (".sig", ".digest", ".len")
            )
            merge = _Merge(folder, results, settings, records_in_memory)
            if settings.exact_dedup:
                merge.exact(progress)
            if settings.near_dedup:
                index_bytes += merge.total * merge.near.bands * 16  # the band records, written while merging
                merge.near_dups(progress)
                merge.close()
        with naming(output), atomic_output(output) as sink:
            report, reader = _write(folder, results, merge.decision, settings, sink, progress)
        mark_output(output)
        report.near_dup_capped = merge.cap_hits
        return CleanStats(
            report=report,
            reader=reader,
            shards=len(paths),
            workers=workers,
            index_bytes=index_bytes,
            peak_rss_mb=peak_rss_mb(),
            peak_worker_rss_mb=max(
                (r.peak_rss_mb for r in results if r.pid not in (os.getpid(), 0)), default=0.0
            ),
            pieces=len(tasks),
            near_dup_compared=merge.compared,
        )


def _plan(paths: list[Path], settings: CleanSettings, piece_bytes: int | None) -> str:
    """What decides the shard files; a resumed run reuses them only when it is unchanged."""
    files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    return plan_digest([files, piece_bytes, settings])


def _write(
    folder: Path,
    results: list[_ShardResult],
    decision: np.ndarray,
    settings: CleanSettings,
    sink: IO[str],
    progress: Progress | None,
) -> tuple[PipelineReport, LoadReport]:
    """Write kept documents in input order and build the report the single-process pipeline would give."""
    pipe = settings.pipeline()
    report, reader = pipe.report, LoadReport()
    for res in results:  # filter removals and input counts, in shard order
        reader.merge(res.reader)
        report.docs_in += res.report.docs_in
        report.bytes_in += res.report.bytes_in
        for reason, n in res.report.removed.items():
            report.removed[reason] = report.removed.get(reason, 0) + n
        for reason, texts in res.report.examples.items():
            bucket = report.examples.setdefault(reason, [])
            bucket += texts[: max(0, settings.keep_examples - len(bucket))]
    g = 0
    for res in results:
        base = folder / f"{res.index:06d}"
        verdicts = decision[g : g + res.n_pass]
        g += res.n_pass
        lengths = np.fromfile(f"{base}.len", dtype="<i8")
        kept = verdicts == 0
        report.docs_out += int(kept.sum())
        report.bytes_out += int(lengths[kept].sum())
        with open(f"{base}.jsonl", encoding="utf-8") as f, open(f"{base}.raw", encoding="utf-8") as raws:
            for verdict, line in zip(verdicts.tolist(), f):
                raw = json.loads(raws.readline()) if settings.keep_examples else ""
                if verdict:
                    pipe.record_removed("exact_dup" if verdict == 1 else "near_dup", raw)
                else:
                    sink.write(line)
        if progress:
            progress("write", 1, len(results))
    return report, reader
