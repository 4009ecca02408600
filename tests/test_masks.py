import pytest
import torch

from companion import masks


def test_random_patches_remove_an_exact_share():
    keep = masks.random_patches(8, 16, 4, 0.75, torch.Generator().manual_seed(0))
    assert keep.shape == (8, 1, 16, 16) and keep.dtype == torch.bool
    removed = (~keep).float().view(8, 4, 4, 4, 4).mean(dim=(2, 4))
    assert ((removed == 0) | (removed == 1)).all()  # whole patches only
    assert (removed.sum(dim=(1, 2)) == 12).all()  # 75 % of 16 patches


def test_random_patches_reject_bad_ratio():
    with pytest.raises(ValueError, match="ratio"):
        masks.random_patches(1, 16, 4, 1.5)


def test_background_blocks_never_touch_the_object():
    objects = torch.zeros(4, 1, 20, 20, dtype=torch.bool)
    objects[:, :, 5:12, 5:12] = True
    keep = masks.background_blocks(objects, 3, 6, generator=torch.Generator().manual_seed(0))
    assert (keep[objects]).all()
    assert (~keep).sum() > 0
    grown = torch.nn.functional.max_pool2d(objects.float(), 3, 1, 1).bool()
    assert keep[grown].all()  # the one-pixel margin is respected


def test_background_patches_are_patch_aligned_and_off_object():
    objects = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    objects[:, :, 0:3, 0:3] = True
    keep = masks.background_patches(objects, 4, 0.25, torch.Generator().manual_seed(0))
    removed = (~keep).float().view(2, 4, 4, 4, 4).mean(dim=(2, 4))
    assert ((removed == 0) | (removed == 1)).all()
    assert keep[objects].all()
    assert (removed.sum(dim=(1, 2)) == 4).all()  # a quarter of the 16 patches
    # never more than the 15 background patches
    assert (~masks.background_patches(objects, 4, 1.0)).float().view(2, -1).sum(1).tolist() == [15 * 16] * 2


def test_silhouette_removes_exactly_the_object():
    objects = torch.rand(2, 1, 8, 8) > 0.5
    assert torch.equal(masks.silhouette(objects), ~objects)


def test_segments_and_their_masks():
    seg = masks.grid_segments(8, 4)
    assert seg.unique().tolist() == [0, 1, 2, 3]
    keep = masks.segments_to_mask(torch.tensor([[1, 0, 0, 1]]), seg)
    assert keep.shape == (1, 1, 8, 8) and keep[0, 0, 0, 0] and not keep[0, 0, 0, 5] and keep[0, 0, 7, 7]


def test_superpixels_cover_the_image_with_dense_labels():
    img = torch.zeros(3, 24, 24)
    img[:, :, 12:] = 1.0
    seg = masks.superpixels(img, 8)
    assert seg.shape == (24, 24)
    assert seg.unique().tolist() == list(range(int(seg.max()) + 1))
    # no superpixel straddles the sharp edge
    for s in seg.unique():
        side = (seg == s).nonzero()[:, 1] >= 12
        assert side.all() or (~side).all()


def test_superpixels_of_a_greyscale_image_are_two_dimensional():
    img = torch.zeros(1, 28, 28)
    img[:, 8:20, 8:20] = 1.0
    seg = masks.superpixels(img, 10)
    assert seg.shape == (28, 28) and seg.max() >= 2


def test_token_ratio_mask_is_exact_and_seeded():
    visible = masks.token_ratio_mask(50, 64, 0.75, torch.Generator().manual_seed(0))
    assert visible.shape == (50, 64) and visible.dtype == torch.bool
    assert (visible.sum(1) == 16).all()
    assert torch.equal(visible, masks.token_ratio_mask(50, 64, 0.75, torch.Generator().manual_seed(0)))
    assert (masks.token_ratio_mask(3, 10, 0.0).sum(1) == 10).all()
    with pytest.raises(ValueError, match="ratio"):
        masks.token_ratio_mask(1, 10, -0.1)


def test_token_to_pixel_mask_is_patch_aligned():
    visible = torch.zeros(1, 4, dtype=torch.bool)
    visible[0, 1] = True  # row 0, column 1
    keep = masks.token_to_pixel_mask(visible, 3)
    assert keep.shape == (1, 1, 6, 6) and keep[0, 0, :3, 3:].all() and keep.sum() == 9


@pytest.mark.parametrize("colour", masks.NOISE_COLOURS)
def test_colour_noise_mask_keeps_an_exact_count_of_the_highest_values(colour):
    visible = masks.colour_noise_mask(20, 8, 0.75, colour, torch.Generator().manual_seed(0))
    assert visible.shape == (20, 64) and (visible.sum(1) == 16).all()
    noise = masks.colour_noise(20, 8, colour, torch.Generator().manual_seed(0)).flatten(1)
    assert (noise[visible].view(20, 16).min(1).values > noise[~visible].view(20, 48).max(1).values).all()
    again = masks.colour_noise_mask(20, 8, 0.75, colour, torch.Generator().manual_seed(0))
    assert torch.equal(visible, again)


def test_colour_noise_spectra_are_ordered_as_the_colours_say():
    g = torch.Generator().manual_seed(0)
    spectra = {c: masks.radial_power_spectrum(masks.colour_noise_mask(400, 8, 0.75, c, g))[1]
               for c in masks.NOISE_COLOURS}
    low, mid, high = 1, 2, 4  # radii in cycles per 8 tokens
    red, blue, green, purple, white = (spectra[c] for c in ("red", "blue", "green", "purple", "white"))
    assert red[low] > 2 * blue[low] and blue[high] > 2 * red[high]  # red low-pass, blue high-pass
    assert red[low] > red[mid] > red[high] and blue[low] < blue[mid] < blue[high]
    assert green[mid] > green[low] and green[mid] > green[high]  # band-pass peaks mid-band
    assert purple[mid] < purple[low] and purple[mid] < purple[high]  # band-stop dips there
    assert white.max() / white[1:].min() < 1.2  # white is flat
    assert spectra["white"][0] == 0  # mean removed


def test_radial_power_spectrum_of_stripes_sits_at_nyquist():
    stripes = (torch.arange(8)[None, :] % 2).expand(8, 8)  # alternating columns: 0.5 cycles per token
    freq, power = masks.radial_power_spectrum(stripes[None].bool())
    assert freq[-1] == 0.5 and power.argmax() == len(power) - 1 and power[:-1].max() < 1e-6 * power[-1]


def test_colour_noise_rejects_unknown_colour():
    with pytest.raises(ValueError, match="colour"):
        masks.colour_noise_mask(1, 8, 0.5, "pink")
