"""Model blocks and LightningModules (installed as ``kit.models``)."""

from kit.models.adapters import PeftConfig
from kit.models.classifier import ImageClassifier
from kit.models.gpt import GPT, Block, CausalLM, GPTConfig
from kit.models.masked_lm import MaskedLM
from kit.models.sequence_classifier import SequenceClassifier

__all__ = [
    "GPT",
    "Block",
    "CausalLM",
    "GPTConfig",
    "ImageClassifier",
    "MaskedLM",
    "PeftConfig",
    "SequenceClassifier",
]
