"""The kit's LightningModules (installed as ``kit.models``).

The networks they train are torch only and live in :mod:`kit.nn`; ``kit.models.GPT``, ``Block``,
``GPTConfig`` and ``PeftConfig`` still resolve for one release, with a ``DeprecationWarning``.
"""

from kit.models.classifier import ImageClassifier
from kit.models.gpt import CausalLM
from kit.models.hf import HFCausalLM, HFSequenceClassifier
from kit.models.masked_lm import MaskedLM
from kit.models.sequence_classifier import SequenceClassifier

__all__ = ["CausalLM", "HFCausalLM", "HFSequenceClassifier", "ImageClassifier", "MaskedLM", "SequenceClassifier"]

_MOVED = {"GPT": "kit.nn.gpt", "Block": "kit.nn.gpt", "GPTConfig": "kit.nn.config", "PeftConfig": "kit.nn.peft"}


def __getattr__(name: str) -> object:
    if name in _MOVED:
        from kit._deprecate import moved

        return moved(f"kit.models.{name}", _MOVED[name], name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
