"""Lightning callbacks (installed as ``kit.callbacks``); each works with any LightningModule and its defaults."""

from kit.callbacks.clipping import GradientClipping
from kit.callbacks.compression import GradientCompression
from kit.callbacks.doctor import TrainingDoctor
from kit.callbacks.gradient_health import GradientHealth
from kit.callbacks.hardware import HardwareMonitor
from kit.callbacks.hessian import HessianMonitor
from kit.callbacks.loss_scale import LossScaleMonitor
from kit.callbacks.mixup import MixUpCutMix, MixUpTransform
from kit.callbacks.spike_guard import SpikeGuard
from kit.callbacks.throughput import TokenThroughput

__all__ = [
    "GradientClipping",
    "GradientCompression",
    "GradientHealth",
    "HardwareMonitor",
    "HessianMonitor",
    "LossScaleMonitor",
    "MixUpCutMix",
    "MixUpTransform",
    "SpikeGuard",
    "TokenThroughput",
    "TrainingDoctor",
]
