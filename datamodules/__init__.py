"""LightningDataModules (installed as ``kit.datamodules``)."""

from kit.datamodules.digits import DigitsDataModule
from kit.datamodules.text import BlockDataset, TextDataModule
from kit.datamodules.transfer import MLMDataModule, TopicDataModule
from kit.datamodules.webdataset import WebDataModule

__all__ = ["BlockDataset", "DigitsDataModule", "MLMDataModule", "TextDataModule", "TopicDataModule", "WebDataModule"]
