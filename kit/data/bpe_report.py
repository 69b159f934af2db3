"""Vocabulary-size trade-off for byte-level BPE, measured on your own text.

For each vocabulary size: train a tokenizer, then on held-out text measure bytes per token (compression:
more bytes per token means shorter sequences), the share of the vocabulary actually used (large vocabularies
leave many rare tokens with few updates), the embedding parameters at a model width, and training time.

Example:
    >>> rows = bpe_tradeoff(["some text to learn from"] * 50, ["held out text"], [300, 400], d_model=64)
    >>> [r["vocab_size"] for r in rows], rows[0]["embedding_params"] == rows[0]["actual_vocab"] * 64
    ([300, 400], True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["bpe_tradeoff", "format_table", "measure_tokenizer", "plot_tradeoff"]


def measure_tokenizer(tokenizer: Any, texts: Sequence[str]) -> dict[str, float]:
    """Bytes per token, tokens per word and distinct tokens used by ``tokenizer`` on ``texts``.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``.
        texts: held-out documents.

    Returns:
        ``{"bytes_per_token", "tokens_per_word", "distinct_tokens", "tokens", "bytes"}``.
    """
    encodings = tokenizer.encode_batch(list(texts))
    tokens = sum(len(e.ids) for e in encodings)
    used: set[int] = set()
    for e in encodings:
        used.update(e.ids)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    words = sum(len(t.split()) for t in texts)
    return {
        "bytes_per_token": n_bytes / max(tokens, 1),
        "tokens_per_word": tokens / max(words, 1),
        "distinct_tokens": float(len(used)),
        "tokens": float(tokens),
        "bytes": float(n_bytes),
    }


def bpe_tradeoff(
    train_texts: Iterable[str] | Callable[[], Iterable[str]],
    heldout_texts: Sequence[str],
    vocab_sizes: Sequence[int],
    d_model: int = 768,
    tied_embeddings: bool = True,
    min_frequency: int = 2,
    train_fn: Callable[..., Any] | None = None,
) -> list[dict[str, Any]]:
    """Train byte-level BPE at each vocabulary size and measure it on held-out text.

    Args:
        train_texts: training documents, or a function returning a fresh iterable of them; a function is
            called once per size and its texts are streamed (a corpus larger than memory works); a plain
            iterable is materialised once and reused.
        heldout_texts: documents the tokenizers never saw.
        vocab_sizes: sizes to compare, e.g. ``[1000, 4000, 16000]``.
        d_model: model width for the embedding-parameter column.
        tied_embeddings: input and output embeddings shared (GPT-2 style); otherwise the count doubles.
        min_frequency: BPE merge threshold.
        train_fn: ``train_fn(texts, vocab_size=..., min_frequency=...) -> Tokenizer``; default
            ``kit.data.tokenizer.train_bpe``.

    Returns:
        One row per size: ``vocab_size``, ``actual_vocab`` (smaller when the corpus runs out of merges),
        ``bytes_per_token``, ``tokens_per_word``, ``vocab_used_pct`` (distinct held-out tokens / actual
        vocabulary), ``embedding_params``, ``train_s``.

    Raises:
        ValueError: no sizes or no held-out text.
    """
    if not vocab_sizes:
        raise ValueError("vocab_sizes is empty; pass e.g. [1000, 4000, 16000]")
    if not heldout_texts:
        raise ValueError("heldout_texts is empty; hold out some documents to measure on")
    if train_fn is None:
        from kit.data.tokenizer import train_bpe as train_fn
    texts = None if callable(train_texts) else list(train_texts)
    rows = []
    for size in vocab_sizes:
        start = time.perf_counter()
        tok = train_fn(
            train_texts() if texts is None else texts, vocab_size=size, min_frequency=min_frequency
        )
        train_s = time.perf_counter() - start
        m = measure_tokenizer(tok, heldout_texts)
        actual = tok.get_vocab_size()
        rows.append(
            {
                "vocab_size": size,
                "actual_vocab": actual,
                "bytes_per_token": round(m["bytes_per_token"], 3),
                "tokens_per_word": round(m["tokens_per_word"], 3),
                "vocab_used_pct": round(100.0 * m["distinct_tokens"] / actual, 1),
                "embedding_params": actual * d_model * (1 if tied_embeddings else 2),
                "train_s": round(train_s, 2),
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Render rows as a Markdown table."""
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append(
            "| " + " | ".join(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in cols) + " |"
        )
    return "\n".join(lines)


def plot_tradeoff(rows: Sequence[dict[str, Any]], path: str | Path) -> str:
    """Draw bytes/token (left axis) and the share of the vocabulary used on held-out text (right axis)
    against the vocabulary size actually trained (log axis); write a PNG to ``path`` and return it.

    Raises:
        ValueError: no rows.
    """
    if not rows:
        raise ValueError("no rows to plot; run bpe_tradeoff first")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = sorted(rows, key=lambda r: r["actual_vocab"])
    vocab = [r["actual_vocab"] for r in rows]
    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(vocab, [r["bytes_per_token"] for r in rows], marker="o", color="tab:blue", label="bytes / token")
    for r in rows:
        ax.annotate(f"{r['bytes_per_token']:.2f}", (r["actual_vocab"], r["bytes_per_token"]), fontsize=7,
                    textcoords="offset points", xytext=(0, 5), ha="center")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("vocabulary size (trained)")
    ax.set_ylabel("held-out bytes per token", color="tab:blue")
    right = ax.twinx()
    right.plot(vocab, [r["vocab_used_pct"] for r in rows], marker="s", linestyle="--", color="tab:orange")
    right.set_ylabel("% of vocabulary used on held-out text", color="tab:orange")
    right.set_ylim(0, 100)
    ax.set_title("BPE vocabulary size: compression against unused tokens")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    return str(out)
