"""Where a fine-tune's ``init_from`` points: a checkpoint file, a run folder, or a packaged recipe's name.

A packaged recipe's runs live under its logger's ``save_dir/name`` (``runs/<recipe>`` by default); this module
reads that from the recipe file itself, so a model can resolve ``init_from="bert-tiny-pretrain"`` without the
command line.

Example:
    >>> (PACKAGED_RECIPES / "gpt-tiny.yaml").is_file()
    True
"""

from __future__ import annotations

import os
from pathlib import Path

from kit.checkpoint.manifest import find_latest, resolve_checkpoint

__all__ = ["PACKAGED_RECIPES", "recipe_run_root", "resolve_init_from"]

# the recipes shipped inside the package (``kit fit -c <name>`` reads them too)
PACKAGED_RECIPES = Path(__file__).resolve().parent.parent / "cli" / "recipes"


def recipe_run_root(name: str, recipes: Path = PACKAGED_RECIPES) -> Path | None:
    """``<logger save_dir>/<logger name>`` of the recipe ``name`` (the parent of its runs' version folders).

    Args:
        name: a recipe name, with or without ``.yaml``.
        recipes: the folder of recipes.

    Returns:
        The folder, relative to the working directory as the recipe writes it, or ``None`` when there is no
        such recipe.

    Example:
        >>> recipe_run_root("bert-tiny-pretrain")
        PosixPath('runs/bert-tiny-pretrain')
    """
    import yaml  # jsonargparse's dependency; imported here so the checkpoint helpers load without it

    recipe = recipes / f"{name.removesuffix('.yaml')}.yaml"
    if not recipe.is_file():
        return None
    logger = ((yaml.safe_load(recipe.read_text()) or {}).get("trainer") or {}).get("logger") or {}
    args = logger.get("init_args", {}) if isinstance(logger, dict) else {}
    return Path(args.get("save_dir", "runs")) / args.get("name", recipe.stem)


def resolve_init_from(value: str | os.PathLike, recipes: Path = PACKAGED_RECIPES) -> Path:
    """The checkpoint ``init_from`` names: a checkpoint file, a run folder, or a packaged recipe's name.

    A file is checked against its manifest (or its zip CRCs) and falls back to the previous good checkpoint
    beside it; a folder (``runs/bert-tiny-pretrain``, one ``version_N``, or a ``checkpoints`` folder) and a recipe
    name (``bert-tiny-pretrain``: its logger's ``save_dir/name``, relative to the working directory) give the
    newest complete checkpoint of any version under them, as ``--ckpt_path last`` does.

    Args:
        value: the file, folder or recipe name.
        recipes: where recipe names are looked up.

    Example:
        >>> resolve_init_from("runs/bert-tiny-pretrain")  # doctest: +SKIP
        PosixPath('runs/bert-tiny-pretrain/version_2/checkpoints/last.ckpt')

    Only plain file names inside the folder count: manifest entries such as ``../x`` or ``/abs/x`` are ignored
    with a warning, and candidates rank by step, then by the file's own modification time.

    Raises:
        FileNotFoundError: nothing usable there, naming what was searched and how to make it (checkpoints that
            exist but fail verification are listed with their reasons).
    """
    path = Path(value)
    if path.is_file():
        return resolve_checkpoint(path)
    root = path if path.is_dir() else recipe_run_root(str(value), recipes)
    if root is None:
        raise FileNotFoundError(
            f"init_from={str(value)!r} is neither a checkpoint file, a run folder nor a packaged recipe; pass a "
            "CausalLM/MaskedLM checkpoint (.ckpt), its run folder, or a recipe name such as 'bert-tiny-pretrain'"
        )
    found = find_latest(root, strict=True) if root.is_dir() else None
    if found is None:
        hint = f"; run `kit fit -c {value}` first" if root != path else ""
        raise FileNotFoundError(f"init_from={str(value)!r}: no complete checkpoint under {root}{hint}")
    return found
