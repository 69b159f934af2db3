"""Hugging Face checkpoints in and out of the kit's GPT: :func:`from_hf` and :func:`to_hf`.

Supported families (``config.json``'s ``model_type``), and what the kit's ``GPTConfig`` becomes for each:

| family | Hugging Face class | kit layers |
| --- | --- | --- |
| ``gpt2`` | ``GPT2LMHeadModel`` | LayerNorm, learned positions, GELU MLP, biases everywhere |
| ``llama`` | ``LlamaForCausalLM`` | RMSNorm, rotary (Llama-3 scaling too), SwiGLU, grouped-query, ``attention_bias`` / ``mlp_bias`` |
| ``mistral`` | ``MistralForCausalLM`` | Llama's layers with sliding-window attention (``sliding_window``) |
| ``qwen2`` | ``Qwen2ForCausalLM`` | Llama's layers with a bias on q, k and v only |

SmolLM and the Llama-3 checkpoints are ``llama``. Other architectures raise an error that lists these; they can
still be trained by the kit through its Hugging Face LightningModules, just not converted to the kit's GPT.

How the weights map:

- q, k and v projections are fused into the kit's one ``qkv`` Linear in grouped order
  (:func:`~kit.nn.layers.attention.qkv_grouped`); GPT-2's ``c_attn`` is stacked ``[q; k; v]`` and its ``Conv1D``
  weights are stored transposed, both undone here.
- Rotary: the kit applies rotary embeddings as Hugging Face does (``rotate_half`` on the two halves of each head),
  so Llama-family q/k weights load as they are; no permutation of rows is needed either way.
- Vocabulary: the kit may pad its embedding (50304 rows for GPT-2's 50257 tokens); :func:`to_hf` writes the real
  vocabulary (``vocab_size=``, else the tokenizer's size, else the model's).

Loading reads only ``config.json`` and safetensors files (one ``model.safetensors`` or shards listed by
``model.safetensors.index.json``, whose paths must stay inside the folder): never pickle. ``transformers``
parses ``config.json`` (so each family's defaults apply) and writes it back; it never downloads anything here.

Example:
    >>> import tempfile, torch
    >>> from kit.nn import GPT, GPTConfig
    >>> model = GPT(GPTConfig.from_name("llama-debug")).eval()
    >>> folder = tempfile.mkdtemp() + "/llama"
    >>> to_hf(model, folder)  # doctest: +SKIP
    >>> back = from_hf(folder)  # doctest: +SKIP
    >>> torch.equal(back(torch.zeros(1, 4, dtype=torch.long)), model(torch.zeros(1, 4, dtype=torch.long)))  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kit.nn.config import GPTConfig
from kit.nn.gpt import GPT
from kit.nn.layers.attention import qkv_grouped, qkv_head_major, qkv_split, qkv_stacked

__all__ = ["SUPPORTED", "config_from_hf", "config_to_hf", "from_hf", "load_hf", "read_hf_folder", "to_hf"]

# model_type -> the transformers class a folder of that family loads as
SUPPORTED: dict[str, str] = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
_LLAMA_LIKE = ("llama", "mistral", "qwen2")
# Hugging Face activation name -> the kit's (kit.nn.layers.ACTIVATIONS)
_ACT_IN = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_ACT_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}
# tensors some checkpoints carry that the kit recomputes (causal masks, rotary frequencies)
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)


def _unsupported(model_type: object) -> ValueError:
    return ValueError(
        f"model_type={model_type!r} is not a family the kit's GPT can load; supported: {sorted(SUPPORTED)} "
        f"({', '.join(SUPPORTED.values())}). Train other architectures with kit.models.HFCausalLM instead"
    )


# -- configs ------------------------------------------------------------------------------------------------
def config_from_hf(hf: Mapping[str, Any], **overrides: object) -> GPTConfig:
    """The ``GPTConfig`` of a Hugging Face config (``PretrainedConfig.to_dict()`` or a parsed ``config.json``).

    Args:
        hf: the Hugging Face config as a dict (all fields, as ``to_dict()`` gives them).
        **overrides: ``GPTConfig`` fields to change afterwards (``dropout``, ``block_size``,
            ``activation_checkpointing``...); the shape fields must stay those of the checkpoint.

    Returns:
        The config.

    Raises:
        ValueError: for an unsupported family or a feature of it the kit does not implement, naming it.

    Example:
        >>> config_from_hf({"model_type": "gpt2", "vocab_size": 50, "n_positions": 16, "n_embd": 32,
        ...                 "n_layer": 1, "n_head": 2}).n_head
        2
    """
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        raise _unsupported(model_type)
    values = _gpt2_config(hf) if model_type == "gpt2" else _llama_config(hf, model_type)
    return GPTConfig(**{**values, **overrides})


def _activation(hf: Mapping[str, Any], key: str, default: str) -> str:
    name = hf.get(key) or default
    if name not in _ACT_IN:
        raise ValueError(f"{key}={name!r} has no kit activation; supported: {sorted(_ACT_IN)}")
    return _ACT_IN[name]


def _gpt2_config(hf: Mapping[str, Any]) -> dict[str, object]:
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise ValueError(
            "GPT-2 checkpoints with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn are not supported"
        )
    if hf.get("scale_attn_weights") is False:
        raise ValueError("GPT-2 checkpoints with scale_attn_weights=False are not supported")
    return {
        "vocab_size": hf["vocab_size"],
        "block_size": hf["n_positions"],
        "n_layer": hf["n_layer"],
        "n_head": hf["n_head"],
        "n_embd": hf["n_embd"],
        "mlp_hidden": hf.get("n_inner"),
        "activation": _activation(hf, "activation_function", "gelu_new"),
        "dropout": hf.get("resid_pdrop", 0.1),
        "attn_dropout": hf.get("attn_pdrop", 0.1),
        "embd_dropout": hf.get("embd_pdrop", 0.1),
        "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
        "tie_embeddings": hf.get("tie_word_embeddings", True),
        "bias": True,
        "norm": "layernorm",
        "position": "learned",
        "ffn": "mlp",
        "attention": "dense",
    }


def _rope(hf: Mapping[str, Any]) -> dict[str, object]:
    """``GPTConfig.rope`` from ``rope_parameters`` (transformers 5) or ``rope_theta`` + ``rope_scaling`` (4)."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = dict(hf.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = {k: v for k, v in {**legacy, **params}.items() if k not in ("rope_theta", "type")}
    kind = scaling.pop("rope_type", legacy.get("type", "default"))
    if scaling.get("partial_rotary_factor", 1.0) != 1.0 or hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial rotary embeddings (partial_rotary_factor < 1) are not supported")
    scaling.pop("partial_rotary_factor", None)
    if kind == "default":
        return {"theta": theta}
    if kind == "llama3":
        return {"theta": theta, "scaling": scaling}
    raise ValueError(f"rope_type={kind!r} is not supported; the kit implements 'default' and 'llama3'")


