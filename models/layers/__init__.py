"""Moved to :mod:`kit.nn.layers`; this path works for one release, with a ``DeprecationWarning``."""

from kit._deprecate import moved_module

moved_module("kit.models.layers", "kit.nn.layers")

from kit.nn.layers import *  # noqa: E402, F403
from kit.nn.layers import __all__  # noqa: E402, F401
