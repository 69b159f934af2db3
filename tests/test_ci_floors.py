"""CI tests what the project declares: every minimum in pyproject.toml is pinned in .ci/floors.txt (the floors
venv of .ci/run), and .ci/run runs the README's test command there."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CI_EXTRAS = ("dev", "vision")  # what .ci/run installs: pip install -e '.[dev,vision]'


def _declared() -> dict[str, Version]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [
        r for extra in CI_EXTRAS for r in project["optional-dependencies"][extra]
    ]
    floors = {}
    for line in lines:
        req = Requirement(line)
        (low,) = [s.version for s in req.specifier if s.operator == ">="]
        floors[req.name.lower()] = Version(low)
    return floors


def _pinned() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / ".ci/floors.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = Version(version.split("+")[0])
    return pins


def test_every_declared_minimum_is_the_version_the_floors_venv_pins() -> None:
    declared, pinned = _declared(), _pinned()
    assert declared.keys() <= pinned.keys(), (
        f"declared but not pinned: {sorted(declared.keys() - pinned.keys())}"
    )
    wrong = {name: (str(low), str(pinned[name])) for name, low in declared.items() if pinned[name] != low}
    assert not wrong, f"pyproject floor != .ci/floors.txt pin: {wrong}"


def test_ci_runs_the_readme_test_command_in_the_floors_venv() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"&& ruff check \. && (pytest [^\n`]*)", readme)
    assert match, "the README's set-up line ends with `ruff check . && pytest ...`"
    args = match.group(1).removeprefix("pytest ").strip()
    ci = (ROOT / ".ci/run").read_text()
    assert f"run_pytest floors {args}\n" in ci, (args, "not what .ci/run runs in the floors venv")
