"""``kit data``: clean a corpus, compare BPE vocabulary sizes, write webdataset shards.

Usage::

    kit data clean 'raw/**/*.jsonl' notes.txt -o clean.jsonl --report report.json --examples 3 --workers 2
    kit data tokenizer clean.jsonl --vocab-sizes 1000,4000,16000 --d-model 768 --save tok.json
    kit data shards clean.jsonl -o shards/ --tokenizer tok.json --block-size 256 --max-count 10000

Every command streams its input, so a corpus larger than memory is fine (``tokenizer`` re-reads the
training text for each vocabulary size and keeps at most ``--max-heldout`` held-out documents), shows a
progress bar, and prints a summary at the end.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from kit.data.dedup import MAX_CANDIDATES
from kit.data.text import LoadReport, iter_documents, resolve_paths

__all__ = ["main"]


def _total_bytes(paths: Sequence[str]) -> int:
    return sum(p.stat().st_size for p in resolve_paths(list(paths)))


def _print_read(console: Console, reader: LoadReport) -> None:
    """What the reader skipped, worded as ``kit fit`` and ``kit doctor`` word it."""
    problems = reader.problems()
    if problems:
        console.print(f"[yellow]input: {escape(problems)}[/yellow]")


def _progress(console: Console, bytes_mode: bool = True) -> Progress:
    cols = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn()]
    if bytes_mode:
        cols.append(TransferSpeedColumn())
    return Progress(*cols, console=console, transient=False, disable=not console.is_terminal)


def _clean(args: argparse.Namespace, console: Console) -> int:
    from kit.data.filters import FilterChain, GopherQualityFilter, GopherRepetitionFilter, LengthFilter
    from kit.data.scaleout import CleanSettings, clean_corpus

    filters: list = [] if args.no_filters else [LengthFilter(args.min_chars, args.max_chars)]
    if not args.no_filters:
        filters.append(GopherQualityFilter(min_words=args.min_words))
        filters.append(GopherRepetitionFilter())
    settings = CleanSettings(
        filters=FilterChain(filters),
        lowercase=args.lowercase,
        exact_dedup=not args.no_exact_dedup,
        near_dedup=not args.no_near_dedup,
        minhash={
            "bands": args.bands,
            "rows": args.rows,
            "ngram": args.ngram,
            "max_candidates": args.max_candidates or None,
        },
        keep_examples=args.examples,
        text_key=args.text_key,
    )
    if args.workers < 1:
        console.print(
            f"[red]--workers {args.workers} must be >= 1 (one process per shard file, up to N)[/red]"
        )
        return 2
    out = Path(args.output)
    with _progress(console) as progress:
        tasks: dict[str, int] = {}

        def advance(stage: str, step: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.advance(tasks[stage], step)

        try:
            stats = clean_corpus(
                args.inputs,
                out,
                settings,
                workers=args.workers,
                work_dir=args.work_dir,
                progress=advance,
                resume=args.resume,
                log=lambda line: console.print(escape(line)),
            )
        except KeyboardInterrupt:
            console.print(
                "[yellow]interrupted: the finished shards are kept; run the same command with --resume to "
                "reuse them[/yellow]"
            )
            return 130
    report = stats.report
    _print_read(console, stats.reader)
    console.print(report.format())
    console.print(
        f"wrote {report.docs_out:,} documents to {out} ({stats.shards} shard(s), {stats.workers} worker(s); "
        f"dedup index on disk {stats.bytes_per_doc():.0f} B/doc)"
    )
    if args.report:
        data = {**report.to_dict(), "input": asdict(stats.reader)}
        Path(args.report).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        console.print(f"report: {args.report}")
    if args.examples and report.examples:
        for reason, texts in report.examples.items():
            console.print(f"[bold]{reason}[/bold]: " + " | ".join(repr(t[:80]) for t in texts))
    return 0


def _tokenizer(args: argparse.Namespace, console: Console) -> int:
    from kit.data.bpe_report import bpe_tradeoff, format_table
    from kit.data.tokenizer import train_bpe

    if not 0.0 < args.heldout < 1.0:
        console.print(f"[red]--heldout {args.heldout} must be in (0, 1), e.g. 0.1[/red]")
        return 2
    if not args.inputs:
        console.print("no inputs: using the embedded pydoc corpus")
    # Every k-th document is held out (document 0 included, so the held-out side is never empty). Held-out
    # text is kept in memory up to --max-heldout documents; training text is re-read from the inputs for
    # every vocabulary size, so the corpus itself never has to fit in memory (tokenizers trains from an
    # iterator and keeps only its pre-token counts).
    stride = max(2, round(1 / args.heldout))
    reader = LoadReport()
    passes = 0

    def documents() -> Iterator[tuple[int, str]]:
        nonlocal passes
        if args.inputs:
            report = reader if passes == 0 else LoadReport()  # count the skips once, not per re-read
            passes += 1
            source = (text for _, text, _ in iter_documents(args.inputs, report, args.text_key))
        else:
            from kit.data.text import embedded_corpus

            source = iter(embedded_corpus().values())
        yield from enumerate(source)

    def train_texts() -> Iterator[str]:
        return (text for i, text in documents() if i % stride)

    held: list[str] = []
    n_docs = 0
    for i, text in documents():
        n_docs += 1
        if i % stride == 0 and len(held) < args.max_heldout:
            held.append(text)
    _print_read(console, reader)
    if n_docs < 2:
        console.print(f"[red]need at least 2 documents to hold some out; got {n_docs}[/red]")
        return 2
    try:
        sizes = [int(s) for s in args.vocab_sizes.split(",") if s.strip()]
    except ValueError:
        console.print(
            f"[red]--vocab-sizes {args.vocab_sizes!r} must be comma-separated integers, e.g. 1000,4000[/red]"
        )
        return 2
    n_held_total = (n_docs + stride - 1) // stride
    n_train = n_docs - n_held_total
    rows = []
    with _progress(console, bytes_mode=False) as progress:
        task = progress.add_task("training BPE", total=len(sizes))
        for size in sizes:
            rows += bpe_tradeoff(
                train_texts, held, [size], d_model=args.d_model, min_frequency=args.min_frequency
            )
            progress.advance(task)
    console.print(
        f"{n_train:,} training / {len(held):,} held-out documents (every {stride}th; "
        f"{n_held_total:,} not trained on); embedding params at d_model={args.d_model}"
    )
    console.print(format_table(rows))
    if args.report:
        Path(args.report).write_text(json.dumps(rows, indent=2) + "\n")
    if args.plot:
        from kit.data.bpe_report import plot_tradeoff

        console.print(f"plot: {plot_tradeoff(rows, args.plot)}")
    if args.save:
        size = sizes[-1]
        all_texts = (text for _, text in documents())
        saved = train_bpe(all_texts, vocab_size=size, min_frequency=args.min_frequency)
        saved.save(args.save)
        # the table's rows were trained on the training documents only; the saved one saw them all, so its
        # vocabulary differs: print the number the model needs (kit data shards records it beside the shards)
        console.print(
            f"saved the tokenizer (asked for {size:,}, trained on all documents) to {args.save}: "
            f"vocabulary {saved.get_vocab_size():,} tokens; give the model vocab_size={saved.get_vocab_size()} "
            "(kit data shards --tokenizer records it beside the shards, and WebDataModule reads it)"
        )
    return 0


def _shards(args: argparse.Namespace, console: Console) -> int:
    import numpy as np

    from kit.data.packing import iter_blocks
    from kit.data.shards import write_shards

    tokenizer = None
    if args.tokenizer:
        from tokenizers import Tokenizer

        from kit.data.tokenizer import EOS

        tokenizer = Tokenizer.from_file(args.tokenizer)
        eos = tokenizer.token_to_id(EOS)
    total = _total_bytes(args.inputs)
    stats = {"docs": 0, "samples": 0}
    reader = LoadReport()

    def documents(progress: Progress, task: int) -> Iterator[tuple[str, str]]:
        for name, text, nbytes in iter_documents(args.inputs, reader, args.text_key):
            stats["docs"] += 1
            progress.advance(task, nbytes)
            yield name, text

    def samples(progress: Progress, task: int) -> Iterator[dict]:
        if tokenizer is None:
            for name, text in documents(progress, task):
                stats["samples"] += 1
                yield {"__key__": f"{stats['samples']:010d}", "txt": text, "json": {"source": name}}
            return
        # the packer TextDataModule uses (pack_blocks), streamed: rows of block_size + 1, overlapping by one
        token_lists = (tokenizer.encode(text).ids for _, text in documents(progress, task))
        for row in iter_blocks(token_lists, args.block_size, eos):
            stats["samples"] += 1
            yield {"__key__": f"{stats['samples']:010d}", "input_ids.npy": np.asarray(row, dtype=np.int32)}

    os.makedirs(args.output, exist_ok=True)
    pattern = os.path.join(args.output, f"{args.prefix}-%06d.tar")
    with _progress(console) as progress:
        task = progress.add_task("writing shards", total=total)
        paths = write_shards(samples(progress, task), pattern, args.max_count, args.max_size_mb * 1e6)
    size = sum(os.path.getsize(p) for p in paths)
    kind = f"token blocks of {args.block_size}" if tokenizer else "text documents"
    if tokenizer is not None and paths:
        from kit.data.shard_meta import file_sha256, write_shard_metadata

        meta_path = write_shard_metadata(
            args.output,
            {
                "tokenizer": os.path.abspath(args.tokenizer),
                "tokenizer_sha256": file_sha256(args.tokenizer),
                "vocab_size": tokenizer.get_vocab_size(),
                "eos_id": eos,
                "block_size": args.block_size,
                "samples": stats["samples"],
                "shards": [os.path.basename(p) for p in paths],
            },
        )
        console.print(f"tokenizer vocabulary {tokenizer.get_vocab_size():,} recorded in {meta_path}")
    _print_read(console, reader)
    console.print(
        f"{stats['docs']:,} documents -> {stats['samples']:,} samples ({kind}) in {len(paths)} shard(s), "
        f"{size / 1e6:.1f} MB: {pattern % 0} ..."
    )
    if not paths:
        console.print("[yellow]no samples written: inputs too short for one block?[/yellow]")
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kit data", description="data tools: clean, tokenizer, shards")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("clean", help="clean, filter and deduplicate documents into a jsonl file")
    p.add_argument("inputs", nargs="+", help="files, folders or globs (.jsonl: one document per line)")
    p.add_argument("-o", "--output", required=True, help="output .jsonl")
    p.add_argument("--report", help="write the report as JSON here")
    p.add_argument("--examples", type=int, default=0, help="removed examples to keep per reason")
    p.add_argument("--text-key", default="text", help="jsonl field holding the text")
    p.add_argument("--lowercase", action="store_true")
    p.add_argument("--min-chars", type=int, default=100)
    p.add_argument("--max-chars", type=int, default=1_000_000)
    p.add_argument("--min-words", type=int, default=50, help="Gopher minimum word count")
    p.add_argument("--no-filters", action="store_true", help="skip length/quality/repetition filters")
    p.add_argument("--no-exact-dedup", action="store_true")
    p.add_argument("--no-near-dedup", action="store_true")
    p.add_argument("--bands", type=int, default=14)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--ngram", type=int, default=5)
    p.add_argument(
        "--max-candidates",
        type=int,
        default=MAX_CANDIDATES,
        help="kept documents compared per LSH band at most, the most recent first (0: all; quadratic on "
        "templated corpora)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="processes for clean/filter/signatures (one shard file each)"
    )
    p.add_argument(
        "--work-dir",
        help="folder for the on-disk dedup index (~1 KB/doc, removed at the end); default: beside -o",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse the shards a killed or interrupted run of this command finished",
    )

    p = sub.add_parser("tokenizer", help="train byte-level BPE at several vocab sizes and compare them")
    p.add_argument("inputs", nargs="*", help="files, folders or globs; none = the embedded pydoc corpus")
    p.add_argument("--vocab-sizes", default="1000,4000,16000")
    p.add_argument("--heldout", type=float, default=0.1, help="share of documents held out for measuring")
    p.add_argument("--max-heldout", type=int, default=5000, help="held-out documents kept in memory, at most")
    p.add_argument("--d-model", type=int, default=768, help="model width for the embedding-parameter column")
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--text-key", default="text")
    p.add_argument("--report", help="write the table as JSON here")
    p.add_argument("--plot", help="draw bytes/token and vocabulary use against vocab size as a PNG here")
    p.add_argument("--save", help="save a tokenizer at the last vocab size (trained on all documents) here")

    p = sub.add_parser("shards", help="write webdataset tar shards (text, or packed token blocks)")
    p.add_argument("inputs", nargs="+")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--prefix", default="train")
    p.add_argument("--max-count", type=int, default=10_000, help="samples per shard at most")
    p.add_argument("--max-size-mb", type=float, default=1000.0, help="MB per shard at most")
    p.add_argument("--tokenizer", help="tokenizer.json: write packed token blocks instead of text")
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--text-key", default="text")
    return parser


_WRITE_HINTS = {  # errno name -> (what failed, how to fix it)
    "EACCES": ("cannot use", "; check its permissions, or pick a writable folder with -o / --work-dir"),
    "EPERM": ("cannot use", "; check its permissions, or pick a writable folder with -o / --work-dir"),
    "EROFS": ("cannot write", "; pick a writable folder with -o / --work-dir"),
    "ENOSPC": ("cannot write", "; free space there or pick another disk with -o / --work-dir"),
    "EFBIG": ("cannot write", "; the file size limit was reached there: raise it or pick another -o"),
    "ENOTDIR": ("cannot write", ": a file stands where a folder is needed; pick another -o"),
    "EEXIST": ("cannot write", ": a file stands where a folder is needed; pick another -o"),
}


def _error_line(exc: BaseException) -> str:
    """One line for an error a user can fix: the path and the reason for a file-system error.

    Example:
        >>> _error_line(OSError(28, "No space left on device", "/data/out.jsonl"))
        'cannot write /data/out.jsonl: No space left on device; free space there or pick another disk with -o / --work-dir'
    """
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.filename is not None:
        reason = exc.strerror or type(exc).__name__
        verb, hint = _WRITE_HINTS.get(errno.errorcode.get(exc.errno or 0, ""), ("cannot use", ""))
        return f"{verb} {exc.filename}: {reason}{hint}"
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``kit data``; returns the exit status.

    Errors a user can fix (a missing input, a bad value, a folder that cannot be written) print one line and
    return 2; ``--debug`` (or ``KIT_DEBUG=1``) raises them with the traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("KIT_DEBUG", "") not in ("", "0")
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    console = Console(soft_wrap=True)
    try:
        return {"clean": _clean, "tokenizer": _tokenizer, "shards": _shards}[args.command](args, console)
    except (OSError, ValueError, RuntimeError) as exc:
        if debug:
            raise
        console.print(f"[red]kit data {args.command}: {escape(_error_line(exc))}[/red]")
        console.print("  (full traceback: add --debug, or set KIT_DEBUG=1)")
        return 2


if __name__ == "__main__":
    sys.exit(main())
