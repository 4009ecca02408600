"""ColorMAE's masks have the spectra their noise colours promise: true by construction (FFT-filtered noise has
the filter's spectrum), so these are unit tests, not claims of the notebook."""

import pytest
import torch

from companion import mim
from companion.methods.masked_image_modeling import colormae

LOW, MIDDLE, HIGH = 0, 1, 2


@pytest.fixture(scope="module")
def shares():
    """Per-mask power share in the low / middle / high band, 300 masks per kind on the notebook's 8x8 grid."""
    g = torch.Generator().manual_seed(0)
    kinds = ("random", "white", "red", "blue", "green", "purple")
    return {k: colormae.band_shares(mim.mask_generator(k, 8, 0.75)(300, g)) for k in kinds}


def mean_share(shares, kind, band):
    return shares[kind][:, band].mean().item()


@pytest.mark.parametrize(("colour", "band", "direction"), [
    ("red", LOW, "higher"),  # low-pass
    ("blue", LOW, "lower"),
    ("blue", HIGH, "higher"),  # high-pass
    ("green", MIDDLE, "higher"),  # band-pass
    ("purple", MIDDLE, "lower"),  # band-stop
])
def test_each_colour_moves_power_into_or_out_of_its_band(shares, colour, band, direction):
    white, coloured = mean_share(shares, "white", band), mean_share(shares, colour, band)
    gap = coloured - white if direction == "higher" else white - coloured
    assert gap > 0.02, (colour, band, white, coloured)


def test_white_noise_masks_look_like_random_masks(shares):
    for band in (LOW, MIDDLE, HIGH):
        assert abs(mean_share(shares, "white", band) - mean_share(shares, "random", band)) < 0.02


def test_band_shares_are_a_distribution(shares):
    for s in shares.values():
        assert torch.allclose(s.sum(1), torch.ones(len(s))) and (s >= 0).all()


def test_green_masks_remove_tokens_farther_from_visible_ones_than_random_masks():
    g = torch.Generator().manual_seed(1)
    random, green = (colormae.distance_to_visible(mim.mask_generator(k, 8, 0.75)(300, g)) for k in ("random", "green"))
    assert green.mean() > random.mean() + 0.01
    red = colormae.distance_to_visible(mim.mask_generator("red", 8, 0.75)(300, g))
    assert red.mean() > green.mean()  # large low-frequency holes: the farthest context


def test_every_mask_kind_removes_the_same_number_of_tokens():
    g = torch.Generator().manual_seed(2)
    for kind in ("random", "white", "red", "blue", "green", "purple"):
        assert mim.mask_generator(kind, 8, 0.75)(50, g).sum(1).eq(16).all(), kind
