"""Training FLOPs of a decoder Transformer and the peak FLOP/s of the accelerators: the kit's one copy of each.

The model (``CausalLM.flops_per_batch``), the compute planner (``kit.health.planner``) and the MFU code
(``kit.health.hardware.mfu``, ``HardwareMonitor``, ``TokenThroughput``) all count FLOPs with
:func:`transformer_flops` and look peaks up in :data:`GPUS`, so an MFU logged during training and a
GPU-hour estimate from ``kit plan`` are computed the same way.

FLOPs per token, forward + backward (PaLM, appendix B): ``6 N`` for the dense matmuls (forward 2N,
backward 4N) plus ``12 L d T`` for the attention scores and the weighted sum (``QK^T`` and ``AV``:
``2 L d T`` forward per token, times three for forward + backward). ``N`` excludes position
embeddings; ``T`` is the sequence length the tokens were trained at.

For sparse models ``N`` is the *active* parameter count, what one token multiplies by
(:func:`moe_active_params`: a top-k mixture of E experts uses k of them), so the MFU of a mixture of
experts is not inflated by experts it never ran.

Example:
    >>> transformer_flops(n_params=124e6, n_layer=12, d_model=768, seq_len=1024, tokens=1)
    857246208.0
    >>> peak_flops_for("NVIDIA H200") == GPUS["h200"].peak_flops
    True
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GPUS", "GPUSpec", "moe_active_params", "peak_flops_for", "transformer_flops"]


def transformer_flops(
    n_params: float, n_layer: int, d_model: int, seq_len: int, tokens: float = 1.0
) -> float:
    """Training FLOPs (forward + backward) of ``tokens`` tokens: ``tokens * (6 N + 12 L d T)``.

    Args:
        n_params: parameter count N of the matmuls (embeddings tied to the head count once; position
            embeddings excluded).
        n_layer: Transformer blocks L.
        d_model: residual width d.
        seq_len: sequence length T the tokens are trained at (the attention term grows with it).
        tokens: tokens processed (``B * T`` for one batch; D for a whole run).

    Returns:
        FLOPs as a float.

    Raises:
        ValueError: on a negative size.

    Example:
        >>> transformer_flops(1e9, 24, 2048, 2048, tokens=1e10) / 1e19
        7.207959552
    """
    if min(n_params, n_layer, d_model, seq_len, tokens) < 0:
        raise ValueError(
            f"sizes must be >= 0: n_params={n_params}, n_layer={n_layer}, d_model={d_model}, "
            f"seq_len={seq_len}, tokens={tokens}"
        )
    return float(tokens) * (6.0 * n_params + 12.0 * n_layer * d_model * seq_len)


def moe_active_params(n_params: float, expert_params: float, n_experts: int, top_k: int = 1) -> float:
    """Parameters one token uses in a mixture of experts: all but the experts, plus ``top_k / n_experts`` of them.

    Args:
        n_params: total parameter count (experts included).
        expert_params: parameters inside all experts together.
        n_experts: experts per MoE layer, E.
        top_k: experts each token is routed to.

    Returns:
        ``n_params - expert_params * (1 - top_k / n_experts)``.

    Raises:
        ValueError: if ``top_k`` is not in ``1..n_experts`` or ``expert_params`` exceeds ``n_params``.

    Example:
        >>> moe_active_params(1.0e9, 0.8e9, n_experts=8, top_k=1) / 1e6
        300.0
    """
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k={top_k} must be in 1..n_experts={n_experts}")
    if not 0 <= expert_params <= n_params:
        raise ValueError(f"expert_params={expert_params} must be in [0, n_params={n_params}]")
    return n_params - expert_params * (1.0 - top_k / n_experts)


@dataclass(frozen=True)
class GPUSpec:
    """Peak dense bf16 (fp16 where no bf16) tensor FLOP/s and memory of one accelerator."""

    name: str
    peak_flops: float
    memory_gb: float
    note: str = ""


# Vendor datasheet peaks, dense (no 2:4 sparsity).
GPUS: dict[str, GPUSpec] = {
    g.name: g
    for g in [
        GPUSpec("v100-16gb", 125e12, 16, "fp16 tensor cores; no bf16"),
        GPUSpec("v100-32gb", 125e12, 32, "fp16 tensor cores; no bf16"),
        GPUSpec("t4", 65e12, 16, "fp16"),
        GPUSpec("a10", 125e12, 24),
        GPUSpec("l4", 121e12, 24),
        GPUSpec("a100-40gb", 312e12, 40),
        GPUSpec("a100-80gb", 312e12, 80),
        GPUSpec("l40s", 362e12, 48),
        GPUSpec("h100-pcie", 756e12, 80),
        GPUSpec("h100-80gb", 989e12, 80, "SXM"),
        GPUSpec("h200", 989e12, 141),
        GPUSpec("b200", 2250e12, 180),
        GPUSpec("mi250x", 383e12, 128),
        GPUSpec("mi300x", 1307e12, 192),
    ]
}

# Substring of a lower-cased CUDA/ROCm device name -> table entry; first match wins, so the more
# specific names come first ("h100 pcie" before "h100", "l40s" before "l4").
_NAME_RULES: tuple[tuple[str, str], ...] = (
    ("h200", "h200"),
    ("h100 pcie", "h100-pcie"),
    ("h100", "h100-80gb"),
    ("a100", "a100-80gb"),
    ("b200", "b200"),
    ("l40s", "l40s"),
    ("l4", "l4"),
    ("a10", "a10"),
    ("v100", "v100-32gb"),
    ("t4", "t4"),
    ("mi300x", "mi300x"),
    ("mi250x", "mi250x"),
)


def peak_flops_for(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of one device from its name, e.g. ``torch.cuda.get_device_name()``.

    Args:
        device_name: such as ``"NVIDIA H100 80GB HBM3"`` or ``"NVIDIA B200"``.

    Returns:
        The :data:`GPUS` peak, or ``None`` when the name matches no entry.

    Example:
        >>> peak_flops_for("NVIDIA H100 PCIe"), peak_flops_for("Some CPU")
        (756000000000000.0, None)
    """
    name = device_name.lower()
    for key, entry in _NAME_RULES:
        if key in name:
            return GPUS[entry].peak_flops
    return None
