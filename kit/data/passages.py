"""A labelled passage-classification task cut from a corpus offline: which topic a passage comes from.

Each topic's text is cut into passages of ``passage_words`` words. A seeded share of every labelled topic's
passages goes to test; then every passage that shares a word 13-gram with any test passage is dropped from the
training side (GPT-3's contamination rule, applied before training rather than measured after), so no 13-gram
crosses from train to test (the check is ``kit.health.doctor.ngram_overlap``, the one ``kit doctor`` uses).
Passages of the other topics are unlabelled text for pretraining.

Example:
    >>> docs = {"a": " ".join(f"a{i}" for i in range(400)), "b": " ".join(f"b{i}" for i in range(400))}
    >>> task = split_passages(docs, ["a", "b"], passage_words=20, test_fraction=0.25, seed=0)
    >>> len(task.test), task.classes
    (10, ['a', 'b'])
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kit.health.doctor import ngram_overlap

__all__ = ["TopicTask", "passages", "split_passages", "subsample"]


def passages(text: str, passage_words: int) -> list[str]:
    """Consecutive ``passage_words``-word pieces of ``text`` (the last, shorter piece kept if half full)."""
    words = text.split()
    out = [" ".join(words[i : i + passage_words]) for i in range(0, len(words), passage_words)]
    if out and len(out[-1].split()) < passage_words // 2:
        out.pop()
    return out


@dataclass
class TopicTask:
    """The split: ``train`` and ``test`` as ``(passage, class index)`` lists; ``unlabelled`` as ``(passage,
    topic)`` for pretraining; ``classes`` the topic names in label order; ``dropped`` the training passages
    removed for sharing a 13-gram with test."""

    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    unlabelled: list[tuple[str, str]]
    classes: list[str]
    dropped: int


def split_passages(
    docs: Mapping[str, str],
    classes: Sequence[str],
    passage_words: int = 48,
    test_fraction: float = 0.2,
    seed: int = 0,
    n: int = 13,
) -> TopicTask:
    """Cut ``docs`` into passages, hold out ``test_fraction`` of each class for test, and keep every training or
    unlabelled passage that shares an ``n``-gram with test out of the task.

    Args:
        docs: topic name -> text.
        classes: the topics that become labels (in label order); the others are unlabelled.
        passage_words: words per passage.
        test_fraction: share of each class's passages held out.
        seed: the hold-out draw.
        n: the n-gram length of the overlap rule.

    Raises:
        ValueError: an unknown class, or a class with fewer than 2 passages.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    unknown = [c for c in classes if c not in docs]
    if unknown:
        raise ValueError(f"classes {unknown} are not topics of the corpus; some topics: {sorted(docs)[:10]}")
    rng = random.Random(seed)
    train, test, unlabelled = [], [], []
    for name, text in docs.items():
        pieces = passages(text, passage_words)
        if name not in classes:
            unlabelled += [(p, name) for p in pieces]
            continue
        label = list(classes).index(name)
        if len(pieces) < 2:
            raise ValueError(
                f"class {name!r} has {len(pieces)} passage(s) of {passage_words} words; lower passage_words"
            )
        held = set(rng.sample(range(len(pieces)), max(1, round(test_fraction * len(pieces)))))
        test += [(p, label) for i, p in enumerate(pieces) if i in held]
        train += [(p, label) for i, p in enumerate(pieces) if i not in held]
    test_texts = [p for p, _ in test]
    bad_train = set(ngram_overlap(test_texts, [p for p, _ in train], n)["contaminated"])
    bad_unlabelled = set(ngram_overlap(test_texts, [p for p, _ in unlabelled], n)["contaminated"])
    clean_train = [item for i, item in enumerate(train) if i not in bad_train]
    clean_unlabelled = [item for i, item in enumerate(unlabelled) if i not in bad_unlabelled]
    dropped = len(train) - len(clean_train) + len(unlabelled) - len(clean_unlabelled)
    return TopicTask(clean_train, test, clean_unlabelled, list(classes), dropped)


def subsample(items: Sequence[tuple[str, int]], fraction: float, seed: int = 0) -> list[tuple[str, int]]:
    """A class-stratified ``fraction`` of ``items``, at least one per class (so 0.1% still sees every label).

    Example:
        >>> len(subsample([("x", i % 2) for i in range(1000)], 0.01))
        10
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train_fraction={fraction} must be in (0, 1]")
    rng = random.Random(seed)
    by_class: dict[int, list[tuple[str, int]]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    out = []
    for label in sorted(by_class):
        group = by_class[label]
        out += rng.sample(group, max(1, round(fraction * len(group))))
    return out
