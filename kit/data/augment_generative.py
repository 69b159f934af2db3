"""Generative augmentation: put samples of a class-conditional generator into training batches, with labels.

Any generator module works that either has a ``sample(labels, generator=...)`` method, or is called as
``module(z, labels)`` with ``z`` of shape ``(n, latent_dim)`` drawn from a standard normal (``latent_dim``
read from the module's ``latent_dim`` attribute or passed in): a conditional GAN (StyleGAN-style conditional
mapping included), a conditional VAE decoder, or a diffusion sampler wrapped in ``sample``. The generator is
only run forward, under ``torch.no_grad()``; it is never trained here.

A share ``ratio`` of each batch's rows is *replaced*, so the batch size, memory and step count stay as they
are. Each replaced row gets a synthetic sample of the same class as the real one it replaces
(``labels="batch"``: the class mix is unchanged), or of a uniformly drawn class (``labels="uniform"``:
flattens a long tail). Integer labels stay integer; soft targets ``(B, C)`` get one-hot rows.

Example:
    >>> import torch
    >>> class Gen(torch.nn.Module):  # any class-conditional module: (z, labels) -> images
    ...     latent_dim = 4
    ...     def forward(self, z, labels):
    ...         return torch.full((len(labels), 1, 2, 2), -1.0) + labels.view(-1, 1, 1, 1)
    >>> x, y = torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 2, 3])
    >>> xm, ym, rows = mix_generated(x, y, Gen(), ratio=0.5, rng=torch.Generator().manual_seed(0))
    >>> len(rows), bool((xm[rows, 0, 0, 0] == ym[rows] - 1).all()), ym.tolist() == y.tolist()
    (2, True, True)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LABEL_MODES", "generate", "mix_generated"]

LABEL_MODES = ("batch", "uniform")


def generate(
    generator: nn.Module, labels: Tensor, latent_dim: int | None = None, rng: torch.Generator | None = None
) -> Tensor:
    """Samples of ``generator`` for ``labels`` (no gradients): ``sample(labels, generator=rng)`` if the module
    has it, else ``module(z, labels)`` with ``z ~ N(0, I)`` drawn on the CPU from ``rng``.

    Raises:
        ValueError: the module has neither ``sample`` nor a latent size.
    """
    with torch.no_grad():
        if callable(getattr(generator, "sample", None)):
            return generator.sample(labels, generator=rng)
        dim = latent_dim or getattr(generator, "latent_dim", None)
        if not dim:
            raise ValueError(
                f"{type(generator).__name__} has no sample(labels, generator=...) method and no latent_dim "
                "attribute; pass latent_dim=... (the size of z in generator(z, labels))"
            )
        z = torch.randn(len(labels), int(dim), generator=rng).to(labels.device, non_blocking=True)
        return generator(z, labels)


def mix_generated(
    x: Tensor,
    y: Tensor,
    generator: nn.Module,
    ratio: float,
    labels: str = "batch",
    num_classes: int | None = None,
    latent_dim: int | None = None,
    rng: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Replace ``round(ratio * B)`` random rows of ``(x, y)`` by generated samples with their labels.

    Args:
        x: inputs ``(B, ...)``; generated samples must have the same per-sample shape.
        y: class indices ``(B,)`` or soft targets ``(B, C)``.
        generator: class-conditional generator (see the module docstring).
        ratio: share of the batch replaced, in [0, 1].
        labels: ``"batch"`` (the replaced row's class) or ``"uniform"`` (a class drawn uniformly).
        num_classes: needed for ``"uniform"`` with integer labels.
        latent_dim: size of ``z`` when the generator has no ``latent_dim`` attribute.
        rng: CPU generator for the rows, the classes and ``z``, so a run can be pinned and resumed.

    Returns:
        ``(x, y, rows)``: new tensors (the inputs are not modified) and the replaced row indices.

    Raises:
        ValueError: ``ratio`` outside [0, 1], unknown ``labels`` mode, no class count for ``"uniform"``, or
            generated samples of the wrong shape.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio={ratio} must lie in [0, 1] (the share of each batch that is generated)")
    if labels not in LABEL_MODES:
        raise ValueError(f"labels={labels!r} is not one of {LABEL_MODES}")
    batch = x.shape[0]
    n = round(ratio * batch)
    rows = torch.randperm(batch, generator=rng)[:n].to(x.device, non_blocking=True)
    if n == 0:
        return x, y, rows
    soft = y.dim() == 2
    classes = y.shape[1] if soft else num_classes
    if labels == "uniform":
        if not classes:
            raise ValueError("labels='uniform' with integer labels needs num_classes=C")
        cls = torch.randint(0, int(classes), (n,), generator=rng).to(x.device, non_blocking=True)
    else:
        cls = (y[rows].argmax(-1) if soft else y[rows]).long()
    fake = generate(generator, cls, latent_dim, rng).to(x.dtype)
    if fake.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"generator made samples of shape {tuple(fake.shape[1:])}; the batch has {tuple(x.shape[1:])}"
        )
    x, y = x.clone(), y.clone()
    x[rows] = fake
    if soft:
        y[rows] = torch.zeros_like(y[rows]).scatter_(1, cls.view(-1, 1), 1.0)
    else:
        y[rows] = cls.to(y.dtype)
    return x, y, rows
