"""Packaged recipes: base recipes and overlays over them.

A recipe is a LightningCLI YAML file whose header (the comment lines before the first key) says what it is::

    # description: gpt-tiny with a Switch MoE feed-forward (8 experts, top-1, capacity 1.25); CPU, ~3 minutes.
    # base: gpt-tiny
    trainer:
      logger:
        init_args:
          name: gpt-tiny-moe
    model:
      init_args:
        config:
          ffn: moe

An overlay names its base in a ``# base:`` header line, so ``--config gpt-tiny-moe`` expands to
``--config gpt-tiny.yaml --config gpt-tiny-moe.yaml`` and LightningCLI merges them in that order (a base may have a
base of its own). Being a comment, the line is never seen by jsonargparse, and a user's own YAML file can name a
packaged recipe (or a file beside it) the same way.

How a later ``--config`` merges into an earlier one (jsonargparse's rules, which :func:`merge_configs` mirrors):
mappings merge key by key, so ``init_args`` without a ``class_path`` keep the base's class; lists and scalars
replace. An overlay that changes one callback must therefore restate the whole ``trainer.callbacks`` list.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

__all__ = [
    "RECIPES_DIR",
    "expand_config",
    "list_recipes",
    "merge_configs",
    "merged_recipe",
    "read_header",
    "recipe_bases",
    "resolve_recipe",
]

RECIPES_DIR = Path(__file__).resolve().parent
_HEADER_LINE = re.compile(r"#\s*(description|base):(.*)")


def _recipe_files() -> list[Path]:
    # by name, so each base ("gpt-tiny") comes before its overlays ("gpt-tiny-moe")
    return sorted(RECIPES_DIR.glob("*.yaml"), key=lambda path: path.stem)


def read_header(path: str | Path) -> dict[str, str]:
    """The ``# description:`` and ``# base:`` lines of a YAML file's leading comment block.

    Reading stops at the first line that is neither blank nor a comment, so a ``# base:`` further down is an
    ordinary comment.

    Example:
        >>> read_header(RECIPES_DIR / "gpt-tiny-moe.yaml")["base"]
        'gpt-tiny'
    """
    header: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                break
            match = _HEADER_LINE.fullmatch(stripped)
            if match and match.group(1) not in header:
                header[match.group(1)] = match.group(2).strip()
    return header


def list_recipes() -> dict[str, str]:
    """Packaged recipes: ``{name: description}`` from each YAML's ``# description:`` line.

    Example:
        >>> list_recipes()["gpt-tiny"][:8]
        'tiny GPT'
    """
    return {path.stem: read_header(path).get("description", "") for path in _recipe_files()}


def recipe_bases() -> dict[str, str | None]:
    """Packaged recipes: ``{name: base}``, None for a recipe that stands alone.

    Example:
        >>> recipe_bases()["classifier-lora"]
        'classifier-finetune'
    """
    return {path.stem: read_header(path).get("base") for path in _recipe_files()}


def _packaged(name: str) -> Path | None:
    candidate = RECIPES_DIR / f"{name.removesuffix('.yaml')}.yaml"
    return candidate if candidate.is_file() else None


def resolve_recipe(value: str) -> str:
    """A config argument as given: an existing file or inline YAML stays, a packaged recipe name becomes its path.

    Example:
        >>> resolve_recipe("gpt-tiny").endswith("recipes/gpt-tiny.yaml")
        True

    Raises:
        SystemExit: neither a file nor a recipe; the message lists the recipes.
    """
    if Path(value).exists() or value.lstrip().startswith("{"):
        return value
    packaged = _packaged(value)
    if packaged is not None:
        return str(packaged)
    raise SystemExit(
        f"kit: --config {value!r} is neither a file nor a packaged recipe; recipes: {', '.join(list_recipes())}"
    )


def _base_path(base: str, overlay: Path) -> Path:
    """The file an overlay's ``# base:`` names: a packaged recipe, else a path relative to the overlay's folder."""
    packaged = _packaged(base)
    if packaged is not None:
        return packaged
    candidate = overlay.parent / base
    if candidate.is_file():
        return candidate
    raise SystemExit(
        f"kit: recipe {overlay.stem!r} ({overlay}) names '# base: {base}', which is neither a packaged recipe nor a "
        f"file beside it; recipes: {', '.join(list_recipes())}"
    )


_BASE_KEY = re.compile(r"base\s*:")


def _base_of(path: Path) -> str | None:
    """The ``# base:`` a file names; a top-level ``base:`` key (which jsonargparse would reject as an unknown
    option) is an error that says how to write it."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if _BASE_KEY.match(line):
                base = line.split(":", 1)[1].strip()
                raise SystemExit(
                    f"kit: config {str(path)!r} has a top-level 'base:' key; name the base in a header comment "
                    f"above the first key instead: '# base: {base}'"
                )
    return read_header(path).get("base")


def expand_config(value: str) -> list[str]:
    """The ``--config`` files a config argument stands for, base first: the overlay chain of a recipe or file.

    Inline YAML and anything that is not a file (jsonargparse reports those) expand to themselves.

    Example:
        >>> [Path(p).stem for p in expand_config("classifier-lora")]
        ['classifier-finetune', 'classifier-lora']

    Raises:
        SystemExit: an unknown recipe, an unknown base, or bases that form a cycle; the message names the recipe.
    """
    first = resolve_recipe(value)
    path = Path(first)
    if not path.is_file():
        return [first]
    chain = [path]
    while (base := _base_of(chain[-1])) is not None:
        base_path = _base_path(base, chain[-1])
        if base_path.resolve() in {p.resolve() for p in chain}:
            cycle = " -> ".join(p.stem for p in [*chain, base_path])
            raise SystemExit(
                f"kit: recipe {path.stem!r}: its '# base:' lines form a cycle ({cycle}); remove one of them"
            )
        chain.append(base_path)
    return [str(p) for p in reversed(chain)]


def merge_configs(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge parsed YAML configs in order as jsonargparse merges several ``--config``: mappings merge key by key,
    lists and scalars replace.

    Example:
        >>> merge_configs([{"a": {"x": 1, "y": [1, 2]}}, {"a": {"y": [3]}}])
        {'a': {'x': 1, 'y': [3]}}
    """
    out: dict[str, Any] = {}
    for config in configs:
        out = _merge(out, config)
    return out


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merged_recipe(value: str) -> tuple[list[str], dict[str, Any]]:
    """A recipe's (or YAML file's) expanded ``--config`` chain and the config the chain merges into.

    Example:
        >>> chain, config = merged_recipe("classifier-lora")
        >>> config["model"]["init_args"]["peft"]["method"], config["trainer"]["max_steps"]
        ('lora', 300)

    Raises:
        SystemExit: as :func:`expand_config`.
        ValueError: a file in the chain is not a YAML mapping.
    """
    import yaml

    chain = expand_config(value)
    configs = []
    for item in chain:
        text = Path(item).read_text(encoding="utf-8") if Path(item).is_file() else item
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config {item!r} is a {type(loaded).__name__}, not a YAML mapping of options")
        configs.append(loaded)
    return chain, merge_configs(configs)
