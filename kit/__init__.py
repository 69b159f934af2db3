"""lightning-kit: reusable PyTorch Lightning components for training large models.

The ``kit`` package is the framework-free core (pure functions and small objects); ``kit.models``,
``kit.datamodules`` and ``kit.callbacks`` are thin Lightning wrappers over it. Core names are importable
from ``kit`` directly (``from kit import temperature_weights``); each loads its module on first use, so
``import kit`` stays cheap and optional dependencies load only when their feature is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, ...]] = {
    "kit.data.text": ("clean_text", "embedded_corpus", "iter_documents", "load_texts", "resolve_paths"),
    "kit.data.tokenizer": ("train_bpe", "load_or_train_bpe"),
    "kit.data.packing": ("iter_blocks", "pack_blocks", "split_documents"),
    "kit.data.corpus": ("unigram_cross_entropy",),
    "kit.optim": ("lr_lambda", "param_groups"),
    "kit.data.filters": (
        "FilterChain",
        "GopherQualityFilter",
        "GopherRepetitionFilter",
        "LengthFilter",
        "default_filters",
    ),
    "kit.data.dedup": ("ExactDeduplicator", "MinHashDeduplicator", "exact_dedup"),
    "kit.data.pipeline": ("DataPipeline", "PipelineReport"),
    "kit.data.bpe_report": ("bpe_tradeoff",),
    "kit.data.augment_text": ("TextAugmenter", "eda", "reorder_sentences", "back_translate"),
    "kit.data.augment_image": ("MixUpTransform", "mixup_batch", "cutmix_batch"),
    "kit.data.augment_generative": ("mix_generated",),
    "kit.data.sampling": ("TemperatureMixer", "TemperatureSampler", "temperature_weights"),
    "kit.data.shards": ("write_shards",),
    "kit.data.masking": ("bert_mask", "nsp_pair"),
    "kit.data.passages": ("split_passages", "subsample"),
    "kit.precision.clipping": ("AutoClip", "adaptive_clip_", "clip_by_norm", "clip_by_value"),
    "kit.parallel.compression": ("sign_compress", "sign_decompress", "topk_compress", "topk_decompress"),
    "kit.parallel.comm_hooks": ("make_comm_hook",),
    "kit.parallel.two_phase": ("compressed_allreduce",),
    "kit.parallel.onebit_adam": ("OneBitAdam", "OneBitAdamW"),
    "kit.precision.loss_scale": ("LossScaleConfig", "OverflowTracker", "make_grad_scaler"),
    "kit.health.grads": ("GradientSketch", "cosine_similarity", "grad_norms", "update_to_weight_ratios"),
    "kit.health.hessian": ("hessian_top_eigenvalue", "hutchinson_trace"),
    "kit.health.spikes": ("SpikeDetector",),
    "kit.health.hardware": ("GPUReader", "HostReader", "mfu"),
    "kit.health.doctor": ("diagnose", "ngram_overlap"),
    "kit.health.flops": ("peak_flops_for", "transformer_flops"),
    "kit.health.planner": ("TrainingPlan", "memory_per_gpu", "min_gpus_that_fit", "training_flops"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["__version__", *sorted(_WHERE)]


# Subpackages resolve lazily too (``kit.health``, ``kit.models``), and so does a core module by its own name
# when one core subpackage holds it (``kit.planner`` is ``kit.health.planner``).
_SUBPACKAGES = ("callbacks", "cli", "data", "datamodules", "health", "models", "parallel", "precision")
_CORE = ("data", "health", "parallel", "precision")


def _module_for(name: str) -> str | None:
    from importlib.util import find_spec

    if name.startswith("_"):
        return None
    if name in _SUBPACKAGES or find_spec(f"kit.{name}") is not None:
        return f"kit.{name}"
    found = [f"kit.{sub}.{name}" for sub in _CORE if find_spec(f"kit.{sub}.{name}") is not None]
    return found[0] if len(found) == 1 else None


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    else:
        path = _module_for(name)
        if path is None:
            raise AttributeError(f"module 'kit' has no attribute {name!r}")
        value = importlib.import_module(path)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE) | set(_SUBPACKAGES))
