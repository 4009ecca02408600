import numpy as np
import pytest
import torch

from companion import data


def test_shapes_are_deterministic_and_shaped():
    a = data.make_shapes(50, 24, "varied", seed=1)
    b = data.make_shapes(50, 24, "varied", seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (50, 3, 24, 24) and a.masks.shape == (50, 1, 24, 24) and a.masks.dtype == torch.bool
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert not torch.equal(a.images, data.make_shapes(50, 24, "varied", seed=2).images)


def test_object_masks_mark_the_object_pixels():
    s = data.make_shapes(200, 32, "varied", seed=0)
    area = s.masks.float().mean(dim=(1, 2, 3))
    assert (area > 0.03).all() and (area < 0.5).all()
    # pixels on the object differ from the background by the guaranteed brightness gap
    for i in range(20):
        img, m = s.images[i].mean(0), s.masks[i, 0]
        assert abs(img[m].mean() - img[~m].mean()) > 0.15


def test_every_class_has_its_own_silhouette():
    s = data.make_shapes(400, 32, "varied", seed=0)
    assert set(s.labels.tolist()) == {0, 1, 2, 3}
    # squares fill their bounding box more than crosses do
    def fill_ratio(k):
        ms = s.masks[s.labels == k, 0]
        ratios = []
        for m in ms:
            ys, xs = m.nonzero(as_tuple=True)
            ratios.append(m.sum().item() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)).item())
        return np.mean(ratios)
    assert fill_ratio(data.SHAPE_CLASSES.index("square")) > 0.9 > 0.6 > fill_ratio(data.SHAPE_CLASSES.index("cross"))


def test_background_regimes():
    varied = data.make_shapes(300, 24, "varied", seed=0)
    dark = data.make_shapes(300, 24, "dark", seed=0)
    bg_varied = torch.stack([varied.images[i][:, ~varied.masks[i, 0]].mean() for i in range(300)])
    bg_dark = torch.stack([dark.images[i][:, ~dark.masks[i, 0]].mean() for i in range(300)])
    assert bg_dark.max() < 0.15
    assert bg_varied.std() > 0.15 and bg_varied.min() < 0.25 and bg_varied.max() > 0.65
    with pytest.raises(ValueError, match="background"):
        data.make_shapes(2, 16, "neon")


def test_fashion_mnist_reads_idx_files(tmp_path):
    import gzip

    images = np.zeros((3, 28, 28), np.uint8)
    images[:, 10:20, 10:20] = 200
    labels = np.array([1, 2, 3], np.uint8)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + images.tobytes())
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + labels.tobytes())
    ds = data.load_fashion_mnist("train", data_dir=str(tmp_path))
    assert ds.images.shape == (3, 1, 28, 28) and ds.labels.tolist() == [1, 2, 3]
    assert ds.masks[0, 0, 15, 15] and not ds.masks[0, 0, 0, 0]
    assert data.available("fashion_mnist", str(tmp_path))
