"""Rolling z-score spike detection for loss and gradient norm, with NaN/Inf detection.

A value is a spike when it is non-finite, or when the window is at least ``min_fill`` full and
``(value - mean) / std`` exceeds ``threshold`` (one-sided by default: a sudden drop of the loss is
not a problem). Spikes are not added to the window, so one outlier does not widen the band and
hide the next one.

Example:
    >>> det = SpikeDetector(window=8, threshold=6.0)
    >>> [det.update(1.0 + 0.01 * (i % 3)).is_spike for i in range(8)][-1]
    False
    >>> det.update(50.0).is_spike
    True
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["SpikeDetector", "SpikeVerdict"]


@dataclass(frozen=True)
class SpikeVerdict:
    """Result of one :meth:`SpikeDetector.update`.

    Attributes:
        is_spike: the value was flagged.
        reason: ``"nonfinite"``, ``"zscore"`` or ``""``.
        value: the value seen.
        zscore: its z-score against the window (``nan`` while warming up).
        active: the window was full enough to judge z-scores.
    """

    is_spike: bool
    reason: str
    value: float
    zscore: float
    active: bool


class SpikeDetector:
    """Rolling mean/std over the last ``window`` accepted values.

    Args:
        window: number of past values (128 by default).
        threshold: z-score above which a value is a spike (6 sigma by default).
        min_fill: fraction of the window that must be filled before z-scores count (0.5).
        two_sided: also flag sudden drops.
        min_std: floor on the std relative to ``|mean|``, so a perfectly flat series does not
            turn rounding noise into spikes.

    Raises:
        ValueError: on a window < 4, threshold <= 0 or min_fill outside (0, 1].
    """

    def __init__(
        self,
        window: int = 128,
        threshold: float = 6.0,
        min_fill: float = 0.5,
        two_sided: bool = False,
        min_std: float = 1e-3,
    ) -> None:
        if window < 4:
            raise ValueError(f"window={window} must be >= 4; the default is 128")
        if threshold <= 0:
            raise ValueError(f"threshold={threshold} must be > 0; the default is 6.0 (sigma)")
        if not 0 < min_fill <= 1:
            raise ValueError(f"min_fill={min_fill} must be in (0, 1]; the default is 0.5")
        self.window, self.threshold, self.min_fill = window, threshold, min_fill
        self.two_sided, self.min_std = two_sided, min_std
        self.values: deque[float] = deque(maxlen=window)

    @property
    def active(self) -> bool:
        """Whether enough values are in the window to judge z-scores."""
        return len(self.values) >= max(2, math.ceil(self.min_fill * self.window))

    def stats(self) -> tuple[float, float]:
        """Mean and (floored) standard deviation of the window."""
        n = len(self.values)
        if n == 0:
            return float("nan"), float("nan")
        mean = sum(self.values) / n  # recomputed (128 adds) rather than running sums, which drift
        var = sum((v - mean) ** 2 for v in self.values) / n
        return mean, max(math.sqrt(var), self.min_std * max(abs(mean), 1e-12))

    def score(self, value: float) -> float:
        """Z-score of ``value`` against the window (no state change)."""
        mean, std = self.stats()
        return (value - mean) / std if self.values else float("nan")

    def update(self, value: float) -> SpikeVerdict:
        """Judge ``value``; add it to the window unless it is a spike."""
        value = float(value)
        if not math.isfinite(value):
            return SpikeVerdict(True, "nonfinite", value, float("nan"), self.active)
        active = self.active
        z = self.score(value) if active else float("nan")
        spike = active and (abs(z) > self.threshold if self.two_sided else z > self.threshold)
        if not spike:
            self._push(value)
        return SpikeVerdict(spike, "zscore" if spike else "", value, z, active)

    def _push(self, value: float) -> None:
        self.values.append(value)

    def state_dict(self) -> dict:
        """Window contents and settings, for resume."""
        return {"values": list(self.values), "window": self.window, "threshold": self.threshold}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the window saved by :meth:`state_dict`."""
        self.values = deque((float(v) for v in state.get("values", [])), maxlen=self.window)
