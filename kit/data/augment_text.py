"""Text augmentation that keeps structure: EDA operations, sentence reordering, back-translation.

EDA (Wei & Zou 2019): synonym replacement, random insertion, random swap, random deletion, each with rate 0.1
by default (``n = max(1, round(rate * words))`` changes for the first three, per-word probability for
deletion). On a document the operations act on *word slots* only:

- a document is split into lines and every line into whitespace-separated chunks; punctuation attached to a
  chunk (``"list."``, ``"(see``) stays where it is and only the bare word is matched, replaced, swapped
  or deleted, so every newline, indent and punctuation mark survives;
- code never changes: backtick spans, fenced blocks, indented lines and ``>>>`` doctest lines;
- identifiers never change (anything with ``_ . ( ) = / :`` or a digit, camelCase, ALL-CAPS), and neither do
  words on the ``protected`` list (``TECHNICAL_WORDS`` by default: Python keywords and builtins plus common
  programming vocabulary such as value, function, return, list, key, yield); protected words are also never
  inserted, and swaps and deletions skip them, so they keep their order.

Synonyms come from a pluggable provider ``word -> list[str]``; ``builtin_synonyms`` is a small general
English table with no programming vocabulary. Synonym replacement and insertion are opt-in
(``DEFAULT_OPS = ("swap", "delete")``): a general thesaurus turns technical prose into wrong statements, so
enable them with a table fit for your domain. Back-translation calls a ``translate(texts, src, tgt) ->
texts`` callable line by line (code lines are not sent); nothing is downloaded here. Every function takes a
``random.Random`` so results can be pinned.

Example:
    >>> aug = TextAugmenter(p=1.0, ops=("swap",), seed=0)
    >>> out = aug(["Return a new list.\\n    x = f(a_b)\\nthe quick brown fox jumps over the lazy dog"])[0]
    >>> out.splitlines()[1], out.count("\\n"), "list." in out
    ('    x = f(a_b)', 2, True)
"""

from __future__ import annotations

import builtins
import keyword
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BUILTIN_SYNONYMS",
    "DEFAULT_OPS",
    "EDA_OPS",
    "TECHNICAL_WORDS",
    "Document",
    "TextAugmenter",
    "back_translate",
    "builtin_synonyms",
    "code_spans",
    "eda",
    "random_deletion",
    "random_insertion",
    "random_swap",
    "reorder_sentences",
    "synonym_replacement",
]

SynonymProvider = Callable[[str], Sequence[str]]
Translator = Callable[[list[str], str, str], list[str]]

# A small offline table of general English words; each group is a set of mutual synonyms. Programming
# vocabulary (value, function, return, list, key, yield, ...) is left out on purpose: see TECHNICAL_WORDS.
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
    "finish conclude complete",
    "make create build produce construct",
    "use employ utilize",
    "show display present reveal demonstrate",
    "help assist aid support",
    "get obtain acquire receive gain",
    "give provide supply offer grant",
    "change alter modify adjust vary",
    "important significant essential crucial",
    "easy simple straightforward effortless",
    "hard difficult tough challenging demanding",
    "novel fresh recent modern",
    "old aged ancient former previous",
    "many numerous several various multiple",
    "often frequently regularly commonly",
    "approach technique way",
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
    "part piece portion segment",
    "mistake fault",
]
BUILTIN_SYNONYMS: dict[str, tuple[str, ...]] = {}
for _group in _GROUPS:
    _words = _group.split()
    for _w in _words:
        BUILTIN_SYNONYMS.setdefault(_w, tuple(x for x in _words if x != _w))

# Words that name things in technical text: a synonym or a deletion changes what the sentence says.
_PROGRAMMING = """
    argument arguments array attribute attributes boolean buffer byte bytes call called calls char class
    code command compile complex constant default define defined dict dictionary element error errors event
    exception expression false field file float function functions generator global handler hash import
    index input instance integer interface item items iterator key keys keyword lambda library line list
    lists local loop map method methods module modules name namespace new none null number object objects
    operator option optional output package parameter parameters path pointer print process program
    property queue raise range record reference return returns returned run sequence set slice stack
    result results see statement statements stream string strings struct support syntax table thread true
    tuple type types value values variable variables version yield yields
"""
TECHNICAL_WORDS: frozenset[str] = frozenset(
    {w.lower() for w in keyword.kwlist + keyword.softkwlist + dir(builtins) if w.isalpha()}
    | set(_PROGRAMMING.split())
)

