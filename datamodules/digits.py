"""scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes) as a LightningDataModule.

The images ship inside scikit-learn (the ``vision`` extra), so nothing is downloaded.

Example:
    >>> dm = DigitsDataModule(batch_size=32)
    >>> dm.setup("fit")
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> x.shape, y.shape
    (torch.Size([32, 1, 8, 8]), torch.Size([32]))
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DigitsDataModule"]


class DigitsDataModule(pl.LightningDataModule):
    """Stratified train/val split of ``sklearn.datasets.load_digits``; pixels scaled to [0, 1] then standardised.

    Args:
        batch_size: samples per batch.
        val_fraction: share of each class held out for validation.
        seed: split seed.
        num_workers: DataLoader workers.

    Raises:
        ImportError: scikit-learn is missing (``pip install lightning-kit[vision]``).
        ValueError: ``val_fraction`` outside (0, 1) or ``batch_size < 1``.
    """

    num_classes = 10
    image_size = 8

    def __init__(
        self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0, num_workers: int = 0
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction} must lie in (0, 1)")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.save_hyperparameters()
        self.batch_size, self.val_fraction, self.seed, self.num_workers = (
            batch_size,
            val_fraction,
            seed,
            num_workers,
        )
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "DigitsDataModule needs scikit-learn: pip install 'lightning-kit[vision]'"
            ) from exc
        data = load_digits()
        x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
        y = torch.tensor(data.target, dtype=torch.long)
        g = torch.Generator().manual_seed(self.seed)
        train_idx, val_idx = [], []
        for c in range(self.num_classes):  # stratified split
            idx = torch.nonzero(y == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            n_val = max(1, round(len(idx) * self.val_fraction))
            val_idx.append(idx[:n_val])
            train_idx.append(idx[n_val:])
        tr, va = torch.cat(train_idx), torch.cat(val_idx)
        mean, std = x[tr].mean(), x[tr].std()
        x = (x - mean) / std
        self.train_set, self.val_set = TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va])

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_set,
            self.batch_size,
            shuffle=True,
            drop_last=True,
            generator=g,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        return DataLoader(self.val_set, self.batch_size, num_workers=self.num_workers)
