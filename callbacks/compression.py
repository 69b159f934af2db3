"""GradientCompression: attach a compression comm hook to a DDP run and log the bytes it saves."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch.nn.parallel import DistributedDataParallel

from kit.parallel.comm_hooks import (
    SCHEMES,
    CommStats,
    HookState,
    check_comm_settings,
    hook_state_dict,
    load_hook_state_dict,
    make_comm_hook,
)

__all__ = ["GradientCompression"]


class GradientCompression(Callback):
    """Register a :mod:`kit.parallel.comm_hooks` hook on the DDP model and log ``compression/*`` metrics.

    Works with Lightning's plain ``DDPStrategy`` (``strategy="ddp"``) in any project: the hook is registered
    in ``on_fit_start``, after DDP wrapped the model and before the first backward. With a
    :class:`kit.parallel.strategies.CompressedDDPStrategy` (``strategy="ddp-topk"``...) the strategy already owns the
    hook and the callback only logs its counters. Without DDP it warns once and does nothing.

    Logged per optimizer step: ``compression/bytes_sent`` and ``compression/bytes_dense`` (wire bytes this
    worker sent, counted per collective at the run's world size, vs what a dense fp32 ring all-reduce of the
    same gradients would send at that world size), ``compression/ratio`` (dense / sent) and
    ``compression/ratio_total`` (over the run so far, warm-up included). With one process nothing goes on
    the wire and nothing is logged. With ``strategy="ddp-1bit-adam"`` the counters include the optimizer's
    compressed momentum all-reduce.

    Its ``state_dict`` carries the hook's state (error-feedback residuals, warm-up step counter, PowerSGD's
    step counter, error and P/Q memories, byte totals), so a ``--ckpt_path`` resume continues compressing
    where the run stopped instead of restarting the dense warm-up with empty residuals. The knobs are
    spelled as in :class:`kit.parallel.strategies.CompressedDDPStrategy`.

    Args:
        hook: ``allreduce``, ``fp16``, ``bf16``, ``powersgd``, ``topk`` or ``1bit``.
        topk_ratio: top-k's fraction of entries sent.
        powersgd_rank: PowerSGD's matrix approximation rank.
        powersgd_start_iter: PowerSGD's first compressed step (>= 2).
        scheme: top-k's and 1bit's collective: ``2phase`` (default; the cut does not shrink with W) or
            ``allgather`` (a small-W method: it warns above the W where it cuts less than 90%).
        per_tensor_scale: 1bit: scales never span two parameter tensors (``False``: one per chunk or bucket).
        block: 1bit two-phase: at most this many entries share a scale (``None``: whole tensor pieces).

    Raises:
        ValueError: for an unknown hook or invalid setting.

    Example:
        >>> trainer = pl.Trainer(strategy="ddp", devices=4,  # doctest: +SKIP
        ...                      callbacks=[GradientCompression(hook="powersgd", powersgd_rank=4)])
    """

    def __init__(
        self,
        hook: Literal["allreduce", "fp16", "bf16", "powersgd", "topk", "1bit"] = "powersgd",
        topk_ratio: float = 0.01,
        powersgd_rank: int = 4,
        powersgd_start_iter: int = 10,
        scheme: Literal["2phase", "allgather"] = "2phase",
        per_tensor_scale: bool = True,
        block: int | None = 32,
    ) -> None:
        check_comm_settings(hook, topk_ratio, powersgd_rank, powersgd_start_iter)
        if scheme not in SCHEMES:
            raise ValueError(f"scheme={scheme!r} is not supported; choose one of {', '.join(SCHEMES)}")
        if block is not None and block < 1:
            raise ValueError(
                f"block={block} must be >= 1 (entries per 1-bit scale) or None (one per tensor piece)"
            )
        self.scheme, self.per_tensor_scale, self.block = scheme, per_tensor_scale, block
        self.hook, self.topk_ratio = hook, topk_ratio
        self.powersgd_rank, self.powersgd_start_iter = powersgd_rank, powersgd_start_iter
        self.stats: CommStats | None = None
        self.hook_state: HookState | None = None
        self._saved: dict[str, Any] | None = (
            None  # loaded before the hook exists (resume): applied at fit start
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        owned = getattr(trainer.strategy, "comm_state", None)
        if isinstance(owned, HookState):
            self._attach(owned, pl_module.device)
            return
        model = trainer.strategy.model
        if not isinstance(model, DistributedDataParallel):
            rank_zero_warn(
                f"GradientCompression: strategy {type(trainer.strategy).__name__} is not DDP, so there is no "
                "gradient all-reduce to compress; use strategy='ddp' with several devices"
            )
            return
        state, fn = make_comm_hook(
            self.hook,
            topk_ratio=self.topk_ratio,
            powersgd_rank=self.powersgd_rank,
            powersgd_start_iter=self.powersgd_start_iter,
            scheme=self.scheme,
            per_tensor_scale=self.per_tensor_scale,
            block=self.block,
        )
        try:
            model.register_comm_hook(state, fn)
        except RuntimeError as err:
            raise RuntimeError(
                f"GradientCompression could not register its {self.hook!r} hook ({err}); the strategy already "
                "has one: remove ddp_comm_hook from the strategy or drop this callback"
            ) from err
        self._attach(state, pl_module.device)

    def _attach(self, state: HookState, device: torch.device) -> None:
        self.hook_state, self.stats = state, state.stats
        if self._saved is not None:
            load_hook_state_dict(state, self._saved, device)
            self._saved = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.stats is None:
            return
        sent, dense = self.stats.pop_step()
        if not dense:
            return  # no all-reduce this batch (gradient accumulation), or one process (nothing on the wire)
        log = {
            "compression/bytes_sent": float(sent),
            "compression/bytes_dense": float(dense),
            "compression/ratio": dense / max(sent, 1),
            "compression/ratio_total": self.stats.ratio,
        }
        for key, value in log.items():
            pl_module.log(key, value, on_step=True, on_epoch=False)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(hook=self.hook)

    def state_dict(self) -> dict[str, Any]:
        if self.hook_state is not None:
            return {"hook": self.hook, **hook_state_dict(self.hook_state)}
        return {"hook": self.hook, **(self._saved or {})}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = {k: v for k, v in state_dict.items() if k != "hook"}
        if not saved:
            return
        if self.hook_state is not None:
            load_hook_state_dict(self.hook_state, saved)
        else:
            self._saved = saved
