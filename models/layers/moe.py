"""Moved to :mod:`kit.nn.layers.moe`; this path works for one release, with a ``DeprecationWarning``."""

from kit._deprecate import moved_module

moved_module("kit.models.layers.moe", "kit.nn.layers.moe")

from kit.nn.layers.moe import *  # noqa: E402, F403
