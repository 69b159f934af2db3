"""The layers of the kit, checked: the core imports without Lightning, and the import graph has no cycles and no
upward edges.

``kit/cli/`` (the LightningCLI front end) and ``kit/parallel/strategies.py`` (the strategy presets) are the
two places in ``kit/`` allowed to import Lightning; everything else is plain torch, so it can be called from any
loop. The import graph is read from the source with ``ast`` (function-level imports included, since they run
too), so a cycle or an upward import is caught even when no test happens to execute the function holding it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIGHTNING_AWARE = ("kit.cli", "kit.parallel.strategies")
# the source folders and the import names pyproject maps them to
PACKAGES = {
    "kit": "kit",
    "callbacks": "kit.callbacks",
    "datamodules": "kit.datamodules",
    "models": "kit.models",
}
WRAPPERS = ("kit.callbacks", "kit.datamodules", "kit.models")

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

# run after the imports above, still with Lightning blocked: the model core trains, and parallelize() with
# activation checkpointing works on a one-process gloo mesh
_USE_WITHOUT_LIGHTNING = """
import os, tempfile
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from kit.nn import GPT, GPTConfig
from kit.parallel.tensor import parallelize

torch.manual_seed(0)
config = GPTConfig.from_name("debug")
idx = torch.randint(0, config.vocab_size, (2, 8))
model = GPT(config)
model(idx).sum().backward()
assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

store = os.path.join(tempfile.mkdtemp(), "store")
dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))
model = parallelize(GPT(config), mesh, activation_checkpointing=True)
wrapped = [m for m in model.modules() if type(m).__name__.endswith("CheckpointWrapper")]  # FSDPCheckpointWrapper
assert len(wrapped) == config.n_layer, f"{len(wrapped)} checkpointed blocks, expected {config.n_layer}"
model(idx).sum().backward()
assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
dist.destroy_process_group()
print("trained")
"""


def core_modules() -> list[str]:
    names = []
    for path in sorted((ROOT / "kit").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] in ("__init__", "__main__"):
            parts = parts[:-1]
        name = ".".join(parts)
        if not is_lightning_aware(name):
            names.append(name)
    return names


def is_lightning_aware(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in LIGHTNING_AWARE)


def is_core(name: str) -> bool:
    """``kit/`` outside the CLI and the strategy presets, and outside the wrapper packages mapped into ``kit``."""
    return not is_lightning_aware(name) and not any(name == w or name.startswith(w + ".") for w in WRAPPERS)


# --- the import graph -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``line``; ``typing_only`` under ``if TYPE_CHECKING:`` (never runs)."""

    source: str
    target: str
    line: int
    typing_only: bool = False


def module_files(root: Path, packages: dict[str, str]) -> dict[str, Path]:
    """Every module's import name -> its file, for source folders mapped to import prefixes."""
    out = {}
    for folder, prefix in packages.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((prefix, *parts))] = path
    return out


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _targets(node: ast.Import | ast.ImportFrom, package: str, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        module = ".".join([*base, *([node.module] if node.module else [])])
    else:
        module = node.module or ""
    # ``from kit.parallel import compression`` imports the submodule; ``from kit.nn import GPT`` the package
    return [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]


def import_graph(modules: dict[str, Path], prefix: str = "kit") -> list[Edge]:
    """Every import of a ``prefix.*`` module by one of ``modules``, at module or function level."""
    edges = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        typing_only = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(node, package, modules):
                if (target == prefix or target.startswith(prefix + ".")) and target != name:
                    edges.append(Edge(name, target, node.lineno, node.lineno in typing_only))
    return edges


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), over edges that run."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if not e.typing_only:
            graph.setdefault(e.source, set()).add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward_imports(edges: list[Edge]) -> list[str]:
    """Edges that break the layer rules, as ``source:line -> target (rule)``.

    The core never imports the wrappers (``kit.models``, ``kit.callbacks``, ``kit.datamodules``), the CLI, or
    the strategy presets; the models never import the CLI.
    """
    bad = []
    for e in edges:
        if is_core(e.source) and not is_core(e.target):
            bad.append(
                f"{e.source}:{e.line} -> {e.target} (the core imports no wrapper, CLI or strategy preset)"
            )
        elif e.source.startswith("kit.models") and e.target.startswith("kit.cli"):
            bad.append(f"{e.source}:{e.line} -> {e.target} (models never import the CLI)")
    return bad


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_graph(module_files(ROOT, PACKAGES))


