"""Text augmentation: EDA operations, sentence reordering, back-translation through any translator.

EDA (Wei & Zou 2019): synonym replacement, random insertion, random swap, random deletion, each with rate 0.1
by default (``n = max(1, round(rate * words))`` changes for the first three, per-word probability for
deletion). Synonyms come from a pluggable provider ``word -> list[str]``; ``builtin_synonyms`` is a small
English table so everything works offline (plug WordNet or an embedding neighbour list for real use).
Back-translation calls a ``translate(texts, src, tgt) -> texts`` callable: an HF pipeline, an API client or
a test stub; nothing is downloaded here. Every function takes a ``random.Random`` so results can be pinned.

Example:
    >>> aug = TextAugmenter(p=1.0, ops=("swap",), seed=0)
    >>> aug(["the quick brown fox jumps over the lazy dog"])[0] != "the quick brown fox jumps over the lazy dog"
    True
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "BUILTIN_SYNONYMS",
    "EDA_OPS",
    "TextAugmenter",
    "back_translate",
    "builtin_synonyms",
    "eda",
    "random_deletion",
    "random_insertion",
    "random_swap",
    "reorder_sentences",
    "synonym_replacement",
]

SynonymProvider = Callable[[str], Sequence[str]]
Translator = Callable[[list[str], str, str], list[str]]

# A small offline table of common English words; each group is a set of mutual synonyms.
_GROUPS = [
    "big large huge great vast",
    "small little tiny minor compact",
    "fast quick rapid swift speedy",
    "slow sluggish gradual unhurried",
    "good fine excellent decent solid",
    "bad poor weak inferior faulty",
    "happy glad cheerful pleased content",
    "sad unhappy gloomy sorrowful",
    "begin start commence initiate",
    "end finish conclude complete stop",
    "make create build produce construct",
    "use employ apply utilize",
    "show display present reveal demonstrate",
    "help assist aid support",
    "get obtain acquire receive gain",
    "give provide supply offer grant",
    "change alter modify adjust vary",
    "important significant essential crucial key",
    "easy simple straightforward effortless",
    "hard difficult tough challenging demanding",
    "new novel fresh recent modern",
    "old aged ancient former previous",
    "many numerous several various multiple",
    "often frequently regularly commonly",
    "method approach technique procedure way",
    "result outcome consequence effect",
    "problem issue difficulty trouble",
    "idea notion concept thought",
    "answer reply response",
    "ask inquire query request",
    "say state declare mention remark",
    "think believe consider suppose",
    "look see view observe watch",
    "find discover locate detect",
    "keep retain hold preserve maintain",
    "need require demand",
    "try attempt endeavor",
    "choose select pick elect",
    "smart clever intelligent bright",
    "strong powerful mighty sturdy",
    "beautiful pretty lovely attractive",
    "quiet silent calm still",
    "dog hound canine",
    "house home residence dwelling",
    "car automobile vehicle",
    "job work task duty",
    "part piece portion section segment",
    "error mistake fault bug",
    "value amount quantity",
    "return yield produce",
    "function routine procedure",
    "list sequence series",
]
BUILTIN_SYNONYMS: dict[str, tuple[str, ...]] = {}
for _group in _GROUPS:
    _words = _group.split()
    for _w in _words:
        BUILTIN_SYNONYMS.setdefault(_w, tuple(x for x in _words if x != _w))

EDA_OPS = ("synonym", "insert", "swap", "delete")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def builtin_synonyms(word: str) -> list[str]:
    """Synonyms of ``word`` from the built-in table (case-insensitive); ``[]`` if unknown."""
    return list(BUILTIN_SYNONYMS.get(word.lower(), ()))


def _n_changes(n_words: int, rate: float) -> int:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate={rate} must lie in [0, 1]; EDA uses 0.1")
    return max(1, round(rate * n_words)) if rate > 0 and n_words else 0


def synonym_replacement(
    words: Sequence[str],
    rate: float = 0.1,
    rng: random.Random | None = None,
    synonyms: SynonymProvider = builtin_synonyms,
) -> list[str]:
    """Replace up to ``n`` distinct words that have synonyms with a random synonym."""
    rng = rng or random.Random()
    out = list(words)
    n = _n_changes(len(out), rate)
    candidates = [i for i, w in enumerate(out) if synonyms(w)]
    rng.shuffle(candidates)
    for i in candidates[:n]:
        out[i] = rng.choice(list(synonyms(out[i])))
    return out


def random_insertion(
    words: Sequence[str],
    rate: float = 0.1,
    rng: random.Random | None = None,
    synonyms: SynonymProvider = builtin_synonyms,
) -> list[str]:
    """Insert ``n`` synonyms of random words at random positions (no-op if no word has a synonym)."""
    rng = rng or random.Random()
    out = list(words)
    n = _n_changes(len(out), rate)
    pool = [w for w in out if synonyms(w)]
    for _ in range(n if pool else 0):
        out.insert(rng.randint(0, len(out)), rng.choice(list(synonyms(rng.choice(pool)))))
    return out


def random_swap(words: Sequence[str], rate: float = 0.1, rng: random.Random | None = None) -> list[str]:
    """Swap two random positions ``n`` times (a multiset-preserving permutation)."""
    rng = rng or random.Random()
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(_n_changes(len(out), rate)):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(words: Sequence[str], rate: float = 0.1, rng: random.Random | None = None) -> list[str]:
    """Delete each word with probability ``rate``; at least one word always survives."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate={rate} must lie in [0, 1]; EDA uses 0.1")
    rng = rng or random.Random()
    if len(words) <= 1:
        return list(words)
    out = [w for w in words if rng.random() >= rate]
    return out or [rng.choice(list(words))]


