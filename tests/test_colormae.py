"""ColorMAE's masks have the spectra their noise colours promise: true by construction (FFT-filtered noise has
the filter's spectrum), so these are unit tests, not claims of the notebook. The notebook's grid is 14x14."""

import pytest
import torch

from companion import mim
from companion.methods.masked_image_modeling import colormae
from companion.models import MAE

LOW, MIDDLE, HIGH = 0, 1, 2
GRID = 14
KINDS = ("random", "white", "red", "blue", "green", "purple")


@pytest.fixture(scope="module")
def drawn():
    """300 masks per kind on the notebook's 14x14 grid."""
    g = torch.Generator().manual_seed(0)
    return {k: mim.mask_generator(k, GRID, 0.75)(300, g) for k in KINDS}


@pytest.fixture(scope="module")
def shares(drawn):
    """Per-mask power share in the low / middle / high band."""
    return {k: colormae.band_shares(m) for k, m in drawn.items()}


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
    assert gap > 0.04, (colour, band, white, coloured)


def test_white_noise_masks_look_like_random_masks(shares, drawn):
    for band in (LOW, MIDDLE, HIGH):
        assert abs(mean_share(shares, "white", band) - mean_share(shares, "random", band)) < 0.02
    clustering = {k: colormae.visible_clustering(drawn[k]).mean().item() for k in ("white", "random")}
    assert abs(clustering["white"] - clustering["random"]) < 0.02


def test_band_shares_are_a_distribution(shares):
    for s in shares.values():
        assert torch.allclose(s.sum(1), torch.ones(len(s))) and (s >= 0).all()


def test_green_masks_keep_visible_tokens_in_islands_and_blue_masks_spread_them(drawn):
    share = {k: colormae.visible_clustering(drawn[k]).mean().item() for k in KINDS}
    assert share["green"] > share["random"] + 0.1  # visibly different from random on the 14x14 grid
    assert share["blue"] < share["random"] - 0.1
    assert share["red"] > share["green"]  # large low-frequency blobs


def test_red_masks_remove_tokens_farthest_from_visible_ones(drawn):
    dist = {k: colormae.distance_to_visible(drawn[k]).mean().item() for k in ("random", "green", "red")}
    assert dist["red"] > dist["green"] > dist["random"]


def test_visible_clustering_on_hand_made_masks():
    pair = torch.zeros(1, 3, 3, dtype=torch.bool)
    pair[0, 0, :2] = True  # two neighbours
    lone = torch.zeros(1, 3, 3, dtype=torch.bool)
    lone[0, 0, 0] = lone[0, 2, 2] = True  # two isolated tokens
    corners = torch.cat([pair, lone]).flatten(1)
    assert colormae.visible_clustering(corners).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="square"):
        colormae.visible_clustering(torch.ones(1, 5, dtype=torch.bool))


def test_every_mask_kind_removes_the_same_number_of_tokens():
    g = torch.Generator().manual_seed(2)
    for kind in KINDS:
        assert mim.mask_generator(kind, GRID, 0.75)(50, g).sum(1).eq(GRID * GRID // 4).all(), kind


def test_mixture_draws_each_mask_from_one_generator_in_the_given_share():
    ones = lambda n, g: torch.ones(n, 4, dtype=torch.bool)  # noqa: E731
    zeros = lambda n, g: torch.zeros(n, 4, dtype=torch.bool)  # noqa: E731
    m = colormae.mixture(ones, zeros, 0.5)(2000, torch.Generator().manual_seed(0))
    assert (m.all(1) | ~m.any(1)).all()  # every row comes whole from one generator
    assert abs(m.all(1).float().mean().item() - 0.5) < 0.05
    again = colormae.mixture(ones, zeros, 0.5)(2000, torch.Generator().manual_seed(0))
    assert torch.equal(m, again)


def test_at_resolution_keeps_every_weight_and_rebuilds_the_grid():
    torch.manual_seed(0)
    small = MAE(image_size=32, patch_size=4, dim=32, depth=1, heads=4, decoder_dim=32, decoder_depth=1).eval()
    for p in small.parameters():
        p.requires_grad_(False)
    big = colormae.at_resolution(small, 56)
    assert big.grid == 14 and big.training and all(p.requires_grad for p in big.parameters())
    assert all(torch.equal(v, big.state_dict()[k]) for k, v in small.state_dict().items())
    loss, pred, visible = big(torch.rand(2, 3, 56, 56))
    assert pred.shape == (2, 196, 48) and torch.isfinite(loss)
