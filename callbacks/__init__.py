"""Lightning callbacks (installed as ``kit.callbacks``); each works with any LightningModule."""

from kit.callbacks.throughput import TokenThroughput

__all__ = ["TokenThroughput"]