def _llama_config(hf: Mapping[str, Any], model_type: str) -> dict[str, object]:
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim * n_head == n_embd:
        head_dim = None  # the usual width: keep the config plain
    values: dict[str, object] = {
        "vocab_size": hf["vocab_size"],
        "block_size": hf["max_position_embeddings"],
        "n_layer": hf["num_hidden_layers"],
        "n_head": n_head,
        "n_kv_head": hf.get("num_key_value_heads") or n_head,
        "n_embd": n_embd,
        "head_dim": head_dim,
        "mlp_hidden": hf["intermediate_size"],
        "activation": _activation(hf, "hidden_act", "silu"),
        "norm": "rmsnorm",
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "position": "rope",
        "rope": _rope(hf),
        "ffn": "swiglu",
        "attention": "dense",
        "bias": False,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "dropout": 0.0,
        "attn_dropout": float(hf.get("attention_dropout", 0.0)),
        "embd_dropout": 0.0,
    }
    if model_type == "llama":
        values["qkv_bias"] = values["proj_bias"] = bool(hf.get("attention_bias", False))
        values["mlp_bias"] = bool(hf.get("mlp_bias", False))
    elif model_type == "qwen2":
        values.update(qkv_bias=True, proj_bias=False, mlp_bias=False)
    else:
        values.update(qkv_bias=False, proj_bias=False, mlp_bias=False)
    window = _sliding_window(hf, model_type)
    if window is not None:
        values.update(attention="sliding_window", sliding={"window": window})
    return values


