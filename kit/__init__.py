"""lightning-kit: reusable PyTorch Lightning components for training large models.

The ``kit`` package is the framework-free core (pure functions and small objects); ``kit.models``,
``kit.datamodules`` and ``kit.callbacks`` are thin Lightning wrappers over it.
"""

from kit.optim import lr_lambda, param_groups
from kit.packing import pack_blocks, split_documents
from kit.text import clean_text, embedded_corpus, load_texts
from kit.tokenizer import load_or_train_bpe, train_bpe

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "clean_text",
    "embedded_corpus",
    "load_or_train_bpe",
    "load_texts",
    "lr_lambda",
    "pack_blocks",
    "param_groups",
    "split_documents",
    "train_bpe",
]
