"""The ``kit`` command.

``kit fit|validate|test|predict`` is a ``LightningCLI`` in subclass mode (any LightningModule and
LightningDataModule, the user's included); ``--config`` takes a file or the name of a packaged recipe, and
``kit fit`` with no config runs the default recipe ``gpt-tiny``. Other subcommands (``recipes``, ``bench``,
``data``, ``plan``, ``doctor``) are plain argparse tools dispatched before LightningCLI.
"""

from __future__ import annotations

import importlib
import math
import netrc
import os
import sys
import warnings
from pathlib import Path

__all__ = ["DEFAULT_RECIPE", "import_object", "list_recipes", "main", "resolve_recipe"]

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = "gpt-tiny"
TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")
# name -> (module with main(argv) -> int, one-line help)
TOOL_SUBCOMMANDS = {
    "bench": ("kit.cli.commands.bench", "run a benchmark from benchmarks/ (kit bench NAME)"),
    "data": ("kit.cli.commands.data", "data tools: clean, tokenizer, shards"),
    "plan": ("kit.cli.commands.plan", "compute planner: FLOPs, GPU-hours, memory per GPU"),
    "doctor": ("kit.cli.commands.doctor", "diagnose a run from its checkpoint and data"),
}


def list_recipes() -> dict[str, str]:
    """Packaged recipes: ``{name: description}`` from each YAML's ``# description:`` line."""
    out = {}
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        description = ""
        for line in path.read_text().splitlines():
            if line.startswith("# description:"):
                description = line.split(":", 1)[1].strip()
                break
        out[path.stem] = description
    return out


def resolve_recipe(value: str) -> str:
    """A config argument as given: an existing file stays, a packaged recipe name becomes its path.

    Raises:
        SystemExit: neither a file nor a recipe; the message lists the recipes.
    """
    if Path(value).exists() or value.lstrip().startswith("{"):
        return value
    name = value[:-5] if value.endswith(".yaml") else value
    candidate = RECIPES_DIR / f"{name}.yaml"
    if candidate.exists():
        return str(candidate)
    raise SystemExit(
        f"kit: --config {value!r} is neither a file nor a packaged recipe; recipes: {', '.join(list_recipes())}"
    )


def _rewrite_args(argv: list[str]) -> list[str]:
    """Resolve recipe names after --config/-c, and add the default recipe to a config-less fit."""
    out: list[str] = []
    i, has_config = 0, False
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c") and i + 1 < len(argv):
            out += [arg, resolve_recipe(argv[i + 1])]
            has_config = True
            i += 2
            continue
        if arg.startswith("--config="):
            out.append("--config=" + resolve_recipe(arg.split("=", 1)[1]))
            has_config = True
        else:
            out.append(arg)
        i += 1
    if out and out[0] in TRAINER_SUBCOMMANDS and not has_config:
        names_model = any(a == "--model" or a.startswith("--model=") for a in out)
        if not names_model and not any(a in ("-h", "--help") for a in out):
            out[1:1] = ["--config", str(RECIPES_DIR / f"{DEFAULT_RECIPE}.yaml")]
    return out


