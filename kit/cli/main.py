"""The ``kit`` command.

``kit fit|validate|test|predict`` is a ``LightningCLI`` in subclass mode (any LightningModule and
LightningDataModule, the user's included); ``--config`` takes a file or the name of a packaged recipe, and
``kit fit`` with no config runs the default recipe ``gpt-tiny``. A recipe or file whose header says
``# base: NAME`` is an overlay: its ``--config`` expands to its base's chain followed by itself
(``kit.cli.recipes``). Other subcommands (``recipes``, ``bench``,
``data``, ``plan``, ``doctor``) are plain argparse tools dispatched before LightningCLI.
"""

from __future__ import annotations

import importlib
import math
import netrc
import os
import re
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

from kit.cli.recipes import RECIPES_DIR, expand_config, list_recipes, recipe_bases, resolve_recipe

__all__ = [
    "DEFAULT_RECIPE",
    "RECIPES_DIR",
    "expand_config",
    "import_object",
    "list_recipes",
    "main",
    "one_line",
    "resolve_ckpt_path",
    "resolve_recipe",
]

DEFAULT_RECIPE = "gpt-tiny"
TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")
# name -> (module with main(argv) -> int, one-line help)
TOOL_SUBCOMMANDS = {
    "bench": ("kit.cli.commands.bench", "run a benchmark from benchmarks/ (kit bench NAME)"),
    "data": ("kit.cli.commands.data", "data tools: clean, tokenizer, shards"),
    "plan": ("kit.cli.commands.plan", "compute planner: FLOPs, GPU-hours, memory per GPU"),
    "doctor": ("kit.cli.commands.doctor", "diagnose a run from its checkpoint and data"),
}


