"""Data pipeline throughput per stage, side by side with datatrove, plus multi-process scaling and memory.

Corpus: the embedded pydoc topics cut into paragraph groups, repeated with one word in eight changed and HTML
noise, with planted near duplicates (one word in 100 changed), until it reaches ``--mb`` megabytes. It is
made at run time, in memory for the stage runs and as JSONL shards in a temporary folder for the scale runs.

Stages run in this process with every thread pool pinned to one thread; each repeat runs every stage on both
sides, alternating which side goes first, and the table gives the median MB/s of CPU time (process time, so
other load on a shared machine distorts it less than wall time) with the spread over repeats. The
multi-process rows are wall-clock (that is what workers buy) and say so.

Run: ``python -m benchmarks data_pipeline [--mb 32] [--repeats 3] [--workers 2] [--scale-mb 200,800]``.
Needs the ``data-bench`` extra (datatrove, orjson, rensa) for the peers' sides; without them the kit side
still runs. The MinHash row compares the kit's signatures with rensa's (a compiled Rust MinHash) on the same
normalised texts and shingles; the "end to end, step" rows say where the kit's end-to-end time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # pinned here and inherited by worker processes

from kit.data.dedup import ExactDeduplicator, MinHashDeduplicator, MinHasher, fingerprint  # noqa: E402
from kit.data.filters import GopherQualityFilter, GopherRepetitionFilter  # noqa: E402
from kit.data.pipeline import STAGES, DataPipeline  # noqa: E402
from kit.data.text import clean_text, embedded_corpus  # noqa: E402


def iter_corpus(mb: float, seed: int = 0) -> Iterator[tuple[str, bool]]:
    """``(document, planted_near_duplicate)`` until ``mb`` megabytes: ~1-4 KB documents with HTML noise."""
    rng = random.Random(seed)
    chunks: list[str] = []
    for text in embedded_corpus().values():
        paras = text.split("\n\n")
        for i in range(0, len(paras), 6):
            chunk = "\n\n".join(paras[i : i + 6])
            if len(chunk) > 300:
                chunks.append(chunk)
    size, rep = 0, 0
    while size < mb * 1e6:
        for chunk in chunks:
            words = chunk.split(" ")
            # each repetition changes 1 word in 8, so repetitions are distinct documents (Jaccard well below 0.7)
            for i in rng.sample(range(len(words)), max(1, len(words) // 8)):
                words[i] = f"v{rep}x{rng.randrange(10**6)}"
            doc = "<div><p>" + " ".join(words) + "</p>&nbsp;</div>"
            size += len(doc)
            yield doc, False
            if rng.random() < 0.1:  # plant a near duplicate: 1 word in 100 changed
                dup = doc.split(" ")
                for i in rng.sample(range(len(dup)), max(1, len(dup) // 100)):
                    dup[i] = "changed"
                yield " ".join(dup), True
            if size >= mb * 1e6:
                return
        rep += 1


def make_corpus(mb: float, seed: int = 0) -> tuple[list[str], set[int]]:
    """Documents and the indices of planted near duplicates (in memory)."""
    docs, planted = [], set()
    for doc, dup in iter_corpus(mb, seed):
        if dup:
            planted.add(len(docs))
        docs.append(doc)
    return docs, planted


def write_shards(folder: Path, mb: float, shard_mb: float = 32.0, seed: int = 0) -> int:
    """Stream the corpus into ``part-*.jsonl`` shards of about ``shard_mb``; returns bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    total, part, size = 0, 0, 0
    f = open(folder / "part-00000.jsonl", "w", encoding="utf-8")  # noqa: SIM115 - rotated below
    for doc, _ in iter_corpus(mb, seed):
        line = json.dumps({"text": doc}) + "\n"
        f.write(line)
        size += len(line)
        total += len(line)
        if size >= shard_mb * 1e6:
            f.close()
            part, size = part + 1, 0
            f = open(folder / f"part-{part:05d}.jsonl", "w", encoding="utf-8")  # noqa: SIM115
    f.close()
    return total


# ------------------------------------------------------------------------------------------- stages


