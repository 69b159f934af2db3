"""Model blocks and LightningModules (installed as ``kit.models``)."""

from kit.models.classifier import ImageClassifier
from kit.models.gpt import GPT, Block, CausalLM, GPTConfig

__all__ = ["GPT", "Block", "CausalLM", "GPTConfig", "ImageClassifier"]
