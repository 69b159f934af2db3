"""Training doctor: explain a rising validation loss from the run's history and its data.

Checks (each returns a :class:`Finding` that says what it saw and what to try):

- :func:`check_learning_rate`: non-finite loss, loss rising after warmup, or rising grad norm with a
  loss that stopped falling; optionally an LR range test (:func:`lr_range_test`).
- :func:`check_leakage`: 13-gram overlap between training and validation documents (GPT-3's
  decontamination rule: a validation document is contaminated if it shares any 13-gram of
  normalised words with the training set) and exact duplicates.
- :func:`check_gradients`: exploding or vanishing gradient norms per layer.
- :func:`check_overfitting`: train loss still falling while validation loss rises, and the gap.

:func:`diagnose` runs them all and returns a :class:`Diagnosis` with a Markdown rendering;
:func:`plot_history` writes PNGs with matplotlib's Agg canvas (no pyplot, no global backend change).

Example:
    >>> h = TrainingHistory()
    >>> for s in range(50):
    ...     h.record_train(s, loss=3.0 - 0.02 * s, lr=1e-3, grad_norm=1.0)
    >>> check_learning_rate(h).severity
    'ok'
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "Diagnosis",
    "Finding",
    "TrainingHistory",
    "check_gradients",
    "check_leakage",
    "check_learning_rate",
    "check_overfitting",
    "diagnose",
    "exact_duplicates",
    "lr_range_test",
    "ngram_overlap",
    "plot_history",
    "plot_lr_range",
    "val_loss_rising",
]


@dataclass
class Finding:
    """One check's verdict.

    Attributes:
        check: short name (``"learning_rate"``, ``"leakage"``, ...).
        severity: ``"ok"``, ``"warn"`` or ``"problem"``.
        saw: what the data showed, with numbers.
        try_: what to do about it (empty when ok).
    """

    check: str
    severity: str
    saw: str
    try_: str = ""


@dataclass
class TrainingHistory:
    """Scalars recorded during training (host floats; the callback batches the device syncs)."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    layer_grad_norms: dict[str, list[float]] = field(default_factory=dict)
    lr_range: list[tuple[float, float]] = field(default_factory=list)  # last LR range test: (lr, loss)
    lr_range_suggested: float | None = None

    def record_train(
        self, step: int, loss: float, lr: float = float("nan"), grad_norm: float = float("nan")
    ) -> None:
        """Append one training step."""
        self.steps.append(int(step))
        self.train_loss.append(float(loss))
        self.lr.append(float(lr))
        self.grad_norm.append(float(grad_norm))

    def record_val(self, step: int, loss: float) -> None:
        """Append one validation result."""
        self.val_steps.append(int(step))
        self.val_loss.append(float(loss))

    def record_layers(self, norms: dict[str, float]) -> None:
        """Append one sample of per-layer gradient norms."""
        for k, v in norms.items():
            self.layer_grad_norms.setdefault(k, []).append(float(v))

    def state_dict(self) -> dict:
        """Plain-Python copy for checkpoints."""
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> TrainingHistory:
        """Rebuild from :meth:`state_dict`."""
        return cls(**{k: state[k] for k in cls.__dataclass_fields__ if k in state})


def _slope(y: Sequence[float]) -> float:
    """Least-squares slope per index, normalised by mean |y| (so 0.01 = +1% per step)."""
    n = len(y)
    if n < 3:
        return 0.0
    xm, ym = (n - 1) / 2, sum(y) / n
    num = sum((i - xm) * (v - ym) for i, v in enumerate(y))
    den = sum((i - xm) ** 2 for i in range(n))
    return num / den / max(abs(ym), 1e-12)