def test_graph_sees_module_and_function_level_imports(edges: list[Edge]) -> None:
    pairs = {(e.source, e.target) for e in edges}
    assert ("kit.parallel.comm_hooks", "kit.parallel.two_phase") in pairs  # module level
    assert ("kit.parallel.pipeline", "kit.parallel.tensor") in pairs  # inside a function
    assert ("kit.callbacks.compression", "kit.parallel.comm_hooks") in pairs  # a mapped folder


def test_no_import_cycles(edges: list[Edge]) -> None:
    found = cycles(edges)
    assert not found, f"import cycles (move the shared piece into the lower module): {found}"


def test_no_upward_imports(edges: list[Edge]) -> None:
    bad = upward_imports(edges)
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def _plant(root: Path, files: dict[str, str]) -> list[Edge]:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(module_files(root, {"kit": "kit", "models": "kit.models"}))


def test_walker_finds_a_planted_cycle_and_upward_import(tmp_path: Path) -> None:
    planted = _plant(
        tmp_path,
        {
            "kit/__init__.py": "",
            "kit/a.py": "from kit.b import f\n",
            "kit/b.py": "def f():\n    from . import a\n",  # relative and inside a function
            "kit/c.py": "def g():\n    import kit.models.m\n",
            "kit/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kit.a import x\n",
            "models/__init__.py": "",
            "models/m.py": "from kit.cli.main import RECIPES\n",
        },
    )
    assert cycles(planted) == [["kit.a", "kit.b"]]
    bad = upward_imports(planted)
    assert any(b.startswith("kit.c:2 -> kit.models.m") for b in bad)
    assert any(b.startswith("kit.models.m:1 -> kit.cli.main") for b in bad)
    assert next(e for e in planted if e.source == "kit.d").typing_only


def test_a_type_checking_import_closes_no_cycle(tmp_path: Path) -> None:
    planted = _plant(
        tmp_path,
        {
            "kit/__init__.py": "",
            "kit/a.py": "from kit.b import f\n",
            "kit/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kit.a import A\n",
        },
    )
    assert cycles(planted) == []


_MUTATORS = {"insert", "append", "extend", "remove", "pop", "clear", "setdefault", "update", "__setitem__"}


def import_state_edits(path: Path) -> list[int]:
    """Lines of ``path`` that edit ``sys.path`` or ``sys.modules`` (a method call, an item set or deleted)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        target = None
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _MUTATORS
        ):
            target = node.func.value
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store | ast.Del):
            target = node.value
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((x for x in targets if ast.unparse(x) in ("sys.path", "sys.modules")), None)
        if target is not None and ast.unparse(target) in ("sys.path", "sys.modules"):
            lines.append(node.lineno)
    return sorted(lines)


def test_no_module_edits_the_import_state() -> None:
    """The CLI reaches ``benchmarks/`` by running it in a child process, not by editing this one's path."""
    bad = [
        f"{name}:{line}"
        for name, path in module_files(ROOT, PACKAGES).items()
        for line in import_state_edits(path)
    ]
    assert not bad, (
        f"sys.path / sys.modules edited at {bad}; run the code in a subprocess with PYTHONPATH instead"
    )


def test_import_state_edits_are_found(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "import sys\nsys.path.insert(0, 'x')\ndel sys.modules['a']\nsys.path = []\nsys.modules['b'] = 1\n"
        "print(sys.path[0], 'a' in sys.modules)\n"
    )
    assert import_state_edits(path) == [2, 3, 4, 5]


# --- importing and running without Lightning --------------------------------------------------------------


def test_core_modules_are_found() -> None:
    names = core_modules()
    assert {"kit", "kit.data.text", "kit.health.grads", "kit.precision.clipping", "kit.optim"} <= set(names)
    assert not any(n.startswith("kit.cli") for n in names)


def test_core_imports_and_trains_without_lightning() -> None:
    names = core_modules()
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCK_LIGHTNING + _USE_WITHOUT_LIGHTNING, *names],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, f"a kit/ core module needs Lightning:\n{proc.stderr[-3000:]}"
    assert proc.stdout.split() == ["ok", str(len(names)), "trained"]


@pytest.mark.parametrize("module", ["kit.callbacks", "kit.models"])
def test_the_blocker_really_blocks(module: str) -> None:
    # The wrappers do import Lightning, so the same harness must fail on them: the check above can fail.
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCK_LIGHTNING, module],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode != 0 and "lightning is blocked" in proc.stderr