def _wandb_offline_unless_configured() -> None:
    """wandb runs offline unless the user has a key (env or ~/.netrc): no run ever blocks on a login prompt."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    os.environ["WANDB_MODE"] = "offline"


def _register_extensions() -> None:
    # Strategy presets (ddp-powersgd, fsdp-zero3, ...) register on import; absent modules are fine.
    for name in ("kit.parallel.strategies",):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise


def _lightning_cli():
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.cli import LightningCLI

    class FinalLastCheckpoint(Callback):
        """Refreshes ``last.ckpt`` when fit ends between checkpoints, so a resume loses no steps.

        It records the step of every checkpoint written (``on_save_checkpoint``), so it needs no private
        ModelCheckpoint state to know whether the final step is already saved.
        """

        def __init__(self) -> None:
            self.saved_step = -1

        def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
            self.saved_step = int(checkpoint.get("global_step", -1))

        def save_if_behind(self, trainer) -> None:
            ckpt = trainer.checkpoint_callback
            if ckpt is None or not ckpt.save_last or trainer.state.status.value != "finished":
                return
            if self.saved_step == trainer.global_step:
                return
            path = ckpt.last_model_path or os.path.join(
                ckpt.dirpath, f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}"
            )
            trainer.save_checkpoint(path)
            ckpt.last_model_path = path

    class KitCLI(LightningCLI):
        """LightningCLI that ends ``fit`` with a summary: checkpoint, logs, val loss/perplexity, a sample."""

        def before_instantiate_classes(self) -> None:
            # A rich progress bar by default, but --trainer.enable_progress_bar=false must still work.
            config = self.config[self.subcommand] if self.subcommand else self.config
            trainer = config.trainer
            callbacks = trainer.get("callbacks") or []
            if not isinstance(callbacks, list):
                callbacks = [callbacks]
            if trainer.get("enable_progress_bar") is not False and not any(map(_is_progress_bar, callbacks)):
                from jsonargparse import Namespace

                bar = Namespace(class_path="lightning.pytorch.callbacks.RichProgressBar", init_args=Namespace())
                trainer.callbacks = [*callbacks, bar]

        def before_fit(self) -> None:
            self._final_last = FinalLastCheckpoint()
            self.trainer.callbacks.append(self._final_last)

        def after_fit(self) -> None:
            self._final_last.save_if_behind(self.trainer)
            _print_fit_summary(self.trainer, self.model, self.datamodule)

    return KitCLI


def import_object(path: str):
    """The object a dotted path such as ``kit.datamodules.text.TextDataModule`` names.

    Raises:
        ValueError: a path without a module part.
        ImportError, AttributeError: the module or the name does not exist.
    """
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"{path!r} is not a dotted class path such as kit.datamodules.text.TextDataModule")
    return getattr(importlib.import_module(module), name)


def _is_progress_bar(callback) -> bool:
    """Whether a configured callback (an instance or a ``class_path`` namespace) is a progress bar."""
    from lightning.pytorch.callbacks import ProgressBar

    if isinstance(callback, ProgressBar):
        return True
    class_path = callback.get("class_path") if hasattr(callback, "get") else None
    if not class_path:
        return False
    try:
        cls = import_object(class_path)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, ProgressBar)


def _print_fit_summary(trainer, model, datamodule) -> None:
    if not trainer.is_global_zero:
        return
    lines = ["", "kit fit finished"]
    ckpt = trainer.checkpoint_callback
    if ckpt is not None:
        if ckpt.best_model_path:
            lines.append(f"  best checkpoint: {ckpt.best_model_path}")
        if ckpt.last_model_path:
            lines.append(f"  last checkpoint: {ckpt.last_model_path}")
    if trainer.logger is not None and trainer.logger.log_dir:
        lines.append(f"  logs:            {trainer.logger.log_dir}")
    metrics = trainer.callback_metrics
    val, ppl = metrics.get("val/loss"), metrics.get("val/ppl")
    if val is not None and ppl is not None:
        lines.append(f"  val loss:        {float(val):.4f}  (perplexity {float(ppl):.2f})")
    for key in sorted(k for k in metrics if k.startswith("val") and k not in ("val/loss", "val/ppl")):
        lines.append(f"  {key + ':':<16} {float(metrics[key]):.4f}")
    if val is not None and ppl is None:
        lines.append(f"  val/loss:        {float(val):.4f}")
    unigram = getattr(datamodule, "unigram_loss", None)
    if unigram is not None:
        lines.append(f"  unigram baseline val loss: {unigram:.4f}  (perplexity {math.exp(unigram):.2f})")
    tokenizer = getattr(datamodule, "tokenizer", None)
    if tokenizer is not None and hasattr(model, "generate_text"):
        try:
            sample = model.generate_text(tokenizer, "The ", max_new_tokens=48)
            lines.append("  sample: " + " ".join(sample.split())[:300])
        except Exception as err:  # a summary must never turn a finished run into a failure
            lines.append(f"  sample: unavailable ({type(err).__name__}: {err})")
    print("\n".join(lines), flush=True)


def _print_recipes() -> int:
    recipes = list_recipes()
    width = max(map(len, recipes), default=0)
    print("packaged recipes (kit fit --config NAME):")
    for name, description in recipes.items():
        print(f"  {name:<{width}}  {description}")
    return 0


def _print_help() -> int:
    print("usage: kit {fit,validate,test,predict} [--config RECIPE_OR_FILE] [options]")
    print("       kit {recipes,bench,data,plan,doctor} ...\n")
    print(
        "  fit/validate/test/predict  LightningCLI (kit fit --help for every option; --print_config shows them)"
    )
    print("  recipes                    list packaged recipes")
    for name, (_, text) in TOOL_SUBCOMMANDS.items():
        print(f"  {name:<26} {text}")
    print(f"\nWith no --config, kit fit runs the default recipe {DEFAULT_RECIPE!r}.")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        if not argv:
            argv = ["fit"]  # `kit` alone behaves as `kit fit` with the default recipe
        else:
            return _print_help()
    command = argv[0]
    if command == "recipes":
        return _print_recipes()
    if command in TOOL_SUBCOMMANDS:
        module_name = TOOL_SUBCOMMANDS[command][0]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            print(f"kit {command}: not available in this install", file=sys.stderr)
            return 2
        return int(module.main(argv[1:]) or 0)
    _wandb_offline_unless_configured()
    _register_extensions()
    # Lightning 2.6 on torch 2.13 warns about its own pytree use; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    cli_cls = _lightning_cli()
    # LightningCLI reads sys.argv itself (and warns when given both); hand it the rewritten arguments there.
    # argv[0] stays the real script: Lightning's DDP launcher re-runs `python sys.argv[0] ...` for each rank.
    saved_argv = sys.argv
    sys.argv = [saved_argv[0] if saved_argv else "kit", *_rewrite_args(argv)]
    try:
        cli_cls(
            model_class=None,
            datamodule_class=None,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
        )
    finally:
        sys.argv = saved_argv
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
