"""Switch Transformer mixture-of-experts feed-forward (Fedus et al. 2021): ``GPTConfig.ffn = "moe"``.

Its settings are :class:`MoEConfig` (``GPTConfig.moe``). A linear router scores ``experts`` expert MLPs per
token; each token goes to its top-``top_k`` experts
(top-1 is Switch; top-2 is GShard), each expert takes at most ``capacity = ceil(capacity_factor * N * k / E)``
tokens of the ``N`` in the batch (separate factors for training and evaluation), and a token over capacity is
dropped: the layer outputs zero for it, so the block's residual carries it through unchanged. Tokens are
served position by position (every sequence's first token, then every second token...), so whether a token
is dropped depends only on tokens at its own or earlier positions and a causal model stays causal.

Dispatch is vectorised, with no Python loop over tokens or experts: a token's slot in its expert comes from a
cumulative sum over the one-hot assignments (first choices of every token before second choices, then token
order), the kept tokens are scattered into an ``(E, capacity, d)`` buffer, all experts run as two batched
matmuls, and the outputs are gathered back scaled by their gate. Auxiliary losses go through the kit's
protocol (``kit.nn.aux``): the load-balancing loss ``alpha * E * sum_i f_i * P_i`` (``f_i`` the
fraction of assignments to expert i, ``P_i`` its mean router probability) and the router z-loss
``beta * mean(logsumexp(logits)^2)`` (ST-MoE, Zoph et al. 2022); the expert load and the dropped fraction are
logged beside them.

Where the kit differs from Switch: with ``top_k > 1`` the gates are renormalised over the chosen experts (as
GShard); with ``top_k = 1`` the gate is the raw router probability, as in the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kit.nn.aux import record_aux
from kit.nn.layers.activations import get_activation

if TYPE_CHECKING:
    from kit.nn import GPTConfig

__all__ = [
    "MoEConfig",
    "Routing",
    "SwitchMoE",
    "expert_capacity",
    "load_balancing_loss",
    "route_tokens",
    "router_z_loss",
]


@dataclass
class MoEConfig:
    """Settings of ``ffn="moe"`` (``GPTConfig.moe``), checked when built.

    Example:
        >>> MoEConfig(experts=4, top_k=2).top_k
        2
        >>> MoEConfig(experts=2, top_k=3)
        Traceback (most recent call last):
        ...
        ValueError: moe.experts=2, moe.top_k=3: need 1 <= top_k <= experts; lower top_k or add experts
    """

    experts: int = 8  # expert MLPs, each of width mlp_ratio * n_embd
    top_k: int = 1  # experts per token: 1 is Switch; 2 is GShard
    capacity_factor: float = 1.25  # expert capacity = factor * tokens * top_k / experts; <= 0: no limit
    eval_capacity_factor: float = 2.0  # the same in evaluation
    aux_alpha: float = 0.01  # load-balancing loss weight alpha (alpha * E * sum f_i P_i)
    z_loss: float = 1e-3  # router z-loss weight (ST-MoE)
    jitter: float = 0.0  # multiplicative router-input noise in training, e.g. 0.01 (Switch)
    expert_dropout: float = 0.0  # dropout inside the experts (Switch fine-tuning uses 0.4)

    def __post_init__(self) -> None:
        if self.experts < 1 or not 1 <= self.top_k <= self.experts:
            raise ValueError(
                f"moe.experts={self.experts}, moe.top_k={self.top_k}: need 1 <= top_k <= experts; "
                "lower top_k or add experts"
            )
        for name in ("aux_alpha", "z_loss", "jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"moe.{name}={getattr(self, name)} must be >= 0 (0 turns it off)")
        if not 0.0 <= self.expert_dropout < 1.0:
            raise ValueError(
                f"moe.expert_dropout={self.expert_dropout} must be in [0, 1); Switch fine-tunes with 0.4"
            )


class Routing(NamedTuple):
    """Where each of N tokens goes: shapes (N, k) except ``probs`` (N, E)."""

    probs: torch.Tensor  # router softmax over experts, float32
    expert: torch.Tensor  # chosen expert per choice
    gate: torch.Tensor  # weight of that expert's output
    slot: torch.Tensor  # position of the token in that expert's buffer
    keep: torch.Tensor  # slot < capacity: False means the token is dropped for that choice


def expert_capacity(n_tokens: int, n_experts: int, top_k: int, capacity_factor: float) -> int:
    """Tokens each expert takes: ``ceil(capacity_factor * n_tokens * top_k / n_experts)``; <= 0 means no limit.

    Example:
        >>> expert_capacity(100, 8, 1, 1.25), expert_capacity(100, 8, 1, 0.0)
        (16, 100)
    """
    if capacity_factor <= 0:
        return n_tokens
    return max(1, min(n_tokens, math.ceil(capacity_factor * n_tokens * top_k / n_experts)))


def route_tokens(logits: torch.Tensor, top_k: int, capacity: int) -> Routing:
    """Top-k routing with a per-expert capacity, first choices served before second choices.

    Args:
        logits: router scores, shape (N, E).
        top_k: experts per token.
        capacity: tokens each expert takes; later assignments past it are dropped.

    Returns:
        A :class:`Routing`.

    Example:
        >>> r = route_tokens(torch.tensor([[2.0, 0.0], [3.0, 0.0], [0.0, 1.0]]), top_k=1, capacity=1)
        >>> r.expert.flatten().tolist(), r.slot.flatten().tolist(), r.keep.flatten().tolist()
        ([0, 0, 1], [0, 1, 0], [True, False, True])
    """
    N, E = logits.shape
    probs = logits.float().softmax(dim=-1)  # (N, E)
    gate, expert = probs.topk(top_k, dim=-1)  # (N, k)
    if top_k > 1:
        gate = gate / gate.sum(dim=-1, keepdim=True)
    order = expert.t().reshape(-1)  # (k N,): all first choices, then all second choices
    onehot = F.one_hot(order, E)  # (k N, E)
    slot = (onehot.cumsum(dim=0) - 1).gather(1, order[:, None]).view(top_k, N).t()  # (N, k)
    return Routing(probs, expert, gate, slot, slot < capacity)


def load_balancing_loss(probs: torch.Tensor, expert: torch.Tensor, alpha: float = 0.01) -> torch.Tensor:
    """Switch's auxiliary loss ``alpha * E * sum_i f_i * P_i``; equals ``alpha`` when routing is uniform.

    Args:
        probs: router probabilities, shape (N, E).
        expert: chosen experts, shape (N, k); ``f_i`` is the fraction of the ``N k`` choices that picked ``i``
            (before capacity, as in the paper).
        alpha: the loss weight (0.01 in Switch).

    Example:
        >>> probs = torch.full((4, 2), 0.5)
        >>> round(load_balancing_loss(probs, torch.tensor([[0], [1], [0], [1]])).item(), 6)
        0.01
    """
    E = probs.size(-1)
    f = F.one_hot(expert.reshape(-1), E).float().mean(dim=0)  # (E,)
    return alpha * E * torch.sum(f * probs.float().mean(dim=0))


def router_z_loss(logits: torch.Tensor, beta: float = 1e-3) -> torch.Tensor:
    """ST-MoE's router z-loss ``beta * mean(logsumexp(logits)^2)``: keeps router logits small and bf16-safe."""
    return beta * torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


