"""How the blocks are applied, chosen by ``GPTConfig.depth`` through :func:`get_depth`.

- ``"stack"``: ``n_layer`` blocks, each applied once (the usual Transformer).
- ``"universal"``: the Universal Transformer (Dehghani et al. 2019): one shared block applied recurrently up
  to ``universal.max_steps`` times, with per-token adaptive computation time (ACT, Graves 2016). Before each
  step a learned position embedding and a step embedding are added; a sigmoid halting unit gives each token a
  halting probability, a token halts once its cumulative probability would pass ``1 - act_eps`` (taking the
  remainder ``R`` as its last weight), and the output is the halting-weighted mean of the step states. The
  ponder cost ``tau * mean(N + R)`` (``N`` the steps a token took) goes into the loss through the kit's
  auxiliary-loss protocol, and the mean and max steps are logged.

A depth module owns only its own parameters; the model keeps the blocks (``GPT.blocks``, so state-dict keys stay
``blocks.0...``) and passes them in. Besides ``from_config(config)``, a ``DEPTH`` entry has two static methods
of the config: ``num_blocks`` says how many blocks to build, ``applications`` how many block applications one
forward runs (for FLOP counts). The Universal Transformer's settings are :class:`UniversalConfig`
(``GPTConfig.universal``).

Where the kit differs from tensor2tensor's UT: every step runs on every token (halted tokens keep their state
because their weight is zero) and the loop always runs ``max_steps`` steps, so a forward never syncs with
the host to ask whether all tokens halted; FLOP counts use ``max_steps`` applications accordingly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from kit.nn.aux import record_aux
from kit.nn.layers._factory import resolve

if TYPE_CHECKING:
    from kit.nn import GPTConfig

__all__ = [
    "DEPTH",
    "ACTOutput",
    "Stack",
    "UniversalACT",
    "UniversalConfig",
    "adaptive_computation",
    "get_depth",
]


@dataclass
class UniversalConfig:
    """Settings of ``depth="universal"`` (``GPTConfig.universal``), checked when built.

    Example:
        >>> UniversalConfig(max_steps=4).ponder_cost
        0.01
    """

    max_steps: int | None = None  # the most applications of the shared block; None: n_layer
    act_eps: float = 0.01  # a token halts when its summed halting probability passes 1 - act_eps
    ponder_cost: float = 0.01  # tau: weight of the ponder cost mean(N + R) in the loss

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"universal.max_steps={self.max_steps} must be >= 1, or None for n_layer")
        if not 0.0 < self.act_eps < 1.0:
            raise ValueError(f"universal.act_eps={self.act_eps} must be in (0, 1); Graves uses 0.01")
        if self.ponder_cost < 0:
            raise ValueError(f"universal.ponder_cost={self.ponder_cost} must be >= 0 (0 turns it off)")


class Stack(nn.Module):
    """Apply each block once, in order.

    Example:
        >>> Stack()(torch.ones(1, 2, 3), [nn.Identity(), nn.Identity()]).shape
        torch.Size([1, 2, 3])
    """

    @classmethod
    def from_config(cls, config: GPTConfig) -> Stack:
        return cls()

    @staticmethod
    def num_blocks(config: GPTConfig) -> int:
        return config.n_layer

    @staticmethod
    def applications(config: GPTConfig) -> int:
        return config.n_layer

    def forward(self, x: torch.Tensor, blocks: Sequence[nn.Module]) -> torch.Tensor:
        for block in blocks:
            x = block(x)
        return x


class ACTOutput(NamedTuple):
    """Result of :func:`adaptive_computation`; ``steps`` and ``remainders`` have shape (B, T)."""

    output: torch.Tensor  # halting-weighted mean of the step states, (B, T, C)
    steps: torch.Tensor  # N: steps each token took (1..max_steps), float
    remainders: torch.Tensor  # R: the last step's weight, 1 - (sum of the earlier halting probabilities)


def adaptive_computation(
    x: torch.Tensor,
    step: Callable[[torch.Tensor, int], torch.Tensor],
    halting: Callable[[torch.Tensor], torch.Tensor],
    max_steps: int,
    eps: float = 0.01,
) -> ACTOutput:
    """Graves' adaptive computation time over a recurrent ``step``, per token, vectorised.

    At step ``n`` every still-running token gets halting probability ``p_n = halting(state)``; it halts at the
    first ``n`` where the running sum would exceed ``1 - eps`` (or at ``max_steps``), and its weight for that
    step is the remainder ``R = 1 - sum of its earlier p``. The output is ``sum_n w_n * state_n`` with the
    weights summing to one per token.

    Args:
        x: the input state, (B, T, C).
        step: ``step(state, n) -> new state`` for step index ``n`` (0-based).
        halting: ``halting(state) -> p`` in (0, 1), shape (B, T); evaluated on the state entering each step.
        max_steps: the most steps a token may take.
        eps: halting threshold ``1 - eps``.

    Returns:
        An :class:`ACTOutput`.

    Example:
        >>> out = adaptive_computation(torch.zeros(1, 2, 3), lambda s, n: s + 1,
        ...                            lambda s: torch.full(s.shape[:2], 0.6), max_steps=5)
        >>> out.steps.tolist(), round(out.remainders[0, 0].item(), 4), round(out.output[0, 0, 0].item(), 4)
        ([[2.0, 2.0]], 0.4, 1.4)
    """
    if max_steps < 1:
        raise ValueError(f"max_steps={max_steps} must be >= 1")
    B, T = x.shape[:2]
    halted_sum = x.new_zeros(B, T, dtype=torch.float32)  # sum of p over the steps a token ran before halting
    running = torch.ones(B, T, dtype=torch.bool, device=x.device)
    steps = x.new_zeros(B, T, dtype=torch.float32)
    remainders = x.new_zeros(B, T, dtype=torch.float32)
    state, output = x, torch.zeros_like(x)
    for n in range(max_steps):
        p = halting(state).float()  # (B, T)
        last = n == max_steps - 1
        halts_now = running & ((halted_sum + p > 1.0 - eps) | last)
        continues = running & ~halts_now
        remainder = (1.0 - halted_sum) * halts_now  # R for the tokens halting at this step, else 0
        weight = p * continues + remainder  # (B, T)
        remainders = remainders + remainder
        halted_sum = halted_sum + p * continues
        steps = steps + running.float()
        state = step(state, n)
        output = output + weight.unsqueeze(-1).to(state.dtype) * state
        running = continues
    return ACTOutput(output, steps, remainders)


class UniversalACT(nn.Module):
    """One shared block applied up to ``max_steps`` times with ACT halting (see the module docstring).

    Args:
        n_embd: model width C.
        block_size: the longest sequence (rows of the learned position embedding).
        max_steps: the most applications of the shared block.
        act_eps: a token halts when its summed halting probability passes ``1 - act_eps``.
        ponder_cost: tau, the weight of the ponder cost ``mean(N + R)`` recorded as an auxiliary loss.

    Raises:
        ValueError: for settings :class:`UniversalConfig` rejects.

    Example:
        >>> act = UniversalACT(32, 16, max_steps=3)
        >>> act(torch.randn(2, 5, 32), [nn.Identity()]).shape
        torch.Size([2, 5, 32])
        >>> from kit.nn import GPT, GPTConfig
        >>> model = GPT(GPTConfig.from_name("debug", depth="universal", universal={"max_steps": 3}))
        >>> len(model.blocks), model.depth.max_steps
        (1, 3)
    """

    def __init__(
        self,
        n_embd: int,
        block_size: int,
        *,
        max_steps: int,
        act_eps: float = 0.01,
        ponder_cost: float = 0.01,
    ) -> None:
        super().__init__()
        UniversalConfig(max_steps, act_eps, ponder_cost)
        self.max_steps = max_steps
        self.eps, self.tau = act_eps, ponder_cost
        self.pos_emb = nn.Parameter(torch.randn(block_size, n_embd) * 0.02)  # (T, C)
        self.step_emb = nn.Parameter(torch.randn(self.max_steps, n_embd) * 0.02)  # (steps, C)
        self.halt = nn.Parameter(torch.randn(n_embd) * 0.02)
        # halting bias starts at 1 (sigmoid ~0.73): tokens begin by halting after about two steps, as
        # tensor2tensor's UT initialises it
        self.halt_bias = nn.Parameter(torch.ones(()))

    @classmethod
    def from_config(cls, config: GPTConfig) -> UniversalACT:
        """The depth with ``config``'s width and block size and ``config.universal``'s settings."""
        u = config.universal
        return cls(
            config.n_embd,
            config.block_size,
            max_steps=cls.applications(config),
            act_eps=u.act_eps,
            ponder_cost=u.ponder_cost,
        )

    @staticmethod
    def num_blocks(config: GPTConfig) -> int:
        return 1

    @staticmethod
    def applications(config: GPTConfig) -> int:
        return config.universal.max_steps or config.n_layer

    def coordinates(self, T: int, n: int) -> torch.Tensor:
        """The embedding added before step ``n``: position plus step, shape (T, C)."""
        return self.pos_emb[:T] + self.step_emb[n]

    def forward(self, x: torch.Tensor, blocks: Sequence[nn.Module]) -> torch.Tensor:
        (block,) = blocks
        T = x.size(1)
        result = adaptive_computation(
            x,
            lambda s, n: block(s + self.coordinates(T, n)),
            lambda s: torch.sigmoid(s @ self.halt + self.halt_bias),
            self.max_steps,
            self.eps,
        )
        if self.tau > 0:
            record_aux(self, "act/ponder", self.tau * (result.steps + result.remainders).mean(), loss=True)
        record_aux(self, "act/steps_mean", result.steps.mean())
        record_aux(self, "act/steps_max", result.steps.max())
        return result.output


DEPTH: dict[str, type[nn.Module]] = {"stack": Stack, "universal": UniversalACT}


def get_depth(kind: str | type[nn.Module]) -> type[nn.Module]:
    """The depth class for ``GPTConfig.depth``: a name from ``DEPTH`` or a class (returned as is).

    Example:
        >>> get_depth("universal").__name__
        'UniversalACT'
    """
    return resolve(kind, DEPTH, "depth")