def _datatrove_steps(words: str) -> dict[str, Callable[[list[str]], object]] | None:
    """datatrove's counterparts, or None without datatrove. ``words``: "whitespace" or "spacy"."""
    try:
        from datatrove.data import Document
        from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig, ExactDedupSignature
        from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
        from datatrove.pipeline.filters import GopherQualityFilter as DTQuality
        from datatrove.pipeline.filters import GopherRepetitionFilter as DTRepetition
        from datatrove.utils.text import simplify_text
        from datatrove.utils.word_tokenizers import WordTokenizer
    except ImportError:
        return None
    if words == "spacy":
        try:
            import spacy  # noqa: F401
        except ImportError:
            return None
        language: object = "en"
    else:

        class Whitespace(WordTokenizer):
            def word_tokenize(self, text: str) -> list[str]:
                return text.split()

            def sent_tokenize(self, text: str) -> list[str]:
                return text.split("\n")

            def span_tokenize(self, text: str) -> list[tuple[int, int]]:
                raise NotImplementedError

        language = Whitespace()
    tmp = tempfile.mkdtemp(prefix="dt-bench-")
    quality, repetition = DTQuality(language=language), DTRepetition(language=language)

    def simplified(doc: Document) -> bytes:  # its normalisation, as the kit's exact dedup normalises
        return simplify_text(doc.text).encode("utf-8")

    exact = ExactDedupSignature(tmp, ExactDedupConfig(content_getter=simplified))
    minhash = MinhashDedupSignature(tmp, MinhashConfig(), language=language)
    hash_str = minhash._hash_func
    # xxhash 4 refuses str, which datatrove 0.10.1 hands it for shingles; encoding first is what xxhash 3 did
    minhash._hash_func = lambda text: hash_str(text.encode("utf-8"))

    def docs_of(texts: list[str]) -> list:
        return [Document(text=t, id=str(i)) for i, t in enumerate(texts)]

    def signature(text: str) -> None:
        shingles = minhash.get_shingles(text)
        if shingles.size:  # its run() skips documents shorter than one shingle
            minhash.get_signature(shingles)

    def signatures(texts: list[str]) -> None:
        for t in texts:
            signature(t)

    def full(texts: list[str]) -> None:  # filters then both signatures: stage 1 of its dedup, no cleaning
        for i, doc in enumerate(docs_of(texts)):
            if quality.filter(doc) is True and repetition.filter(doc) is True:
                exact.get_hashes(doc, i)
                signature(doc.text)

    return {
        "Gopher quality": lambda texts: [quality.filter(d) for d in docs_of(texts)],
        "Gopher repetition": lambda texts: [repetition.filter(d) for d in docs_of(texts)],
        "exact dedup hashes": lambda texts: [exact.get_hashes(d, i) for i, d in enumerate(docs_of(texts))],
        "MinHash signatures": signatures,
        "end to end": full,
    }


BATCH = 256  # documents per MinHash batch, as DataPipeline.process and the scale-out shards use


def _batches(texts: list, size: int = BATCH) -> Iterator[list]:
    return (texts[i : i + size] for i in range(0, len(texts), size))


def _kit_steps(
    stage_seconds: list[dict[str, float]] | None = None,
) -> dict[str, Callable[[list[str]], object]]:
    """The kit's stages; the end-to-end run appends its report's CPU seconds per step to ``stage_seconds``."""
    hasher = MinHasher()

    def exact(texts: list[str]) -> None:
        d = ExactDeduplicator()
        for t in texts:
            d.add_digest(fingerprint(t)[1])

    def signatures(texts: list[str]) -> None:
        for batch in _batches(texts):
            hasher.signatures([fingerprint(t)[0] for t in batch])

    def near(texts: list[str]) -> None:
        d = MinHashDeduplicator()
        for first, batch in zip(range(0, len(texts), BATCH), _batches(texts)):
            sigs = hasher.signatures([fingerprint(t)[0] for t in batch])
            d.add_signatures(range(first, first + len(batch)), sigs)

    def end_to_end(texts: list[str]) -> None:
        pipe = DataPipeline()
        for _ in pipe.process(texts):
            pass
        if stage_seconds is not None:
            stage_seconds.append(dict(pipe.report.seconds))

    return {
        "clean_text": lambda texts: [clean_text(t) for t in texts],
        "Gopher quality": GopherQualityFilter().reasons,
        "Gopher repetition": GopherRepetitionFilter().reasons,
        "exact dedup hashes": exact,
        "MinHash signatures": signatures,
        "MinHash signatures + LSH index": near,
        "end to end": end_to_end,
    }


