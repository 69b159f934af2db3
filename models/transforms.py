"""Moved to :mod:`kit.nn.transforms`; this path works for one release, with a ``DeprecationWarning``."""

from kit._deprecate import moved_module

moved_module("kit.models.transforms", "kit.nn.transforms")

from kit.nn.transforms import *  # noqa: E402, F403
