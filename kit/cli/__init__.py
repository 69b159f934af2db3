"""The ``kit`` command (``kit.cli.main``), its packaged recipes (``recipes/``) and tools (``commands/``)."""

from kit.cli.main import DEFAULT_RECIPE, expand_config, list_recipes, main, resolve_recipe

__all__ = ["DEFAULT_RECIPE", "expand_config", "list_recipes", "main", "resolve_recipe"]
