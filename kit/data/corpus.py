"""From documents to a language-modelling corpus: the pure steps ``TextDataModule`` routes.

Reading named sources, ordering training documents by source, augmented copies, labelling packed blocks
with their source, and the unigram baseline loss. Each is a plain function of its inputs and seed, so a
training loop without Lightning builds the same corpus.

Example:
    >>> unigram_cross_entropy([0, 0, 0, 1], [0, 1], vocab_size=2) > 0
    True
    >>> block_sources([3, 3], ["a", "b"], block_size=2, n_blocks=3, with_eos=True)
    ['a', 'a', 'b']
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate

from kit.data.text import LoadReport, load_texts

__all__ = [
    "augment_documents",
    "block_sources",
    "load_corpus",
    "source_rank",
    "unigram_cross_entropy",
]


def load_corpus(
    paths: str | list[str] | None = None,
    sources: Mapping[str, str | list[str]] | None = None,
    sources_from_topics: bool = False,
    lowercase: bool = False,
) -> tuple[dict[str, str], LoadReport, dict[str, str]]:
    """Read and clean all documents, from ``paths`` or from named sources.

    Args:
        paths: files, folders or globs; None (with no sources) reads the embedded corpus.
        sources: ``{name: path | glob | [paths]}``; documents are keyed ``name/document``.
        sources_from_topics: each embedded-corpus topic is its own source.
        lowercase: lower-case during cleaning.

    Returns:
        ``(documents, merged LoadReport, source of each document)``; the last is empty without sources.
    """
    if sources_from_topics:
        topics, report = load_texts(None, lowercase=lowercase)
        return {f"{t}/{t}": text for t, text in topics.items()}, report, {f"{t}/{t}": t for t in topics}
    if sources is None:
        docs, report = load_texts(paths, lowercase=lowercase)
        return docs, report, {}
    docs, source_of, merged = {}, {}, LoadReport()
    for name, spec in sources.items():
        part, report = load_texts(spec, lowercase=lowercase)
        for doc, text in part.items():
            docs[f"{name}/{doc}"] = text
            source_of[f"{name}/{doc}"] = name
        merged.merge(report)
    return docs, merged, source_of


def source_rank(names: Iterable[str], source_of: Mapping[str, str]) -> dict[str, int]:
    """Rank of each source by its first document in ``names``: the order training blocks are grouped in."""
    return {s: i for i, s in enumerate(dict.fromkeys(source_of[n] for n in names))}


def augment_documents(
    texts: list[str],
    sources: list[str],
    p: float,
    seed: int,
    rank: Mapping[str, int] | None = None,
) -> tuple[list[str], list[str], int]:
    """Add an augmented copy of each document with probability ``p`` (EDA swap/delete and sentence reordering;
    synonym ops are left out: the embedded corpus and most user corpora of this kit are technical text).

    Args:
        texts: training documents.
        sources: source of each document (``""`` without sources).
        p: probability that a document gets a copy.
        seed: seeds both the coin and ``kit.data.augment_text.TextAugmenter``.
        rank: source order (:func:`source_rank`); when given, copies are placed with their source's
            documents (a stable sort), else appended at the end.

    Returns:
        ``(texts, sources, copies_added)``.
    """
    from kit.data.augment_text import TextAugmenter

    augmenter = TextAugmenter(p=1.0, ops=("swap", "delete", "reorder"), seed=seed)
    coin = random.Random(seed)
    picked = [i for i in range(len(texts)) if coin.random() < p]
    extra = augmenter([texts[i] for i in picked])
    merged = list(zip(sources, texts)) + [(sources[i], t) for i, t in zip(picked, extra)]
    if rank is not None:
        merged.sort(key=lambda st: rank[st[0]])
    return [t for _, t in merged], [s for s, _ in merged], len(extra)


def block_sources(
    token_counts: Sequence[int], sources: Sequence[str], block_size: int, n_blocks: int, with_eos: bool
) -> list[str]:
    """Source of each packed block: the source of the block's first token.

    Blocks come from ``kit.data.packing.pack_blocks`` over documents of ``token_counts`` tokens (plus one
    separator each when ``with_eos``); block ``i`` starts at stream offset ``i * block_size``.

    Example:
        >>> block_sources([3, 3], ["a", "b"], block_size=2, n_blocks=3, with_eos=True)
        ['a', 'a', 'b']
    """
    ends = list(accumulate(n + int(with_eos) for n in token_counts))  # stream offset after each doc
    return [sources[bisect.bisect_right(ends, i * block_size)] for i in range(n_blocks)]


def unigram_cross_entropy(train_ids: Sequence[int], eval_ids: Sequence[int], vocab_size: int) -> float:
    """Cross-entropy (nats/token) of ``eval_ids`` under the add-one-smoothed unigram distribution of ``train_ids``.

    The loss a model reaches by learning token frequencies alone; a language model must beat it by a margin.

    Example:
        >>> round(unigram_cross_entropy([0, 0, 0, 1], [0, 1], vocab_size=2), 4)
        0.752
    """
    counts = Counter(train_ids)
    total = len(train_ids) + vocab_size
    return -sum(math.log((counts.get(t, 0) + 1) / total) for t in eval_ids) / max(1, len(eval_ids))
