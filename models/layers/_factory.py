"""Moved to :mod:`kit.nn.layers._factory`; this path works for one release, with a ``DeprecationWarning``."""

from kit._deprecate import moved_module

moved_module("kit.models.layers._factory", "kit.nn.layers._factory")

from kit.nn.layers._factory import *  # noqa: E402, F403
