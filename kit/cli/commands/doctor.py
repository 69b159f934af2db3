"""``kit doctor``: run the training doctor's checks after the fact on a checkpoint plus its data.

What it uses, when present:

- the ``TrainingDoctor`` history saved in the checkpoint (loss, LR, grad-norm curves);
- the data: ``--train-text``/``--val-text`` files, folders or globs (``.jsonl``: one document per line,
  read by ``kit.data.text.iter_documents`` as ``kit fit`` and ``kit data`` read them), else the datamodule rebuilt from
  ``--config`` (``data.class_path``/``data.init_args``) or from the checkpoint's
  ``datamodule_hyper_parameters`` (``--datamodule``, default ``kit.datamodules.text.TextDataModule``),
  whose ``train_texts``/``val_texts`` feed the leakage check;
- the model (``--model CLASS``, or ``model.class_path`` in ``--config``), loaded with
  ``load_from_checkpoint`` to measure per-layer gradient norms and the train/val loss gap now on
  ``--batches`` batches of each split.

Example:
    kit doctor --ckpt lightning_logs/version_0/checkpoints/last.ckpt --out doctor-report
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

import torch

from kit.cli.main import import_object
from kit.data.text import LoadReport, iter_documents
from kit.health.doctor import Finding, TrainingHistory, diagnose, plot_history
from kit.health.grads import grad_norms, group_by_layer

__all__ = ["main"]


def _read_texts(paths: list[str], notes: list[str], side: str) -> list[str]:
    """Documents of ``paths`` through the kit's one reader; what it skipped becomes a report note."""
    report = LoadReport()
    texts = [text for _, text, _ in iter_documents(paths, report)]
    problems = report.problems()
    if problems:
        notes.append(f"--{side}-text: {problems}")
    return texts


def _find_history(ckpt: dict) -> tuple[TrainingHistory, int]:
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("TrainingDoctor") and isinstance(state, dict) and "history" in state:
            return TrainingHistory.from_state_dict(state["history"]), int(state.get("warmup_steps", 0))
    return TrainingHistory(), 0


def _load_config(path: str | None) -> dict:
    if not path:
        return {}
    import yaml

    return yaml.safe_load(Path(path).read_text()) or {}


