"""The model core: the kit's Transformer, its layers and transforms, in plain torch (never Lightning).

| module | what it holds |
| --- | --- |
| :mod:`kit.nn.config` | ``GPTConfig`` and its presets (``GPTConfig.from_name``, ``GPTConfig.from_dict``) |
| :mod:`kit.nn.gpt` | ``GPT`` and ``Block`` |
| :mod:`kit.nn.layers` | attention (grouped-query, rotary), feed-forward (MLP, SwiGLU, MoE), norm and depth layers with explicit arguments, chosen by name through registries; their settings (``SlidingWindowConfig``, ``MoEConfig``, ``UniversalConfig``, ``RopeConfig``) |
| :mod:`kit.nn.aux` | the auxiliary-loss protocol (``add_aux_losses``) that MoE and ACT layers use |
| :mod:`kit.nn.transforms` | PEFT, activation checkpointing and compile, applied in one documented order |
| :mod:`kit.nn.peft` | LoRA, QLoRA, bottleneck adapters and prompt tuning (``PeftConfig``) |
| :mod:`kit.nn.hf` | Hugging Face checkpoints in and out (``from_hf``, ``to_hf``): GPT-2, Llama, Mistral, Qwen2 |

Everything here works inside a user's own ``nn.Module`` and training loop; the LightningModules that train these
networks live in :mod:`kit.models`.

Example:
    >>> import torch
    >>> from kit.nn import GPT, GPTConfig
    >>> GPT(GPTConfig.from_name("debug"))(torch.zeros(1, 4, dtype=torch.long)).shape
    torch.Size([1, 4, 64])
"""

from kit.nn.aux import add_aux_losses, aux_outputs, clear_aux, record_aux
from kit.nn.config import CHECKPOINT_MODES, GPTConfig
from kit.nn.gpt import GPT, Block
from kit.nn.hf import from_hf, to_hf
from kit.nn.layers import MoEConfig, RopeConfig, SlidingWindowConfig, UniversalConfig
from kit.nn.peft import PeftConfig, apply_peft
from kit.nn.transforms import apply_transforms, checkpoint_blocks

__all__ = [
    "CHECKPOINT_MODES",
    "GPT",
    "Block",
    "GPTConfig",
    "MoEConfig",
    "PeftConfig",
    "RopeConfig",
    "SlidingWindowConfig",
    "UniversalConfig",
    "add_aux_losses",
    "apply_peft",
    "apply_transforms",
    "aux_outputs",
    "checkpoint_blocks",
    "clear_aux",
    "from_hf",
    "record_aux",
    "to_hf",
]