def _rewrite_args(argv: list[str]) -> list[str]:
    """Expand each --config/-c into its recipe's overlay chain (base first), and add the default recipe to a
    config-less fit."""
    out: list[str] = []
    i, has_config = 0, False
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c") and i + 1 < len(argv):
            for path in expand_config(argv[i + 1]):
                out += [arg, path]
            has_config = True
            i += 2
            continue
        if arg.startswith("--config="):
            out += ["--config=" + path for path in expand_config(arg.split("=", 1)[1])]
            has_config = True
        else:
            out.append(arg)
        i += 1
    if out and out[0] in TRAINER_SUBCOMMANDS and not has_config:
        names_model = any(a == "--model" or a.startswith("--model=") for a in out)
        if not names_model and not any(a in ("-h", "--help") for a in out):
            out[1:1] = [item for path in expand_config(DEFAULT_RECIPE) for item in ("--config", path)]
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
            if getattr(ckpt, "saves_final_step", False):
                # KitCheckpoint saves the final step itself (atomically, in its manifest); writing last.ckpt
                # here would go through its hard link into the linked checkpoint
                return
            if self.saved_step == trainer.global_step:
                return
            path = ckpt.last_model_path or os.path.join(
                ckpt.dirpath, f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}"
            )
            trainer.save_checkpoint(path)
            ckpt.last_model_path = path

    class FinalValidation(Callback):
        """Remembers the step of the last validation, so ``fit`` can end with one when its last step had none."""

        def __init__(self) -> None:
            self.validated_step = -1

        def on_validation_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                self.validated_step = trainer.global_step

        def run_if_behind(self, trainer, model, datamodule) -> None:
            """A final validation (weights as trained, not the best checkpoint) when the last step had none."""
            if trainer.state.status.value != "finished" or self.validated_step == trainer.global_step:
                return
            if trainer.limit_val_batches == 0 or not _has_validation(model, datamodule):
                return
            trainer.validate(model, datamodule=datamodule, verbose=False)

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

                bar = Namespace(class_path="kit.cli.progress.StepRichProgressBar", init_args=Namespace())
                trainer.callbacks = [*callbacks, bar]
            _claim_logger_version(trainer.get("logger"))

        def _parse_ckpt_path(self) -> None:
            # Replaces LightningCLI's own (lightning 2.4-2.6: it loads --ckpt_path FILE and merges every
            # hyper-parameter into the config, ``_class_path`` included, before any hook of ours runs): the kit
            # verifies the file first, loads it as data, and keeps only hyper-parameters that cannot swap the
            # class or add a path the user did not give.
            subcommand = self.config.get("subcommand")
            if not subcommand:
                return
            config = self.config[subcommand]
            value = config.get("ckpt_path")
            if not value or not Path(value).is_file():
                return  # `last`, `best`, a URL: resolved before the run starts
            from kit.checkpoint import resolve_checkpoint
            from kit.checkpoint.safe_load import load_checkpoint

            resolved = str(resolve_checkpoint(value))
            config["ckpt_path"] = self._verified_ckpt = resolved
            hparams = trusted_hparams(
                load_checkpoint(resolved).get("hyper_parameters") or {}, config, resolved
            )
            if hparams:
                self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

        def before_fit(self) -> None:
            self._final_last = FinalLastCheckpoint()
            self._final_val = FinalValidation()
            self.trainer.callbacks += [self._final_last, self._final_val]
            self._resolve_ckpt_path()

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument(
                "--predictions",
                default=None,
                help="kit predict: JSON Lines output (default: <log dir>/predictions.jsonl, or runs/predictions.jsonl)",
            )

        def before_predict(self) -> None:
            self._resolve_ckpt_path()
            from kit.cli.predictions import JSONLPredictionWriter

            path = self.config[self.subcommand].get("predictions")
            if not path:
                log_dir = self.trainer.logger.log_dir if self.trainer.logger is not None else None
                path = os.path.join(log_dir or "runs", "predictions.jsonl")
            self._writer = JSONLPredictionWriter(path)
            self.trainer.callbacks.append(self._writer)

        def after_predict(self) -> None:
            if self.trainer.is_global_zero:
                print(f"kit predict: wrote {self._writer.rows:,} rows to {self._writer.path}", flush=True)

        def before_validate(self) -> None:
            self._resolve_ckpt_path()

        def before_test(self) -> None:
            self._resolve_ckpt_path()

        def _resolve_ckpt_path(self) -> None:
            config = self.config_init[self.subcommand]
            value = config.get("ckpt_path")
            if value and value == getattr(self, "_verified_ckpt", None):
                return  # verified when the arguments were parsed
            resolved = resolve_ckpt_path(value, self.trainer)
            if resolved != value:
                config["ckpt_path"] = resolved

        def after_fit(self) -> None:
            self._final_last.save_if_behind(self.trainer)
            # every fit ends validated, so the summary can compare the model with the baseline
            self._final_val.run_if_behind(self.trainer, self.model, self.datamodule)
            _print_fit_summary(self.trainer, self.model, self.datamodule)

    return KitCLI


def resolve_ckpt_path(value: str | None, trainer) -> str | None:
    """``--ckpt_path`` as the run will use it: ``last`` becomes the newest complete checkpoint of any version
    of this recipe's runs (``<logger save_dir>/<name>/version_*/``); a path that fails its checksum becomes
    the previous good checkpoint beside it (``kit.checkpoint`` warns, naming both)."""
    if not value or value in ("best", "hpc", "registry"):
        return value
    from kit.checkpoint import find_latest, resolve_checkpoint

    if value == "last":
        logger = trainer.logger
        if logger is not None and getattr(logger, "save_dir", None):
            root = Path(logger.save_dir) / (logger.name or "")
        else:
            root = Path(trainer.default_root_dir)
        if trainer.is_global_zero:
            _sweep_runs(root)
        found = find_latest(root, strict=True)  # checkpoints there but none verifying: an error listing each
        if found is None:
            if trainer.is_global_zero:
                print(
                    f"kit: --ckpt_path last: no complete checkpoint under {root}; starting from scratch",
                    flush=True,
                )
            return None
        if trainer.is_global_zero:
            print(f"kit: --ckpt_path last -> {found}", flush=True)
        return str(found)
    if Path(value).exists():
        return str(resolve_checkpoint(value))
    return value