EDA_OPS = ("synonym", "insert", "swap", "delete")
DEFAULT_OPS = ("swap", "delete")
_ALL_OPS = (*EDA_OPS, "reorder", "backtranslate")
_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
_CHUNK = re.compile(r"^([(\[{\"'“‘]*)(.*?)([)\]}\"'”’.,;:!?]*)$")
_CAMEL = re.compile(r"[a-z][A-Z]")
_BACKTICK = re.compile(r"`[^`\n]*`")
_SENTENCE_END = re.compile(r"(?<=[.!?])(\s+)(?=[A-Z])")  # the separator is kept: whitespace survives


def builtin_synonyms(word: str) -> list[str]:
    """Synonyms of ``word`` from the built-in table (case-insensitive); ``[]`` if unknown."""
    return list(BUILTIN_SYNONYMS.get(word.lower(), ()))


def _is_code_line(line: str, in_fence: bool) -> bool:
    return in_fence or line.startswith(("    ", "\t", ">>>", "... ")) or line.lstrip().startswith("```")


def code_spans(text: str) -> list[str]:
    """Code in ``text`` in order: backtick spans, then whole code lines (fenced, indented, doctest).

    Example:
        >>> code_spans("Call `f(x)` here.\\n    y = 1\\nprose")
        ['`f(x)`', '    y = 1']
    """
    spans, lines, in_fence = [], [], False
    for line in text.split("\n"):
        fence = line.lstrip().startswith("```")
        if _is_code_line(line, in_fence):
            lines.append(line)
        else:
            spans += _BACKTICK.findall(line)
        in_fence ^= fence
    return spans + lines


def _protected_word(word: str, protected: frozenset[str]) -> bool:
    return word.lower() in protected


def _is_slot(core: str, protected: frozenset[str]) -> bool:
    """A bare English word that may change: letters only, not camelCase, not ALL CAPS, not protected."""
    return (
        _WORD.fullmatch(core) is not None
        and not _CAMEL.search(core)
        and not (core.isupper() and len(core) > 1)
        and not _protected_word(core, protected)
    )


def _match_case(new: str, old: str) -> str:
    return new.capitalize() if old[:1].isupper() and old[1:].islower() else new


@dataclass
class Document:
    """A text split into pieces whose concatenation is the text, with the editable word slots marked.

    ``pieces[line]`` alternates whitespace and chunks; a chunk is ``(lead, word, trail)``. Only slots
    (``line, index`` of a chunk whose word may change) are touched by the operations.
    """

    lines: list[list[Any]] = field(default_factory=list)
    slots: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str, protected: frozenset[str] = TECHNICAL_WORDS) -> Document:
        doc, in_fence = cls(), False
        for li, line in enumerate(text.split("\n")):
            fence = line.lstrip().startswith("```")
            if _is_code_line(line, in_fence):
                doc.lines.append([line])
            else:
                masked = _BACKTICK.sub(lambda m: "\0" * len(m.group()), line)  # code spans: no slots
                pieces: list[Any] = []
                pos = 0
                for m in re.finditer(r"\S+", masked):
                    pieces.append(line[pos : m.start()])
                    chunk = line[m.start() : m.end()]
                    lead, core, trail = _CHUNK.match(chunk).groups()  # type: ignore[union-attr]
                    if "\0" not in m.group() and core and _is_slot(core, protected):
                        doc.slots.append((li, len(pieces)))
                        pieces.append([lead, core, trail])
                    else:
                        pieces.append(chunk)
                    pos = m.end()
                pieces.append(line[pos:])
                doc.lines.append(pieces)
            in_fence ^= fence
        return doc

    def word(self, slot: tuple[int, int]) -> str:
        return self.lines[slot[0]][slot[1]][1]

    def set_word(self, slot: tuple[int, int], word: str) -> None:
        self.lines[slot[0]][slot[1]][1] = word

    def delete(self, slot: tuple[int, int]) -> None:
        """Drop the word; its punctuation joins the previous chunk, or the following space goes."""
        li, i = slot
        pieces = self.lines[li]
        lead, _, trail = pieces[i]
        pieces[i] = [lead, "", trail]
        if trail and i >= 2 and pieces[i - 1].strip() == "":
            pieces[i - 1] = ""
        elif i + 1 < len(pieces) and i + 1 != len(pieces) - 1 and pieces[i + 1].strip() == "":
            pieces[i + 1] = ""
        elif i >= 2 and pieces[i - 1].strip() == "":
            pieces[i - 1] = ""

    def text(self) -> str:
        return "\n".join(
            "".join(p if isinstance(p, str) else "".join(p) for p in pieces) for pieces in self.lines
        )


