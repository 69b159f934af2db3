"""Every private Lightning, torch or torchmetrics attribute the kit reads, one small function each.

A release of any of these libraries may rename or drop a private attribute without notice. Keeping each read
here, behind a function that names the public API it waits for and the versions it was tested on, means a
break shows up in one place and in ``tests/test_compat.py``, not silently in a callback. Nothing outside this
module reads a private attribute of a framework object (a test greps for it).

Strategies are recognised by what they do (:func:`strategy_traits`), never by class-name strings.
"""

from __future__ import annotations

__all__: list[str] = []


# --- trainer, loops and checkpoint internals -------------------------------------------------------------



# --- GradScaler and torchmetrics -------------------------------------------------------------------------



# --- strategies: traits, DDP and ModelParallel internals -------------------------------------------------



# --- torch.distributed pipelining --------------------------------------------------------------------------
