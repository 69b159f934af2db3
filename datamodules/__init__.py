"""LightningDataModules (installed as ``kit.datamodules``)."""

from kit.datamodules.text import BlockDataset, TextDataModule

__all__ = ["BlockDataset", "TextDataModule"]