def _n_changes(n_words: int, rate: float) -> int:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate={rate} must lie in [0, 1]; EDA uses 0.1")
    return max(1, round(rate * n_words)) if rate > 0 and n_words else 0


def _allowed(synonyms: SynonymProvider, word: str, protected: frozenset[str]) -> list[str]:
    """Synonyms of an unprotected word that are not protected themselves (no technical term comes in)."""
    if _protected_word(word, protected):
        return []
    return [s for s in synonyms(word) if not _protected_word(s, protected)]


def synonym_replacement(
    words: Sequence[str],
    rate: float = 0.1,
    rng: random.Random | None = None,
    synonyms: SynonymProvider = builtin_synonyms,
    protected: frozenset[str] = TECHNICAL_WORDS,
) -> list[str]:
    """Replace up to ``n`` distinct words that have synonyms with a random synonym; protected words stay."""
    rng = rng or random.Random()
    out = list(words)
    n = _n_changes(len(out), rate)
    candidates = [i for i, w in enumerate(out) if _allowed(synonyms, w, protected)]
    rng.shuffle(candidates)
    for i in candidates[:n]:
        out[i] = _match_case(rng.choice(_allowed(synonyms, out[i], protected)), out[i])
    return out


def random_insertion(
    words: Sequence[str],
    rate: float = 0.1,
    rng: random.Random | None = None,
    synonyms: SynonymProvider = builtin_synonyms,
    protected: frozenset[str] = TECHNICAL_WORDS,
) -> list[str]:
    """Insert ``n`` synonyms of random words at random positions (no-op if no word has a synonym)."""
    rng = rng or random.Random()
    out = list(words)
    n = _n_changes(len(out), rate)
    pool = [w for w in out if _allowed(synonyms, w, protected)]
    for _ in range(n if pool else 0):
        out.insert(
            rng.randint(0, len(out)), rng.choice(_allowed(synonyms, rng.choice(pool), protected)).lower()
        )
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
    protected: frozenset[str] = TECHNICAL_WORDS,
) -> str:
    """Apply one EDA operation (``synonym``, ``insert``, ``swap``, ``delete``) to the word slots of ``text``.

    Lines, indentation, punctuation, code and protected words are kept (see the module docstring). Swaps
    stay within a line; a deletion never empties a line of its last slot.

    Raises:
        ValueError: unknown ``op``.
    """
    if op not in EDA_OPS:
        raise ValueError(f"op={op!r} unknown; choose one of {_ALL_OPS}")
    rng = rng or random.Random()
    doc = Document.parse(text, protected)
    slots = doc.slots
    words = [doc.word(s) for s in slots]
    if op == "synonym":
        for s, w in zip(slots, synonym_replacement(words, rate, rng, synonyms, protected)):
            doc.set_word(s, w)
    elif op == "insert":
        n = _n_changes(len(words), rate)
        pool = [w for w in words if _allowed(synonyms, w, protected)]
        for _ in range(n if pool else 0):  # a synonym goes in front of a random slot's word
            s = rng.choice(slots)
            new = rng.choice(_allowed(synonyms, rng.choice(pool), protected)).lower()
            doc.set_word(s, f"{new} {doc.word(s)}")
    elif op == "swap":
        by_line: dict[int, list[tuple[int, int]]] = {}
        for s in slots:
            by_line.setdefault(s[0], []).append(s)
        pairs = [ss for ss in by_line.values() if len(ss) >= 2]
        for _ in range(_n_changes(len(words), rate) if pairs else 0):
            a, b = rng.sample(rng.choice(pairs), 2)
            wa, wb = doc.word(a), doc.word(b)
            doc.set_word(a, wb)
            doc.set_word(b, wa)
    else:  # delete
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate={rate} must lie in [0, 1]; EDA uses 0.1")
        left: dict[int, int] = {}
        for s in slots:
            left[s[0]] = left.get(s[0], 0) + 1
        for s in slots:
            if left[s[0]] > 1 and rng.random() < rate:
                doc.delete(s)
                left[s[0]] -= 1
    return doc.text()


