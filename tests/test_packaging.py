"""The installed layout: every code folder is a declared package, and recipes ship as package data."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_code_folder_is_a_declared_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    mapping = config["package-dir"]
    for package, folder in mapping.items():
        for sub in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in sub.parts:
                continue
            rel = sub.parent.relative_to(ROOT / folder)
            name = ".".join([package, *rel.parts]) if rel.parts else package
            assert name in declared, (
                f"{sub} would not be installed: add {name!r} to [tool.setuptools] packages"
            )


def test_recipes_are_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "*.yaml" in config["package-data"]["kit.cli.recipes"]
    assert list((ROOT / "kit" / "cli" / "recipes").glob("*.yaml"))


def test_every_public_core_name_resolves() -> None:
    import kit

    missing = [name for name in kit.__all__ if not hasattr(kit, name)]
    assert not missing, f"kit.__all__ names that do not import: {missing}"
    import kit.callbacks
    import kit.datamodules
    import kit.models

    for package in (kit.callbacks, kit.datamodules, kit.models):
        assert all(hasattr(package, name) for name in package.__all__), package.__name__