def _sliding_window(hf: Mapping[str, Any], model_type: str) -> int | None:
    """The window when every layer slides, None when none does; mixed layers are refused."""
    window = hf.get("sliding_window")
    if model_type == "llama" or window is None:
        return None
    if model_type == "qwen2":
        types = set(hf.get("layer_types") or ["full_attention"])
        if not hf.get("use_sliding_window") or types == {"full_attention"}:
            return None
        if types != {"sliding_attention"}:
            raise ValueError(
                "this Qwen2 checkpoint mixes sliding-window and full-attention layers (max_window_layers); the "
                "kit's GPT uses one attention kind for every layer"
            )
    return int(window)


def config_to_hf(config: GPTConfig, vocab_size: int | None = None) -> tuple[str, dict[str, object]]:
    """The Hugging Face family and config fields of a kit ``GPTConfig``.

    GPT-2 layout (LayerNorm, learned positions, MLP, biases, multi-head) -> ``gpt2``; RMSNorm + rotary + SwiGLU
    -> ``mistral`` with sliding-window attention, ``qwen2`` with a bias on q/k/v only, else ``llama``.

    Args:
        config: the kit config.
        vocab_size: the real vocabulary to declare (None: ``config.vocab_size``).

    Returns:
        ``(model_type, fields)`` for ``transformers.AutoConfig.for_model``.

    Raises:
        ValueError: for a combination no supported family expresses, saying what to change.

    Example:
        >>> config_to_hf(GPTConfig.from_name("llama-debug"))[0]
        'llama'
    """
    vocab = vocab_size or config.vocab_size
    if config.depth != "stack" or not config.causal:
        raise ValueError(
            f"only causal decoders with depth='stack' export to Hugging Face (got depth={config.depth!r}, "
            f"causal={config.causal})"
        )
    gpt2_layout = (config.norm, config.position, config.ffn, config.attention) == (
        "layernorm",
        "learned",
        "mlp",
        "dense",
    )
    if gpt2_layout:
        return "gpt2", _gpt2_fields(config, vocab)
    if (config.norm, config.position, config.ffn) == ("rmsnorm", "rope", "swiglu"):
        return _llama_fields(config, vocab)
    raise ValueError(
        f"norm={config.norm!r}, position={config.position!r}, ffn={config.ffn!r}, attention={config.attention!r} "
        "matches no Hugging Face family the kit writes: use layernorm + learned + mlp + dense (gpt2) or rmsnorm + "
        "rope + swiglu (llama, mistral with attention='sliding_window', qwen2 with qkv_bias only)"
    )


def _bias(config: GPTConfig, which: str) -> bool:
    value = getattr(config, f"{which}_bias")
    return config.bias if value is None else bool(value)


def _gpt2_fields(config: GPTConfig, vocab: int) -> dict[str, object]:
    biases = {w: _bias(config, w) for w in ("qkv", "proj", "mlp")}
    if not config.bias or not all(biases.values()) or config.kv_heads != config.n_head or config.head_dim:
        raise ValueError(
            "GPT-2 has biases in every Linear and LayerNorm and multi-head attention; this config has "
            f"bias={config.bias}, {biases}, n_kv_head={config.n_kv_head}, head_dim={config.head_dim}: set them back "
            "or use the llama layout"
        )
    if config.activation not in _ACT_OUT:
        raise ValueError(
            f"activation={config.activation!r} has no Hugging Face name; use one of {sorted(_ACT_OUT)}"
        )
    if config.mlp_hidden is None and config.mlp_ratio != 4:
        config = replace(config, mlp_hidden=config.ffn_hidden)  # GPT-2's n_inner None means 4 * n_embd
    return {
        "vocab_size": vocab,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.mlp_hidden,  # None: 4 * n_embd, as in GPT-2
        "activation_function": _ACT_OUT[config.activation],
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.embd_dropout,
        "attn_pdrop": config.attn_dropout,
        "layer_norm_epsilon": config.norm_eps,
        "tie_word_embeddings": bool(config.tie_embeddings),
    }


