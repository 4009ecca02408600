"""LIME over image segments with a pluggable masking strategy, and metrics for attribution quality.

The idea (captum's "attribute over the mask" pattern): LIME does not perturb the image itself but a
binary *segment-keep vector* ``z`` of length ``S`` (one entry per superpixel). A forward function turns
``z`` into a pixel keep-mask through the ``segments`` map and hands it to
:func:`companion.masking.apply`, which decides *how* a removed segment is hidden (black, grey or mean
fill, blur, or masking inside the network). The same forward function serves LIME, the deletion curve
and captum's infidelity, so every number here is about the same masked model.

Conventions
-----------
* ``x``: one image, float ``(1, C, H, W)``.
* ``segments``: int ``(H, W)``, values ``0..S-1`` (e.g. from ``skimage.segmentation.slic``).
* pixel masks: bool ``(N, 1, H, W)``, ``True`` = keep.
* ``gt_mask``: bool ``(H, W)``, ``True`` = object.
* attributions: float ``(S,)``, one score per segment, higher = more important for ``target``.

Caveat on faithfulness metrics: :func:`deletion_score` and :func:`infidelity_score` remove segments
with a masking strategy too, so they inherit that strategy's bias (e.g. a black square is itself
evidence for some classes). An explanation computed with strategy A and evaluated with the same A is
judged on its own terms; compare strategies with one fixed evaluation strategy as well
(``eval_strategy`` in :func:`evaluate_lime`) before concluding that one explains "better".
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .. import runtime
from ..masks.image import grid_segments, segments_to_mask

#: ``apply(model, x (N,C,H,W), mask (N,1,H,W) bool, strategy) -> logits (N,K)``
ApplyFn = Callable[[nn.Module, Tensor, Tensor, str], Tensor]

METRICS = ("coverage", "pointing_game", "topk_iou", "deletion", "infidelity")


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _default_apply() -> ApplyFn:
    """``companion.masking.apply``, looked up at call time (so it can be monkeypatched in tests)."""
    from companion import masking

    return masking.apply


@contextlib.contextmanager
def _eval_mode(model) -> Iterator[None]:
    """Put an ``nn.Module`` in eval mode (no dropout / batch-norm updates) and restore it afterwards."""
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _as_segments(segments, device: torch.device | None = None) -> Tensor:
    """Segment map as a long tensor ``(H, W)`` with values ``>= 0``."""
    seg = torch.as_tensor(np.asarray(segments) if not isinstance(segments, Tensor) else segments)
    if seg.dim() != 2:
        raise ValueError(f"segments must be (H, W), got shape {tuple(seg.shape)}")
    if seg.dtype.is_floating_point or seg.dtype == torch.bool:
        raise ValueError(f"segments must be an integer map, got dtype {seg.dtype}")
    seg = seg.long()
    if seg.min() < 0:
        raise ValueError("segment ids must be >= 0")
    return seg if device is None else seg.to(device)


def _as_gt(gt_mask, shape: torch.Size) -> Tensor:
    """Ground-truth object mask as bool ``(H, W)``, checked against the segment map's shape."""
    gt = torch.as_tensor(np.asarray(gt_mask) if not isinstance(gt_mask, Tensor) else gt_mask).bool()
    if gt.shape != shape:
        raise ValueError(f"gt_mask has shape {tuple(gt.shape)}, segments have {tuple(shape)}")
    return gt