class SwitchMoE(nn.Module):
    """``experts`` MLPs of width ``hidden`` behind a top-k router with capacity.

    Each token uses ``top_k`` experts, so with ``top_k=1`` it multiplies by as many weights as the dense
    :class:`~kit.nn.layers.ffn.MLP` of the same ``hidden`` (plus the router): the same *active* parameters, E
    times the total.

    Args:
        n_embd: input and output width d.
        hidden: each expert's hidden width h (``GPTConfig.ffn_hidden``: ``mlp_hidden`` or ``mlp_ratio * n_embd``).
        experts, top_k, capacity_factor, eval_capacity_factor, aux_alpha, z_loss, jitter, expert_dropout: the
            :class:`MoEConfig` fields (pass one as ``**dataclasses.asdict(moe)``); ``jitter`` is multiplicative
            uniform noise on the router input in training, ``expert_dropout`` dropout inside the experts.
        bias: expert biases.
        dropout: residual dropout on the output.
        activation: the experts' activation, a name in :data:`~kit.nn.layers.activations.ACTIVATIONS`.
        n_layer: blocks in the model; the output projection starts at std ``0.02 / sqrt(2 n_layer)`` (GPT-2).

    Raises:
        ValueError: for settings :class:`MoEConfig` rejects, or an unknown activation.

    Example:
        >>> SwitchMoE(32, 128, experts=4)(torch.randn(2, 4, 32)).shape
        torch.Size([2, 4, 32])
        >>> from dataclasses import asdict
        >>> SwitchMoE(32, 128, **asdict(MoEConfig(experts=2, top_k=2))).top_k
        2
        >>> from kit.nn import GPTConfig
        >>> SwitchMoE.from_config(GPTConfig.from_name("debug", ffn="moe", moe={"experts": 4})).n_experts
        4
    """

    def __init__(
        self,
        n_embd: int,
        hidden: int,
        *,
        experts: int = 8,
        top_k: int = 1,
        capacity_factor: float = 1.25,
        eval_capacity_factor: float = 2.0,
        aux_alpha: float = 0.01,
        z_loss: float = 1e-3,
        jitter: float = 0.0,
        expert_dropout: float = 0.0,
        bias: bool = True,
        dropout: float = 0.0,
        activation: str = "gelu",
        n_layer: int = 1,
    ) -> None:
        super().__init__()
        MoEConfig(
            experts, top_k, capacity_factor, eval_capacity_factor, aux_alpha, z_loss, jitter, expert_dropout
        )
        d, h, E = n_embd, hidden, experts
        self.n_experts, self.top_k = E, top_k
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor
        self.alpha, self.beta, self.jitter = aux_alpha, z_loss, jitter
        self.activation = activation
        self.act = get_activation(activation)
        self.router = nn.Linear(d, E, bias=False)
        self.w_fc = nn.Parameter(torch.empty(E, d, h))  # (E, d, h): expert e computes x @ w_fc[e]
        self.w_proj = nn.Parameter(torch.empty(E, h, d))
        self.b_fc = nn.Parameter(torch.zeros(E, h)) if bias else None
        self.b_proj = nn.Parameter(torch.zeros(E, d)) if bias else None
        self.expert_dropout = nn.Dropout(expert_dropout)
        self.dropout = nn.Dropout(dropout)
        # GPT-2 init, with the residual projection scaled by 1/sqrt(2 * n_layer) like the dense MLP's
        nn.init.normal_(self.w_fc, std=0.02)
        nn.init.normal_(self.w_proj, std=0.02 / math.sqrt(2 * n_layer))

    @classmethod
    def from_config(cls, config: GPTConfig) -> SwitchMoE:
        """The layer with ``config.moe``'s settings and ``config``'s width, bias, dropout and activation."""
        m = config.moe
        return cls(
            config.n_embd,
            config.ffn_hidden,
            experts=m.experts,
            top_k=m.top_k,
            capacity_factor=m.capacity_factor,
            eval_capacity_factor=m.eval_capacity_factor,
            aux_alpha=m.aux_alpha,
            z_loss=m.z_loss,
            jitter=m.jitter,
            expert_dropout=m.expert_dropout,
            bias=config.bias if config.mlp_bias is None else config.mlp_bias,
            dropout=config.dropout,
            activation=config.activation,
            n_layer=config.n_layer,
        )

    def expert_params(self) -> int:
        """Parameters inside the experts (what the router chooses among)."""
        return sum(p.numel() for p in (self.w_fc, self.w_proj, self.b_fc, self.b_proj) if p is not None)

    def inactive_params(self) -> float:
        """Expert parameters a token does not use: ``expert_params * (1 - top_k / E)`` (for active FLOPs)."""
        return self.expert_params() * (1.0 - self.top_k / self.n_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        # position-major order (all batch rows' position 0, then position 1, ...): a token competes for expert
        # capacity only with tokens at its own or earlier positions, so dropping never lets a later token
        # change an earlier token's output (a causal LM stays causal)
        x = x.transpose(0, 1).reshape(B * T, -1)  # (N, d)
        N, d = x.shape
        E = self.n_experts
        router_in = x
        if self.training and self.jitter > 0:
            router_in = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        logits = self.router(router_in)  # (N, E)
        cf = self.capacity_factor if self.training else self.eval_capacity_factor
        C = expert_capacity(N, E, self.top_k, cf)
        r = route_tokens(logits, self.top_k, C)

        # static shapes (no boolean indexing, so torch.compile keeps one graph): dropped choices write to and
        # read from a spare zero row E * C of the buffer, and their gate is zeroed
        token = torch.arange(N, device=x.device).repeat_interleave(self.top_k)  # (N k,)
        dest = torch.where(r.keep, r.expert * C + r.slot, E * C).reshape(-1)  # (N k,)
        buf = x.new_zeros(E * C + 1, d).index_add(0, dest, x[token])[: E * C].view(E, C, d)
        hidden = torch.bmm(buf, self.w_fc)  # (E, C, h)
        if self.b_fc is not None:
            hidden = hidden + self.b_fc[:, None, :]
        hidden = self.expert_dropout(self.act(hidden))
        y = torch.bmm(hidden, self.w_proj)  # (E, C, d)
        if self.b_proj is not None:
            y = y + self.b_proj[:, None, :]
        y = torch.cat([y.reshape(E * C, d), y.new_zeros(1, d)])[dest]  # (N k, d)
        y = y * (r.gate * r.keep).reshape(-1, 1).to(y.dtype)
        out = y.new_zeros(N, d).index_add(0, token, y)  # dropped tokens stay zero: the residual carries them

        if self.alpha > 0:
            record_aux(self, "moe/balance", load_balancing_loss(r.probs, r.expert, self.alpha), loss=True)
        if self.beta > 0:
            record_aux(self, "moe/z_loss", router_z_loss(logits, self.beta), loss=True)
        record_aux(self, "moe/dropped", 1.0 - r.keep.float().mean())
        record_aux(self, "moe/load", F.one_hot(r.expert.reshape(-1), E).float().mean(dim=0))
        return self.dropout(out).view(T, B, d).transpose(0, 1)  # (B, T, d)