def _llama_fields(config: GPTConfig, vocab: int) -> tuple[str, dict[str, object]]:
    if config.activation not in _ACT_OUT:
        raise ValueError(
            f"activation={config.activation!r} has no Hugging Face name; use one of {sorted(_ACT_OUT)}"
        )
    rope: dict[str, object] = {"rope_type": "default", "rope_theta": config.rope.theta}
    if config.rope.scaling is not None:
        rope = {"rope_type": "llama3", "rope_theta": config.rope.theta, **config.rope.scaling}
    fields: dict[str, object] = {
        "vocab_size": vocab,
        "hidden_size": config.n_embd,
        "intermediate_size": config.ffn_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_size,
        "hidden_act": _ACT_OUT[config.activation],
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": rope,
        "attention_dropout": config.attn_dropout,
        "tie_word_embeddings": bool(config.tie_embeddings),
    }
    qkv, proj, mlp = (_bias(config, w) for w in ("qkv", "proj", "mlp"))
    if config.attention == "sliding_window":
        if config.sliding.global_positions or qkv or proj or mlp:
            raise ValueError(
                "Mistral's sliding window has no global positions and no biases; set sliding.global_positions "
                "to [] and the biases to false"
            )
        return "mistral", {**fields, "sliding_window": config.sliding.window}
    if config.attention != "dense":
        raise ValueError(
            f"attention={config.attention!r} has no Hugging Face family; use 'dense' or 'sliding_window'"
        )
    if qkv and not proj and not mlp:
        return "qwen2", {**fields, "use_sliding_window": False}
    if qkv != proj:
        raise ValueError(
            f"qkv_bias={qkv} with proj_bias={proj}: Llama has one attention_bias for q, k, v and o, Qwen2 a bias "
            "on q, k, v only (and none in the MLP); make them match one of those"
        )
    return "llama", {**fields, "attention_bias": qkv, "mlp_bias": mlp}


