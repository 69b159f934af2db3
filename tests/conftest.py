"""Shared test setup: a session-wide tokenizer cache, deterministic hypothesis settings for CI, and the
tiny LightningModules and Trainer helper every Lightning test uses (``from conftest import ...``)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hypothesis import HealthCheck, settings
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, hand tests out one at a time unless ``--maxschedchunk`` says otherwise.

    xdist's ``load`` mode first sends each worker a consecutive quarter of its share: with the slow tests first
    (below), one worker got every slow test in a row while the other ran the default suite and then waited,
    so ``pytest -n 2`` took about the slow tests' serial time (the newest suite: 2,815 s in CI). One at a time,
    both workers take slow tests until they run out. (A module-scoped fixture can then run on both workers;
    ``--dist loadgroup`` would keep such a module on one, but xdist 3.8 cannot mark groups under pytest 9.2,
    whose ``Node.nodeid`` no longer reads the ``_nodeid`` that xdist rewrites.)
    """
    if config.pluginmanager.hasplugin("xdist") and config.getoption("maxschedchunk", None) is None:
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests run first (otherwise in file order): with ``-n 2`` a several-minute test that starts last
    leaves the other worker idle until it ends."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", autouse=True)
def _kit_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tokenizers trained by the tests land in one temporary cache, shared across the session."""
    path = str(tmp_path_factory.mktemp("kit-cache"))
    old = os.environ.get("KIT_CACHE")
    os.environ["KIT_CACHE"] = path
    yield path
    if old is None:
        os.environ.pop("KIT_CACHE", None)
    else:
        os.environ["KIT_CACHE"] = old


@pytest.fixture(autouse=True)
def _no_leaked_env() -> Iterator[None]:
    """Each test leaves ``os.environ`` as it found it, so no test depends on the tests that ran before it.

    Tests that run Lightning or the ``kit`` command in this process write variables that spawned and torchrun
    workers inherit: ``seed_everything`` sets PL_GLOBAL_SEED (Lightning's distributed sampler shuffles with it),
    an in-process DDP fit sets MASTER_ADDR/MASTER_PORT/LOCAL_RANK/NODE_RANK, the kit command KIT_RUN_VERSION and
    WANDB_MODE, and libraries set thread and KMP variables (all seen in one run of the default suite)."""
    before = dict(os.environ)
    yield
    if dict(os.environ) != before:
        os.environ.clear()
        os.environ.update(before)


def lightning_records(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """``caplog`` also seeing the records of ``lightning.pytorch``, where the kit's rank-zero reports go; a test
    module that checks those reports yields from it in its own ``caplog`` fixture.

    Lightning stops that logger's propagation when it is imported before logging is configured (as this file
    imports it): the report reaches the user through Lightning's own stderr handler, never the root logger.
    pytest 9.1 and newer attach the capture handler to such loggers themselves; older releases only to the root,
    so this adds it there, once (twice would record every message twice).
    """
    logger = logging.getLogger("lightning.pytorch")
    attach = not logger.propagate and caplog.handler not in logger.handlers
    if attach:
        logger.addHandler(caplog.handler)
    yield caplog
    if attach:
        logger.removeHandler(caplog.handler)


# -- one shared set of tiny LightningModules and trainer helpers ------------------------------------------
# They know nothing about the kit, like the users' modules the callbacks must work with.


class TinyRegressor(pl.LightningModule):
    """A 2-layer MLP regression (``in_dim -> hidden -> 1``, MSE) with a configurable optimizer.

    Args:
        lr: learning rate.
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        fused: fused Adam/AdamW (unscales inside ``step``).
        loss_scale: multiplies the loss (huge gradients on purpose).
        in_dim, hidden: the shape.
        seed: initial weights.
    """

    def __init__(
        self,
        lr: float = 0.05,
        optimizer: str = "sgd",
        fused: bool = False,
        loss_scale: float = 1.0,
        in_dim: int = 8,
        hidden: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.lr, self.optimizer, self.fused, self.loss_scale = lr, optimizer, fused, loss_scale

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x).float(), y) * self.loss_scale

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x).float(), y))

    def configure_optimizers(self):
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr)
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[self.optimizer]
        return cls(self.parameters(), lr=self.lr, fused=self.fused, foreach=None if self.fused else True)


class TinyClassifier(pl.LightningModule):
    """Inputs flattened to ``in_dim`` (images ``(B, 1, 4, 4)`` by default) -> ``num_classes`` logits.

    ``F.cross_entropy`` takes hard or soft targets; the targets each step saw are kept in ``seen``.

    Args:
        num_classes: output classes (also the ``num_classes`` attribute MixUpCutMix reads).
        lr: SGD learning rate.
        in_dim: flattened input size.
        hidden: a hidden Tanh layer of this width (0: linear model).
        dropout: dropout before the last layer (with ``hidden``).
    """

    def __init__(
        self, num_classes: int = 3, lr: float = 0.1, in_dim: int = 16, hidden: int = 0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.num_classes, self.lr = num_classes, lr
        layers: list[nn.Module] = [nn.Flatten()]
        if hidden:
            layers += [
                nn.Linear(in_dim, hidden),
                nn.Tanh(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            ]
        else:
            layers += [nn.Linear(in_dim, num_classes)]
        self.net = nn.Sequential(*layers)
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append(y.detach().clone())
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class BatchRecorder(pl.LightningModule):
    """Records what each training step saw: the "which batches / sample ids did this rank get" module.

    One trainable scalar ``w`` (so an optimizer exists); the loss ``(w - mean(batch[field]))**2`` depends on it
    and stays bounded for any SGD ``lr < 1``. ``validation_step`` logs the same loss as ``val_loss``.

    Args:
        field: what to take from each batch: an index or key into it, or ``None`` for the whole batch.
        ids: ``True`` extends ``seen`` with one id per sample (the first value of each row of the
            ``(B, ...)`` tensor ``batch[field]``, i.e. ``x`` for 1-D ``x``, ``x[:, 0]`` for 2-D);
            ``False`` appends the taken object (a detached clone for a tensor) once per batch.
        lr: SGD learning rate.
    """

    def __init__(self, field: int | str | None = 0, ids: bool = True, lr: float = 0.1) -> None:
        super().__init__()
        self.field, self.ids, self.lr = field, ids, lr
        self.w = nn.Parameter(torch.zeros(()))
        self.seen: list[Any] = []

    def _take(self, batch: Any) -> Any:
        return batch if self.field is None else batch[self.field]

    def _loss(self, batch: Any) -> torch.Tensor:
        t = self._take(batch)
        while not isinstance(t, torch.Tensor):  # whole (x, y) / {"x": ...} batches: the first tensor
            t = next(iter(t.values())) if isinstance(t, dict) else t[0]
        return (self.w - t.detach().float().mean()) ** 2

    def training_step(self, batch, batch_idx):
        taken = self._take(batch)
        if self.ids:
            self.seen += taken.reshape(taken.shape[0], -1)[:, 0].tolist()
        else:
            self.seen.append(taken.detach().clone() if isinstance(taken, torch.Tensor) else taken)
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def regression_loader(
    n: int = 64, batch_size: int = 8, in_dim: int = 8, target_scale: float = 1.0, seed: int = 0
) -> DataLoader:
    """``y = target_scale * sum(x)`` plus a little noise; fixed order."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=g)
    y = target_scale * x.sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def classification_loader(
    n: int = 64, batch_size: int = 8, num_classes: int = 3, seed: int = 0
) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, num_classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def make_trainer(
    tmp_path: Path | str | None = None, callbacks: Sequence[pl.Callback] = (), max_steps: int = 3, **kw: Any
) -> pl.Trainer:
    """A quiet CPU Trainer: no logger, checkpointing, progress bar or summary unless asked for."""
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    if tmp_path is not None:
        defaults["default_root_dir"] = str(tmp_path)
    return pl.Trainer(max_steps=max_steps, callbacks=list(callbacks), **{**defaults, **kw})


def signal_after_steps(
    proc: subprocess.Popen, record: Path, at_step: int, sig: int, timeout: float = 300
) -> str:
    """Send ``sig`` to ``proc`` once ``record`` (a JSONL line per step) has ``at_step`` lines; return its output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if record.exists() and len(record.read_text().splitlines()) >= at_step:
            proc.send_signal(sig)
            break
        time.sleep(0.01)
    output, _ = proc.communicate(timeout=timeout)
    return output


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a test's rendezvous (MASTER_PORT, --master-port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(
    script: Path, world: int, *args: object, timeout: float, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``script`` with ``python -m torch.distributed.run`` on ``world`` local processes (a free master port);
    ``args`` follow the script. Returns the finished process (output captured as text)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
        f"--master-port={free_port()}", str(script), *map(str, args),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
