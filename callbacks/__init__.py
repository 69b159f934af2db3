"""Lightning callbacks (installed as ``kit.callbacks``); each works with any LightningModule and its defaults.

Every class in ``__all__`` follows one contract (tests/test_callback_contract.py): it builds with default
arguments, logs through ``pl_module.log``, writes files on rank zero, round-trips ``state_dict`` under a
``state_key`` of its distinguishing arguments, and gives the same result wherever it sits in the list.
"""

from kit.callbacks.checkpoint import KitCheckpoint
from kit.callbacks.clipping import GradientClipping
from kit.callbacks.compression import GradientCompression
from kit.callbacks.doctor import TrainingDoctor
from kit.callbacks.export_hf import ExportHF
from kit.callbacks.generative_augment import GenerativeAugment
from kit.callbacks.gradient_health import GradientHealth
from kit.callbacks.hardware import HardwareMonitor
from kit.callbacks.hessian import HessianMonitor
from kit.callbacks.loss_scale import LossScaleMonitor
from kit.callbacks.mixup import MixUpCutMix
from kit.callbacks.preemption import PreemptionSave
from kit.callbacks.spike_guard import SpikeGuard
from kit.callbacks.throughput import TokenThroughput
from kit.callbacks.watchdog import HangWatchdog

__all__ = [
    "ExportHF",
    "GenerativeAugment",
    "GradientClipping",
    "GradientCompression",
    "GradientHealth",
    "HangWatchdog",
    "HardwareMonitor",
    "HessianMonitor",
    "KitCheckpoint",
    "LossScaleMonitor",
    "MixUpCutMix",
    "PreemptionSave",
    "SpikeGuard",
    "TokenThroughput",
    "TrainingDoctor",
]