# -- weights ------------------------------------------------------------------------------------------------
def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def _take(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise KeyError(f"the checkpoint has no tensor {key!r}; it does not match its config.json")
    return state.pop(key)


def state_from_hf(
    hf_state: Mapping[str, torch.Tensor], model_type: str, config: GPTConfig
) -> dict[str, torch.Tensor]:
    """The kit ``GPT`` state dict of a Hugging Face state dict of family ``model_type``.

    Raises:
        KeyError: a tensor the config implies is missing.
        ValueError: tensors are left over that the kit's GPT has no place for (another variant of the family).
    """
    src = dict(hf_state)
    out: dict[str, torch.Tensor] = {}
    if not config.tie_embeddings:
        out["lm_head.weight"] = _take(src, "lm_head.weight")
    src.pop("lm_head.weight", None)  # tied: the same tensor as the embedding
    if model_type == "gpt2":
        _gpt2_in(_strip(src, "transformer."), config, out)
    else:
        _llama_in(_strip(src, "model."), config, out)
    if config.tie_embeddings:
        out["lm_head.weight"] = out["wte.weight"]
    return out


def _gpt2_in(src: dict[str, torch.Tensor], config: GPTConfig, out: dict[str, torch.Tensor]) -> None:
    for name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
        out[name] = _take(src, name)
    nh = config.n_head
    for i in range(config.n_layer):
        h, b = f"h.{i}.", f"blocks.{i}."
        for part in ("ln_1", "ln_2"):
            out[f"{b}{part}.weight"] = _take(src, f"{h}{part}.weight")
            out[f"{b}{part}.bias"] = _take(src, f"{h}{part}.bias")
        # Conv1D stores (in, out): transpose; c_attn is [q; k; v] stacked: to the kit's head-major rows
        out[f"{b}attn.qkv.weight"] = qkv_head_major(_take(src, f"{h}attn.c_attn.weight").t(), nh).contiguous()
        out[f"{b}attn.qkv.bias"] = qkv_head_major(_take(src, f"{h}attn.c_attn.bias"), nh)
        for kit, hf in (("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            out[f"{b}{kit}.weight"] = _take(src, f"{h}{hf}.weight").t().contiguous()
            out[f"{b}{kit}.bias"] = _take(src, f"{h}{hf}.bias")
    _check_consumed(src)


_LLAMA_LINEARS = (
    ("attn.proj", "self_attn.o_proj", "proj"),
    ("mlp.gate", "mlp.gate_proj", "mlp"),
    ("mlp.up", "mlp.up_proj", "mlp"),
    ("mlp.proj", "mlp.down_proj", "mlp"),
)


def _llama_in(src: dict[str, torch.Tensor], config: GPTConfig, out: dict[str, torch.Tensor]) -> None:
    out["wte.weight"] = _take(src, "embed_tokens.weight")
    out["ln_f.weight"] = _take(src, "norm.weight")
    nh, nkv = config.n_head, config.kv_heads
    for i in range(config.n_layer):
        h, b = f"layers.{i}.", f"blocks.{i}."
        out[f"{b}ln_1.weight"] = _take(src, f"{h}input_layernorm.weight")
        out[f"{b}ln_2.weight"] = _take(src, f"{h}post_attention_layernorm.weight")
        qkv = [_take(src, f"{h}self_attn.{p}_proj.weight") for p in "qkv"]
        out[f"{b}attn.qkv.weight"] = qkv_grouped(*qkv, nh, nkv)
        if _bias(config, "qkv"):
            out[f"{b}attn.qkv.bias"] = qkv_grouped(
                *(_take(src, f"{h}self_attn.{p}_proj.bias") for p in "qkv"), nh, nkv
            )
        for kit, hf, which in _LLAMA_LINEARS:
            out[f"{b}{kit}.weight"] = _take(src, f"{h}{hf}.weight")
            if _bias(config, which):
                out[f"{b}{kit}.bias"] = _take(src, f"{h}{hf}.bias")
    _check_consumed(src)


def _check_consumed(src: Mapping[str, torch.Tensor]) -> None:
    left = sorted(k for k in src if not k.endswith(_IGNORED_SUFFIXES))
    if left:
        raise ValueError(
            f"{len(left)} tensor(s) of the checkpoint have no place in the kit's GPT, e.g. {left[:4]}: its config "
            "describes a variant of the family the kit does not implement"
        )


def state_to_hf(
    state: Mapping[str, torch.Tensor], config: GPTConfig, model_type: str, vocab: int
) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict (family ``model_type``) of a kit ``GPT`` state dict, vocabulary cut to ``vocab``."""
    src = {k: v.detach() for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    if model_type == "gpt2":
        _gpt2_out(src, config, out)
        embed = "transformer.wte.weight"
    else:
        _llama_out(src, config, out)
        embed = "model.embed_tokens.weight"
    out[embed] = src["wte.weight"][:vocab]
    if not config.tie_embeddings:
        out["lm_head.weight"] = src["lm_head.weight"][:vocab]
    return {k: v.contiguous().clone() for k, v in out.items()}  # no shared storage: safetensors refuses it


def _gpt2_out(src: dict[str, torch.Tensor], config: GPTConfig, out: dict[str, torch.Tensor]) -> None:
    t = "transformer."
    out[f"{t}wpe.weight"] = src["wpe.weight"]
    out[f"{t}ln_f.weight"], out[f"{t}ln_f.bias"] = src["ln_f.weight"], src["ln_f.bias"]
    for i in range(config.n_layer):
        h, b = f"{t}h.{i}.", f"blocks.{i}."
        for part in ("ln_1", "ln_2"):
            out[f"{h}{part}.weight"], out[f"{h}{part}.bias"] = (
                src[f"{b}{part}.weight"],
                src[f"{b}{part}.bias"],
            )
        out[f"{h}attn.c_attn.weight"] = qkv_stacked(src[f"{b}attn.qkv.weight"], config.n_head).t()
        out[f"{h}attn.c_attn.bias"] = qkv_stacked(src[f"{b}attn.qkv.bias"], config.n_head)
        for kit, hf in (("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            out[f"{h}{hf}.weight"] = src[f"{b}{kit}.weight"].t()
            out[f"{h}{hf}.bias"] = src[f"{b}{kit}.bias"]


def _llama_out(src: dict[str, torch.Tensor], config: GPTConfig, out: dict[str, torch.Tensor]) -> None:
    m = "model."
    out[f"{m}norm.weight"] = src["ln_f.weight"]
    for i in range(config.n_layer):
        h, b = f"{m}layers.{i}.", f"blocks.{i}."
        out[f"{h}input_layernorm.weight"] = src[f"{b}ln_1.weight"]
        out[f"{h}post_attention_layernorm.weight"] = src[f"{b}ln_2.weight"]
        names = [f"{h}self_attn.{p}_proj" for p in "qkv"]
        for name, t in zip(names, qkv_split(src[f"{b}attn.qkv.weight"], config.n_head, config.kv_heads)):
            out[f"{name}.weight"] = t
        if f"{b}attn.qkv.bias" in src:
            for name, t in zip(names, qkv_split(src[f"{b}attn.qkv.bias"], config.n_head, config.kv_heads)):
                out[f"{name}.bias"] = t
        for kit, hf, _ in _LLAMA_LINEARS:
            out[f"{h}{hf}.weight"] = src[f"{b}{kit}.weight"]
            if f"{b}{kit}.bias" in src:
                out[f"{h}{hf}.bias"] = src[f"{b}{kit}.bias"]


# -- folders ------------------------------------------------------------------------------------------------
def _inside(folder: Path, name: str) -> Path:
    """``folder / name``, refusing names that leave the folder (absolute, ``..``, or a link out of it)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(
            f"shard name {name!r} in model.safetensors.index.json leaves {folder}; refusing to read it"
        )
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"shard {name!r} resolves outside {folder}; refusing to read it")
    return path


def read_hf_folder(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The Hugging Face config (all fields, as a dict) and the tensors of a local checkpoint folder.

    Args:
        path: a folder with ``config.json`` and ``model.safetensors``, or shards listed by
            ``model.safetensors.index.json`` (their paths confined to the folder).

    Returns:
        ``(config dict, state dict)``.

    Raises:
        FileNotFoundError: no ``config.json`` or no safetensors weights (a ``pytorch_model.bin`` folder is
            refused: pickle can run code; convert it with ``save_pretrained(..., safe_serialization=True)``).
        ValueError: an unsupported family, or a shard path that leaves the folder.
    """
    from safetensors.torch import load_file

    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json; pass a Hugging Face model folder")
    raw = json.loads(config_file.read_text())
    if raw.get("model_type") not in SUPPORTED:
        raise _unsupported(raw.get("model_type"))
    hf_config = _parse_config(folder)
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return hf_config, load_file(single)
    if not index.is_file():
        found = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(
            f"{folder} has no model.safetensors nor model.safetensors.index.json (found {found}); only safetensors "
            "weights are read (pickled .bin files can run code): re-save with save_pretrained(safe_serialization=True)"
        )
    weight_map = json.loads(index.read_text()).get("weight_map") or {}
    state: dict[str, torch.Tensor] = {}
    for name in sorted(set(weight_map.values())):
        state.update(load_file(_inside(folder, name)))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise ValueError(f"model.safetensors.index.json lists tensors no shard holds, e.g. {missing[:4]}")
    return hf_config, state


def _parse_config(folder: Path) -> dict[str, Any]:
    """``config.json`` through transformers (offline, no remote code), so each family's defaults fill gaps."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False).to_dict()


def load_hf(
    path_or_model: str | os.PathLike | nn.Module, **overrides: object
) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """The kit ``GPTConfig`` and ``GPT`` state dict of a Hugging Face folder or loaded ``transformers`` model.

    What :func:`from_hf` builds on, for callers that build the ``GPT`` themselves (``CausalLM(init_from=...)``).

    Raises:
        ValueError: an unsupported family (listing the supported ones) or feature.
    """
    if isinstance(path_or_model, nn.Module):
        hf_config = path_or_model.config.to_dict()
        if hf_config.get("model_type") not in SUPPORTED:
            raise _unsupported(hf_config.get("model_type"))
        hf_state = path_or_model.state_dict()
    else:
        hf_config, hf_state = read_hf_folder(path_or_model)
    config = config_from_hf(hf_config, **overrides)
    return config, state_from_hf(hf_state, hf_config["model_type"], config)


def from_hf(
    path_or_model: str | os.PathLike | nn.Module, dtype: torch.dtype | None = None, **overrides: object
) -> GPT:
    """A kit ``GPT`` (its ``GPTConfig`` at ``.config``) from a Hugging Face checkpoint of a supported family.

    Args:
        path_or_model: a local folder (``config.json`` + ``model.safetensors``, or sharded safetensors with
            ``model.safetensors.index.json``), or an already loaded ``transformers`` model.
        dtype: cast the weights (None: as stored).
        **overrides: ``GPTConfig`` fields to change (``dropout``, ``activation_checkpointing``...).

    Returns:
        The model, in training mode like any fresh module.

    Raises:
        ValueError: an unsupported family (the message lists ``gpt2``, ``llama``, ``mistral``, ``qwen2``).

    Example:
        >>> import transformers  # doctest: +SKIP
        >>> hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(hidden_size=32, intermediate_size=64,
        ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=100))  # doctest: +SKIP
        >>> from_hf(hf).config.n_kv_head  # doctest: +SKIP
        2
    """
    config, state = load_hf(path_or_model, **overrides)
    with torch.device("meta"):
        model = GPT(config)
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.wte.weight
    return model.to(dtype) if dtype is not None else model


# -- writing ------------------------------------------------------------------------------------------------
def _kit_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with the keys of a plain ``GPT`` (compile and checkpoint wrappers removed)."""
    state = {}
    for key, value in model.state_dict().items():
        for wrapper in ("_orig_mod.", "_checkpoint_wrapped_module."):
            key = key.replace(wrapper, "")
        state[key] = value
    if "wte.weight" not in state:
        raise ValueError(
            f"{type(model).__name__} is not a plain kit GPT (its state dict has no 'wte.weight'); merge LoRA "
            "adapters first with kit.nn.peft.merge_lora(model), and pass the GPT itself, not its LightningModule"
        )
    return state


def _tokenizer_vocab(tokenizer: object) -> int | None:
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        return None
    if hasattr(tokenizer, "get_vocab_size"):
        return int(tokenizer.get_vocab_size())
    return len(tokenizer) if hasattr(tokenizer, "__len__") else None


def _save_tokenizer(tokenizer: object, folder: Path) -> None:
    """Write ``tokenizer``'s files: a transformers tokenizer, a ``tokenizers.Tokenizer``, or a folder to copy."""
    if isinstance(tokenizer, (str, os.PathLike)):
        source = Path(tokenizer)
        files = (
            [source] if source.is_file() else [source / n for n in _TOKENIZER_FILES if (source / n).is_file()]
        )
        if not files:
            raise FileNotFoundError(f"tokenizer={str(source)!r} holds none of {list(_TOKENIZER_FILES)}")
        for f in files:
            shutil.copyfile(f, folder / f.name)
        return
    if not hasattr(tokenizer, "save_pretrained"):  # a tokenizers.Tokenizer: wrap it so AutoTokenizer reads it
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    tokenizer.save_pretrained(str(folder))


def _special_ids(tokenizer: object) -> dict[str, int | None]:
    return {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad")}


def to_hf(
    model: nn.Module,
    path: str | os.PathLike,
    tokenizer: object = None,
    *,
    overwrite: bool = False,
    vocab_size: int | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face folder that ``transformers.AutoModelForCausalLM.from_pretrained`` loads.

    Writes ``config.json``, ``model.safetensors`` and, when given, the tokenizer's files, atomically (into a
    temporary folder renamed at the end). The family follows the config (see :func:`config_to_hf`).

    Args:
        model: a kit ``GPT`` (compiled or activation-checkpointed is fine; merge PEFT adapters first).
        path: the folder to write; it must not exist or be empty, unless ``overwrite``.
        tokenizer: a transformers tokenizer, a ``tokenizers.Tokenizer``, or a folder / ``tokenizer.json`` to copy.
        overwrite: replace a non-empty ``path``.
        vocab_size: the real vocabulary when the model's embedding is padded (None: the tokenizer's size when
            it has one, else the model's).

    Returns:
        The folder.

    Raises:
        FileExistsError: ``path`` is a non-empty folder (or a file) and ``overwrite`` is False.
        ValueError: a config no supported family expresses, or a ``vocab_size`` larger than the embedding.

    Example:
        >>> from kit.nn import GPT, GPTConfig
        >>> to_hf(GPT(GPTConfig.from_name("debug")), "exported/debug")  # doctest: +SKIP
        PosixPath('exported/debug')
    """
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from kit.checkpoint.atomic import atomic_write

    target = Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise FileExistsError(f"{target} exists and is not empty; pass overwrite=True or choose a new folder")
    config = getattr(model, "config", None)
    if not isinstance(config, GPTConfig):
        raise ValueError(
            f"{type(model).__name__} has no GPTConfig at .config; pass the kit GPT (a CausalLM's .model, with LoRA "
            "merged by kit.nn.peft.merge_lora)"
        )
    vocab = vocab_size or _tokenizer_vocab(tokenizer) or config.vocab_size
    if vocab > config.vocab_size:
        raise ValueError(
            f"vocab_size={vocab} exceeds the model's embedding ({config.vocab_size} rows); pass the tokenizer the "
            "model was trained with"
        )
    model_type, fields = config_to_hf(config, vocab)
    hf_config = AutoConfig.for_model(model_type, **fields, **_special_ids(tokenizer))
    hf_config.architectures = [SUPPORTED[model_type]]
    state = state_to_hf(_kit_state(model), config, model_type, vocab)

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        hf_config.save_pretrained(str(tmp))
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            _save_tokenizer(tokenizer, tmp)

    atomic_write(target, write)
    return target