def _sweep_runs(root: Path) -> None:
    """Clear what killed runs left in the checkpoint folders under ``root``, with a line per folder."""
    from kit.checkpoint import MANIFEST_NAME
    from kit.checkpoint.sweep import sweep

    if not root.is_dir():
        return
    for manifest in sorted(root.rglob(MANIFEST_NAME)):
        notes = sweep(manifest.parent)
        if notes:
            print(f"kit: swept {manifest.parent} after an interrupted run: {'; '.join(notes)}", flush=True)


def _is_rank_zero() -> bool:
    """Rank zero, read from the launcher's environment (the Trainer does not exist yet)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _claim_logger_version(logger) -> None:
    """Give a configured logger (``class_path`` + ``save_dir``) without a ``version`` a folder of its own.

    Two runs of one recipe started together would both pick ``version_N`` (loggers list the folder and take
    the next number); rank zero instead creates ``version_N`` with an exclusive ``mkdir`` and takes the next
    number when another run got there first. The other ranks of the run read the number rank zero claimed
    from the environment the launcher copies to them.
    """
    loggers = logger if isinstance(logger, list) else [logger]
    for one in loggers[:1]:  # the first logger names the run's folder (the Trainer's log_dir)
        init = one.get("init_args") if hasattr(one, "get") and one.get("class_path") else None
        if init is None or "version" not in init or init.get("version") is not None:
            continue
        if not init.get("save_dir") or not _numbers_its_versions(one.get("class_path")):
            continue
        from kit.checkpoint.runs import claim_version

        if _is_rank_zero():
            version = claim_version(Path(init["save_dir"]) / (init.get("name") or ""))
            os.environ[_VERSION_ENV] = str(version)
        elif os.environ.get(_VERSION_ENV, "").isdigit():
            version = int(os.environ[_VERSION_ENV])
        else:
            continue
        init["version"] = version


def _numbers_its_versions(class_path: str) -> bool:
    """Whether the logger keeps each run in ``<save_dir>/<name>/version_N`` (CSV and TensorBoard loggers and
    their subclasses; a wandb run id is not a folder number)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    try:
        cls = import_object(class_path)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, (CSVLogger, TensorBoardLogger))


_VERSION_ENV = "KIT_RUN_VERSION"
# hyper-parameters whose value is a path: a checkpoint may not set them unless the user gave the same value
_PATH_KEYS = ("init_from", "ckpt_path", "generator_weights", "tokenizer", "tokenizer_path")
_PATH_SUFFIXES = ("_path", "_dir", "_file", "_from", "_url", "_urls", "_weights")


def _looks_like_path(key: str, value) -> bool:
    if key in _PATH_KEYS or key.endswith(_PATH_SUFFIXES):
        return value is not None
    if isinstance(value, str):
        return "/" in value or "\\" in value or value.startswith(("~", "pipe:")) or "://" in value
    return False


def trusted_hparams(hparams: dict, config, source: str) -> dict:
    """The part of a checkpoint's ``hyper_parameters`` that may fill the model's config on ``--ckpt_path``.

    A checkpoint is data: it never chooses the model class (``_class_path``; when it names another class than
    the configured one, none of its hyper-parameters apply) and never adds a path-valued setting
    (``init_from``, ``*_path``, a string holding a path or URL) the user did not give. What is dropped is named
    in one warning.

    Args:
        hparams: the checkpoint's ``hyper_parameters``.
        config: the subcommand's parsed config (its ``model`` is what the user configured).
        source: the checkpoint, for the warning.

    Returns:
        ``{"class_path": <configured class>, "dict_kwargs": {...}}``, or ``{}`` when nothing applies.

    Example:
        >>> trusted_hparams({"_class_path": "evil.Model", "lr": 1.0}, {"model": {"class_path": "kit.models.CausalLM"}}, "x.ckpt")  # doctest: +SKIP
        {}
    """
    from lightning.pytorch.utilities import rank_zero_warn

    hparams = dict(hparams)
    hparams.pop("_instantiator", None)
    model = config.get("model") if hasattr(config, "get") else None
    configured = model.get("class_path") if hasattr(model, "get") else None
    given = (model.get("init_args") if hasattr(model, "get") else None) or {}
    claimed = hparams.pop("_class_path", None) or hparams.pop("class_path", None)
    if configured is None or (claimed is not None and claimed != configured):
        if hparams or claimed:
            rank_zero_warn(
                f"kit: --ckpt_path {source}: ignored its hyper-parameters (model class {claimed!r}), because the "
                f"configured model is {configured!r}; a checkpoint never chooses the model class. Configure the "
                "model (--config or --model) that wrote it"
            )
        return {}
    dropped = []
    for key in list(hparams):
        value = hparams[key]
        if _looks_like_path(key, value) and value != given.get(key):
            dropped.append(f"{key}={value!r}")
            del hparams[key]
    if dropped:
        rank_zero_warn(
            f"kit: --ckpt_path {source}: dropped the path-valued hyper-parameter(s) {', '.join(dropped)} the "
            "checkpoint sets but the command line and config do not; pass them yourself if you trust them "
            "(e.g. --model.init_from=...)"
        )
    return {"class_path": configured, "dict_kwargs": hparams} if hparams else {}


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


