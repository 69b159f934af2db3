"""Checkpoints that lose nothing: atomic writes, a checksummed manifest, recovery, RNG state (no Lightning).

- ``atomic.atomic_write``: write into a temporary file or folder, fsync, then rename over the target, so a
  reader never sees a half-written checkpoint and a failed write leaves the previous one intact.
- ``manifest.Manifest``: ``manifest.json`` beside the checkpoints: name, step, kind, checksum of every file.
- ``manifest.newest_good`` / ``find_latest``: the newest checkpoint whose checksums still match, falling back
  past truncated or corrupt ones with a warning that names both.
- ``rng``: capture and restore the python, numpy, torch and CUDA generators.
- ``compat``: compare a checkpoint's tensors with a model's and say what differs.
- ``sharded``: asynchronous ``torch.distributed.checkpoint`` saves of sharded state that stay atomic.
"""

from kit.checkpoint.atomic import CheckpointWriteError, atomic_write, fsync_tree
from kit.checkpoint.compat import FORMAT_VERSION, describe_mismatch, upgrade_checkpoint
from kit.checkpoint.manifest import (
    MANIFEST_NAME,
    CheckpointEntry,
    Manifest,
    checksum,
    find_latest,
    newest_good,
    resolve_checkpoint,
    verify,
)
from kit.checkpoint.rng import capture_rng, restore_rng
from kit.checkpoint.sharded import finish_async_save, start_async_save

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "CheckpointEntry",
    "CheckpointWriteError",
    "Manifest",
    "atomic_write",
    "capture_rng",
    "checksum",
    "describe_mismatch",
    "find_latest",
    "finish_async_save",
    "fsync_tree",
    "newest_good",
    "resolve_checkpoint",
    "restore_rng",
    "start_async_save",
    "upgrade_checkpoint",
    "verify",
]
