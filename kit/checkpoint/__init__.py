"""Checkpoints that lose nothing: atomic writes, a checksummed manifest, recovery, RNG state (no Lightning).

- ``atomic.atomic_write``: write into a temporary file or folder, fsync, then rename over the target, so a
  reader never sees a half-written checkpoint and a failed write leaves the previous one intact.
- ``manifest.Manifest``: ``manifest.json`` beside the checkpoints: name, step, kind, checksum of every file.
- ``manifest.newest_good`` / ``find_latest``: the newest checkpoint whose checksums still match, falling back
  past truncated or corrupt ones with a warning that names both.
- ``rng``: capture and restore the python, numpy, torch and CUDA generators; ``StepRng`` for exact resume.
- ``compat``: compare a checkpoint's tensors with a model's and say what differs.
- ``sharded``: asynchronous ``torch.distributed.checkpoint`` saves of sharded state that stay atomic.
- ``async_writer``: the CPU copy of a checkpoint and the background thread that writes it.
- ``init_from``: the checkpoint a fine-tune's ``init_from`` names (file, run folder or packaged recipe).
- ``migrations``: layout changes of older checkpoints (the fused QKV rows).
"""

from kit.checkpoint.async_writer import AsyncWriter, to_cpu
from kit.checkpoint.atomic import CheckpointWriteError, atomic_write, fsync_tree
from kit.checkpoint.compat import FORMAT_VERSION, describe_mismatch, upgrade_checkpoint
from kit.checkpoint.init_from import resolve_init_from
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
from kit.checkpoint.rng import StepRng, capture_rng, restore_rng
from kit.checkpoint.sharded import finish_async_save, start_async_save

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "AsyncWriter",
    "CheckpointEntry",
    "CheckpointWriteError",
    "Manifest",
    "StepRng",
    "atomic_write",
    "capture_rng",
    "checksum",
    "describe_mismatch",
    "find_latest",
    "finish_async_save",
    "fsync_tree",
    "newest_good",
    "resolve_checkpoint",
    "resolve_init_from",
    "restore_rng",
    "start_async_save",
    "to_cpu",
    "upgrade_checkpoint",
    "verify",
]
