"""Split hygiene: keep held-out documents free of n-grams that training also contains.

A document-level split still leaks when two documents share boilerplate (a shared paragraph, a copied
example): the model is then scored on text it trained on. GPT-3 (Brown et al. 2020, appendix C) calls a
held-out document contaminated when it shares any 13-gram with the training data. This module applies
that rule to a split before training: every contaminated held-out document moves into training, and the
check repeats until no held-out document shares an n-gram with the (grown) training set. Nothing is
discarded, and ``kit doctor``'s leakage check (:func:`kit.health.doctor.ngram_overlap`, the same
tokenisation) then finds no overlap.

Example:
    >>> train = ["the quick brown fox jumps over the lazy dog"]
    >>> held = {"val": ["a quick brown fox jumps over it", "something else entirely"]}
    >>> train2, held2, moved = decontaminate_split(train, held, n=5)
    >>> moved, held2["val"]
    ({'val': [0]}, ['something else entirely'])
"""

from __future__ import annotations

from collections.abc import Sequence

from kit.health.doctor import ngram_overlap

__all__ = ["decontaminate_split"]


def decontaminate_split(
    train: Sequence[str], held_out: dict[str, Sequence[str]], n: int = 13
) -> tuple[list[str], dict[str, list[str]], dict[str, list[int]]]:
    """Move held-out documents that share an ``n``-gram with training into training, until none does.

    Args:
        train: training documents.
        held_out: split name -> documents (``{"val": [...], "test": [...]}``); each is checked against training
            only, not against the other held-out splits (they are never trained on).
        n: n-gram length in words (lower-cased alphanumeric words, as ``kit doctor`` counts them); 13 as in GPT-3.

    Returns:
        ``(train, held_out, moved)``: the grown training list (original documents first, moved ones appended in
        split order), the clean held-out lists, and per split the indices (into the input lists) that moved.

    Raises:
        ValueError: ``n < 1``, or every document of a held-out split is contaminated (the message names the
            split and the fixes).
    """
    if n < 1:
        raise ValueError(f"n={n} must be >= 1; 13 is GPT-3's choice (0 turns the check off in TextDataModule)")
    train_out = list(train)
    remaining = {name: list(enumerate(docs)) for name, docs in held_out.items()}
    moved: dict[str, list[int]] = {name: [] for name in held_out}
    # a moved document can contaminate another held-out one, so repeat until a pass moves nothing
    new_train: list[str] = train_out
    while new_train:
        added: list[str] = []
        for name, items in remaining.items():
            if not items:
                continue
            hits = set(ngram_overlap(new_train, [doc for _, doc in items], n)["contaminated"])
            if not hits:
                continue
            moved[name] += [idx for k, (idx, _) in enumerate(items) if k in hits]
            added += [doc for k, (_, doc) in enumerate(items) if k in hits]
            remaining[name] = [item for k, item in enumerate(items) if k not in hits]
        train_out += added
        new_train = added  # only the new training text can contaminate what is left
    for name, items in remaining.items():
        if held_out[name] and not items:
            raise ValueError(
                f"every {name} document shares a {n}-gram with the training documents, so no clean {name} split "
                f"is left; add distinct documents, raise the {name} fraction, or turn the check off "
                "(data.decontaminate_ngram 0)"
            )
    return train_out, {name: [doc for _, doc in items] for name, items in remaining.items()}, moved
