"""``ExportHF``: at the end of fit, write the trained model as a Hugging Face folder (LoRA merged first).

What it exports, read from ``pl_module.model``:

* the kit's ``GPT`` (:class:`kit.models.CausalLM`), full fine-tune or LoRA / QLoRA: :func:`merged_gpt` folds
  the LoRA updates into a float copy of the weights (a QLoRA base is dequantized from its 4-bit NF4 values, the
  weights it was trained against), and :func:`kit.nn.hf.to_hf` writes ``config.json`` and ``model.safetensors``,
  which ``transformers.AutoModelForCausalLM.from_pretrained`` loads;
* a ``transformers`` model (:class:`kit.models.HFCausalLM` / ``HFSequenceClassifier``), full or LoRA: merged
  on a copy (``peft``'s ``merge_and_unload``) and written with ``save_pretrained``.

The training module is never changed, so ``kit test`` or a later ``fit`` after export sees the same model. Soft
prompts and bottleneck adapters have no place in a Hugging Face checkpoint: those runs are refused when fit
starts, before any compute is spent. The tokenizer files are copied beside the weights: ``tokenizer`` if given,
else the datamodule's tokenizer folder (``data.tokenizer``). The folder is written on rank zero, atomically by
``to_hf``, and never over an existing non-empty folder or the folder the model or tokenizer was read from.

Under sharded strategies (FSDP) the parameters on rank zero are shards: export from a single-device or DDP run,
or from the consolidated checkpoint afterwards.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

__all__ = ["ExportHF", "merged_gpt"]

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


def _clean(key: str) -> str:
    # compile and activation-checkpoint wrappers add a path component; a plain GPT has none
    for wrapper in ("_orig_mod.", "_checkpoint_wrapped_module."):
        key = key.replace(wrapper, "")
    return key


def _dense_weight(layer: nn.Module) -> torch.Tensor:
    weight = layer.weight
    state = getattr(weight, "quant_state", None)
    if state is None:
        return weight.detach()
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_4bit(weight.data, state)


def merged_gpt(model: nn.Module) -> nn.Module:
    """A plain float copy of the kit ``GPT`` inside ``model`` with its LoRA updates folded into the weights.

    Args:
        model: a ``kit.nn.GPT``, or the ``peft.PeftModel`` LoRA / QLoRA wrap it in.

    Returns:
        ``model`` itself when it holds no LoRA layer, else a new ``GPT`` (the input is untouched).

    Example:
        >>> from kit.nn import GPT, GPTConfig, PeftConfig, apply_peft
        >>> lora = apply_peft(GPT(GPTConfig.from_name("debug")), PeftConfig(method="lora"))
        >>> type(merged_gpt(lora)).__name__
        'GPT'
    """
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = {_clean(name): m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    if not layers:
        return base
    with torch.device("meta"):
        plain = type(base)(base.config)
    keys = set(plain.state_dict())
    state = {_clean(k): v for k, v in base.state_dict().items() if _clean(k) in keys}
    for name, layer in layers.items():
        inner = layer.get_base_layer()
        weight = _dense_weight(inner).float()
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A:
                weight = weight + layer.get_delta_weight(adapter).float()
        # a 4-bit base computes in its compute dtype; a float base keeps its own
        dtype = getattr(inner, "compute_dtype", None) or inner.weight.dtype
        state[f"{name}.weight"] = weight.to(dtype)
        if inner.bias is not None:
            state[f"{name}.bias"] = inner.bias.detach()
    tied = getattr(base.config, "tie_embeddings", False)
    if tied:
        state.setdefault("lm_head.weight", state["wte.weight"])
    plain.load_state_dict(state, strict=True, assign=True)
    if tied:
        plain.lm_head.weight = plain.wte.weight
    return plain


def _peft_method(model: nn.Module) -> str:
    """The PEFT method in the module tree: full, lora, prompt or adapters (kit and transformers models alike)."""
    config = getattr(model, "peft_config", None)
    if isinstance(config, dict) and config:
        kind = str(next(iter(config.values())).peft_type).split(".")[-1].lower()
        return "lora" if kind == "lora" else kind
    names = {type(m).__name__ for m in model.modules()}
    if "SoftPrompt" in names:
        return "prompt"
    return "adapters" if "BottleneckAdapter" in names else "full"


def _is_transformers(model: nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return hasattr(base, "save_pretrained") and hasattr(base.config, "to_dict")


class ExportHF(Callback):
    """Write the trained model as a Hugging Face folder when fit ends (rank zero; LoRA merged on a copy).

    Args:
        dirpath: the folder to write; None is ``<log dir>/hf`` (``runs/<recipe>/version_N/hf``), or ``hf`` in the
            working directory without a logger.
        tokenizer: a tokenizer folder to copy beside the weights; None takes the datamodule's ``tokenizer``.
        overwrite: replace a non-empty ``dirpath`` (never the folder the model or tokenizer came from).

    Example:
        >>> trainer = pl.Trainer(callbacks=[ExportHF("exported/sft")])  # doctest: +SKIP
        >>> trainer.fit(CausalLM(init_from="my-model", peft={"method": "lora"}), datamodule=dm)  # doctest: +SKIP
    """

    def __init__(
        self, dirpath: str | None = None, tokenizer: str | None = None, overwrite: bool = False
    ) -> None:
        self.dirpath, self.tokenizer, self.overwrite = dirpath, tokenizer, overwrite
        self.exported: str | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(dirpath=self.dirpath)

    def _model(self, pl_module: pl.LightningModule) -> nn.Module | None:
        model = getattr(pl_module, "model", None)
        return model if isinstance(model, nn.Module) else None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = self._model(pl_module)
        if model is None or not (_is_transformers(model) or hasattr(model, "config")):
            rank_zero_warn(
                f"ExportHF: {type(pl_module).__name__} holds no kit GPT or transformers model at .model; nothing "
                "will be exported"
            )
            return
        method = _peft_method(model)
        if method not in ("full", "lora"):
            raise ValueError(
                f"ExportHF cannot write a {method!r} run as a Hugging Face model (its trained part lives outside the "
                "model's weights); remove the ExportHF callback, or fine-tune with peft.method lora, qlora or full"
            )

    def _target(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath).expanduser()
        log_dir = trainer.logger.log_dir if trainer.logger is not None else None
        return Path(log_dir or ".") / "hf"

    def _tokenizer_dir(self, trainer: pl.Trainer) -> str | None:
        if self.tokenizer is not None:
            return self.tokenizer
        dm = getattr(trainer, "datamodule", None)
        folder = getattr(getattr(dm, "tokenizer_folder", None), "folder", None)
        folder = folder or getattr(getattr(dm, "hparams", {}), "get", lambda _: None)("tokenizer")
        return str(folder) if folder else None

    def _check_not_an_input(self, target: Path, pl_module: pl.LightningModule, tokenizer: str | None) -> None:
        inputs = [
            tokenizer,
            getattr(pl_module, "init_from", None),
            getattr(pl_module, "hparams", {}).get("model"),
        ]
        for source in filter(None, inputs):
            if Path(source).expanduser().resolve() == target.resolve():
                raise ValueError(
                    f"ExportHF: dirpath={str(target)!r} is the folder the run read from; choose a new folder"
                )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = self._model(pl_module)
        if model is None or not trainer.is_global_zero:
            return
        if not (_is_transformers(model) or hasattr(model, "config")):
            return
        target, tokenizer = self._target(trainer), self._tokenizer_dir(trainer)
        self._check_not_an_input(target, pl_module, tokenizer)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if _is_transformers(model):
                    self._write_transformers(model, target, tokenizer)
                else:
                    from kit.nn.hf import to_hf

                    to_hf(merged_gpt(model), target, tokenizer=tokenizer, overwrite=self.overwrite)
        finally:
            model.train(was_training)
        self.exported = str(target)
        method = getattr(getattr(pl_module, "peft", None), "method", None) or _peft_method(model)
        rank_zero_info(f"ExportHF: wrote {target} ({method} fine-tune, merged)")

    def _write_transformers(self, model: nn.Module, target: Path, tokenizer: str | None) -> None:
        if target.exists() and any(target.iterdir()) and not self.overwrite:
            raise FileExistsError(
                f"{target} exists and is not empty; pass overwrite=True or choose a new folder"
            )
        if getattr(model, "is_loaded_in_4bit", False) or getattr(
            getattr(model, "get_base_model", lambda: model)(), "is_loaded_in_4bit", False
        ):
            raise ValueError(
                "ExportHF: a QLoRA transformers model stays 4-bit; save the adapters with "
                "pl_module.model.save_pretrained(DIR) and merge them into the float model with peft"
            )
        merged = copy.deepcopy(model)
        merged = merged.merge_and_unload() if hasattr(merged, "merge_and_unload") else merged
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        merged.save_pretrained(str(tmp))
        for name in _TOKENIZER_FILES if tokenizer else ():
            if (Path(tokenizer) / name).is_file():
                shutil.copyfile(Path(tokenizer) / name, tmp / name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)

    def state_dict(self) -> dict[str, Any]:
        return {"exported": self.exported}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.exported = state_dict.get("exported")
