"""Layers that record auxiliary losses (SwitchMoE, UniversalACT) inside a user's own module and training loop.

The loop here is a plain optimiser loop, not the kit's: it calls ``add_aux_losses`` once per step and nothing
else. Collecting consumes what the layers recorded, so step 2 never sums step 1's (already freed) graph.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kit.nn.layers import (
    MoEConfig,
    SwitchMoE,
    UniversalACT,
    add_aux_losses,
    aux_outputs,
    load_balancing_loss,
    route_tokens,
)


class MoENet(nn.Module):
    """A user's classifier with a Switch MoE feed-forward between two plain layers."""

    def __init__(self, moe: MoEConfig) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.moe = SwitchMoE(
            16, 32, experts=moe.experts, capacity_factor=moe.capacity_factor, z_loss=moe.z_loss
        )
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, 8) -> (B, 3)
        h = self.inp(x)
        return self.out((h + self.moe(h)).mean(1))


class ACTNet(nn.Module):
    """A user's sequence tagger that applies its own block with the kit's universal depth (ACT)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 16)
        self.block = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16), nn.GELU())
        self.depth = UniversalACT(16, 8, max_steps=3, ponder_cost=0.1)
        self.head = nn.Linear(16, 16)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, 16)
        return self.head(self.depth(self.emb(idx), [self.block]))


def _moe_batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(4, 6, 8, generator=g), torch.randint(0, 3, (4,), generator=g)


def _act_batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, 16, (4, 8), generator=g)
    return idx, idx.roll(1, dims=1)


def _task_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = net(x)
    return F.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))


@pytest.mark.parametrize(
    ("make", "batch", "aux_names"),
    [
        (
            lambda: MoENet(MoEConfig(experts=4)),
            _moe_batch,
            {"aux/moe/balance", "aux/moe/z_loss", "aux/moe/load/3"},
        ),
        (ACTNet, _act_batch, {"aux/act/ponder", "aux/act/steps_mean", "aux/act/steps_max"}),
    ],
    ids=["switch-moe", "universal-act"],
)
def test_a_users_module_trains_many_steps_with_add_aux_losses_each_step(make, batch, aux_names) -> None:
    torch.manual_seed(0)
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        x, y = batch(g)
        task = _task_loss(net, x, y)
        logged: dict[str, torch.Tensor] = {}
        loss = add_aux_losses(net, task, log=logged.__setitem__)
        opt.zero_grad()
        loss.backward()  # a second backward through step 1's values would raise here
        opt.step()
        assert aux_names <= set(logged)
        aux = sum(
            v for k, v in logged.items() if k in {"aux/moe/balance", "aux/moe/z_loss", "aux/act/ponder"}
        )
        assert torch.allclose(loss.detach(), task.detach() + aux)  # this step's aux losses, once
        assert aux_outputs(net) == (None, {})  # consumed: the next step starts empty
        assert all(torch.isfinite(p).all() for p in net.parameters())


def test_the_balance_loss_alone_reaches_the_router() -> None:
    torch.manual_seed(0)
    net = MoENet(MoEConfig(experts=4, capacity_factor=0.0, z_loss=0.0))
    x, _ = _moe_batch(torch.Generator().manual_seed(2))
    for _ in range(3):  # repeated forwards and collections in a user's loop, each with its own graph
        net.zero_grad()
        net(x)
        h = net.inp(x).detach().transpose(0, 1).reshape(-1, 16)
        r = route_tokens(net.moe.router(h), top_k=1, capacity=h.size(0))
        aux = add_aux_losses(net, torch.zeros(()))  # the task loss is zero: only the balance loss is left
        assert torch.allclose(aux, load_balancing_loss(r.probs, r.expert))
        aux.backward()
        assert net.moe.router.weight.grad.abs().sum() > 0
        assert (
            net.moe.w_fc.grad is None and net.out.weight.grad is None
        )  # nothing else feeds the balance loss


def test_the_ponder_cost_alone_reaches_the_halting_unit() -> None:
    torch.manual_seed(0)
    net = ACTNet()
    idx, _ = _act_batch(torch.Generator().manual_seed(3))
    for _ in range(3):
        net.zero_grad()
        net(idx)
        aux = add_aux_losses(net, torch.zeros(()))
        assert aux > 0
        aux.backward()
        assert net.depth.halt.grad.abs().sum() > 0 and net.depth.halt_bias.grad.abs() > 0
        assert net.head.weight.grad is None


def test_peeking_keeps_the_values_and_collecting_consumes_them() -> None:
    net = MoENet(MoEConfig(experts=2))
    net(torch.randn(2, 3, 8))
    peeked, _ = aux_outputs(net, consume=False)
    total, values = aux_outputs(net)
    assert torch.equal(peeked, total) and "moe/balance" in values
    assert aux_outputs(net) == (None, {})
