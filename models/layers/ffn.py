"""Moved to :mod:`kit.nn.layers.ffn`; this path works for one release, with a ``DeprecationWarning``."""

from kit._deprecate import moved_module

moved_module("kit.models.layers.ffn", "kit.nn.layers.ffn")

from kit.nn.layers.ffn import *  # noqa: E402, F403
