import pytest
import torch

from companion import data
from companion.data import natural


def test_natural_crops_are_seeded_rgb_crops_labelled_by_source():
    a = natural.natural_crops(40, size=32, seed=3)
    b = natural.natural_crops(40, size=32, seed=3)
    assert a.images.shape == (40, 3, 32, 32) and a.images.dtype == torch.float32
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert 0.0 <= a.images.min() and a.images.max() <= 1.0
    assert len(a.class_names) == len(natural.SKIMAGE_IMAGES) + len(natural.SKLEARN_IMAGES)
    assert a.labels.min() >= 0 and a.labels.max() < len(a.class_names)
    assert not torch.equal(a.images, natural.natural_crops(40, size=32, seed=4).images)


def test_every_source_is_large_enough_for_a_crop():
    names, images = natural.source_images()
    assert len(names) == len(images) and all(min(im.shape[:2]) == 96 and im.shape[2] == 3 for im in images)


@pytest.mark.skipif(not data.available("fashion_mnist"), reason="Fashion-MNIST is not installed")
def test_fashion32_and_the_corpus_mix():
    fm = natural.fashion32("test", n=10, seed=0)
    assert fm.images.shape == (10, 3, 32, 32) and torch.equal(fm.images[:, 0], fm.images[:, 1])
    assert fm.images[:, :, :2].abs().max() == 0  # padding
    corpus = natural.mim_corpus(20, seed=0)
    n_sources = len(natural.SKIMAGE_IMAGES) + len(natural.SKLEARN_IMAGES)
    assert corpus.images.shape == (20, 3, 32, 32) and (corpus.labels >= n_sources).sum() == 10
