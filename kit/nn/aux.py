"""The auxiliary-loss protocol: any layer can add a term to the training loss and a statistic to the logs.

A layer calls :func:`record_aux` during its forward; the training loop (a LightningModule's ``training_step``,
or a plain loop around a user's own ``nn.Module``) calls :func:`add_aux_losses` once per step, which sums every
recorded loss into the task loss and logs each loss and statistic. Nothing else is wired: a model using a layer
that records (``ffn="moe"``, ``depth="universal"``, a ``SwitchMoE`` inside any module) gets its
load-balancing, router z-loss or ponder cost trained and logged by any loop that calls the function.

Values accumulate over the calls of one forward (a shared Universal Transformer block runs several times).
Collecting them (:func:`add_aux_losses`, :func:`aux_outputs`) consumes them, so the next step starts empty and
never sums a graph that an earlier backward already freed; :func:`clear_aux` drops them without collecting
(``GPT.hidden_states`` calls it at the start of each forward, so an uncollected validation forward never leaks
into a training loss). Statistics are averaged over the recording calls, losses summed. Nothing here syncs
with the host: the logged values stay tensors until the logger reads them.

Lightning-free on purpose: the MaskedLM and classifiers call the same function.

Example:
    >>> import torch
    >>> from torch import nn
    >>> layer = nn.Linear(2, 2)
    >>> record_aux(layer, "toy/loss", torch.tensor(0.5), loss=True)
    >>> record_aux(layer, "toy/load", torch.tensor(3.0))
    >>> logged = {}
    >>> add_aux_losses(layer, torch.tensor(1.0), log=lambda k, v: logged.__setitem__(k, float(v)))
    tensor(1.5000)
    >>> logged
    {'aux/toy/loss': 0.5, 'aux/toy/load': 3.0}
    >>> add_aux_losses(layer, torch.tensor(1.0))  # consumed: nothing is left for the next step
    tensor(1.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["add_aux_losses", "aux_outputs", "clear_aux", "record_aux"]

_LOSSES = "_kit_aux_losses"  # name -> summed loss tensor (goes into the training loss)
_STATS = "_kit_aux_stats"  # name -> (summed statistic, number of recordings)


def record_aux(module: nn.Module, name: str, value: torch.Tensor, *, loss: bool = False) -> None:
    """Record an auxiliary ``loss`` (added to the training loss, already weighted) or a statistic (logged only).

    Args:
        module: the layer recording it (where the value is kept until collected).
        name: a metric name such as ``"moe/balance"``; layers of one kind share names, so values add up.
        value: a scalar tensor, or a 1-D tensor for a distribution (expert load); losses must be scalars.
        loss: True for a term of the training loss (keeps its graph), False for a detached statistic.
    """
    if loss:
        store = module.__dict__.setdefault(_LOSSES, {})
        store[name] = store[name] + value if name in store else value
    else:
        store = module.__dict__.setdefault(_STATS, {})
        value = value.detach()
        if name in store:
            total, count = store[name]
            store[name] = (total + value, count + 1)
        else:
            store[name] = (value, 1)


def clear_aux(model: nn.Module) -> None:
    """Forget every recorded value under ``model`` without collecting it (e.g. after an evaluation forward)."""
    for m in model.modules():
        m.__dict__.pop(_LOSSES, None)
        m.__dict__.pop(_STATS, None)


def aux_outputs(
    model: nn.Module, *, consume: bool = True
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """Collect what the layers under ``model`` recorded since the last collection, and (by default) forget it.

    Losses of the same name are summed across layers (each layer's term is a loss of its own); statistics of the
    same name are averaged across layers and calls.

    Args:
        model: the network (or any module holding recording layers).
        consume: drop the collected values, so the next step's forward starts empty; False only peeks.

    Returns:
        ``(total, values)``: the sum of every auxiliary loss (None when no layer recorded one) and a flat
        ``name -> tensor`` dict of each loss and statistic; a 1-D statistic ``name`` becomes ``name/0``, ``name/1``...
    """
    losses: dict[str, torch.Tensor] = {}
    stats: dict[str, list] = {}
    for m in model.modules():
        for name, v in m.__dict__.get(_LOSSES, {}).items():
            losses[name] = losses[name] + v if name in losses else v
        for name, (v, n) in m.__dict__.get(_STATS, {}).items():
            if name in stats:
                stats[name][0] = stats[name][0] + v
                stats[name][1] += n
            else:
                stats[name] = [v, n]
    if consume:
        clear_aux(model)
    total = sum(losses.values()) if losses else None
    values = {k: v.detach() for k, v in losses.items()}
    for name, (v, n) in stats.items():
        mean = v / n
        if mean.ndim == 0:
            values[name] = mean
        else:
            values.update({f"{name}/{i}": x for i, x in enumerate(mean.unbind(0))})
    return total, values


def add_aux_losses(
    model: nn.Module,
    loss: torch.Tensor,
    log: Callable[[str, torch.Tensor], object] | None = None,
    prefix: str = "aux/",
) -> torch.Tensor:
    """``loss`` plus every auxiliary loss recorded under ``model``, logging each one and each statistic.

    The one call a training step makes, in a LightningModule
    (``loss = add_aux_losses(self.model, loss, log=lambda k, v: self.log(f"train/{k}", v))``) or in a plain loop.
    What it collects is consumed: the next step's forward records afresh.

    Args:
        model: the network whose last forward produced ``loss``.
        loss: the task loss.
        log: called as ``log(name, value)`` for each value; None logs nothing.
        prefix: put before every logged name.

    Returns:
        The total training loss (``loss`` itself when no layer recorded a loss).
    """
    total, values = aux_outputs(model)
    if log is not None:
        for name, value in values.items():
            log(prefix + name, value)
    return loss if total is None else loss + total
