"""LightningDataModules (installed as ``kit.datamodules``)."""

from kit.datamodules.digits import DigitsDataModule
from kit.datamodules.instruct import InstructDataModule
from kit.datamodules.text import BlockDataset, TextDataModule, load_tokenizer_folder
from kit.datamodules.transfer import MLMDataModule, TopicDataModule
from kit.datamodules.webdataset import WebDataModule

__all__ = [
    "BlockDataset",
    "DigitsDataModule",
    "InstructDataModule",
    "MLMDataModule",
    "TextDataModule",
    "TopicDataModule",
    "WebDataModule",
    "load_tokenizer_folder",
]