def _check_image(x: Tensor, segments: Tensor) -> None:
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one image (1, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[-2:] != segments.shape:
        raise ValueError(f"x is {tuple(x.shape[-2:])} but segments are {tuple(segments.shape)}")


def num_segments(segments) -> int:
    """``S = max id + 1`` of a segment map (ids are ``0..S-1``)."""
    return int(_as_segments(segments).max()) + 1


def object_fraction(segments, gt_mask, n_segments: int | None = None) -> Tensor:
    """Fraction of each segment's pixels that lie inside the object, float ``(S,)`` in ``[0, 1]``.

    Segment ids that do not occur get 0.
    """
    seg = _as_segments(segments)
    gt = _as_gt(gt_mask, seg.shape)
    S = max(int(seg.max()) + 1, n_segments or 0)
    flat = seg.flatten().cpu()
    size = torch.bincount(flat, minlength=S).double()
    inside = torch.bincount(flat, weights=gt.flatten().cpu().double(), minlength=S)
    return (inside / size.clamp(min=1)).float()


@torch.no_grad()
def predict(model, x: Tensor) -> int:
    """Class predicted by ``model`` on the unmasked image ``x (1, C, H, W)``."""
    with _eval_mode(model):
        return int(model(x).argmax(-1)[0])


def segment_forward(
    model, segments: Tensor, strategy: str, target: int, apply_fn: ApplyFn | None = None
) -> Callable[[Tensor, Tensor], Tensor]:
    """Forward function in segment space, as captum wants it.

    The returned ``f(keep, x)`` takes ``keep`` float ``(B, S)`` (1 = keep segment) and ``x``
    ``(B or 1, C, H, W)``, builds the pixel keep-mask ``(B, 1, H, W)`` from ``segments``, calls
    ``apply_fn(model, x, mask, strategy)`` and returns the softmax probability of ``target``, ``(B,)``.
    """
    apply_fn = apply_fn or _default_apply()

    def forward(keep: Tensor, x: Tensor) -> Tensor:
        B = keep.shape[0]
        mask = segments_to_mask(keep, segments)
        if x.shape[0] != B:
            x = x[:1].expand(B, -1, -1, -1)
        logits = apply_fn(model, x, mask, strategy)
        return logits.softmax(-1)[:, target]

    return forward


# --------------------------------------------------------------------------------------------------
# LIME
# --------------------------------------------------------------------------------------------------


def lime_segments(
    model,
    x: Tensor,
    segments,
    strategy: str,
    n_samples: int = 200,
    seed: int = 0,
    batch_size: int = 50,
    target: int | None = None,
    apply_fn: ApplyFn | None = None,
    *,
    interpretable_model=None,
    kernel_width: float = 1.0,
) -> Tensor:
    """LIME attribution of each segment, removing segments with the given masking strategy.

    LIME runs in the interpretable space (captum's "attribute over the mask" pattern): the input is
    ``torch.ones(1, S)``, a dropped segment is 0 (the baseline), so every perturbed sample is a
    binary segment-keep vector; the real image travels in ``additional_forward_args`` and the forward
    function masks it with ``strategy``.

    This is :class:`captum.attr.LimeBase` configured exactly like :class:`captum.attr.Lime`'s
    defaults (Bernoulli(0.5) per segment; weight ``exp(-d^2 / 2)`` with ``d`` the cosine distance
    between the keep vector and all-ones, which depends only on how many segments are kept), with
    two shortcuts that give the same numbers faster: the samples are drawn in one call from a
    seeded ``torch.Generator`` (the same stream as ``torch.manual_seed(seed)`` + ``Lime``), and the
    kernel is computed in closed form, ``d = 1 - sqrt(k / S)`` for ``k`` kept segments.

    Args:
        model: classifier, ``(N, C, H, W) -> logits (N, K)``; run in eval mode (restored afterwards).
        x: one image, float ``(1, C, H, W)``.
        segments: int ``(H, W)`` segment map, values ``0..S-1``.
        strategy: how removed segments are hidden, passed to ``apply_fn``
            (``"black"``, ``"grey"``, ``"mean"``, ``"blur"``, ``"layer"``).
        n_samples: number of masked samples LIME evaluates (use several times ``S``).
        seed: seeds the sampler (its own generator; the global torch RNG state is untouched).
        batch_size: samples per forward pass (captum's ``perturbations_per_eval``).
        target: class whose probability is explained; default: the prediction on the unmasked ``x``.
        apply_fn: ``apply(model, x, mask, strategy) -> logits``; default ``companion.masking.apply``.
        interpretable_model: captum surrogate; default ``SkLearnRidge(alpha=1.0)`` (LIME's own
            choice; captum's default Lasso zeroes small effects and produces ties in the ranking).
        kernel_width: ``w`` of the sample weight ``exp(-d^2 / (2 w^2))``: 1.0 is captum's default; 0.25 is
            the ``lime`` package's image default (``sqrt(exp(-d^2 / 0.25^2))``, the same function), which the
            layer-masking paper's code uses; it weights samples that keep most segments far more.

    Returns:
        float ``(S,)`` on the CPU: the surrogate's coefficient for each segment.
    """
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import LimeBase

    seg = _as_segments(segments, x.device)
    _check_image(x, seg)
    S = int(seg.max()) + 1
    generator = torch.Generator().manual_seed(seed)

    def sample_keep_vectors(inputs: Tensor, **_) -> Iterator[Tensor]:
        # all samples in one draw: the same stream as captum's one-sample-at-a-time default sampler
        draws = torch.bernoulli(torch.full((n_samples, S), 0.5), generator=generator).to(inputs.device)
        yield from draws.split(1)

    def kernel(_inputs, _perturbed, keep: Tensor, **_) -> float:
        # captum's exponential kernel exp(-d^2 / (2 w^2)), d = 1 - cos(ones, keep) = 1 - sqrt(k / S)
        distance = 1.0 - math.sqrt(float(keep.sum()) / S)
        return math.exp(-(distance**2) / (2.0 * kernel_width**2))

    with _eval_mode(model), torch.no_grad():
        if target is None:
            target = predict(model, x)
        lime = LimeBase(
            segment_forward(model, seg, strategy, target, apply_fn),
            interpretable_model=interpretable_model or SkLearnRidge(alpha=1.0),
            similarity_func=kernel,
            perturb_func=sample_keep_vectors,
            perturb_interpretable_space=True,
            # ones * keep + zeros * (1 - keep): the model "input" is the keep vector itself
            from_interp_rep_transform=lambda keep, _inputs, **_: keep,
            to_interp_rep_transform=None,
        )
        # the surrogate's fit iterates a DataLoader, which draws from the global RNG: fork it
        with torch.random.fork_rng(devices=[]):
            coefs = lime.attribute(
                torch.ones(1, S, device=x.device),
                additional_forward_args=(x,),
                n_samples=n_samples,
                perturbations_per_eval=batch_size,
            )
    return coefs.detach().reshape(S).float().cpu()


# --------------------------------------------------------------------------------------------------
# metrics against the ground-truth object mask
# --------------------------------------------------------------------------------------------------


def _ranking(attr: Tensor) -> Tensor:
    """Segment ids sorted from most to least important (ties keep id order)."""
    return torch.argsort(torch.as_tensor(attr).flatten().cpu(), descending=True, stable=True)


def pointing_game(attr: Tensor, segments, gt_mask) -> bool:
    """True if the top-ranked segment lies mostly inside the object (> 50 % of its pixels).

    Args:
        attr: float ``(S,)``. segments: int ``(H, W)``. gt_mask: bool ``(H, W)``.
    """
    frac = object_fraction(segments, gt_mask, n_segments=len(attr))
    return bool(frac[_ranking(attr)[0]] > 0.5)


def coverage(attr: Tensor, segments, gt_mask) -> float:
    """Cosine similarity between the attribution and the object's ground-truth segment importance.

    The official layer-masking code's LIME score: segment ``s`` has ground-truth importance
    ``g_s = sum over its pixels of (gt - mean(gt))`` (object pixels count positive, background pixels
    negative, so a segment's importance grows with its object share and its size); the score is
    ``cos(attr, g)`` in ``[-1, 1]``, 1 when the attribution is proportional to ``g``.

    Args:
        attr: float ``(S,)``. segments: int ``(H, W)``. gt_mask: bool ``(H, W)``.
    """
    seg = _as_segments(segments).cpu()
    gt = _as_gt(gt_mask, seg.shape).cpu().double()
    g = torch.bincount(seg.flatten(), weights=(gt - gt.mean()).flatten(), minlength=len(attr))[: len(attr)]
    a = torch.as_tensor(attr).flatten().cpu().double()
    return float((a @ g) / (a.norm() * g.norm() + 1e-12))


def topk_segment_iou(attr: Tensor, segments, gt_mask, k: int | None = None) -> float:
    """IoU between the union of the ``k`` top-ranked segments and the object mask.

    Args:
        attr: float ``(S,)``. segments: int ``(H, W)``. gt_mask: bool ``(H, W)``.
        k: how many segments to take; default: the number of segments that are mostly (> 50 %)
            object, at least 1. With that default a perfect ranking scores the best IoU the
            segmentation allows (1.0 when segments follow the object boundary).
    """
    seg = _as_segments(segments).cpu()
    gt = _as_gt(gt_mask, seg.shape).cpu()
    if k is None:
        k = max(1, int((object_fraction(seg, gt, n_segments=len(attr)) > 0.5).sum()))
    selected = torch.isin(seg, _ranking(attr)[:k])
    union = (selected | gt).sum()
    return float((selected & gt).sum() / union) if union > 0 else 0.0


# --------------------------------------------------------------------------------------------------
# faithfulness metrics (they mask too: see the module docstring's caveat)
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def deletion_curve(
    model,
    x: Tensor,
    attr: Tensor,
    segments,
    strategy: str,
    target: int,
    steps: int | None = None,
    batch_size: int = 50,
    apply_fn: ApplyFn | None = None,
) -> Tensor:
    """Probability of ``target`` as the top-ranked segments are removed, float ``(steps + 1,)``.

    Point ``k`` removes the ``round(k * S / steps)`` best-ranked segments with ``strategy``
    (point 0 = nothing removed, point ``steps`` = everything removed). ``steps`` defaults to ``S``:
    one segment per step.
    """
    seg = _as_segments(segments, x.device)
    _check_image(x, seg)
    S = max(int(seg.max()) + 1, len(attr))
    steps = steps or S
    order = _ranking(attr).to(x.device)
    n_removed = [round(k * S / steps) for k in range(steps + 1)]
    keep = torch.ones(steps + 1, S, device=x.device)
    for row, n in enumerate(n_removed):
        keep[row, order[:n]] = 0.0
    forward = segment_forward(model, seg, strategy, target, apply_fn)
    with _eval_mode(model):
        probs = [forward(chunk, x) for chunk in keep.split(batch_size)]
    return torch.cat(probs).float().cpu()


def deletion_score(
    model,
    x: Tensor,
    attr: Tensor,
    segments,
    strategy: str,
    target: int,
    steps: int | None = None,
    apply_fn: ApplyFn | None = None,
    batch_size: int = 50,
) -> float:
    """Area under the deletion curve (x axis = fraction of segments removed, in ``[0, 1]``).

    Lower = more faithful: removing what the explanation calls important should make the
    probability drop fast. Removal uses ``strategy``, so the score also measures how that strategy
    hides information (and what it adds: a grey or black patch is not "no information"); use the same
    evaluation strategy when comparing explanations.
    """
    curve = deletion_curve(model, x, attr, segments, strategy, target, steps, batch_size, apply_fn)
    return float(torch.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


def infidelity_score(
    model,
    x: Tensor,
    attr: Tensor,
    segments,
    strategy: str,
    target: int,
    n_perturb_samples: int = 50,
    seed: int = 0,
    apply_fn: ApplyFn | None = None,
    batch_size: int = 50,
    drop_prob: float = 0.5,
    normalize: bool = False,
) -> float:
    """captum's infidelity in segment space, with binary group-drop perturbations.

    ``E_I[(sum_{s dropped} attr_s - (f(all kept) - f(keep = 1 - I)))^2]`` where each segment is
    dropped independently with probability ``drop_prob`` and ``f`` is the probability of ``target``
    with dropped segments hidden by ``strategy``. Lower = the attribution better predicts the effect
    of removing segments. Seeded with its own generator (the global RNG is untouched).

    Args:
        attr: float ``(S,)``. The rest as in :func:`deletion_score`.
        normalize: captum's option to rescale ``attr`` by the best scalar first (compares shapes,
            not scales).
    """
    from captum.metrics import infidelity, infidelity_perturb_func_decorator

    seg = _as_segments(segments, x.device)
    _check_image(x, seg)
    S = max(int(seg.max()) + 1, len(attr))
    generator = torch.Generator().manual_seed(seed)

    @infidelity_perturb_func_decorator(True)
    def drop_segments(inputs: Tensor, baselines: Tensor) -> Tensor:
        # inputs: ones (n, S); return the perturbed keep vectors; captum turns them into
        # perturbations (inputs - perturbed) / (inputs - baselines) = "which segments were dropped"
        drop = torch.rand(inputs.shape, generator=generator) < drop_prob
        return torch.where(drop.to(inputs.device), baselines, inputs)

    forward = segment_forward(model, seg, strategy, target, apply_fn)
    attributions = torch.as_tensor(attr, dtype=torch.float32).reshape(1, S).to(x.device)
    with _eval_mode(model), torch.no_grad():
        score = infidelity(
            forward,
            drop_segments,
            torch.ones(1, S, device=x.device),
            attributions,
            baselines=torch.zeros(1, S, device=x.device),
            additional_forward_args=(x,),
            n_perturb_samples=n_perturb_samples,
            max_examples_per_batch=min(batch_size, n_perturb_samples),
            normalize=normalize,
        )
    return float(score.reshape(()))


# --------------------------------------------------------------------------------------------------
# everything at once
# --------------------------------------------------------------------------------------------------


def evaluate_lime(
    model,
    images,
    segments_list: Sequence,
    gt_masks: Sequence,
    strategies: Sequence[str],
    n_samples: int = 200,
    seed: int = 0,
    apply_fn: ApplyFn | None = None,
    *,
    eval_strategy: str | None = None,
    batch_size: int = 50,
    n_perturb_samples: int = 50,
    progress: bool = True,
    per_image: bool = False,
    metrics: Sequence[str] = METRICS,
    kernel_width: float = 1.0,
) -> dict[str, dict[str, float]]:
    """Explain every image with every strategy and average the metrics per strategy.

    Strategies are paired: image ``i`` is explained for its unmasked prediction with seed
    ``seed + i`` under every strategy, so differences between strategies are not sampling noise
    between images or seeds.

    Args:
        model: classifier, ``(N, C, H, W) -> logits``.
        images: float ``(N, C, H, W)`` tensor, or a sequence of ``(C, H, W)`` / ``(1, C, H, W)``.
        segments_list: ``N`` int maps ``(H, W)``.
        gt_masks: ``N`` bool object masks ``(H, W)``.
        strategies: masking strategies to compare, e.g. ``["grey", "layer"]``.
        n_samples, seed, apply_fn, batch_size, kernel_width: as in :func:`lime_segments`.
        eval_strategy: strategy used by the faithfulness metrics; default: each explanation is
            scored with its own strategy (see the caveat in the module docstring). To compare
            strategies like for like, pass one strategy here so every explanation is scored under
            the same masking.
        n_perturb_samples: samples for :func:`infidelity_score`.
        progress: show progress over images (a bar, or one final line under papermill).
        per_image: return the per-image values (lists, paired across strategies) instead of means.
        metrics: which of ``METRICS`` to compute (the faithfulness metrics cost extra forward passes).

    Returns:
        ``{strategy: {metric: ...}}`` for each metric of ``metrics`` (``"coverage"``, ``"pointing_game"``,
        ``"topk_iou"``, ``"deletion"``, ``"infidelity"``), each the mean over images (``pointing_game`` is the
        hit rate in ``[0, 1]``).
    """
    if not (len(images) == len(segments_list) == len(gt_masks)):
        raise ValueError(
            f"got {len(images)} images, {len(segments_list)} segment maps and {len(gt_masks)} masks"
        )
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    scores: dict[str, dict[str, list[float]]] = {s: {m: [] for m in metrics} for s in strategies}
    for i in runtime.progress(len(images), desc="LIME", enabled=progress, unit="images"):
        x = images[i]
        x = x.unsqueeze(0) if x.dim() == 3 else x
        segments, gt = segments_list[i], gt_masks[i]
        target = predict(model, x)
        for strategy in strategies:
            attr = lime_segments(
                model, x, segments, strategy, n_samples, seed + i, batch_size, target, apply_fn,
                kernel_width=kernel_width,
            )
            scored_with = eval_strategy or strategy
            for metric in metrics:
                if metric == "coverage":
                    value = coverage(attr, segments, gt)
                elif metric == "pointing_game":
                    value = float(pointing_game(attr, segments, gt))
                elif metric == "topk_iou":
                    value = topk_segment_iou(attr, segments, gt)
                elif metric == "deletion":
                    value = deletion_score(model, x, attr, segments, scored_with, target, apply_fn=apply_fn,
                                           batch_size=batch_size)
                else:
                    value = infidelity_score(model, x, attr, segments, scored_with, target, n_perturb_samples,
                                             seed + i, apply_fn=apply_fn, batch_size=batch_size)
                scores[strategy][metric].append(value)
    if per_image:
        return scores
    return {s: {m: float(np.mean(v)) for m, v in row.items()} for s, row in scores.items()}


# --------------------------------------------------------------------------------------------------
# random segment removal (the official code's "segment removal" experiment)
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def unchanged_predictions(
    model,
    images: Tensor,
    cell: int,
    fractions: Sequence[float],
    strategies: Sequence[str],
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    device="cpu",
    apply_fn: ApplyFn | None = None,
) -> dict[str, Tensor]:
    """Whether each prediction survives removing a growing random share of grid cells.

    The image is cut into ``cell`` x ``cell`` squares (``L = ceil(H / cell) ** 2`` of them); each image
    draws one random order of its cells, and at fraction ``d`` the first ``int(d * L)`` cells in that
    order are removed — the same cells for every strategy and, growing with ``d``, nested across
    fractions. A prediction is unchanged when its argmax equals the unmasked one's.

    Args:
        model: classifier on images in ``[0, 1]``, ``(N, C, H, W) -> logits (N, K)``.
        images: float ``(N, C, H, W)``.
        cell: side of the removed squares in pixels (the official code: 16 on 224-pixel images).
        fractions: shares of cells removed, each in ``[0, 1]``.
        strategies: masking strategies, as in :func:`companion.masking.apply`.

    Returns:
        ``{strategy: float (N, len(fractions))}``, 1.0 where the prediction is unchanged.
    """
    apply_fn = apply_fn or _default_apply()
    n, _, h, w = images.shape
    if h != w:
        raise ValueError(f"square images only, got {h}x{w}")
    segments = grid_segments(h, cell)
    L = int(segments.max()) + 1
    order = torch.rand(n, L, generator=generator).argsort(1)  # (N, L): cells in removal order
    rank = order.argsort(1)  # (N, L): position of each cell in that order
    out = {s: torch.zeros(n, len(fractions)) for s in strategies}
    with _eval_mode(model):
        for start in range(0, n, batch_size):
            x = images[start:start + batch_size].to(device)
            clean = model(x).argmax(-1)
            for j, d in enumerate(fractions):
                keep_cells = rank[start:start + batch_size] >= int(d * L)  # (B, L)
                mask = segments_to_mask(keep_cells, segments).to(device)
                for s in strategies:
                    pred = apply_fn(model, x, mask, s).argmax(-1)
                    out[s][start:start + len(x), j] = (pred == clean).float().cpu()
    return out