def reorder_sentences(text: str, rng: random.Random | None = None) -> str:
    """Shuffle complete sentences within each line; line breaks and code lines stay where they are.

    A sentence is complete when it starts on this line (at the line start only after a line that ended a
    sentence, or at a paragraph start) and ends with ``.``, ``!`` or ``?`` on it; wrapped fragments stay.
    """
    rng = rng or random.Random()
    out, in_fence, prev_ended = [], False, True
    for line in text.split("\n"):
        fence = line.lstrip().startswith("```")
        if _is_code_line(line, in_fence) or "`" in line or not line.strip():
            out.append(line)
            prev_ended = not line.strip() or prev_ended
        else:
            body = line.strip()
            lead, tail = line[: len(line) - len(line.lstrip())], line[len(line.rstrip()) :]
            parts = _SENTENCE_END.split(body)  # sentence, separator, sentence, ...
            whole = [
                i
                for i in range(0, len(parts), 2)
                if (i > 0 or prev_ended) and parts[i].endswith((".", "!", "?")) and parts[i][:1].isupper()
            ]
            picked = [parts[i] for i in whole]
            rng.shuffle(picked)
            for i, p in zip(whole, picked):
                parts[i] = p
            out.append(lead + "".join(parts) + tail)
            prev_ended = body.endswith((".", "!", "?"))
        in_fence ^= fence
    return "\n".join(out)


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
            Default ``DEFAULT_OPS`` (swap, delete): synonym replacement and insertion are opt-in, since a
            general thesaurus damages technical text; add them with a table fit for your corpus.
        rates: per-op EDA rate (default 0.1 each, the EDA paper's setting).
        synonyms: synonym provider ``word -> list[str]``.
        protected: words that never change, move, disappear or get inserted (case-insensitive); default
            ``TECHNICAL_WORDS``. Identifiers and code are always protected.
        translate: translator for ``backtranslate`` (required if that op is listed); it gets the prose
            lines of the chosen texts (code lines are kept), so line structure survives.
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
        ops: Sequence[str] = DEFAULT_OPS,
        rates: dict[str, float] | None = None,
        synonyms: SynonymProvider = builtin_synonyms,
        protected: Iterable[str] = TECHNICAL_WORDS,
        translate: Translator | None = None,
        pivot: str = "de",
        seed: int = 0,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p={p} must lie in [0, 1]")
        bad = [o for o in ops if o not in _ALL_OPS]
        if bad or not ops:
            raise ValueError(f"ops={list(ops)} must be a non-empty subset of {_ALL_OPS}")
        if "backtranslate" in ops and translate is None:
            raise ValueError("op 'backtranslate' needs translate=callable(texts, src, tgt)")
        self.p, self.ops, self.synonyms, self.translate, self.pivot = (
            p,
            tuple(ops),
            synonyms,
            translate,
            pivot,
        )
        self.protected = frozenset(w.lower() for w in protected)
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
                out[i] = eda(texts[i], op, self.rates[op], self.rng, self.synonyms, self.protected)
        if to_translate:  # one batched round trip for the prose lines of all texts that drew it
            assert self.translate is not None
            where: list[tuple[int, int]] = []
            lines = {i: texts[i].split("\n") for i in to_translate}
            for i in to_translate:
                in_fence = False
                for li, line in enumerate(lines[i]):
                    fence = line.lstrip().startswith("```")
                    if line.strip() and not _is_code_line(line, in_fence) and "`" not in line:
                        where.append((i, li))
                    in_fence ^= fence
            done = back_translate([lines[i][li] for i, li in where], self.translate, "en", self.pivot)
            for (i, li), t in zip(where, done):
                lines[i][li] = " ".join(t.split("\n"))  # a translator that wraps must not add lines
            for i in to_translate:
                out[i] = "\n".join(lines[i])
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
