"""Dynamic fp16 loss scaling: a bounded GradScaler and overflow-storm detection, free of any Trainer.

``torch.amp.GradScaler`` doubles its scale after ``growth_interval`` clean steps and halves it (and skips
the step) on overflow, with no bounds. :class:`LossScaleConfig` adds optional ``min_scale``/``max_scale``
bounds (the seed recipe keeps the scale within 8-1024), :func:`clamp_scale` enforces them after each
``update()``, and :class:`OverflowTracker` turns the scale's trajectory into skipped-step counts and an
overflow-storm diagnosis.

Example:
    >>> cfg = LossScaleConfig(init_scale=1024, min_scale=8, max_scale=1024)
    >>> scaler = make_grad_scaler(cfg, "cpu")
    >>> tracker = OverflowTracker(max_consecutive_skips=3, floor=cfg.min_scale)
    >>> tracker.update(512.0).skipped  # the scale halved: that step overflowed and was skipped
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from kit._compat import GradScalerView

__all__ = [
    "LossScaleConfig",
    "OverflowStatus",
    "OverflowTracker",
    "clamp_scale",
    "make_grad_scaler",
    "storm_diagnosis",
]


@dataclass
class LossScaleConfig:
    """Settings of a dynamic loss scaler.

    Args:
        init_scale: the first scale (torch default 65536; the seed recipe starts at 1024).
        growth_factor: multiply the scale by this after ``growth_interval`` steps without overflow.
        backoff_factor: multiply the scale by this on overflow (the step is skipped).
        growth_interval: clean steps between two growths.
        min_scale: optional floor; the scale never drops below it (seed recipe: 8).
        max_scale: optional ceiling; the scale never grows above it (seed recipe: 1024).

    Raises:
        ValueError: if a factor or bound is out of range or the bounds do not contain ``init_scale``.
    """

    init_scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    min_scale: float | None = None
    max_scale: float | None = None

    def __post_init__(self) -> None:
        if self.init_scale <= 0:
            raise ValueError(f"init_scale={self.init_scale} must be > 0; the seed recipe uses 1024")
        if self.growth_factor <= 1:
            raise ValueError(f"growth_factor={self.growth_factor} must be > 1; torch's default is 2.0")
        if not 0 < self.backoff_factor < 1:
            raise ValueError(
                f"backoff_factor={self.backoff_factor} must be in (0, 1); torch's default is 0.5"
            )
        if self.growth_interval < 1:
            raise ValueError(f"growth_interval={self.growth_interval} must be >= 1; torch's default is 2000")
        if self.min_scale is not None and self.min_scale <= 0:
            raise ValueError(f"min_scale={self.min_scale} must be > 0 or None; the seed recipe uses 8")
        lo = self.min_scale if self.min_scale is not None else 0.0
        hi = self.max_scale if self.max_scale is not None else float("inf")
        if lo > hi:
            raise ValueError(f"min_scale={self.min_scale} exceeds max_scale={self.max_scale}; swap them")
        if not lo <= self.init_scale <= hi:
            raise ValueError(
                f"init_scale={self.init_scale} lies outside [min_scale={self.min_scale}, max_scale={self.max_scale}]; "
                "pick an init_scale inside the bounds"
            )

    def to_dict(self) -> dict:
        """The config as a plain dict (for logging hyperparameters)."""
        return asdict(self)


def make_grad_scaler(config: LossScaleConfig, device: str = "cuda") -> torch.amp.GradScaler:
    """Build a ``torch.amp.GradScaler`` with ``config``'s scale, factors and interval.

    Args:
        config: the settings; bounds are applied separately by :func:`clamp_scale`.
        device: the device type the scaler serves (``"cuda"``, ``"cpu"``...).

    Returns:
        A fresh, enabled GradScaler.
    """
    return torch.amp.GradScaler(
        device,
        init_scale=config.init_scale,
        growth_factor=config.growth_factor,
        backoff_factor=config.backoff_factor,
        growth_interval=config.growth_interval,
    )


def clamp_scale(scaler: torch.amp.GradScaler, min_scale: float | None, max_scale: float | None) -> None:
    """Clamp the scaler's current scale into ``[min_scale, max_scale]`` in place, without a host sync.

    Call it after ``scaler.update()``. Does nothing before the scaler's first ``scale()`` call. The new scale
    goes in through ``GradScaler.update(new_scale=...)``, so the growth tracker is left as it was.

    Args:
        scaler: the GradScaler.
        min_scale: floor or None.
        max_scale: ceiling or None.
    """
    GradScalerView(scaler).clamp(min_scale, max_scale)


@dataclass
class OverflowStatus:
    """What one optimizer step did to the loss scale.

    Attributes:
        scale: the scale after the update (before clamping to the bounds).
        skipped: the step overflowed and the optimizer skipped it.
        consecutive_skips: overflowed steps in a row, ending with this one.
        steps_at_floor: consecutive steps whose scale was at or below the floor.
        total_skips: overflowed steps since the start.
        storm: an overflow storm was detected (see ``reason``).
        reason: a one-line description of the storm, empty if none.
    """

    scale: float
    skipped: bool
    consecutive_skips: int
    steps_at_floor: int
    total_skips: int
    storm: bool
    reason: str = ""


class OverflowTracker:
    """Track skipped (overflow) steps from the loss scale and detect an overflow storm.

    A step overflowed exactly when the scaler backed off, i.e. the new scale is below the previous
    (already clamped) one; growth and clamping never lower it otherwise. A storm is either
    ``max_consecutive_skips`` overflows in a row or the scale pinned at ``floor`` for ``floor_patience``
    steps in a row.

    Args:
        max_consecutive_skips: skips in a row that count as a storm (>= 1).
        floor: the scale considered "pinned" (use ``min_scale``; 1.0 when there is no floor).
        floor_patience: steps in a row at the floor that count as a storm (>= 1).
        init_scale: the scale before the first step.

    Raises:
        ValueError: if a patience is < 1.

    Example:
        >>> t = OverflowTracker(max_consecutive_skips=2, init_scale=16.0)
        >>> [t.update(s).storm for s in (8.0, 4.0)]
        [False, True]
    """

    def __init__(
        self,
        max_consecutive_skips: int = 20,
        floor: float | None = None,
        floor_patience: int = 50,
        init_scale: float = 2.0**16,
    ) -> None:
        if max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips={max_consecutive_skips} must be >= 1; try 20")
        if floor_patience < 1:
            raise ValueError(f"floor_patience={floor_patience} must be >= 1; try 50")
        self.max_consecutive_skips = max_consecutive_skips
        self.floor = 1.0 if floor is None else float(floor)
        self.floor_patience = floor_patience
        self.prev_scale = float(init_scale)
        self.consecutive_skips = 0
        self.steps_at_floor = 0
        self.total_skips = 0
        self.steps = 0

    def update(self, scale: float, clamped_scale: float | None = None) -> OverflowStatus:
        """Record one optimizer step.

        Args:
            scale: the scaler's scale right after ``update()``, before any clamping.
            clamped_scale: the scale after clamping to the bounds (defaults to ``scale``).

        Returns:
            The step's :class:`OverflowStatus`.
        """
        clamped = scale if clamped_scale is None else float(clamped_scale)
        skipped = scale < self.prev_scale
        self.steps += 1
        self.total_skips += int(skipped)
        self.consecutive_skips = self.consecutive_skips + 1 if skipped else 0
        self.steps_at_floor = self.steps_at_floor + 1 if clamped <= self.floor else 0
        self.prev_scale = clamped
        reason = ""
        if self.consecutive_skips >= self.max_consecutive_skips:
            reason = f"{self.consecutive_skips} consecutive overflow steps were skipped"
        elif self.steps_at_floor >= self.floor_patience and self.consecutive_skips > 0:
            reason = (
                f"the loss scale has been pinned at its floor {self.floor:g} for {self.steps_at_floor} steps"
            )
        return OverflowStatus(
            clamped,
            skipped,
            self.consecutive_skips,
            self.steps_at_floor,
            self.total_skips,
            bool(reason),
            reason,
        )

    def state_dict(self) -> dict:
        """Counters, so a resumed run keeps counting where it stopped."""
        return {
            "prev_scale": self.prev_scale,
            "consecutive_skips": self.consecutive_skips,
            "steps_at_floor": self.steps_at_floor,
            "total_skips": self.total_skips,
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the counters saved by :meth:`state_dict`."""
        for key, value in state.items():
            setattr(self, key, value)


def storm_diagnosis(status: OverflowStatus, step: int, lr: float | None = None) -> str:
    """A human-readable diagnosis of an overflow storm with the fixes that usually work.

    Args:
        status: the status that reported the storm.
        step: the global step.
        lr: the current learning rate, if known.

    Returns:
        A multi-sentence message.
    """
    lr_hint = (
        f"lower the learning rate (now {lr:g}; try {lr / 3:g})"
        if lr
        else "lower the learning rate (try 3x lower)"
    )
    return (
        f"fp16 overflow storm at step {step}: {status.reason} (scale={status.scale:g}, "
        f"{status.total_skips} skipped steps in total). The gradients overflow fp16 even at a small loss scale, "
        "so the optimizer is not learning. Fixes: train in bf16 (precision='bf16-mixed', same speed on "
        f"Ampere+ GPUs, no loss scaling needed); or {lr_hint}; or add gradient clipping and warmup."
    )
