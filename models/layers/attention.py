"""Moved to :mod:`kit.nn.layers.attention`; this path works for one release, with a ``DeprecationWarning``."""

from kit._deprecate import moved_module

moved_module("kit.models.layers.attention", "kit.nn.layers.attention")

from kit.checkpoint.migrations import QKV_LAYOUT_KEY, mark_qkv_layout, upgrade_qkv_layout  # noqa: E402, F401
from kit.models._hooks import QKVLayoutHooks  # noqa: E402, F401
from kit.nn.layers.attention import *  # noqa: E402, F403
