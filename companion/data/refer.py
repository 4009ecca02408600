"""Referring scenes for open-vocabulary and grounding segmentation: 32×32 images with 2–6 named objects plus
out-of-vocabulary clutter, instance masks, image-level captions and referring expressions with their targets.

Classes are the colour × shape names (:data:`CLASSES`, 6 colours × 4 shapes). Six of them (:data:`UNSEEN`, one per
colour) are meant to be kept out of every segmentation training set — pass ``classes=SEEN`` — while a toy CLIP
sees every class in captions, as CLIP saw web captions. Clutter objects (:data:`CLUTTER` shapes: rings and bars)
have no name in the vocabulary.

- :func:`make_refer_scenes` → :class:`ReferScenes`: images (N, 3, 32, 32) in [0, 1]; ``instances`` (N, M, H, W)
  bool visible masks, slot k < ``n_objects`` named objects then clutter (empty slots all False, no overlaps);
  ``labels`` (N, M) class index, :data:`NONE` for an empty slot, :data:`CLUTTER_LABEL` for clutter; ``centres``
  (N, M, 2) (x, y) and ``radii`` (N, M) in pixels; ``captions`` (N, :data:`CAPTION_LEN`) ids of
  ``colour shape …`` naming the objects in random order (or only the sharp subject of a depth-of-field image).
  Options: ``dof`` (share of depth-of-field images: one named object sharp, the rest Gaussian-blurred),
  ``domain="shifted"`` (striped objects, a darker textured background, a duller palette: a downstream domain).
- :func:`referring` → :class:`Expressions`: one expression per scene, of the kinds ``attribute`` ("red circle":
  every red circle), ``spatial`` ("circle left of red square": every circle left of that unique reference
  object; at least one), ``all`` ("all triangle" / "all blue": every object of that shape or colour) and
  ``absent`` (a class not in the scene: an empty target); text ids (N, :data:`EXPR_LEN`), target masks
  (N, H, W), target slots (N, M).

Words go through :mod:`companion.data.words` (the tokenizer ``scenes`` uses for ``toy_sd``). Deterministic in
``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import words
from .filters import gaussian_blur
from .images import SHAPE_CLASSES, _shape_masks
from .video import COLOURS as BASE_COLOURS

SIZE = 32
COLOURS = {**BASE_COLOURS, "magenta": (0.85, 0.2, 0.75), "cyan": (0.1, 0.8, 0.85)}
SHAPES = SHAPE_CLASSES
CLASSES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
UNSEEN = tuple(CLASSES.index(name) for name in ("red triangle", "green cross", "blue circle", "yellow square",
                                                "magenta cross", "cyan circle"))
SEEN = tuple(i for i in range(len(CLASSES)) if i not in UNSEEN)
CLUTTER = ("ring", "bar")
NONE, CLUTTER_LABEL = -1, -2
VOCAB = ("<pad>", *COLOURS, *SHAPES, "all", "left", "right", "of")
MAX_OBJECTS = 6
CAPTION_LEN = 2 * MAX_OBJECTS
EXPR_LEN = 5
KINDS = ("attribute", "spatial", "all", "absent")
PALETTE = np.array(list(COLOURS.values()))


def colour_of(label):
    """Class index → colour index (array-friendly)."""
    return label // len(SHAPES)


def shape_of(label):
    """Class index → shape index (array-friendly)."""
    return label % len(SHAPES)


@dataclass
class ReferScenes:
    images: torch.Tensor  # (N, 3, H, W) float32 in [0, 1]
    instances: torch.Tensor  # (N, M, H, W) bool, visible masks
    labels: torch.Tensor  # (N, M) int64: class, NONE or CLUTTER_LABEL
    centres: torch.Tensor  # (N, M, 2) float32 (x, y)
    radii: torch.Tensor  # (N, M) float32
    captions: torch.Tensor  # (N, CAPTION_LEN) int64
    subject: torch.Tensor  # (N,) int64 slot of the sharp subject of a depth-of-field image, -1 otherwise

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx) -> ReferScenes:
        return ReferScenes(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    def caption(self, i: int) -> str:
        return words.decode(self.captions[i], VOCAB)

    @property
    def named(self) -> torch.Tensor:
        """(N, M) bool: slots holding a named (in-vocabulary) object."""
        return self.labels >= 0


def _clutter_masks(kind: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    dist = np.sqrt(dx**2 + dy**2)
    ring = (dist <= r) & (dist >= 0.55 * r)
    bar = (np.abs(dx) <= r) & (np.abs(dy) <= 0.3 * r)
    return np.stack([ring, bar])[kind, np.arange(len(kind))]


def _place(rng: np.random.Generator, count: int, radius: tuple[float, float], size: int):
    """Up to ``count`` non-overlapping discs (centre x, y and radius) inside the image, by rejection."""
    placed = []
    for _ in range(count):
        for _attempt in range(60):
            r = rng.uniform(*radius)
            x, y = rng.uniform(r, size - r, 2)
            if all((x - px) ** 2 + (y - py) ** 2 >= (r + pr + 1.0) ** 2 for px, py, pr in placed):
                placed.append((x, y, r))
                break
    return placed


def make_refer_scenes(n: int, seed: int = 0, objects: tuple[int, int] = (2, 6), clutter: tuple[int, int] = (0, 2),
                      classes=None, dof: float = 0.0, domain: str = "standard",
                      radius: tuple[float, float] = (2.8, 4.8)) -> ReferScenes:
    """``n`` referring scenes (see the module doc). ``objects``/``clutter``: inclusive ranges of counts;
    ``classes``: the class indices named objects are drawn from (default all of :data:`CLASSES`)."""
    if not 1 <= objects[0] <= objects[1] <= MAX_OBJECTS or not 0 <= clutter[0] <= clutter[1]:
        raise ValueError(f"need 1 <= objects <= {MAX_OBJECTS} and clutter >= 0, got {objects}, {clutter}")
    if domain not in ("standard", "shifted") or not 0.0 <= dof <= 1.0:
        raise ValueError(f"domain must be 'standard' or 'shifted' and dof in [0, 1], got {domain!r}, {dof}")
    pool = np.array(range(len(CLASSES)) if classes is None else sorted(classes))
    rng = np.random.default_rng(seed)
    m = MAX_OBJECTS + clutter[1]
    labels = np.full((n, m), NONE)
    centres = np.zeros((n, m, 2))
    radii = np.zeros((n, m))
    for i in range(n):
        k = rng.integers(objects[0], objects[1] + 1)
        c = rng.integers(clutter[0], clutter[1] + 1)
        discs = _place(rng, k + c, radius, SIZE)
        named = min(k, len(discs))
        for j, (x, y, r) in enumerate(discs):
            slot = j if j < named else MAX_OBJECTS + (j - named)
            labels[i, slot] = rng.choice(pool) if j < named else CLUTTER_LABEL
            centres[i, slot], radii[i, slot] = (x, y), r
    clutter_kind = rng.integers(0, len(CLUTTER), (n, m))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    shifted = domain == "shifted"
    lo, hi = (0.1, 0.35) if shifted else (0.3, 0.7)
    base = rng.uniform(lo, hi, (n, 1)) * rng.uniform(0.95, 1.05, (n, 3))
    img = np.repeat(np.repeat(base[:, :, None, None], SIZE, 2), SIZE, 3)
    if shifted:
        freq, angle = rng.uniform(0.3, 0.8, n), rng.uniform(0, np.pi, n)
        grating = np.sin(freq[:, None, None] * (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy))
        img = img + 0.06 * grating[:, None]
    palette = 0.75 * PALETTE + 0.1 if shifted else PALETTE
    stripes = 0.8 + 0.2 * np.sign(np.sin(1.6 * (xx + yy)))  # (H, W), only in the shifted domain
    instances = np.zeros((n, m, SIZE, SIZE), dtype=bool)
    for slot in range(m):
        present = labels[:, slot] != NONE
        dx, dy = xx[None] - centres[:, slot, :1, None], yy[None] - centres[:, slot, 1:, None]
        r = radii[:, slot, None, None]
        lab = np.maximum(labels[:, slot], 0)
        is_clutter = labels[:, slot] == CLUTTER_LABEL
        mask = np.where(is_clutter[:, None, None], _clutter_masks(clutter_kind[:, slot], dx, dy, r),
                        _shape_masks(shape_of(lab), dx, dy, r)) & present[:, None, None]
        colour = np.where(is_clutter[:, None], PALETTE[rng.integers(0, len(PALETTE), n)], palette[colour_of(lab)])
        fill = colour[:, :, None, None] * (stripes if shifted else 1.0)
        img = np.where(mask[:, None], fill, img)
        instances[:, slot] = mask
    img = img + rng.normal(0, 0.02, img.shape)
    images = torch.from_numpy(np.clip(img, 0, 1).astype(np.float32))
    subject = np.full(n, -1)
    use_dof = rng.random(n) < dof
    for i in np.nonzero(use_dof)[0]:
        subject[i] = rng.choice(np.nonzero(labels[i] >= 0)[0])
    if use_dof.any():
        idx = torch.from_numpy(np.nonzero(use_dof)[0])
        sharp = torch.from_numpy(instances[idx.numpy(), subject[idx.numpy()]])[:, None]
        images[idx] = torch.where(sharp, images[idx], gaussian_blur(images[idx], 1.2))
    captions = []
    for i in range(n):
        named = [s for s in rng.permutation(m) if labels[i, s] >= 0]
        if subject[i] >= 0:
            named = [subject[i]]
        captions.append(" ".join(CLASSES[labels[i, s]] for s in named))
    return ReferScenes(images, torch.from_numpy(instances), torch.from_numpy(labels), torch.from_numpy(centres).float(),
                       torch.from_numpy(radii).float(), words.encode(captions, VOCAB, CAPTION_LEN),
                       torch.from_numpy(subject))


@dataclass
class Expressions:
    text: torch.Tensor  # (N, EXPR_LEN) int64
    targets: torch.Tensor  # (N, H, W) bool: the union of the target objects' masks (empty for "absent")
    target_slots: torch.Tensor  # (N, M) bool
    kind: torch.Tensor  # (N,) int64 index into KINDS

    def __len__(self) -> int:
        return len(self.text)

    def phrase(self, i: int) -> str:
        return words.decode(self.text[i], VOCAB)


def referring(scenes: ReferScenes, seed: int = 0, kinds: tuple[str, ...] = KINDS, classes=None) -> Expressions:
    """One referring expression per scene, its kind drawn uniformly from ``kinds`` among those the scene allows
    (``spatial`` needs a unique reference object; ``absent`` a class of ``classes`` not in the scene; a scene
    allowing none of ``kinds`` gets an ``attribute`` expression). Targets are every object the phrase names."""
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
    pool = list(range(len(CLASSES)) if classes is None else classes)
    rng = np.random.default_rng(seed)
    labels = scenes.labels.numpy()
    xs = scenes.centres[..., 0].numpy()
    n, m = labels.shape
    texts, slots, kind_ids = [], np.zeros((n, m), dtype=bool), []
    colour_names, shape_names = list(COLOURS), list(SHAPES)
    for i in range(n):
        lab = labels[i]
        named = np.nonzero(lab >= 0)[0]
        present = sorted(set(lab[named].tolist()))
        options = []
        for kind in kinds:
            if kind == "spatial":
                unique = [s for s in named if (lab == lab[s]).sum() == 1]
                if unique and len(named) > 1:
                    options.append(kind)
            elif kind == "absent":
                if set(pool) - set(present):
                    options.append(kind)
            else:
                options.append(kind)
        kind = options[rng.integers(len(options))] if options else "attribute"
        if kind == "attribute":
            c = present[rng.integers(len(present))]
            target = lab == c
            text = CLASSES[c]
        elif kind == "absent":
            missing = sorted(set(pool) - set(present))
            text = CLASSES[missing[rng.integers(len(missing))]]
            target = np.zeros(m, dtype=bool)
        elif kind == "all":
            if rng.random() < 0.5:
                s = shape_of(lab[named[rng.integers(len(named))]])
                target, text = (lab >= 0) & (shape_of(lab) == s), f"all {shape_names[s]}"
            else:
                c = colour_of(lab[named[rng.integers(len(named))]])
                target, text = (lab >= 0) & (colour_of(lab) == c), f"all {colour_names[c]}"
        else:  # spatial: "<shape> left|right of <colour> <shape>"
            unique = [s for s in named if (lab == lab[s]).sum() == 1]
            ref = unique[rng.integers(len(unique))]
            side = "left" if rng.random() < 0.5 else "right"
            sides = {"left": (lab >= 0) & (xs[i] < xs[i, ref]), "right": (lab >= 0) & (xs[i] > xs[i, ref])}
            if not sides[side].any():  # nothing on that side: the other one has something (ref is not alone)
                side = "right" if side == "left" else "left"
            candidates = np.nonzero(sides[side])[0]
            s = shape_of(lab[candidates[rng.integers(len(candidates))]])
            target = sides[side] & (shape_of(lab) == s)
            text = f"{shape_names[s]} {side} of {CLASSES[lab[ref]]}"
        texts.append(text)
        slots[i] = target
        kind_ids.append(KINDS.index(kind))
    slots_t = torch.from_numpy(slots)
    targets = (scenes.instances & slots_t[..., None, None]).any(dim=1)
    return Expressions(words.encode(texts, VOCAB, EXPR_LEN), targets, slots_t, torch.tensor(kind_ids))