def _has_validation(model, datamodule) -> bool:
    """Whether the module validates and the data has a validation loader (overridden, not Lightning's stub)."""
    import lightning.pytorch as pl

    step = getattr(type(model), "validation_step", None)
    if step is None or step is pl.LightningModule.validation_step:
        return False
    source = datamodule if datamodule is not None else model
    loader = getattr(type(source), "val_dataloader", None)
    base = pl.LightningDataModule if datamodule is not None else pl.LightningModule
    return loader is not None and loader is not getattr(base, "val_dataloader", None)


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


def _sample_line(trainer, model, datamodule) -> str | None:
    """The summary's sample line, or why there is none.

    A model sharded over several ranks (FSDP, DeepSpeed ZeRO-3, tensor or pipeline parallel) is not sampled: its
    forward needs every rank's collectives, and token-by-token generation feeds sequence lengths a
    sequence-parallel plan cannot split evenly, so the line says so and points at the checkpoint instead. Every
    rank may call this; it runs no collective.
    """
    tokenizer = getattr(datamodule, "tokenizer", None)
    if tokenizer is None:
        return None
    from kit._compat import strategy_traits

    if trainer.world_size > 1 and strategy_traits(trainer.strategy).shards_state:
        return (
            f"  sample: none (the model is sharded over {trainer.world_size} ranks by "
            f"{type(trainer.strategy).__name__}; sample from the last checkpoint in one process)"
        )
    if not hasattr(model, "generate_text"):
        return f"  sample: none ({type(model).__name__} has no generate_text(tokenizer, prompt))"
    if not trainer.is_global_zero:
        return None
    try:
        sample = model.generate_text(tokenizer, "The ", max_new_tokens=48)
    except Exception as err:  # a summary must never turn a finished run into a failure
        text = (str(err).strip().splitlines() or [""])[0][:200]
        return f"  sample: unavailable ({type(err).__name__}: {text})"
    return "  sample: " + " ".join(sample.split())[:300]


def _print_fit_summary(trainer, model, datamodule) -> None:
    sample = _sample_line(trainer, model, datamodule)
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
    if sample is not None:
        lines.append(sample)
    print("\n".join(lines), flush=True)


def _print_recipes() -> int:
    descriptions, bases = list_recipes(), recipe_bases()
    width = max(map(len, descriptions), default=0)
    base_width = max((len(b) for b in bases.values() if b), default=0)
    print("packaged recipes (kit fit --config NAME; an overlay runs on top of its base):")
    print(f"  {'name':<{width}}  {'base':<{base_width}}  description")
    for name, description in descriptions.items():
        print(f"  {name:<{width}}  {bases[name] or '-':<{base_width}}  {description}")
    return 0


