"""Moved to :mod:`kit.nn.peft`; this path works for one release, with a ``DeprecationWarning``."""

from kit._deprecate import moved_module

moved_module("kit.models.adapters", "kit.nn.peft")

from kit.nn.peft import *  # noqa: E402, F403
