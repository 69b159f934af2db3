"""Moved to :mod:`kit.nn.aux`; this path works for one release, with a ``DeprecationWarning``."""

from kit._deprecate import moved_module

moved_module("kit.models.layers._aux", "kit.nn.aux")

from kit.nn.aux import *  # noqa: E402, F403
