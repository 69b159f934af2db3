"""Generative augmentation on the digits: a small class-conditional GAN trained on 10% of the training images,
then a classifier trained on those real images alone against real + GAN samples (``GenerativeAugment``).

The GAN sees only the same 10% subset as the classifier (no other image leaks in). Both classifiers get the
same steps, batch size, model and seed; validation is the full held-out 20% of the digits. Accuracy does not
depend on machine load. Writes a PNG of generated digits per class beside the JSON.

Run: ``python -m benchmarks generative_augment [--fraction 0.1] [--gan-steps 3000] [--seeds 0,1,2]``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

RESULTS = Path(__file__).resolve().parent / "results"


class CondGenerator(nn.Module):
    """z (latent_dim) + class embedding -> MLP -> 8x8 image in [0, 1], then the datamodule's standardisation."""

    def __init__(
        self,
        latent_dim: int = 32,
        num_classes: int = 10,
        hidden: int = 256,
        mean: float = 0.0,
        std: float = 1.0,
    ):
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.embed = nn.Embedding(num_classes, 16)
        self.net = nn.Sequential(
            nn.Linear(latent_dim + 16, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 64),
            nn.Sigmoid(),
        )
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        pixels = self.net(torch.cat([z, self.embed(labels)], 1)).view(-1, 1, 8, 8)  # (B, 1, 8, 8) in [0, 1]
        return (pixels - self.mean) / self.std


class CondDiscriminator(nn.Module):
    """Projection discriminator (Miyato & Koyama 2018): MLP features, plus <class embedding, features>."""

    def __init__(self, num_classes: int = 10, hidden: int = 256):
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.LeakyReLU(0.2), nn.Dropout(0.3),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
        )  # fmt: skip
        self.out = nn.Linear(hidden, 1)
        self.embed = nn.Embedding(num_classes, hidden)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        h = self.features(x)
        return self.out(h).squeeze(1) + (self.embed(labels) * h).sum(1)


def train_gan(x: Tensor, y: Tensor, steps: int, seed: int, mean: float, std: float) -> CondGenerator:
    """Non-saturating GAN loss, Adam(2e-4, betas 0.5/0.999), batch 64 drawn with replacement."""
    torch.manual_seed(seed)
    gen, disc = CondGenerator(mean=mean, std=std), CondDiscriminator()
    opt_g = torch.optim.Adam(gen.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), 2e-4, betas=(0.5, 0.999))
    bce = nn.functional.binary_cross_entropy_with_logits
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,))
        real, labels = x[idx], y[idx]
        fake = gen(torch.randn(64, gen.latent_dim), labels)
        d_real, d_fake = disc(real, labels), disc(fake.detach(), labels)
        loss_d = bce(d_real, torch.full_like(d_real, 0.9)) + bce(d_fake, torch.zeros_like(d_fake))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        d_gen = disc(fake, labels)
        loss_g = bce(d_gen, torch.ones_like(d_gen))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    return gen.eval()


def subset(dataset: TensorDataset, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A stratified ``fraction`` of a dataset's rows."""
    x, y = dataset.tensors
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in y.unique():
        idx = torch.nonzero(y == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)[: max(1, round(fraction * len(idx)))]])
    rows = torch.cat(keep)
    return x[rows], y[rows]


def train_classifier(
    x: Tensor, y: Tensor, val: TensorDataset, steps: int, seed: int, callbacks: list
) -> float:
    import lightning.pytorch as pl

    from kit.models.classifier import ImageClassifier

    pl.seed_everything(seed, verbose=False)
    model = ImageClassifier(num_classes=10, in_channels=1, image_size=8)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=32,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    trainer = pl.Trainer(
        max_steps=steps,
        max_epochs=-1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        limit_val_batches=0,
    )
    trainer.fit(model, loader)
    model.eval()
    xv, yv = val.tensors
    with torch.no_grad():
        return float((model(xv).argmax(-1) == yv).float().mean())