def _cpu_seconds(fn: Callable[[list[str]], object], texts: list[str]) -> float:
    start = time.process_time()
    fn(texts)
    return time.process_time() - start


def _stage_rows(raw: list[str], cleaned: list[str], repeats: int, words: list[str]) -> list[dict]:
    mb_raw = sum(len(t.encode()) for t in raw) / 1e6
    mb = sum(len(t.encode()) for t in cleaned) / 1e6
    stage_seconds: list[dict[str, float]] = []
    sides = {"kit": _kit_steps(stage_seconds)}
    for w in words:
        steps = _datatrove_steps(w)
        if steps is not None:
            sides[f"datatrove ({w} words)"] = steps
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(repeats):
        for stage in _kit_steps():
            order = list(sides) if r % 2 == 0 else list(reversed(sides))  # alternate who goes first
            for side in order:
                if stage in sides[side]:
                    # the end-to-end kit run starts from raw HTML (it cleans); every other stage gets cleaned text
                    texts = (
                        raw if (stage, side) in (("end to end", "kit"), ("clean_text", "kit")) else cleaned
                    )
                    times.setdefault((stage, side), []).append(_cpu_seconds(sides[side][stage], texts))
                    print(f"  repeat {r + 1}/{repeats}: {stage} / {side}", file=sys.stderr, flush=True)
    rows = []
    for stage in _kit_steps():
        kit_s = statistics.median(times[(stage, "kit")])
        size = mb_raw if stage in ("end to end", "clean_text") else mb
        row: dict[str, object] = {"stage": stage, "kit MB/s": round(size / kit_s, 2)}
        for side in sides:
            if side != "kit" and (stage, side) in times:
                dt_s = statistics.median(times[(stage, side)])
                row[f"{side} MB/s"] = round(mb / dt_s, 2)
                row[f"kit / {side}"] = round(dt_s / kit_s * (size / mb), 2)
        spread = times[(stage, "kit")]
        row["kit spread %"] = round(100 * (max(spread) - min(spread)) / kit_s, 1)
        rows.append(row)
    return rows + _breakdown_rows(times[("end to end", "kit")], stage_seconds, mb_raw)


def _breakdown_rows(totals: list[float], stage_seconds: list[dict[str, float]], mb_raw: float) -> list[dict]:
    """Where the kit's end-to-end time goes: each step's MB/s (corpus MB over that step's CPU seconds) and
    its share of the total, medians over the repeats; "other" is the rest (reading the batches, counting)."""
    rows = []
    for stage in (*STAGES, "other"):
        if stage == "other":
            per_run = [total - sum(s.values()) for total, s in zip(totals, stage_seconds)]
        else:
            per_run = [s.get(stage, 0.0) for s in stage_seconds]
        seconds = statistics.median(per_run)
        share = statistics.median(100 * x / total for x, total in zip(per_run, totals))
        rows.append(
            {
                "stage": f"end to end, step: {stage}",
                "kit MB/s": round(mb_raw / seconds, 2) if seconds > 0 else None,
                "share of end to end %": round(share, 1),
            }
        )
    return rows


