"""GenerativeAugment: mix samples of a class-conditional generator into training batches, with labels.

Example:
    >>> import lightning.pytorch as pl
    >>> gen = MyGenerator()  # your nn.Module; its weights load as data (weights_only=True)  # doctest: +SKIP
    >>> trainer = pl.Trainer(callbacks=[GenerativeAugment(gen, generator_weights="cgan.pt", ratio=0.5)])  # doctest: +SKIP

The embedded example (``python -m benchmarks generative_augment``) trains a small class-conditional GAN on
10% of the digits and compares a classifier trained on those real images alone with one trained through
this callback.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from kit.callbacks._common import batch_inputs_targets, replace_inputs_targets
from kit.data.augment_generative import LABEL_MODES, mix_generated

__all__ = ["GenerativeAugment"]


class GenerativeAugment(Callback):
    """Replace a share ``ratio`` of every training batch with generated samples of known class.

    The batch must be a list ``[x, y, ...]`` (the default collate of ``(x, y)`` samples) or a dict
    (``input_key`` / ``target_key``); it is changed in place before ``training_step`` sees it, so any
    LightningModule works unchanged. The generator runs forward only, in eval mode and without gradients, on
    the module's device; it is not saved in the module's checkpoint (the callback saves its random state).
    Logs ``gen_aug/synthetic_fraction`` per step.

    Args:
        generator: a class-conditional module with ``sample(labels, generator=...)``, or called as
            ``generator(z, labels)`` (see ``kit.data.augment_generative``). ``None``: the callback warns once
            and leaves batches unchanged (so it can sit in a recipe before a generator exists).
        ratio: share of each batch that is generated, in [0, 1].
        labels: ``"batch"`` (a replaced row keeps its class) or ``"uniform"`` (classes drawn uniformly).
        num_classes: class count for ``"uniform"`` with integer labels; ``None`` reads ``pl_module.num_classes``.
        latent_dim: size of ``z`` when the generator has no ``latent_dim`` attribute.
        generator_weights: optional path to a ``state_dict`` loaded into ``generator`` at setup.
        start_step: first optimizer step that gets synthetic samples (e.g. after a real-only warmup).
        seed: seed of the callback's own CPU random stream (rows, classes, latents).
        input_key, target_key: dict-batch keys.

    Raises:
        ValueError: ``ratio`` outside [0, 1] or an unknown ``labels`` mode (at construction); a tuple batch (at
            the first batch).

    Example:
        >>> cb = GenerativeAugment(nn.Identity(), ratio=0.25, labels="uniform")
        >>> cb.ratio, cb.labels
        (0.25, 'uniform')
    """

    def __init__(
        self,
        generator: nn.Module | None = None,
        ratio: float = 0.5,
        labels: str = "batch",
        num_classes: int | None = None,
        latent_dim: int | None = None,
        generator_weights: str | None = None,
        start_step: int = 0,
        seed: int = 0,
        input_key: str = "image",
        target_key: str = "label",
    ) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio={ratio} must lie in [0, 1] (the share of each batch that is generated)")
        if labels not in LABEL_MODES:
            raise ValueError(f"labels={labels!r} is not one of {LABEL_MODES}")
        self.generator, self.ratio, self.labels = generator, ratio, labels
        self.num_classes, self.latent_dim, self.generator_weights = num_classes, latent_dim, generator_weights
        self.start_step, self.seed, self.input_key, self.target_key = start_step, seed, input_key, target_key
        self.rng = torch.Generator().manual_seed(seed)
        self.generated = 0
        self._warned = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.generator is None:
            return
        if self.generator_weights:
            self.generator.load_state_dict(torch.load(self.generator_weights, map_location="cpu", weights_only=True))
        self.generator.to(pl_module.device).eval().requires_grad_(False)
        if self.num_classes is None and self.labels == "uniform":
            self.num_classes = getattr(pl_module, "num_classes", None)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        x, y = batch_inputs_targets(
            batch,
            self.input_key,
            self.target_key,
            "GenerativeAugment cannot modify a {kind} batch in place; return a list [x, y] or a dict from your "
            "collate, or call kit.data.augment_generative.mix_generated in your module's on_after_batch_transfer",
        )
        active = self.generator is not None and trainer.global_step >= self.start_step and self.ratio > 0
        if self.generator is None and not self._warned:
            rank_zero_warn("GenerativeAugment has no generator (generator=None); batches pass unchanged")
            self._warned = True
        n = 0
        if active:
            assert self.generator is not None
            x, y, rows = mix_generated(
                x, y, self.generator, self.ratio, self.labels, self.num_classes, self.latent_dim, self.rng
            )
            n = len(rows)
            self.generated += n
            replace_inputs_targets(batch, self.input_key, self.target_key, x, y)
        pl_module.log(
            "gen_aug/synthetic_fraction",
            n / max(x.shape[0], 1),
            on_step=True,
            on_epoch=False,
            batch_size=x.shape[0],
        )

    @property
    def state_key(self) -> str:
        return self._generate_state_key(ratio=self.ratio, labels=self.labels, seed=self.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.get_state(), "generated": self.generated}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rng.set_state(state_dict["rng"])
        self.generated = int(state_dict.get("generated", 0))
