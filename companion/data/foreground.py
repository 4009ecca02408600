"""Real photographs with object (foreground) masks and ImageNet-1k labels, for layer_masking's ``full`` profile.

The paper evaluates an ImageNet ResNet-50 on ImageNet *training* images with object masks (Salient ImageNet's
core-feature masks and "Pixel ImageNet" segmentations). Both need the ImageNet images, which are not
downloadable without an account, so ``python data_scripts/foreground.py`` prepares the closest public set
instead: the Oxford-IIIT Pet images whose breed is an ImageNet-1k class (24 of its 37 breeds, 4,800-odd photos;
the breed -> class table is in that script), each with its hand-drawn trimap. It also fetches the ResNet-50
weights (see :func:`companion.models.resnet.load_torchvision_weights`).

On-disk layout under a data root (``$COMPANION_DATA``, default ``~/.cache/companion``)::

    foreground/index.tsv            header "image<TAB>label<TAB>class", then one row per image in the
                                    evaluation order (label: ImageNet-1k index; class: the source class name)
    foreground/images/<image>.jpg   the photograph (any size, any mode PIL reads)
    foreground/masks/<image>.png    one-channel trimap: 1 object, 2 background, 3 the object's outline
    torchvision/resnet50-0676ba61.pth

The object mask is trimap != 2: the outline band (pixels the annotators left unassigned, around the object's
border) counts as object, so a background-only mask never touches the animal. :func:`write_fake` writes a
small random folder in this layout (and random ResNet-50 weights) for tests and smoke runs.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .files import FOREGROUND_DIR, DataError, data_root, foreground_prepare_command, resnet50_weights_file

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "load", "normalize", "write_fake"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKGROUND = 2  # trimap value of background pixels; 1 (object) and 3 (outline) are object


def _folder(root) -> Path:
    return Path(root if root is not None else data_root()) / FOREGROUND_DIR


def _resize_crop(img: Image.Image, size: int, resample) -> Image.Image:
    """Shorter side to ``size`` (longer side truncated, as torchvision's ``Resize(size)``), then the central
    ``size`` x ``size`` square (offsets rounded as torchvision's ``CenterCrop``)."""
    w, h = img.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    img = img.resize((nw, nh), resample)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def _read(folder: Path, image: str, size: int, prepare: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with Image.open(folder / "images" / f"{image}.jpg") as im:
            rgb = np.asarray(_resize_crop(im.convert("RGB"), size, Image.BICUBIC))
        with Image.open(folder / "masks" / f"{image}.png") as tm:
            trimap = np.asarray(_resize_crop(tm, size, Image.NEAREST))
    except OSError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"foreground image {image!r} in {folder} cannot be read ({reason}); "
                        f"prepare the set again: {prepare}") from None
    if trimap.ndim == 3:
        trimap = trimap[..., 0]
    return rgb, trimap != BACKGROUND


def load(root: str | Path | None = None, n: int | None = None, size: int = 224
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``n`` images of the prepared set (all if None), in the order of ``index.tsv``.

    Each image is resized (bicubic) so its shorter side is ``size`` and centre-cropped to ``size`` x ``size``;
    its trimap the same way with nearest-neighbour sampling: at ``size=224`` the official code's transform for
    images with object masks (``Resize(224, bicubic)`` + ``CenterCrop(224)``, its mask-shape experiment; its
    Salient ImageNet loader resizes to 256 first and its LIME notebook squashes to 256 x 256 first).
    ``root`` is the data root (default ``$COMPANION_DATA``). Returns images (N, 3, size, size) float32 in
    [0, 1] (not normalised: see :func:`normalize`), object masks (N, size, size) bool (True = object) and
    labels (N,) int64 ImageNet-1k indices. A set that is not prepared, or an unreadable file, raises
    :class:`~companion.data.DataError` naming the command that prepares it.
    """
    folder = _folder(root)
    prepare = foreground_prepare_command(root)
    index = folder / "index.tsv"
    if not index.is_file():
        raise DataError(f"the foreground image set is not prepared ({index} is missing); run: {prepare}")
    with open(index, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    rows = rows if n is None else rows[:n]
    if not rows:
        raise DataError(f"{index} lists no images; prepare the set again: {prepare}")
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # PIL decodes and resizes outside the GIL
        read = list(pool.map(lambda r: _read(folder, r["image"], size, prepare), rows))
    images = torch.from_numpy(np.stack([rgb for rgb, _ in read])).permute(0, 3, 1, 2).float().div_(255.0)
    masks = torch.from_numpy(np.stack([m for _, m in read]))
    labels = torch.tensor([int(r["label"]) for r in rows], dtype=torch.int64)
    return images.contiguous(), masks, labels


def normalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of (..., 3, H, W) images in [0, 1] (what the torchvision weights expect)."""
    mean = images.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = images.new_tensor(IMAGENET_STD)[:, None, None]
    return (images - mean) / std


def _fake_resnet50_state(generator: torch.Generator, num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """Random weights in the torchvision ResNet-50 state-dict layout (He-initialised convs, unit BN), written
    here rather than by instantiating the model because the data layer sits below ``companion.models``."""
    state: dict[str, torch.Tensor] = {}

    def conv(name, c_out, c_in, k):
        state[f"{name}.weight"] = torch.randn(c_out, c_in, k, k, generator=generator) * (2.0 / (c_out * k * k)) ** 0.5

    def bn(name, c):
        state.update({f"{name}.weight": torch.ones(c), f"{name}.bias": torch.zeros(c),
                      f"{name}.running_mean": torch.zeros(c), f"{name}.running_var": torch.ones(c),
                      f"{name}.num_batches_tracked": torch.tensor(0)})

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    prev = 64
    for i, (planes, n_blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        for b in range(n_blocks):
            p = f"layer{i + 1}.{b}"
            conv(f"{p}.conv1", planes, prev, 1)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", 4 * planes, planes, 1)
            bn(f"{p}.bn3", 4 * planes)
            if b == 0:
                conv(f"{p}.downsample.0", 4 * planes, prev, 1)
                bn(f"{p}.downsample.1", 4 * planes)
            prev = 4 * planes
    state["fc.weight"] = torch.randn(num_classes, prev, generator=generator) * prev ** -0.5
    state["fc.bias"] = torch.zeros(num_classes)
    return state


def write_fake(root: str | Path, n: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Write ``n`` random images (``size`` high, 1.5 x ``size`` wide) with elliptic objects, their trimaps and
    labels under ``root/foreground``, and random ResNet-50 weights where :func:`load_torchvision_weights` looks
    under ``root``. Objects are brighter than their background. Returns the ``foreground`` folder."""
    rng = np.random.default_rng(seed)
    folder = _folder(root)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    h, w = size, size * 3 // 2
    yy, xx = np.mgrid[:h, :w]
    rows = []
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.4, 0.6) * w
        ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * h
        r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        trimap = np.where(r <= 0.8, 1, np.where(r <= 1.2, 3, BACKGROUND)).astype(np.uint8)
        rgb = rng.uniform(0.0, 0.4, (h, w, 3)) + np.where(trimap == 1, 0.5, 0.0)[..., None] * rng.uniform(0.6, 1, 3)
        name = f"fake_{i:04d}"
        Image.fromarray((rgb.clip(0, 1) * 255).astype(np.uint8)).save(folder / "images" / f"{name}.jpg", quality=95)
        Image.fromarray(trimap).save(folder / "masks" / f"{name}.png")
        rows.append((name, int(rng.integers(1000)), f"fake_class_{i % 3}"))
    with open(folder / "index.tsv", "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(("image", "label", "class"))
        writer.writerows(rows)
    weights = resnet50_weights_file(root)
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_fake_resnet50_state(torch.Generator().manual_seed(seed)), weights)
    return folder
