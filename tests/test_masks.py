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
