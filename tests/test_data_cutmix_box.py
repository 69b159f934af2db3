"""CutMix box rounding: an unclipped box has exactly the cut size, odd sizes included (timm 1.0's rand_bbox)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.data.augment_image import cutmix_batch, cutmix_box


@given(st.integers(1, 40), st.integers(1, 40), st.floats(0.0, 1.0), st.integers(0, 10_000))
@settings(max_examples=200, deadline=None)
def test_unclipped_box_has_the_cut_size(height, width, lam, seed):
    y0, y1, x0, x1 = cutmix_box(height, width, lam, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)  # the same draws: the box's centre
    cy, cx = (int(torch.randint(0, n, (1,), generator=g).item()) for n in (height, width))
    ratio = math.sqrt(1 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    assert (y0, y1) == (max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, height))
    assert (x0, x1) == (max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, width))
    if cut_h // 2 <= cy <= height - (cut_h + 1) // 2:  # not clipped: exactly cut_h rows
        assert y1 - y0 == cut_h


@pytest.mark.parametrize(("lam", "side"), [(0.5, 5), (0.75, 4), (1 - 49 / 64, 7), (1.0, 0)])
def test_digits_box_at_the_centre(lam, side):
    """8x8 digits: at lam 0.5 the box is 5x5 (int(8 * 0.707)), as timm pastes, not 4x4."""
    sides = set()
    for seed in range(200):
        y0, y1, x0, x1 = cutmix_box(8, 8, lam, torch.Generator().manual_seed(seed))
        sides.add(max(y1 - y0, x1 - x0))
    assert max(sides) == side
    x = torch.arange(64.0).view(1, 1, 8, 8).repeat(2, 1, 1, 1)
    _, _, lam_out, _ = cutmix_batch(x, torch.tensor([0, 1]), num_classes=2, box=(1, 1 + side, 0, side))
    assert lam_out == pytest.approx(1 - side * side / 64)
