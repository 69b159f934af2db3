"""Shared test setup: a session-wide tokenizer cache, and deterministic hypothesis settings for CI."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def _kit_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tokenizers trained by the tests land in one temporary cache, shared across the session."""
    path = str(tmp_path_factory.mktemp("kit-cache"))
    old = os.environ.get("KIT_CACHE")
    os.environ["KIT_CACHE"] = path
    yield path
    if old is None:
        os.environ.pop("KIT_CACHE", None)
    else:
        os.environ["KIT_CACHE"] = old
