"""TrainingDoctor: when validation loss rises for K evaluations, write a diagnosis report.

It records the training loss, learning rate and gradient norms (per layer too) on a cadence,
buffering device tensors and syncing once per flush; it reads the validation loss from
``trainer.callback_metrics`` (``monitor``, or the first key containing "val" and "loss"). When the
validation loss has risen ``patience`` times in a row it runs :func:`kit.health.doctor.diagnose` and writes
``report.md`` plus PNG plots to ``<log_dir>/doctor/``, sends the report to loggers that take text
(TensorBoard's ``add_text``) and logs ``doctor/problems``. Training texts for the leakage check
come from ``train_texts``/``val_texts`` or from the datamodule's ``train_texts``/``val_texts``.
Its history is saved in the checkpoint, so ``kit doctor --ckpt`` can re-run the checks later.

Example:
    >>> import lightning.pytorch as pl
    >>> trainer = pl.Trainer(callbacks=[TrainingDoctor(patience=3)])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor

from kit.callbacks._common import (
    current_grad_scale,
    loss_from_output,
    silenced_logging,
    trainable_params,
)
from kit.health.doctor import (
    Diagnosis,
    TrainingHistory,
    diagnose,
    lr_range_test,
    plot_history,
    val_loss_rising,
)
from kit.health.grads import grad_norms, group_by_layer
from kit.health.hessian import preserved_state

__all__ = ["TrainingDoctor"]


class TrainingDoctor(Callback):
    """Diagnose a rising validation loss (LR, leakage, exploding/vanishing gradients, overfitting).

    Args:
        patience: consecutive validation-loss rises that trigger a report (K=3).
        log_every_n_steps: training-history cadence in optimizer steps.
        monitor: validation metric (``None``: first callback metric with "val" and "loss" in its name).
        warmup_steps: steps ignored by the learning-rate check.
        train_texts: training documents for the leakage check (``None``: ``datamodule.train_texts``).
        val_texts: validation documents (``None``: ``datamodule.val_texts``).
        ngram: n of the overlap check (13 as in GPT-3).
        out_dir: report folder (``None``: ``<log_dir>/doctor``).
        report_on_fit_end: also write a report when training ends.
        layer_depth: parameter-name components that make a layer (``None``: owning module).
        range_test_steps: when > 0, the report also runs a short LR range test of this many steps
            on the first training batch, with a fresh optimizer of the same class; the weights, RNG
            and train/eval mode are restored afterwards (off by default).

    Raises:
        ValueError: on non-positive patience/cadence.

    Example:
        >>> doc = TrainingDoctor(patience=2, train_texts=["a b c"], val_texts=["d e f"])
    """

    def __init__(
        self,
        patience: int = 3,
        log_every_n_steps: int = 10,
        monitor: str | None = None,
        warmup_steps: int = 0,
        train_texts: Sequence[str] | None = None,
        val_texts: Sequence[str] | None = None,
        ngram: int = 13,
        out_dir: str | None = None,
        report_on_fit_end: bool = False,
        layer_depth: int | None = None,
        range_test_steps: int = 0,
    ) -> None:
        if patience < 1 or log_every_n_steps < 1:
            raise ValueError(
                f"patience={patience} and log_every_n_steps={log_every_n_steps} must be >= 1 (defaults 3, 10)"
            )
        self.patience, self.log_every_n_steps, self.monitor = patience, log_every_n_steps, monitor
        self.warmup_steps, self.ngram, self.out_dir = warmup_steps, ngram, out_dir
        self.train_texts, self.val_texts = train_texts, val_texts
        self.report_on_fit_end, self.layer_depth = report_on_fit_end, layer_depth
        self.range_test_steps = range_test_steps
        self.history = TrainingHistory()
        self._held_batch: Any = None
        self._groups: dict[str, list[str]] = {}
        self.range_test_lr: float | None = None
        self.reports: list[str] = []
        self.last_diagnosis: Diagnosis | None = None
        self._buffer: list[tuple[int, Tensor, float, Tensor, dict[str, Tensor]]] = []
        self._grad: tuple[Tensor, dict[str, Tensor]] | None = None
        self._streak_reported = False
        self._unlogged_problems: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._groups = group_by_layer(
            [n for n, p in pl_module.named_parameters() if p.requires_grad], self.layer_depth
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.range_test_steps and self._held_batch is None:
            self._held_batch = apply_to_collection(batch, Tensor, lambda t: t.detach().clone())

    def _range_test(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float | None:
        if self._held_batch is None or not trainer.optimizers or not pl_module.automatic_optimization:
            return None
        opt_cls = type(trainer.optimizers[0])
        saved = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        params = [p for p in pl_module.parameters() if p.requires_grad]
        opt = opt_cls(params, lr=1e-7)

        def step(lr: float) -> float:
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            with silenced_logging(pl_module):
                loss = loss_from_output(pl_module.training_step(self._held_batch, 0))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            return float(loss.detach())

        try:
            with preserved_state(pl_module, eval_mode=False), torch.enable_grad():
                suggested, curve = lr_range_test(step, steps=self.range_test_steps)
            # kept in the history (and so in the checkpoint): the report and `kit doctor` plot it
            self.history.lr_range = [(float(lr), float(loss)) for lr, loss in curve]
            self.history.lr_range_suggested = suggested
        finally:
            pl_module.load_state_dict(saved)
            for p in params:
                p.grad = None
        return suggested

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if trainer.global_step % self.log_every_n_steps == 0:
            params = trainable_params(trainer, pl_module)
            if not self._groups:
                self.on_train_start(trainer, pl_module)
            self._grad = grad_norms(params, self._groups, scale=current_grad_scale(trainer, optimizer))

    def _log_problems(self, pl_module: pl.LightningModule, **kw: bool) -> None:
        # on_validation_end, where reports are written, may not log: the count goes out at the next
        # training batch or epoch end (a report written at fit end reaches the loggers as text only)
        if self._unlogged_problems is not None:
            pl_module.log("doctor/problems", self._unlogged_problems, **kw)
            self._unlogged_problems = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_problems(pl_module, on_step=False, on_epoch=True)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._log_problems(pl_module, on_step=True, on_epoch=False)
        if self._grad is None:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not isinstance(loss, Tensor):
            self._grad = None
            return
        lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else float("nan")
        total, per = self._grad
        self._buffer.append((trainer.global_step - 1, loss.detach().float(), lr, total, per))
        self._grad = None
        if len(self._buffer) >= 10:
            self._flush()

    def _flush(self) -> None:
        """Move buffered device scalars to the history with one sync."""
        if not self._buffer:
            return
        flat: list[Tensor] = []
        for _, loss, _, total, per in self._buffer:
            flat += [loss.reshape(()), total.reshape(()).to(loss.device)] + [
                v.to(loss.device) for v in per.values()
            ]
        values = iter(torch.stack(flat).tolist())
        for step, _, lr, _, per in self._buffer:
            self.history.record_train(step, next(values), lr, next(values))
            self.history.record_layers({k: next(values) for k in per})
        self._buffer = []

    def _val_loss(self, trainer: pl.Trainer) -> float | None:
        metrics = trainer.callback_metrics
        key = self.monitor or next((k for k in metrics if "val" in k and "loss" in k), None)
        if key is None or key not in metrics:
            return None
        return float(metrics[key])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._flush()  # validation already syncs; keep the history current
        val = self._val_loss(trainer)
        if val is None:
            return
        self.history.record_val(trainer.global_step, val)
        rising = val_loss_rising(self.history.val_loss, self.patience)
        if rising and not self._streak_reported:  # one report per streak of rises
            self._streak_reported = True
            self.run(
                trainer, reason=f"validation loss rose {self.patience} evaluations in a row (or diverged)"
            )
        elif not rising:
            self._streak_reported = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.report_on_fit_end:
            self.run(trainer, reason="end of training")

    def run(self, trainer: pl.Trainer | None = None, reason: str = "requested") -> Diagnosis:
        """Diagnose now; write the report and plots (rank zero) and return the :class:`Diagnosis`."""
        self._flush()
        train_texts, val_texts = self.train_texts, self.val_texts
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if train_texts is None and dm is not None:
            train_texts = getattr(dm, "train_texts", None)
        if val_texts is None and dm is not None:
            val_texts = getattr(dm, "val_texts", None)
        suggested = None
        if self.range_test_steps and trainer is not None and trainer.lightning_module is not None:
            suggested = self.range_test_lr = self._range_test(trainer, trainer.lightning_module)
        diag = diagnose(
            self.history, train_texts, val_texts, self.warmup_steps, self.patience, self.ngram, suggested
        )
        diag.title = f"Training doctor report (step {trainer.global_step if trainer else '?'}: {reason})"
        self.last_diagnosis = diag
        if trainer is not None and not trainer.is_global_zero:
            return diag
        out = Path(self.out_dir or Path(trainer.log_dir if trainer and trainer.log_dir else ".") / "doctor")
        diag.plots = plot_history(self.history, out)
        text = diag.to_markdown()
        (out / "report.md").write_text(text)
        self.reports.append(str(out / "report.md"))
        if trainer is not None:
            self._unlogged_problems = float(len(diag.problems))  # logged at the next hook that may log
            for logger in trainer.loggers:
                exp = getattr(logger, "experiment", None)
                if hasattr(exp, "add_text"):
                    exp.add_text("doctor/report", text, trainer.global_step)
        if diag.problems:
            rank_zero_warn(
                f"TrainingDoctor: {len(diag.problems)} problem(s) ({', '.join(f.check for f in diag.problems)}); "
                f"see {out / 'report.md'}"
            )
        return diag

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, out_dir=self.out_dir)

    def state_dict(self) -> dict[str, Any]:
        self._flush()
        return {
            "history": self.history.state_dict(),
            "reports": list(self.reports),
            "warmup_steps": self.warmup_steps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = TrainingHistory.from_state_dict(state_dict.get("history", {}))
        self.reports = list(state_dict.get("reports", []))
