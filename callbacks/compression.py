"""GradientCompression: attach a compression comm hook to a DDP run and log the bytes it saves."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch.nn.parallel import DistributedDataParallel

from kit.parallel.comm_hooks import (
    DEFAULT_COMM,
    UNSET,
    CommHookConfig,
    CommStats,
    HookState,
    Unset,
    comm_config,
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
    where the run stopped instead of restarting the dense warm-up with empty residuals. The settings are the
    strategies' (:class:`kit.parallel.comm_hooks.CommHookConfig`).

    Args:
        comm: the hook and its settings (default PowerSGD rank 4); YAML ``comm: {hook: topk, topk_ratio: 0.01}``.
        hook: deprecated, use ``comm`` (as are the six below; each is the ``CommHookConfig`` field of that name).
        topk_ratio: deprecated.
        powersgd_rank: deprecated.
        powersgd_start_iter: deprecated.
        scheme: deprecated.
        per_tensor_scale: deprecated.
        block: deprecated.

    Raises:
        ValueError: for an unknown hook or invalid setting.
        TypeError: for ``comm`` and flat settings together.

    Example:
        >>> callback = GradientCompression(CommHookConfig(hook="powersgd", powersgd_rank=4))
        >>> trainer = pl.Trainer(strategy="ddp", devices=4, callbacks=[callback])  # doctest: +SKIP
    """

    def __init__(
        self,
        comm: CommHookConfig = DEFAULT_COMM,
        hook: Literal["allreduce", "fp16", "bf16", "powersgd", "topk", "1bit"] | None = None,
        topk_ratio: float | None = None,
        powersgd_rank: int | None = None,
        powersgd_start_iter: int | None = None,
        scheme: Literal["2phase", "allgather"] | None = None,
        per_tensor_scale: bool | None = None,
        block: int | Unset | None = UNSET,
    ) -> None:
        self.comm = comm_config(
            comm,
            type(self).__name__,
            hook=hook,
            topk_ratio=topk_ratio,
            powersgd_rank=powersgd_rank,
            powersgd_start_iter=powersgd_start_iter,
            scheme=scheme,
            per_tensor_scale=per_tensor_scale,
            block=block,
        )
        self.hook = self.comm.hook
        self.stats: CommStats | None = None
        self.hook_state: HookState | None = None
        # loaded before the hook exists (resume): applied at fit start
        self._saved: dict[str, Any] | None = None

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
        state, fn = make_comm_hook(self.comm.hook, self.comm)
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