def sample_grid(gen: CondGenerator, path: Path, per_class: int = 8) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = torch.arange(10).repeat_interleave(per_class)
    with torch.no_grad():
        imgs = gen(
            torch.randn(len(labels), gen.latent_dim, generator=torch.Generator().manual_seed(0)), labels
        )
    imgs = (imgs * gen.std + gen.mean).clamp(0, 1).view(10, per_class, 8, 8)
    imgs = nn.functional.pad(imgs, (1, 1, 1, 1))  # a blank pixel between images
    grid = imgs.permute(0, 2, 1, 3).reshape(10 * 10, per_class * 10)  # rows: classes, columns: samples
    fig = Figure(figsize=(per_class * 0.6 + 0.6, 10 * 0.6 + 0.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(grid.numpy(), cmap="gray_r", interpolation="nearest")
    ax.set_yticks([10 * c + 4.5 for c in range(10)], [str(c) for c in range(10)])
    ax.set_xticks([])
    ax.set_title("conditional GAN samples\n(one row per class)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks generative_augment")
    parser.add_argument("--fraction", type=float, default=0.1, help="share of the training digits used")
    parser.add_argument("--gan-steps", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=600, help="classifier optimizer steps (batch 32)")
    parser.add_argument("--ratio", type=float, default=0.5, help="GenerativeAugment share of each batch")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--png", type=Path, default=RESULTS / "generative_augment.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from kit.callbacks import GenerativeAugment
    from kit.datamodules.digits import DigitsDataModule

    dm = DigitsDataModule(val_fraction=0.2, seed=0)
    dm.setup("fit")
    assert dm.train_set is not None and dm.val_set is not None
    mean_std = {}
    raw = dm.train_set.tensors[0]
    # the datamodule standardised pixels/16 with the train mean/std; recover them to map [0, 1] pixels
    # (0 and 1 are the extremes of the data, so min and max give the affine map back)
    lo, hi = float(raw.min()), float(raw.max())
    mean_std["std"] = 1.0 / (hi - lo)
    mean_std["mean"] = -lo * mean_std["std"]
    x, y = subset(dm.train_set, args.fraction, seed=0)
    rows, seeds = [], [int(s) for s in args.seeds.split(",")]
    gen = None
    for seed in seeds:
        gen = train_gan(x, y, args.gan_steps, seed, **mean_std)
        real = train_classifier(x, y, dm.val_set, args.steps, seed, [])
        mixed = train_classifier(
            x, y, dm.val_set, args.steps, seed, [GenerativeAugment(gen, ratio=args.ratio, seed=seed)]
        )
        rows.append(
            {
                "seed": seed,
                "train_images": len(x),
                "real_only_acc": round(real, 4),
                "real_plus_gan_acc": round(mixed, 4),
            }
        )
    assert gen is not None
    args.png.parent.mkdir(parents=True, exist_ok=True)
    sample_grid(gen, args.png)
    real_m = statistics.mean(r["real_only_acc"] for r in rows)
    mixed_m = statistics.mean(r["real_plus_gan_acc"] for r in rows)
    return {
        "title": f"Generative augmentation on digits at {args.fraction:.0%} of the training data",
        "device": f"CPU, {args.threads} torch thread(s); accuracies do not depend on load",
        "rows": rows,
        "plots": [args.png.name],  # written beside the JSON
        "notes": [
            f"{len(x)} real training images ({args.fraction:.0%} of the stratified 80% train split, same subset for "
            f"the GAN and the classifiers); validation: all {len(dm.val_set)} held-out digits",
            f"GAN: MLP generator + projection discriminator, {args.gan_steps} steps, batch 64, Adam 2e-4; one GAN per seed",
            f"classifier: kit.models.classifier.ImageClassifier, {args.steps} steps of batch 32; with GenerativeAugment "
            f"ratio={args.ratio} (labels='batch') against real images only, same seed",
            f"mean validation accuracy: real only {real_m:.4f}, real + GAN {mixed_m:.4f} (difference {mixed_m - real_m:+.4f})",
        ],
    }