def eda(
    text: str,
    op: str,
    rate: float = 0.1,
    rng: random.Random | None = None,
    synonyms: SynonymProvider = builtin_synonyms,
) -> str:
    """Apply one EDA operation (``synonym``, ``insert``, ``swap``, ``delete``) to whitespace words of ``text``.

    Raises:
        ValueError: unknown ``op``.
    """
    words = text.split()
    if op == "synonym":
        out = synonym_replacement(words, rate, rng, synonyms)
    elif op == "insert":
        out = random_insertion(words, rate, rng, synonyms)
    elif op == "swap":
        out = random_swap(words, rate, rng)
    elif op == "delete":
        out = random_deletion(words, rate, rng)
    else:
        raise ValueError(f"op={op!r} unknown; choose one of {(*EDA_OPS, 'reorder', 'backtranslate')}")
    return " ".join(out)


def reorder_sentences(text: str, rng: random.Random | None = None) -> str:
    """Shuffle the sentences of ``text`` (split after ``.``, ``!``, ``?``); one sentence stays as is."""
    rng = rng or random.Random()
    sentences = [s for s in _SENTENCE.split(text.strip()) if s]
    rng.shuffle(sentences)
    return " ".join(sentences)


def back_translate(texts: list[str], translate: Translator, src: str = "en", pivot: str = "de") -> list[str]:
    """Paraphrase by round trip ``src -> pivot -> src`` with a user-supplied translator (batched).

    Args:
        texts: input texts.
        translate: ``translate(texts, src_lang, tgt_lang) -> texts`` of the same length, e.g. wrapping
            ``transformers.pipeline("translation", model=...)`` or an API client.
        src: language of ``texts``.
        pivot: intermediate language.

    Raises:
        ValueError: the translator returned a different number of texts.
    """
    if not texts:
        return []
    there = list(translate(list(texts), src, pivot))
    back = list(translate(there, pivot, src))
    if len(there) != len(texts) or len(back) != len(texts):
        raise ValueError(
            f"translate returned {len(there)}/{len(back)} texts for {len(texts)} inputs; it must map 1:1"
        )
    return back


class TextAugmenter:
    """Batched, seeded augmentation: each text is augmented with probability ``p`` by one randomly chosen op.

    Args:
        p: probability that a text is augmented at all.
        ops: ops to choose from: ``synonym``, ``insert``, ``swap``, ``delete``, ``reorder``, ``backtranslate``.
        rates: per-op EDA rate (default 0.1 each, the EDA paper's setting).
        synonyms: synonym provider ``word -> list[str]``.
        translate: translator for ``backtranslate`` (required if that op is listed).
        pivot: back-translation pivot language.
        seed: seed; the same seed and inputs give the same outputs.

    Raises:
        ValueError: unknown op, ``p`` outside [0, 1], or ``backtranslate`` without ``translate``.

    Example:
        >>> TextAugmenter(p=0.0)(["unchanged text"])
        ['unchanged text']
    """

    def __init__(
        self,
        p: float = 0.5,
        ops: Sequence[str] = EDA_OPS,
        rates: dict[str, float] | None = None,
        synonyms: SynonymProvider = builtin_synonyms,
        translate: Translator | None = None,
        pivot: str = "de",
        seed: int = 0,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p={p} must lie in [0, 1]")
        allowed = (*EDA_OPS, "reorder", "backtranslate")
        bad = [o for o in ops if o not in allowed]
        if bad or not ops:
            raise ValueError(f"ops={list(ops)} must be a non-empty subset of {allowed}")
        if "backtranslate" in ops and translate is None:
            raise ValueError("op 'backtranslate' needs translate=callable(texts, src, tgt)")
        self.p, self.ops, self.synonyms, self.translate, self.pivot = (
            p,
            tuple(ops),
            synonyms,
            translate,
            pivot,
        )
        self.rates = {o: 0.1 for o in EDA_OPS} | (rates or {})
        self.rng = random.Random(seed)

    def __call__(self, texts: Iterable[str]) -> list[str]:
        texts = list(texts)
        out = list(texts)
        chosen = [(i, self.rng.choice(self.ops)) for i in range(len(texts)) if self.rng.random() < self.p]
        to_translate = [i for i, op in chosen if op == "backtranslate"]
        for i, op in chosen:
            if op == "reorder":
                out[i] = reorder_sentences(texts[i], self.rng)
            elif op != "backtranslate":
                out[i] = eda(texts[i], op, self.rates[op], self.rng, self.synonyms)
        if to_translate:  # one batched round trip for all texts that drew it
            assert self.translate is not None
            for i, t in zip(
                to_translate,
                back_translate([texts[i] for i in to_translate], self.translate, "en", self.pivot),
            ):
                out[i] = t
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
