"""Natural-image crops for masked image modelling, from images that ship inside installed packages.

``natural_crops`` cuts small RGB crops out of the photos and textures bundled with scikit-image (the ones its
``skimage.data`` returns without a download) and scikit-learn (``load_sample_images``). Each crop's label is
its source image — a probe label no pretraining objective sees. ``fashion32`` is Fashion-MNIST padded to
32×32 with three equal channels, and ``mim_corpus`` mixes the two: the pretraining data of the zoo's tiny MAEs.

Crops are drawn with a seeded NumPy generator, so the same ``(n, size, seed)`` gives the same tensors.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .images import ImageSet, load_fashion_mnist

# skimage.data functions that work offline (bundled with the wheel); textures and photos, colour and grey
SKIMAGE_IMAGES = ("astronaut", "camera", "chelsea", "coffee", "coins", "horse", "moon", "rocket",
                  "hubble_deep_field", "immunohistochemistry", "brick", "grass", "gravel", "clock", "page",
                  "text", "retina", "cell", "colorwheel", "logo")
SKLEARN_IMAGES = ("china.jpg", "flower.jpg")


def _rgb(a: np.ndarray, short_side: int) -> np.ndarray:
    """Any image → float32 RGB in [0, 1], resized (anti-aliased) so its shorter side is ``short_side``."""
    from skimage.transform import resize

    a = np.asarray(a)
    a = a.astype(np.float32) / (255.0 if a.dtype == np.uint8 or a.max() > 1.5 else 1.0)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    a = a[..., :3]
    scale = short_side / min(a.shape[:2])
    shape = (round(a.shape[0] * scale), round(a.shape[1] * scale))
    return resize(a, shape, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32).clip(0, 1)


@functools.lru_cache(maxsize=4)
def source_images(short_side: int = 96) -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
    """(names, images): every bundled photo as an (H, W, 3) float32 array with shorter side ``short_side``."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    names, images = [], []
    for name in SKIMAGE_IMAGES:
        names.append(name)
        images.append(_rgb(getattr(skimage.data, name)(), short_side))
    sample = load_sample_images()
    for fname, img in zip(sample.filenames, sample.images):
        names.append(fname.rsplit("/", 1)[-1].removesuffix(".jpg"))
        images.append(_rgb(img, short_side))
    return tuple(names), tuple(images)


def natural_crops(n: int, size: int = 32, seed: int = 0, short_side: int = 96) -> ImageSet:
    """``n`` random ``size``×``size`` RGB crops (random horizontal flip) of the bundled photos.

    Each source photo is equally likely; ``labels`` = index of the source photo in ``class_names``; ``masks``
    are all True (no object). Returns images (n, 3, size, size) float32 in [0, 1].
    """
    names, images = source_images(short_side)
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    labels = rng.integers(len(images), size=n)
    for i, k in enumerate(labels):
        a = images[k]
        y, x = rng.integers(a.shape[0] - size + 1), rng.integers(a.shape[1] - size + 1)
        crop = a[y:y + size, x:x + size]
        out[i] = (crop[:, ::-1] if rng.random() < 0.5 else crop).transpose(2, 0, 1)
    x = torch.from_numpy(out)
    return ImageSet(x, torch.from_numpy(labels.astype(np.int64)), torch.ones(n, 1, size, size, dtype=torch.bool),
                    names)


def fashion32(split: str = "train", n: int | None = None, seed: int = 0) -> ImageSet:
    """Fashion-MNIST padded from 28 to 32 pixels with 3 equal channels (raises ``DataError`` when missing)."""
    fm = load_fashion_mnist(split, n=n, seed=seed)
    return ImageSet(F.pad(fm.images, (2, 2, 2, 2)).repeat(1, 3, 1, 1), fm.labels, F.pad(fm.masks, (2, 2, 2, 2)),
                    fm.class_names)


def mim_corpus(n: int, seed: int = 0) -> ImageSet:
    """The zoo MAEs' pretraining images: half natural crops, half Fashion-MNIST (all natural crops when
    Fashion-MNIST is not installed), shuffled. Labels are not meant for training: natural crops keep their
    source index, garments get ``len(natural class_names)`` + their class."""
    from .files import available

    if not available("fashion_mnist"):
        return natural_crops(n, seed=seed)
    nat = natural_crops(n - n // 2, seed=seed)
    fm = fashion32("train", n=n // 2, seed=seed)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return ImageSet(torch.cat([nat.images, fm.images])[order],
                    torch.cat([nat.labels, fm.labels + len(nat.class_names)])[order],
                    torch.cat([nat.masks, fm.masks])[order], nat.class_names + fm.class_names)


__all__ = ["SKIMAGE_IMAGES", "SKLEARN_IMAGES", "source_images", "natural_crops", "fashion32", "mim_corpus"]
