"""The core stays framework-free: every module under ``kit/`` imports without Lightning.

``kit/cli/`` (the LightningCLI front end) and ``kit/parallel/strategies.py`` (the strategy presets) are the
two places allowed to import Lightning; everything else is plain torch, so it can be called from any loop.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIGHTNING_AWARE = ("kit.cli", "kit.parallel.strategies")

_BLOCK_LIGHTNING = """
import importlib.abc, sys

class _NoLightning(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities"):
            raise ModuleNotFoundError(f"lightning is blocked in this test: {name}", name=name)
        return None

sys.meta_path.insert(0, _NoLightning())
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print("ok", len(sys.argv) - 1)
"""


def core_modules() -> list[str]:
    names = []
    for path in sorted((ROOT / "kit").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] in ("__init__", "__main__"):
            parts = parts[:-1]
        name = ".".join(parts)
        if not any(name == p or name.startswith(p + ".") for p in LIGHTNING_AWARE):
            names.append(name)
    return names


def test_core_modules_are_found() -> None:
    names = core_modules()
    assert {"kit", "kit.data.text", "kit.health.grads", "kit.precision.clipping", "kit.optim"} <= set(names)
    assert not any(n.startswith("kit.cli") for n in names)


def test_core_imports_without_lightning() -> None:
    names = core_modules()
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCK_LIGHTNING, *names], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, f"a kit/ core module imports Lightning:\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip() == f"ok {len(names)}"


@pytest.mark.parametrize("module", ["kit.callbacks", "kit.models"])
def test_the_blocker_really_blocks(module: str) -> None:
    # The wrappers do import Lightning, so the same harness must fail on them: the check above can fail.
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCK_LIGHTNING, module], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode != 0 and "lightning is blocked" in proc.stderr