def _print_help() -> int:
    print("usage: kit {fit,validate,test,predict} [--config RECIPE_OR_FILE] [options]")
    print("       kit {recipes,bench,data,plan,doctor} ...\n")
    print(
        "  fit/validate/test/predict  LightningCLI (kit fit --help for every option; --print_config shows them)"
    )
    print("  recipes                    list packaged recipes and the base each one overlays")
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
    debug = "--debug" in argv or os.environ.get("KIT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        return _run_lightning_cli(argv, debug)
    except ArgumentError as err:  # a type or key error: the key and the expected type, then where to look
        print(f"kit {command}: error: {str(err).strip()}", file=sys.stderr)
        print(f"  (every option: kit {command} --help)", file=sys.stderr)
        return 2
    except Exception as err:
        if debug or not _user_error(err):
            raise
        print(f"kit {command}: error: {one_line(err)}", file=sys.stderr)
        print("  (full traceback: add --debug, or set KIT_DEBUG=1)", file=sys.stderr)
        return 2


def _user_error(err: BaseException) -> bool:
    """Errors that a message fixes, reported in one line: config values and paths (ValueError, OSError),
    Lightning's configuration checks, and checkpoints that cannot be loaded (pickled objects refused, truncated
    or corrupt files)."""
    import pickle

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    if isinstance(err, (ValueError, OSError, MisconfigurationException, pickle.UnpicklingError)):
        return True
    return isinstance(err, (RuntimeError, EOFError)) and _raised_loading_a_checkpoint(err)


def _raised_loading_a_checkpoint(err: BaseException) -> bool:
    """Whether ``err`` came out of ``torch.load`` (a truncated or corrupt file), not out of training."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    return any(f.filename.replace("\\", "/").endswith("torch/serialization.py") for f in frames)


_NONE_REJECTED = "Expected a <class 'NoneType'>"
_UNION_ERRORS = re.compile(r"\nErrors:\n(.*?)\nGiven value type:", re.DOTALL)


def _union_errors(text: str) -> list[str]:
    """The subtypes' errors that jsonargparse lists in its Union error, each on one line, less the ``None``
    subtype's rejection.

    jsonargparse chains its Union error to the first subtype's error, and older releases (4.39 among them) try
    ``None`` first in an ``Optional[X]``: the chained error is then "Expected a <class 'NoneType'>", while the
    one that names the fix, ``X``'s own, is only in the listing.
    """
    found = _UNION_ERRORS.search(text)
    if found is None:
        return []
    entries = re.split(r"^\s*- ", found.group(1), flags=re.MULTILINE)
    joined = (" ".join(line.strip() for line in entry.splitlines() if line.strip()) for entry in entries)
    return [entry for entry in joined if entry and not entry.startswith(_NONE_REJECTED)]


def one_line(err: BaseException) -> str:
    """The message of the exception that started a chain (``raise ... from``), which is the one naming the fix.

    jsonargparse wraps a module's own ``ValueError`` in a ``ValueError`` listing every Union subtype; the
    original, at the bottom of the chain, is the one a user can act on.
    """
    from kit.checkpoint.safe_load import CheckpointLoadError

    # the kit's checkpoint errors already name the file and summarise torch's cause: they are the message
    while not isinstance(err, CheckpointLoadError) and (
        err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__)
    ):
        cause = err.__cause__ or err.__context__
        if str(cause).startswith(_NONE_REJECTED):
            listed = _union_errors(str(err))
            if listed:
                return listed[0]
        err = cause
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    if isinstance(err, (ValueError, OSError)):
        return " ".join(line.strip() for line in lines) or text
    return f"{type(err).__name__}: {text}"


def _run_lightning_cli(argv: list[str], debug: bool = False) -> int:
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
            # a bad value raises (and main prints the key and the expected type first) instead of printing
            # the whole usage before the one line that matters
            parser_kwargs={"exit_on_error": debug},
        )
    finally:
        sys.argv = saved_argv
    # a finished distributed run frees its process groups now, not in interpreter shutdown (where a tensor-
    # parallel run's gloo threads could abort the process after a successful fit)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        from kit.parallel.tensor import shutdown_process_groups

        shutdown_process_groups()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
