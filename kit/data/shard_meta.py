"""The metadata ``kit data shards`` writes beside token shards, so a reader knows the tokenizer they need.

Token shards hold ids only; trained with the wrong vocabulary size, a model fails deep inside its embedding
with an ``IndexError`` (or silently wastes rows). ``kit data shards --tokenizer tok.json`` therefore writes
``kit-shards.json`` into the output folder: the tokenizer's path and SHA-256, its vocabulary size, the EOS id,
the block size and the shard list. ``WebDataModule`` reads it and exposes ``vocab_size``/``block_size``, so
``CausalLM`` (``vocab_size: null``) sizes itself from the shards.

Example:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> _ = write_shard_metadata(d, {"vocab_size": 300, "block_size": 32})
    >>> read_shard_metadata([os.path.join(d, "train-000000.tar")])["vocab_size"]
    300
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["META_NAME", "file_sha256", "read_shard_metadata", "write_shard_metadata"]

META_NAME = "kit-shards.json"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (identifies a tokenizer whatever its path)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_shard_metadata(folder: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write ``meta`` as ``folder/kit-shards.json``; returns the path."""
    path = Path(folder) / META_NAME
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_shard_metadata(shards: Sequence[str]) -> dict[str, Any] | None:
    """The metadata beside the first local shard (``None`` for remote URLs or shards written without it)."""
    if not shards or "://" in shards[0] or shards[0].startswith("pipe:"):
        return None
    path = Path(shards[0]).parent / META_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text())