def _build_datamodule(args: argparse.Namespace, ckpt: dict, config: dict) -> Any:
    data_cfg = config.get("data") or {}
    cls_path = args.datamodule or data_cfg.get("class_path")
    init = dict(data_cfg.get("init_args") or {})
    if not init and ckpt.get("datamodule_hyper_parameters"):
        init = dict(ckpt["datamodule_hyper_parameters"])
        cls_path = cls_path or "kit.datamodules.text.TextDataModule"
    if not cls_path:
        return None
    init = {k: v for k, v in init.items() if not str(k).startswith("_")}
    dm = import_object(cls_path)(**init)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _measure_now(model: Any, dm: Any, batches: int, history: TrainingHistory, progress: Any) -> Finding:
    """Per-layer grad norms and train/val loss on a few batches with the checkpoint's weights."""
    from kit.callbacks._common import loss_from_output, silenced_logging

    groups = group_by_layer([n for n, p in model.named_parameters() if p.requires_grad])
    losses: dict[str, list[float]] = {"train": [], "val": []}
    task = progress.add_task("measuring", total=2 * batches)
    for split, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader())):
        for i, batch in enumerate(loader):
            if i >= batches:
                break
            model.zero_grad(set_to_none=True)
            with silenced_logging(model), torch.enable_grad():
                model.eval()  # no dropout: the same numbers every time
                loss = loss_from_output(model.training_step(batch, i)).float()
                if split == "train":
                    loss.backward()
                    _, per = grad_norms(dict(model.named_parameters()), groups)
                    history.record_layers({k: float(v) for k, v in per.items()})
            losses[split].append(float(loss.detach()))
            progress.advance(task)
    tr, va = (sum(v) / max(len(v), 1) for v in (losses["train"], losses["val"]))
    gap = va - tr
    saw = f"with the checkpoint's weights: train loss {tr:.4g}, val loss {va:.4g} (gap {gap:+.4g}) on {batches} batches"
    if tr > 0 and gap > 0.2 * tr:
        return Finding(
            "generalisation_gap", "warn", saw, "regularise (dropout, weight decay) or stop earlier"
        )
    return Finding("generalisation_gap", "ok", saw)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kit doctor``."""
    p = argparse.ArgumentParser(prog="kit doctor", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint (.ckpt)")
    p.add_argument("--config", default=None, help="LightningCLI YAML with data/model class_path + init_args")
    p.add_argument(
        "--datamodule", default=None, help="datamodule class path (default: from config or checkpoint)"
    )
    p.add_argument(
        "--model", default=None, help="LightningModule class path to measure gradients and the loss gap"
    )
    p.add_argument("--train-text", nargs="*", default=None, help="training text files or folders")
    p.add_argument("--val-text", nargs="*", default=None, help="validation text files or folders")
    p.add_argument("--batches", type=int, default=4, help="batches per split for --model measurements")
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--ngram", type=int, default=13)
    p.add_argument("--out", default=None, help="report folder (default: <ckpt folder>/doctor)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``kit doctor``; returns 0 when healthy, 1 when problems were found, 2 on bad input."""
    from rich.progress import Progress

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    ckpt_path = Path(args.ckpt)
    if not ckpt_path.is_file():
        print(
            f"kit doctor: --ckpt {ckpt_path} does not exist; pass a .ckpt written by ModelCheckpoint",
            file=sys.stderr,
        )
        return 2
    from kit.checkpoint.safe_load import CheckpointLoadError, load_checkpoint

    try:
        ckpt = load_checkpoint(ckpt_path)  # data, never code: pickled objects are refused
    except CheckpointLoadError as err:
        print(f"kit doctor: {err}", file=sys.stderr)
        return 2
    history, warmup = _find_history(ckpt)
    config = _load_config(args.config)
    notes = (
        []
        if history.steps
        else ["no TrainingDoctor history in the checkpoint: LR/overfitting checks have no curves"]
    )
    try:
        train_texts = _read_texts(args.train_text, notes, "train") if args.train_text else None
        val_texts = _read_texts(args.val_text, notes, "val") if args.val_text else None
    except FileNotFoundError as err:
        print(f"kit doctor: {err}", file=sys.stderr)
        return 2
    extra: list[Finding] = []
    with Progress(transient=True) as progress:
        dm = None
        if train_texts is None or val_texts is None or args.model:
            t = progress.add_task("loading data", total=None)
            dm = _build_datamodule(args, ckpt, config)
            progress.remove_task(t)
            if dm is not None:
                read = getattr(dm, "report", None)  # a TextDataModule's reader report (kit.data.text)
                if read is not None and read.problems():
                    notes.append(f"data: {read.problems()}")
                train_texts = train_texts if train_texts is not None else getattr(dm, "train_texts", None)
                val_texts = val_texts if val_texts is not None else getattr(dm, "val_texts", None)
        model_path = args.model or (config.get("model") or {}).get("class_path")
        if model_path and dm is not None:
            cls = import_object(model_path)
            # weights_only is a parameter from lightning 2.5 (2.4 loads with torch's default, True on torch 2.6+)
            safe = {"weights_only": True} if "weights_only" in inspect.signature(cls.load_from_checkpoint).parameters else {}
            model = cls.load_from_checkpoint(ckpt_path, map_location="cpu", **safe)
            extra.append(_measure_now(model, dm, args.batches, history, progress))
        elif model_path:
            notes.append(
                "--model given but no datamodule to draw batches from; pass --config or --datamodule"
            )
        t = progress.add_task("checking", total=None)
        diag = diagnose(history, train_texts, val_texts, warmup, args.patience, args.ngram)
        diag.findings += extra
        out = Path(args.out) if args.out else ckpt_path.parent / "doctor"
        diag.title = f"Training doctor report for {ckpt_path.name} (step {ckpt.get('global_step', '?')})"
        diag.plots = plot_history(history, out)
        progress.remove_task(t)
    text = diag.to_markdown() + "".join(f"\n- note: {n}" for n in notes)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text + "\n")
    for f in diag.findings:
        print(f"[{f.severity:>7}] {f.check}: {f.saw}" + (f"\n          try: {f.try_}" if f.try_ else ""))
    for n in notes:
        print(f"note: {n}")
    print(f"{len(diag.problems)} problem(s); report: {out / 'report.md'}")
    return 1 if diag.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
