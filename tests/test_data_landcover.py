import torch
import torch.nn.functional as F

from companion.data import landcover


def test_labels_match_area_fractions():
    m = landcover.make_mosaics(50, size=16, max_tiles=6, threshold=0.1, seed=3)
    assert m.images.shape == (50, 6, 16, 16) and m.images.dtype == torch.float32
    counts = torch.stack([torch.bincount(c.flatten(), minlength=8) for c in m.class_map]).float()
    assert torch.allclose(m.fractions, counts / 256)
    assert torch.allclose(m.fractions.sum(1), torch.ones(50))
    assert torch.equal(m.labels, (counts / 256 >= 0.1).float())
    assert (m.labels.sum(1) >= 1).all()  # the largest class always covers at least 1/8 of the scene


def test_tiles_and_signatures():
    m = landcover.make_mosaics(40, size=12, max_tiles=3, noise=0.0, seed=1)
    assert ((m.fractions > 0).sum(1) <= 3).all()
    # a flat class without noise is its signature times the scene gain plus the band offset: one value per band
    water = m.class_map == 0
    i = int(water.flatten(1).any(1).nonzero()[0])
    pix = m.images[i][:, water[i]]
    assert torch.allclose(pix, pix[:, :1].expand_as(pix), atol=1e-6)


def test_mosaics_are_seeded():
    a, b = landcover.make_mosaics(8, seed=5), landcover.make_mosaics(8, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, landcover.make_mosaics(8, seed=6).images)
    assert F.one_hot(a.class_map, 8).shape == (8, 16, 16, 8)