def _median(v: Sequence[float]) -> float:
    f = sorted(x for x in v if math.isfinite(x))
    return f[len(f) // 2] if f else float("inf")


def val_loss_rising(val_loss: Sequence[float], patience: int = 3) -> bool:
    """True when each of the last ``patience`` evaluations was higher than the one before, or the
    latest one is non-finite (a diverged run)."""
    if val_loss and not math.isfinite(val_loss[-1]):
        return True
    if len(val_loss) < patience + 1:
        return False
    tail = list(val_loss)[-(patience + 1) :]
    return all(b > a for a, b in itertools.pairwise(tail))


def check_learning_rate(
    h: TrainingHistory, warmup_steps: int = 0, range_test_lr: float | None = None
) -> Finding:
    """Learning rate too high: non-finite loss, loss trending up after warmup, or a bounce off its minimum.

    Args:
        h: the history.
        warmup_steps: steps to ignore at the start.
        range_test_lr: LR suggested by :func:`lr_range_test`, compared with the LR in use.
    """
    pairs = [
        (s, v, g, lr) for s, v, g, lr in zip(h.steps, h.train_loss, h.grad_norm, h.lr) if s >= warmup_steps
    ]
    if not pairs:
        return Finding("learning_rate", "ok", "no training steps after warmup recorded yet")
    losses = [v for _, v, _, _ in pairs]
    current_lr = next((lr for *_, lr in reversed(pairs) if math.isfinite(lr)), float("nan"))
    bad = [s for s, v, _, _ in pairs if not math.isfinite(v)]
    fix = (
        f"lower the learning rate (now {current_lr:.3g}) by 3-10x, lengthen warmup, and clip gradients at 1.0"
    )
    if bad:
        return Finding("learning_rate", "problem", f"loss became non-finite at step {bad[0]}", fix)
    finite_g = [g for _, _, g, _ in pairs if math.isfinite(g)]
    k = max(3, len(losses) // 5)
    head, tail = sum(losses[:k]) / k, sum(losses[-k:]) / k
    low = min(losses)
    loss_slope, g_slope = _slope(losses), _slope(finite_g)
    saw = (
        f"after warmup the loss went {head:.4g} -> {tail:.4g} (min {low:.4g}; trend {100 * loss_slope:+.2f}%/step), "
        f"grad-norm trend {100 * g_slope:+.2f}%/step"
    )
    rising = tail > head * 1.02 and loss_slope > 0
    bounced = head > low and tail - low > 0.5 * (head - low) and tail > low * 1.1 and len(losses) >= 10
    stuck_exploding = tail > 0.98 * head and g_slope > 0.01
    if rising or bounced or stuck_exploding:
        return Finding("learning_rate", "problem", saw + "; this is how a too-high learning rate looks", fix)
    if range_test_lr is not None and math.isfinite(current_lr) and current_lr > 3 * range_test_lr:
        return Finding(
            "learning_rate",
            "warn",
            f"LR in use {current_lr:.3g} is {current_lr / range_test_lr:.1f}x the range test's suggestion "
            f"{range_test_lr:.3g}",
            f"try lr={range_test_lr:.3g}",
        )
    return Finding("learning_rate", "ok", saw)


_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngram_hashes(words: list[str], n: int) -> set[int]:
    return {
        int.from_bytes(hashlib.blake2b(" ".join(words[i : i + n]).encode(), digest_size=8).digest(), "little")
        for i in range(len(words) - n + 1)
    }


def ngram_overlap(train_texts: Iterable[str], val_texts: Sequence[str], n: int = 13) -> dict:
    """GPT-3-style contamination: which validation documents share an ``n``-gram with training.

    Text is lower-cased and split into alphanumeric words, so punctuation and spacing changes do
    not hide a copy. Documents shorter than ``n`` words are compared whole.

    Returns:
        ``{"contaminated": [val indices], "fraction": float, "n": n}``.

    Raises:
        ValueError: if ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n={n} must be >= 1; GPT-3 used 13")
    train: set[int] = set()
    short: set[str] = set()
    for t in train_texts:
        w = _words(t)
        train |= _ngram_hashes(w, n)
        if len(w) < n:
            short.add(" ".join(w))
    hits = []
    for i, t in enumerate(val_texts):
        w = _words(t)
        if (len(w) >= n and not train.isdisjoint(_ngram_hashes(w, n))) or (
            w and len(w) < n and " ".join(w) in short
        ):
            hits.append(i)
    return {"contaminated": hits, "fraction": len(hits) / max(len(val_texts), 1), "n": n}


def exact_duplicates(train_texts: Iterable[str], val_texts: Sequence[str]) -> list[int]:
    """Indices of validation documents identical (after whitespace/case normalisation) to a training one."""

    def key(t: str) -> bytes:
        return hashlib.blake2b(" ".join(t.lower().split()).encode(), digest_size=16).digest()

    train = {key(t) for t in train_texts}
    return [i for i, t in enumerate(val_texts) if key(t) in train]


def check_leakage(
    train_texts: Sequence[str] | None, val_texts: Sequence[str] | None, n: int = 13, max_fraction: float = 0.0
) -> Finding:
    """Train/val leakage by exact duplicates and ``n``-gram overlap."""
    if not train_texts or not val_texts:
        return Finding(
            "leakage", "ok", "skipped: no training/validation text available (pass the texts to check)"
        )
    dups = exact_duplicates(train_texts, val_texts)
    ov = ngram_overlap(train_texts, val_texts, n)
    saw = (
        f"{len(dups)}/{len(val_texts)} validation documents are exact copies of training documents; "
        f"{len(ov['contaminated'])}/{len(val_texts)} ({100 * ov['fraction']:.1f}%) share a {n}-gram with training"
    )
    if dups or ov["fraction"] > max_fraction:
        ex = (dups or ov["contaminated"])[:5]
        return Finding(
            "leakage",
            "problem",
            saw + f" (e.g. validation docs {ex})",
            "deduplicate across splits before splitting (exact + MinHash), then drop validation documents "
            f"with {n}-gram overlap; the validation loss is optimistic until then",
        )
    return Finding("leakage", "ok", saw)


def check_gradients(
    layer_norms: dict[str, list[float]], explode: float = 100.0, vanish: float = 1e-7, spread: float = 1e4
) -> Finding:
    """Exploding (a layer's latest norm > ``explode`` or > 10x its median so far) or vanishing (< ``vanish``, or
    ``spread`` times smaller than the largest layer) gradients per layer."""
    if not layer_norms:
        return Finding("gradients", "ok", "skipped: no per-layer gradient norms recorded")
    recent = {k: v[-1] for k, v in layer_norms.items() if v}
    nonfinite = [k for k, v in recent.items() if not math.isfinite(v)]
    finite = {k: v for k, v in recent.items() if math.isfinite(v)}
    top = max(finite.values(), default=0.0)
    exploding = nonfinite + [k for k, v in finite.items() if v > explode]
    exploding += [
        k
        for k, v in layer_norms.items()
        if len(v) >= 4 and k not in exploding and math.isfinite(v[-1]) and v[-1] > 10 * _median(v)
    ]
    vanishing = [k for k, v in finite.items() if v < vanish or (top > 0 and v < top / spread)]
    saw = (
        f"latest per-layer grad norms span {min(finite.values(), default=0):.3g} .. {top:.3g} "
        f"over {len(finite)} finite layers"
    )
    if nonfinite:
        saw += f"; non-finite in {len(nonfinite)} layers"
    if exploding:
        return Finding(
            "gradients",
            "problem",
            saw + f"; exploding in {exploding[:5]}",
            "clip gradients (norm 1.0), lower the LR, check normalisation layers and init scale of those layers",
        )
    if vanishing:
        return Finding(
            "gradients",
            "problem",
            saw + f"; vanishing in {vanishing[:5]}",
            "use residual connections / pre-LayerNorm, check for saturated activations or dead ReLUs, and "
            "initialise those layers with a larger scale",
        )
    return Finding("gradients", "ok", saw)


def check_overfitting(h: TrainingHistory, patience: int = 3) -> Finding:
    """Validation loss rising while training loss keeps falling; reports the train/val gap."""
    if len(h.val_loss) < 2 or not h.train_loss:
        return Finding("overfitting", "ok", "skipped: fewer than 2 validation results")
    best = min(h.val_loss)
    last_val = h.val_loss[-1]
    k = max(1, len(h.train_loss) // 10)
    train_now = sum(h.train_loss[-k:]) / k
    first_val_step = h.val_steps[h.val_loss.index(best)] if h.val_steps else 0
    before = [v for s, v in zip(h.steps, h.train_loss) if s <= first_val_step]
    train_then = sum(before[-k:]) / len(before[-k:]) if before else train_now
    gap = last_val - train_now
    saw = (
        f"val loss {best:.4g} (best) -> {last_val:.4g} (latest); train loss {train_then:.4g} -> {train_now:.4g}; "
        f"gap val-train {gap:+.4g}"
    )
    if val_loss_rising(h.val_loss, patience) and train_now < train_then and gap > 0:
        return Finding(
            "overfitting",
            "problem",
            saw,
            "stop at the best checkpoint (EarlyStopping), add dropout (0.1-0.3), weight decay or label smoothing, "
            "or get more / more varied data",
        )
    return Finding("overfitting", "ok", saw)


def lr_range_test(
    step_fn: Callable[[float], float], lr_min: float = 1e-7, lr_max: float = 1.0, steps: int = 50
) -> tuple[float, list[tuple[float, float]]]:
    """Short LR range test (Smith 2017): exponentially increasing LR, one step each.

    Args:
        step_fn: does one training step at the given LR on a throwaway copy of the model and
            returns the loss.
        lr_min: first LR.
        lr_max: last LR.
        steps: number of steps.

    Returns:
        ``(suggested_lr, [(lr, loss), ...])``; the suggestion is a tenth of the LR where the
        (smoothed) loss was lowest, the usual rule of thumb.
    """
    if not 0 < lr_min < lr_max or steps < 3:
        raise ValueError(f"need 0 < lr_min ({lr_min}) < lr_max ({lr_max}) and steps >= 3 (got {steps})")
    curve: list[tuple[float, float]] = []
    smooth, best = None, (float("inf"), lr_min)
    for i in range(steps):
        lr = lr_min * (lr_max / lr_min) ** (i / (steps - 1))
        loss = float(step_fn(lr))
        curve.append((lr, loss))
        if not math.isfinite(loss):
            break
        smooth = loss if smooth is None else 0.7 * smooth + 0.3 * loss
        if smooth < best[0]:
            best = (smooth, lr)
        elif smooth > 4 * best[0]:
            break
    return best[1] / 10.0, curve


@dataclass
class Diagnosis:
    """All findings plus the plots written for them."""

    findings: list[Finding]
    plots: list[str] = field(default_factory=list)
    title: str = "Training doctor report"

    @property
    def problems(self) -> list[Finding]:
        """Findings with severity other than ok."""
        return [f for f in self.findings if f.severity != "ok"]

    def to_markdown(self) -> str:
        """The report as Markdown."""
        lines = [f"# {self.title}", ""]
        lines.append(
            f"**{len(self.problems)} problem(s) found.**" if self.problems else "**No problems found.**"
        )
        lines += ["", "| check | verdict | what we saw | what to try |", "|---|---|---|---|"]
        for f in self.findings:
            lines.append(f"| {f.check} | {f.severity} | {f.saw} | {f.try_ or '-'} |")
        for p in self.plots:
            lines += ["", f"![{Path(p).stem}]({Path(p).name})"]
        return "\n".join(lines) + "\n"


def diagnose(
    h: TrainingHistory,
    train_texts: Sequence[str] | None = None,
    val_texts: Sequence[str] | None = None,
    warmup_steps: int = 0,
    patience: int = 3,
    ngram: int = 13,
    range_test_lr: float | None = None,
) -> Diagnosis:
    """Run every check and collect the findings."""
    return Diagnosis(
        [
            check_learning_rate(h, warmup_steps, range_test_lr),
            check_leakage(train_texts, val_texts, ngram),
            check_gradients(h.layer_grad_norms),
            check_overfitting(h, patience),
        ]
    )


def plot_lr_range(
    curve: Sequence[tuple[float, float]], suggested: float | None, out_dir: str | Path
) -> str | None:
    """Write ``lr_range.png``: loss against LR (log axis) with the suggested LR and the minimum marked.

    Returns:
        The path written, or ``None`` for an empty curve.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = [(lr, loss) for lr, loss in curve if math.isfinite(loss)]
    if not points:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lrs, losses = zip(*points)
    ax.plot(lrs, losses, marker="o", markersize=3, label="loss after one step at this LR")
    best = min(points, key=lambda p: p[1])
    ax.axvline(best[0], color="gray", linestyle=":", label=f"lowest loss at {best[0]:.2g}")
    if suggested is not None:
        ax.axvline(suggested, color="tab:green", linestyle="--", label=f"suggested LR {suggested:.2g}")
    if len(points) < len(curve):
        ax.set_title(f"LR range test ({len(curve) - len(points)} non-finite loss(es) at the top not shown)")
    else:
        ax.set_title("LR range test (Smith 2017)")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "lr_range.png"
    fig.savefig(path, dpi=80)
    return str(path)


def plot_history(h: TrainingHistory, out_dir: str | Path) -> list[str]:
    """Write loss, LR and grad-norm PNGs (and the LR range test's curve, if one ran) into ``out_dir``;
    returns the paths written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    panels = [
        ("loss", [("train", h.steps, h.train_loss), ("val", h.val_steps, h.val_loss)], False),
        ("lr", [("lr", h.steps, h.lr)], False),
        (
            "grad_norm",
            [("global", h.steps, h.grad_norm)]
            + [(k, list(range(len(v))), v) for k, v in list(h.layer_grad_norms.items())[:8]],
            True,
        ),
    ]
    paths = []
    for name, series, logy in panels:
        if not any(len(y) for _, _, y in series):
            continue
        fig = Figure(figsize=(6, 3.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for label, x, y in series:
            if len(y):
                ax.plot(x[: len(y)], y, label=label, marker="o" if len(y) < 30 else None, markersize=3)
        ax.set_xlabel("step" if name != "grad_norm" else "step (global) / sample (layers)")
        ax.set_title(name)
        if logy:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=80)
        paths.append(str(path))
    if h.lr_range:
        lr_path = plot_lr_range(h.lr_range, h.lr_range_suggested, out)
        if lr_path:
            paths.append(lr_path)
    return paths
