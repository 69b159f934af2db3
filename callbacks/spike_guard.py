"""SpikeGuard: catch loss / grad-norm spikes and NaN/Inf, then skip, rewind (PaLM) or stop.

The loss is read in ``on_before_backward`` (divided by the fp16 loss scale when one is active) and
the gradient norm in ``on_before_optimizer_step``; the decision is taken there, before the update:

- ``"skip"``: the update is dropped by setting every ``.grad`` to ``None``, which makes
  torch optimizers (fused and foreach included) leave those parameters and their state untouched.
- ``"rewind"``: reload model and optimizer state from the last checkpoint written by a
  ``ModelCheckpoint`` (for ``KitCheckpoint``: the newest one whose checksums verify) and drop the updates of
  the next ``skip_batches`` batches (PaLM restarted ~100 steps before a spike and skipped 200-500 batches).
  Without a checkpoint yet it skips the update and warns. Under strategies that write sharded checkpoint
  folders (DeepSpeed, FSDP ``state_dict_type='sharded'``, distributed ModelParallel) it refuses at setup
  with a message, instead of silently becoming ``"skip"``.
- ``"stop"``: drop the update, write a Markdown report and stop the Trainer.

Deciding per step needs the loss on the host: one sync per step (two floats). Under DDP the verdict
is OR-reduced over ranks so every rank takes the same action.

Example:
    >>> import lightning.pytorch as pl
    >>> trainer = pl.Trainer(callbacks=[SpikeGuard(action="skip")])  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from kit._compat import GradScalerView, strategy_traits
from kit.callbacks._common import current_grad_scale, global_grad_norm, trainable_params
from kit.callbacks.checkpoint import KitCheckpoint
from kit.checkpoint import newest_good
from kit.health.spikes import SpikeDetector, SpikeVerdict

__all__ = ["SpikeGuard"]

ACTIONS = ("skip", "rewind", "stop")
_HISTORY = 1_000_000  # (step, loss) pairs kept for the plot: 16 MB at most


def _sharded_checkpoints(strategy: Any) -> str | None:
    """Why ``strategy`` writes checkpoints as folders of shards, or ``None`` when it writes one file."""
    traits = strategy_traits(strategy)
    return f"{traits.name} saves each checkpoint as a folder of shards" if traits.sharded_checkpoints else None


class SpikeGuard(Callback):
    """Rolling z-score guard on loss and global gradient norm.

    Args:
        action: ``"skip"``, ``"rewind"`` or ``"stop"``.
        window: rolling window length (128).
        threshold: z-score threshold in sigmas (6).
        min_fill: fraction of the window needed before z-scores count (0.5).
        monitor: which signals to watch, from ``("loss", "grad_norm")``.
        skip_batches: batches whose updates are dropped after a rewind (PaLM: 200-500).
        ckpt_path: checkpoint to rewind to (``None``: the newest file saved by any ModelCheckpoint).
        report_path: where ``"stop"`` writes its report (``None``: ``<log_dir>/spike_report.md``).

    Raises:
        ValueError: on an unknown action/monitor or bad window settings.

    Example:
        >>> guard = SpikeGuard(action="rewind", skip_batches=200)
    """

    def __init__(
        self,
        action: str = "skip",
        window: int = 128,
        threshold: float = 6.0,
        min_fill: float = 0.5,
        monitor: tuple[str, ...] = ("loss", "grad_norm"),
        skip_batches: int = 200,
        ckpt_path: str | None = None,
        report_path: str | None = None,
    ) -> None:
        if action not in ACTIONS:
            raise ValueError(f"action={action!r} is not one of {ACTIONS}")
        bad = [m for m in monitor if m not in ("loss", "grad_norm")]
        if bad or not monitor:
            raise ValueError(f"monitor={monitor!r}: choose from ('loss', 'grad_norm')")
        if skip_batches < 0:
            raise ValueError(f"skip_batches={skip_batches} must be >= 0; PaLM used 200-500")
        self.action, self.monitor, self.skip_batches = action, tuple(monitor), skip_batches
        self.ckpt_path, self.report_path = ckpt_path, report_path
        self.detectors = {m: SpikeDetector(window, threshold, min_fill) for m in self.monitor}
        self.events: list[dict[str, Any]] = []
        self.skipped: list[dict[str, int]] = []
        self.pending_skips = 0
        self.rewinds = 0
        self.history: list[tuple[int, float]] = []  # (step, loss) of every judged step, for the plot
        self._loss: Tensor | None = None
        self._batch: tuple[int, int] = (0, 0)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.action == "rewind" and stage == "fit":
            reason = _sharded_checkpoints(trainer.strategy)
            if reason:
                raise ValueError(
                    f"SpikeGuard(action='rewind') reloads a checkpoint in the middle of a step, which this kit does "
                    f"only for single-file checkpoints; {reason}. Use action='skip' or action='stop' (then resume "
                    "with --ckpt_path last), or save full state dicts (FSDPStrategy(state_dict_type='full'))"
                )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch = (trainer.current_epoch, batch_idx)
        if batch_idx % max(1, trainer.accumulate_grad_batches) == 0:
            self._loss = None

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        loss = loss.detach().float()
        scale = GradScalerView(getattr(trainer.precision_plugin, "scaler", None)).scale()
        if scale is not None:
            loss = loss / scale  # Lightning hands the hook the scaled loss under fp16
        self._loss = (
            loss if self._loss is None else self._loss + loss
        )  # accumulation: sum of 1/k-scaled losses

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        params = trainable_params(trainer, pl_module)
        scaled = current_grad_scale(trainer, optimizer) is not None
        if self.pending_skips > 0:  # still dropping updates after a rewind
            self.pending_skips -= 1
            self._drop_update(params, scaled)
            self._record_skip(trainer, rewind=True)
        else:
            verdicts = self._judge(trainer, pl_module, optimizer)
            flagged = {m: v for m, v in verdicts.items() if v.is_spike}
            # OR over ranks, so every rank drops (or keeps) the same update
            if trainer.strategy.reduce_boolean_decision(bool(flagged), all=False):
                self._drop_update(params, scaled)
                self._act(trainer, pl_module, verdicts, flagged)
        # every step, so EarlyStopping/ModelCheckpoint can monitor it from the start
        pl_module.log("spike_guard/spikes", float(len(self.events)), on_step=True, on_epoch=False)

    def _judge(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> dict[str, SpikeVerdict]:
        """Feed this step's signals to the detectors (the one host sync per step) and return their verdicts."""
        signals: list[Tensor] = []
        if "loss" in self.monitor:
            signals.append(self._loss if self._loss is not None else torch.tensor(float("nan")))
        if "grad_norm" in self.monitor:
            signals.append(global_grad_norm(trainer, pl_module, optimizer))
        device = signals[0].device
        values = torch.stack([s.reshape(()).to(device) for s in signals]).tolist()
        if "loss" in self.monitor and len(self.history) < _HISTORY:
            self.history.append((trainer.global_step, values[0]))
        verdicts = {m: self.detectors[m].update(v) for m, v in zip(self.monitor, values)}
        if (
            "loss" in self.monitor and self._loss is None
        ):  # e.g. training_step returned None: nothing to judge
            verdicts.pop("loss")
        return verdicts

    def _act(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        verdicts: dict[str, SpikeVerdict],
        flagged: dict[str, SpikeVerdict],
    ) -> None:
        """The update is already dropped: record the event, then rewind or stop as configured."""
        epoch, batch_idx = self._batch
        event = {
            "step": trainer.global_step,
            "epoch": epoch,
            "batch_idx": batch_idx,
            "action": self.action,
            **{f"{m}": v.value for m, v in verdicts.items()},
            **{f"{m}_z": v.zscore for m, v in verdicts.items()},
            "reason": ",".join(f"{m}:{v.reason}" for m, v in flagged.items()) or "other rank",
        }
        self._record_skip(trainer, rewind=False)
        if self.action == "rewind":
            event["rewound_to"] = self._rewind(trainer, pl_module)
        self.events.append(event)
        rank_zero_warn(f"SpikeGuard: spike at step {event['step']} ({event['reason']}); action={self.action}")
        if self.action == "stop":
            if trainer.is_global_zero:
                self.write_report(trainer)
            trainer.should_stop = True

    def _record_skip(self, trainer: pl.Trainer, rewind: bool) -> None:
        epoch, batch_idx = self._batch
        self.skipped.append(
            {"step": trainer.global_step, "epoch": epoch, "batch_idx": batch_idx, "rewind": int(rewind)}
        )

    @staticmethod
    def _drop_update(params: dict[str, Tensor], scaled: bool = False) -> None:
        # grad=None makes optimizers skip the parameter. Under fp16 with an optimizer that unscales
        # inside step() (fused Adam) GradScaler needs gradients to check, so fill them with inf
        # instead: the scaler then skips the step itself (and halves its scale once).
        for p in params.values():
            if scaled and p.grad is not None:
                p.grad.fill_(float("inf"))
            else:
                p.grad = None

    def _last_checkpoint(self, trainer: pl.Trainer) -> str | None:
        if self.ckpt_path:
            return self.ckpt_path
        paths = []
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, KitCheckpoint) and cb.dirpath:  # its manifest knows which ones are complete
                good = newest_good(cb.dirpath)
                paths += [str(good)] if good is not None else []
            elif isinstance(cb, ModelCheckpoint):
                paths += [p for p in (cb.last_model_path, cb.best_model_path, *cb.best_k_models) if p]
        paths = [p for p in paths if Path(p).is_file()]
        return max(paths, key=lambda p: Path(p).stat().st_mtime) if paths else None

    def _rewind(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
        path = self._last_checkpoint(trainer)
        if path is None:
            rank_zero_warn(
                "SpikeGuard: no checkpoint to rewind to yet (add a ModelCheckpoint); skipped the update only"
            )
            return None
        # the strategy's own loaders, so DDP/FSDP/DeepSpeed checkpoints load the way Lightning saved them
        ckpt = trainer.strategy.load_checkpoint(path)
        trainer.strategy.load_model_state_dict(ckpt)
        trainer.strategy.load_optimizer_state_dict(ckpt)
        self.pending_skips = self.skip_batches
        self.rewinds += 1
        return str(path)

    def write_report(self, trainer: pl.Trainer | None = None) -> str:
        """Write the events and skipped batches as Markdown; returns the path."""
        path = self.report_path
        if path is None:
            root = (trainer.log_dir if trainer is not None else None) or (
                trainer.default_root_dir if trainer else "."
            )
            path = str(Path(root) / "spike_report.md")
        lines = ["# SpikeGuard report", "", f"action: {self.action}; rewinds: {self.rewinds}", ""]
        lines += [
            "| step | epoch | batch | reason | " + " | ".join(self.monitor) + " |",
            "|---|---|---|---|" + "---|" * len(self.monitor),
        ]
        for e in self.events:
            lines.append(
                f"| {e['step']} | {e['epoch']} | {e['batch_idx']} | {e['reason']} | "
                + " | ".join(
                    f"{e.get(m, float('nan')):.4g} (z={e.get(m + '_z', float('nan')):.3g})"
                    for m in self.monitor
                )
                + " |"
            )
        lines += [
            "",
            f"{len(self.skipped)} updates dropped: " + ", ".join(str(s["step"]) for s in self.skipped[:200]),
        ]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("\n".join(lines) + "\n")
        if self.history:
            self.plot(str(Path(path).with_suffix(".png")))
        return path

    def plot(self, path: str) -> str:
        """PNG of the loss per step with each spike marked (and the dropped updates shaded); returns the path."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        steps, losses = zip(*self.history) if self.history else ((), ())
        fig = Figure(figsize=(8, 3.5))
        FigureCanvasAgg(fig)  # its own canvas: no pyplot, no global backend change
        ax = fig.subplots()
        ax.plot(steps, losses, lw=0.8, label="loss")
        spikes = [(e["step"], e.get("loss", float("nan"))) for e in self.events]
        if spikes:
            finite = [lo for lo in losses if math.isfinite(lo)]
            top = max(finite) if finite else 1.0
            xs = [st for st, _ in spikes]
            ys = [lo if math.isfinite(lo) else top for _, lo in spikes]
            ax.scatter(xs, ys, color="red", marker="x", zorder=3, label=f"spike ({self.action})")
        for s in self.skipped:
            if s["rewind"]:
                ax.axvspan(s["step"] - 0.5, s["step"] + 0.5, color="orange", alpha=0.2, lw=0)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(f"SpikeGuard: {len(self.events)} spike(s), {len(self.skipped)} update(s) dropped")
        ax.legend(loc="upper right")
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        return path

    @property
    def state_key(self) -> str:
        return self._generate_state_key(action=self.action, monitor=self.monitor)

    def state_dict(self) -> dict[str, Any]:
        return {
            "detectors": {m: d.state_dict() for m, d in self.detectors.items()},
            "events": list(self.events),
            "skipped": list(self.skipped),
            "pending_skips": self.pending_skips,
            "rewinds": self.rewinds,
            "history": list(self.history),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for m, s in state_dict.get("detectors", {}).items():
            if m in self.detectors:
                self.detectors[m].load_state_dict(s)
        self.events = list(state_dict.get("events", []))
        self.skipped = list(state_dict.get("skipped", []))
        self.pending_skips = int(state_dict.get("pending_skips", 0))
        self.rewinds = int(state_dict.get("rewinds", 0))
        self.history = [tuple(h) for h in state_dict.get("history", [])]
