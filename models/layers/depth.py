"""Moved to :mod:`kit.nn.layers.depth`; this path works for one release, with a ``DeprecationWarning``."""

from kit._deprecate import moved_module

moved_module("kit.models.layers.depth", "kit.nn.layers.depth")

from kit.nn.layers.depth import *  # noqa: E402, F403