def _rensa_shingles(text: str, n: int = 5) -> list[str]:
    """The kit's shingles, built in Python as a rensa user would: word n-grams of the normalised text, or the
    whole text when it has at most ``n`` words."""
    words = text.split(" ")
    if len(words) <= n:
        return [text]
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def rensa_rows(cleaned: list[str], repeats: int) -> list[dict]:
    """MinHash signatures alone, kit against rensa (a compiled Rust MinHash), on the same normalised texts.

    Both sides get the same word 5-gram shingles (the kit finds them in the bytes; the rensa side builds
    them in Python, as its users do) and 112 permutations; each repeat runs both, alternating which goes
    first. rensa hashes the shingle strings with its own hash, so the signatures differ but estimate the
    same similarities. Empty list if rensa is not installed (``pip install "lightning-kit[data-bench]"``).
    """
    try:
        import rensa
        from rensa import RMinHash
    except ImportError:
        return []
    norms = [fingerprint(t)[0] for t in cleaned]
    texts = [n.decode("utf-8") for n in norms]
    mb = sum(map(len, norms)) / 1e6
    hasher = MinHasher()

    def kit() -> None:
        for batch in _batches(norms):
            hasher.signatures(batch)

    def rensa_side() -> None:
        for text in texts:
            m = RMinHash(num_perm=hasher.num_perm, seed=1)
            m.update(_rensa_shingles(text, hasher.ngram))
            m.digest()

    sides = {"kit": kit, "rensa": rensa_side}
    times: dict[str, list[float]] = {side: [] for side in sides}
    for r in range(repeats):
        for side in sides if r % 2 == 0 else reversed(sides):
            start = time.process_time()
            sides[side]()
            times[side].append(time.process_time() - start)
            print(f"  repeat {r + 1}/{repeats}: MinHash signatures / {side}", file=sys.stderr, flush=True)
    kit_s, rensa_s = statistics.median(times["kit"]), statistics.median(times["rensa"])
    version = getattr(rensa, "__version__", None) or _version("rensa")
    return [
        {
            "stage": f"MinHash signatures of normalised text ({hasher.num_perm} perms, word {hasher.ngram}-grams)",
            "kit MB/s": round(mb / kit_s, 2),
            f"rensa {version} MB/s": round(mb / rensa_s, 2),
            "kit / rensa": round(rensa_s / kit_s, 2),
            "kit spread %": round(100 * (max(times["kit"]) - min(times["kit"])) / kit_s, 1),
        }
    ]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def recall_row(raw: list[str], planted: set[int]) -> dict:
    """How many planted near duplicates the default pipeline removes, and what else it removes as near_dup."""
    pipe = DataPipeline()
    near = {i for i, text in enumerate(raw) if pipe.check(text)[1] == "near_dup"}
    # a planted copy whose original was filtered out has nothing to duplicate: count only the reachable ones
    return {
        "stage": "near-dup quality (default pipeline, 14 x 8 bands, verified)",
        "planted near dups removed": f"{len(near & planted)}/{len(planted)}",
        "other near_dup removals": len(near - planted),
    }


# --------------------------------------------------------------------------------------- scale-out

_RUN = """
import json, sys
from kit.data.scaleout import CleanSettings, clean_corpus
s = clean_corpus(sys.argv[1], sys.argv[2], CleanSettings(), workers=int(sys.argv[3]), work_dir=sys.argv[4],
                 records_in_memory=int(sys.argv[5]))
r = s.report
print(json.dumps({"docs_in": r.docs_in, "docs_out": r.docs_out, "bytes_in": r.bytes_in, "removed": r.removed,
                  "index_bytes_per_doc": s.bytes_per_doc(), "rss_main_mb": s.peak_rss_mb,
                  "rss_worker_mb": s.peak_worker_rss_mb, "pieces": s.pieces}))
"""


