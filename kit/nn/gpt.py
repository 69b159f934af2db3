"""A GPT-style Transformer in one file: ``Block`` and ``GPT`` (torch only, no Lightning).

The backbone follows nanoGPT's shape by default: pre-LayerNorm blocks, learned positions, fused QKV projection,
SDPA attention (causal or bidirectional), GELU MLP (``activation`` picks another), tied input/output embeddings.
The same class is a Llama-family decoder (RMSNorm, rotary positions, SwiGLU, grouped-query attention, an untied
head) when the config says so (``GPTConfig.from_name("llama3-8b")``); :mod:`kit.nn.hf` loads and writes Hugging
Face checkpoints of both. Variants are data: a preset ``name`` plus field overrides (``GPTConfig.from_name``),
with the attention, feed-forward and norm layers picked by name from ``kit.nn.layers``. Activation checkpointing and compile are applied by ``kit.nn.transforms``; the
``CausalLM`` LightningModule that trains it lives in ``kit.models.gpt``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kit.health.flops import transformer_flops
from kit.nn.aux import clear_aux
from kit.nn.config import GPTConfig
from kit.nn.layers import build_layer, build_norm, get_attention, get_depth, get_ffn

__all__ = ["GPT", "Block", "GPTConfig"]


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``.

    The attention, feed-forward and norm layers are the registry entries ``config.attention``, ``config.ffn``
    and ``config.norm``, built by :func:`~kit.nn.layers.build_layer` (each class's ``from_config``); the norms
    keep the names ``ln_1`` / ``ln_2`` whatever their kind.

    Example:
        >>> Block(GPTConfig.from_name("debug", ffn="moe"))(torch.randn(2, 4, 32)).shape
        torch.Size([2, 4, 32])
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = build_norm(config)
        self.attn = build_layer(get_attention(config.attention), config)
        self.ln_2 = build_norm(config)
        # named mlp whatever the variant, so state-dict keys stay
        self.mlp = build_layer(get_ffn(config.ffn), config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token (+ learned position) embeddings, ``n_layer`` blocks, a final norm, and a (tied) vocabulary head.

    With ``config.position == "rope"`` there is no position embedding (``wpe`` is None): each attention layer
    rotates its queries and keys instead.

    Args:
        config: a ``GPTConfig`` with ``vocab_size`` set.

    Example:
        >>> model = GPT(GPTConfig.from_name("debug"))
        >>> model(torch.zeros(2, 8, dtype=torch.long)).shape
        torch.Size([2, 8, 64])
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError(
                "GPTConfig.vocab_size is None; set it or let CausalLM take it from the datamodule"
            )
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.position == "learned" else None
        self.drop = nn.Dropout(config.embd_dropout)
        depth = get_depth(config.depth)
        self.blocks = nn.ModuleList(Block(config) for _ in range(depth.num_blocks(config)))
        # how the blocks are applied: once each, or one shared block with ACT
        self.depth = build_layer(depth, config)
        self.ln_f = build_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer) so the residual stream's variance stays flat.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, exclude_positions: bool = True) -> int:
        """Parameter count (tied weights once); position embeddings excluded by default, as in FLOP counts."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if exclude_positions and self.wpe is not None else n

    def num_active_params(self) -> float:
        """Parameters one token's forward multiplies by: what FLOPs and MFU count (``num_params`` for a dense
        stack). MoE layers count ``top_k`` of their experts; a shared Universal Transformer block counts once
        per application."""
        n = float(self.num_params())
        inactive = sum(m.inactive_params() for m in self.modules() if hasattr(m, "inactive_params"))
        block = sum(p.numel() for p in self.blocks.parameters()) - inactive
        extra = get_depth(self.config.depth).applications(self.config) - len(self.blocks)
        return n - inactive + extra * block

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states, shape (B, T, n_embd)."""
        T = idx.size(1)
        if self.config.block_size < T:
            raise ValueError(
                f"sequence length {T} exceeds block_size={self.config.block_size}; crop the input"
            )
        clear_aux(self)  # auxiliary losses and statistics belong to one forward
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        x = self.drop(x)
        x = self.depth(x, self.blocks)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, T, vocab_size) for token ids of shape (B, T)."""
        return self.lm_head(self.hidden_states(idx))

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N + 12 * L * n_embd * T (PaLM, appendix B), with N the
        *active* parameters (:meth:`num_active_params`) and L the block applications, so MFU stays true for
        MoE and Universal Transformer variants."""
        T = seq_len or self.config.block_size
        layers = get_depth(self.config.depth).applications(self.config)
        return transformer_flops(self.num_active_params(), layers, self.config.n_embd, T)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` continuations of ``idx`` (B, T); temperature 0 means greedy."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size :]
            logits = self(context)[:, -1, :]
            if temperature <= 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits.float(), dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, next_id), dim=1)
        return idx