def run_clean(shards: Path, out: Path, workers: int, records: int = 4_000_000) -> dict:
    """``clean_corpus`` in a fresh process: wall time, peak RSS of the main process and of the largest worker."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, str(shards), str(out), str(workers), str(out.parent), str(records)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def _scale_rows(folder: Path, mb: float, workers: int, repeats: int) -> list[dict]:
    """``workers`` against 1 worker on the same shards, in ``repeats`` adjacent pairs (the order alternates).

    The speedup is the median of the per-pair ratios: a pair's two runs are seconds apart, so a drift in the
    machine's speed over the whole benchmark (seen here: +-15% between minutes on an idle 2-core VM) cancels
    within each pair instead of landing on one side of a ratio of medians.
    """
    shards = folder / "shards"
    write_shards(shards, mb, shard_mb=max(1.0, mb / 8))
    runs: dict[int, list[dict]] = {1: [], workers: []}
    for r in range(repeats):
        for w in (1, workers) if r % 2 == 0 else (workers, 1):
            runs[w].append(run_clean(shards, folder / f"out-{w}.jsonl", w))
            print(f"  scale repeat {r + 1}/{repeats}: {w} worker(s)", file=sys.stderr, flush=True)
    same = (folder / "out-1.jsonl").read_bytes() == (folder / f"out-{workers}.jsonl").read_bytes()
    ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(runs[1], runs[workers], strict=True)]
    rows = []
    for w, results in runs.items():
        wall = statistics.median(x["wall_s"] for x in results)
        speedup = statistics.median(ratios) if w != 1 else 1.0
        rows.append(
            {
                "stage": f"kit data clean --workers {w} ({mb:g} MB, {len(list(shards.iterdir()))} shards "
                f"in {results[0]['pieces']} pieces, wall clock, median of {repeats})",
                "kit MB/s": round(mb / wall, 2),
                "speedup vs 1 worker": round(speedup, 2),
                "speedup range (pairs)": f"{min(ratios):.2f}-{max(ratios):.2f}" if w != 1 else "",
                "output identical to 1 worker": same,
                "peak RSS MB (main / largest worker)": f"{results[0]['rss_main_mb']:.0f} / {results[0]['rss_worker_mb']:.0f}",
            }
        )
    return rows


def memory_rows(folder: Path, sizes_mb: list[float], workers: int, records: int) -> list[dict]:
    """Peak RSS at several corpus sizes: flat if the dedup index really lives on disk."""
    rows = []
    for mb in sizes_mb:
        shards = folder / f"mem-{mb:g}"
        print(f"  memory bound: writing a {mb:g} MB corpus", file=sys.stderr, flush=True)
        written = write_shards(shards, mb, shard_mb=max(1.0, min(64.0, mb / 4)), seed=1)
        print(
            f"  memory bound: kit data clean over {written / 1e6:,.0f} MB, {workers} worker(s)",
            file=sys.stderr,
            flush=True,
        )
        res = run_clean(shards, folder / f"mem-{mb:g}.jsonl", workers, records)
        rows.append(
            {
                "stage": f"memory bound: {written / 1e6:,.0f} MB corpus, {workers} worker(s), "
                f"{records:,} records per merge partition",
                "docs": res["docs_in"],
                "kit MB/s": round(written / 1e6 / res["wall_s"], 2),
                "peak RSS MB (main / largest worker)": f"{res['rss_main_mb']:.0f} / {res['rss_worker_mb']:.0f}",
                "index on disk B/doc": round(res["index_bytes_per_doc"]),
                "near dups removed": res["removed"].get("near_dup", 0),
            }
        )
        for p in shards.iterdir():
            p.unlink()
        (folder / f"mem-{mb:g}.jsonl").unlink()
    return rows


def plot(rows: list[dict], path: Path) -> Path | None:
    """Kit vs datatrove MB/s per stage (left) and peak RSS against corpus size (right), where the run has them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [r for r in rows if r.get("kit MB/s") and "kit spread %" in r]
    memory = [r for r in rows if str(r.get("stage", "")).startswith("memory bound")]
    panels = [p for p in (stages, memory) if p]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    axes = list(axes[0])
    if stages:
        ax = axes.pop(0)
        others = {k for r in stages for k in r if k.startswith("datatrove") and k.endswith("MB/s")}
        sides = ["kit MB/s", *sorted(others)]
        height = 0.8 / len(sides)
        for i, side in enumerate(sides):
            ys = [j + i * height for j in range(len(stages))]
            ax.barh(
                ys, [float(r.get(side) or 0) for r in stages], height=height, label=side.replace(" MB/s", "")
            )
        ax.set_yticks(
            [j + 0.4 - height / 2 for j in range(len(stages))], [r["stage"] for r in stages], fontsize=8
        )
        ax.invert_yaxis()
        ax.set_xlabel("MB/s per CPU second (higher is better)")
        ax.legend(fontsize=8)
        ax.set_title("per stage, one process")
    if memory:
        ax = axes.pop(0)
        mb = [float(r["stage"].split(":")[1].split("MB")[0].replace(",", "")) for r in memory]
        main = [float(r["peak RSS MB (main / largest worker)"].split("/")[0]) for r in memory]
        worker = [float(r["peak RSS MB (main / largest worker)"].split("/")[1]) for r in memory]
        ax.plot(mb, main, "o-", label="main process")
        ax.plot(mb, worker, "s-", label="largest worker")
        ax.set_xscale("log")
        ax.set_ylim(0, max(main + worker) * 1.5)
        ax.set_xlabel("corpus MB (log)")
        ax.set_ylabel("peak RSS MB")
        ax.legend(fontsize=8)
        ax.set_title("kit data clean: memory against corpus size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks data_pipeline")
    parser.add_argument("--mb", type=float, default=32.0, help="corpus size for the stage runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--words", default="whitespace,spacy", help="datatrove word splitters to run")
    parser.add_argument("--workers", type=int, default=2, help="compared with 1 worker on the same shards")
    parser.add_argument("--scale-repeats", type=int, default=5)
    parser.add_argument("--scale-mb", default="", help="corpus sizes for the peak-RSS runs, e.g. 200,2000")
    parser.add_argument("--records", type=int, default=1_000_000, help="merge partition size in the RSS runs")
    parser.add_argument("--skip-stages", action="store_true", help="only the scale-out and memory rows")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    raw, planted = make_corpus(args.mb)
    print(f"corpus: {len(raw)} documents, {sum(map(len, raw)) / 1e6:.1f} MB", file=sys.stderr)
    rows = []
    if not args.skip_stages:
        cleaned = [clean_text(t) for t in raw]
        rows += _stage_rows(raw, cleaned, args.repeats, [w for w in args.words.split(",") if w])
        rows += rensa_rows(cleaned, args.repeats)
        rows.append(recall_row(raw, planted))
    with tempfile.TemporaryDirectory(prefix="kit-data-bench-") as tmp:
        if args.workers > 1:
            rows += _scale_rows(Path(tmp), args.mb, args.workers, args.scale_repeats)
        if args.scale_mb:
            sizes = [float(x) for x in args.scale_mb.split(",")]
            rows += memory_rows(Path(tmp), sizes, args.workers, args.records)
    from benchmarks.__main__ import out_dir

    png = plot(rows, out_dir() / "data_pipeline.png")
    return {
        "plot": png.name if png else None,  # written beside the JSON
        "title": "Data pipeline: MB/s per stage, kit vs datatrove; multi-process scaling; memory bound",
        "device": f"CPU ({_cpu_name()}, {os.cpu_count()} cores), threads pinned to 1, "
        f"load average {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end",
        "rows": rows,
        "notes": [
            f"corpus: embedded pydoc paragraphs with HTML noise, {args.mb:g} MB, {len(raw)} docs, "
            f"{len(planted)} planted near duplicates; stage rows: median CPU-time MB/s over {args.repeats} "
            "interleaved repeats (kit and datatrove alternate going first)",
            "every stage but clean_text and the kit's end to end gets the cleaned text; MB is of its input",
            "datatrove 'end to end' = its Gopher filters + exact and MinHash signature hashing (stage 1 of its "
            "dedup; its bucket/cluster stages and any cleaning not included); kit 'end to end' = DataPipeline: "
            "clean_text + length/quality/repetition filters + exact + MinHash LSH decisions",
            "datatrove words: 'whitespace' passes str.split as its word tokenizer (the kit's words); 'spacy' "
            "is its default English tokenizer, run only where spacy is installed",
            "datatrove 0.10.1's MinHash shingle hash is wrapped to encode str to UTF-8 first (xxhash 4 refuses "
            "str; xxhash 3 encoded it itself)",
            f"versions: datatrove {_version('datatrove')}, rensa {_version('rensa')}, numpy {_version('numpy')}",
            "kit MinHash: MinHasher.signatures over batches of 256 documents (as the pipeline runs it); the rensa "
            "row gives both sides the same normalised texts and the same word 5-gram shingles, 112 permutations, "
            "rensa's built in Python per document as its users do",
            "'end to end, step' rows: the kit's end-to-end run split by DataPipeline's own CPU-time counters "
            "(report.seconds); MB/s is the corpus MB over that step's seconds, share is of the end-to-end total",
            "scale rows: wall clock in fresh processes, 1 and N workers in adjacent pairs; the speedup is the median "
            "of the per-pair ratios (range given) and needs idle cores to mean anything",
        ],
    }
