"""Helpers shared by the masked-image-modelling notebooks: pretrain an MAE with any token-mask generator,
score a trained MAE under any mask, reconstruct images, and probe frozen encoder features.

Mask convention (as in ``companion.masks`` and ``companion.models.mae``): a token mask is bool ``(N, L)``
with **True = visible** (seen by the encoder), False = removed (to be reconstructed).
A *mask generator* is a function ``(n, generator) -> (n, L) bool`` drawing ``n`` token masks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import masks, train
from .eval.probes import linear_probe  # noqa: F401  (re-exported: mim.linear_probe)

MaskFn = Callable[[int, torch.Generator], torch.Tensor]


def mask_generator(kind: str, grid: int, ratio: float) -> MaskFn:
    """Token masks of one kind at mask ratio ``ratio`` on a ``grid``×``grid`` token grid.

    ``kind``: ``"random"`` (uniform, as MAE) or a noise colour of ``masks.NOISE_COLOURS`` (ColorMAE).
    Every kind removes exactly ``round(ratio·grid²)`` tokens per image.
    """
    if kind == "random":
        return lambda n, g: masks.token_ratio_mask(n, grid * grid, ratio, g)
    if kind in masks.NOISE_COLOURS:
        return lambda n, g: masks.colour_noise_mask(n, grid, ratio, kind, g)
    raise ValueError(f"mask kind must be 'random' or one of {masks.NOISE_COLOURS}, got {kind!r}")


def pretrain(model, images: torch.Tensor, mask_fn: MaskFn, steps: int, seed: int = 0, **fit_kwargs) -> list[float]:
    """Train an MAE on ``images`` for ``steps`` steps, each batch masked by ``mask_fn``; returns the ``train.History``.

    The batches come from ``train.fit`` seeded with ``seed`` and the masks from a generator seeded with
    ``seed + 1``, so two runs with the same seed see the same images in the same order (paired runs).
    ``fit_kwargs`` go to ``train.fit`` (batch_size, lr, device, desc, ...).
    """
    g = torch.Generator().manual_seed(seed + 1)

    def loss_fn(m, x, _):
        return m(x, token_mask=mask_fn(len(x), g).to(x.device))[0]

    return train.fit(model, images, None, steps, seed=seed, loss_fn=loss_fn, **fit_kwargs)


@torch.no_grad()
def per_image_loss(model, images: torch.Tensor, mask_fn: MaskFn, generator: torch.Generator, repeats: int = 1,
                   batch_size: int = 256) -> torch.Tensor:
    """Reconstruction loss (MSE on the removed patches) of each image, averaged over ``repeats`` mask draws.

    Returns (N,) float on the CPU. The model is only evaluated (no gradient, eval mode).
    """
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros(len(images))
    for _ in range(repeats):
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(device)
            visible = mask_fn(len(x), generator).to(device)
            _, pred, visible = model(x, token_mask=visible)
            per_patch = model.forward_loss(x, pred, visible, reduction="none")  # [n, L]
            removed = (~visible).float()
            total[i:i + len(x)] += ((per_patch * removed).sum(1) / removed.sum(1).clamp(min=1)).cpu()
    return total / repeats


@torch.no_grad()
def reconstruct(model, images: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """→ (masked input with removed patches grey, reconstruction with visible patches pasted back).

    images [N, C, H, W] in [0, 1]; visible [N, L] bool. A model trained on per-patch normalised targets
    (``norm_pix_loss``) predicts only each patch's pattern, not its mean colour or contrast: its prediction is
    shown with every removed patch's true mean and spread put back (as a picture of what was learned, not as
    a pixel reconstruction).
    """
    model.eval()
    device = next(model.parameters()).device
    _, pred, _ = model(images.to(device), token_mask=visible.to(device))
    pred = pred.cpu()
    if model.cfg.norm_pix_loss:
        target = model.patchify(images)  # [N, L, P]
        pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
    keep = masks.token_to_pixel_mask(visible, model.cfg.patch_size).to(images.dtype)  # [N, 1, H, W]
    recon = model.unpatchify(pred).clamp(0, 1)
    return images * keep + 0.5 * (1 - keep), images * keep + recon * (1 - keep)


@torch.no_grad()
def encoder_features(model, images: torch.Tensor, pool: str = "mean", batch_size: int = 256) -> torch.Tensor:
    """Frozen encoder features of unmasked images (every token visible), after the final LayerNorm.

    ``pool="mean"``: mean over patch tokens [N, D]; ``"cls"``: the [CLS] token [N, D]; ``"none"``: every
    patch token [N, L, D] (for patch-level probes).
    """
    if pool not in ("mean", "cls", "none"):
        raise ValueError(f"pool must be 'mean', 'cls' or 'none', got {pool!r}")
    model.eval()
    device = next(model.parameters()).device

    def encode(x):
        every = torch.ones(len(x), model.num_patches, dtype=torch.bool, device=x.device)
        latent = model.forward_encoder(x, every).latent  # [n, 1+L, D]
        return {"mean": latent[:, 1:].mean(1), "cls": latent[:, 0], "none": latent[:, 1:]}[pool]

    return train.predict(encode, images, batch_size=batch_size, device=device)


def patch_labels(objects: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, 1, H, W) bool object masks → (N, L) int64: 1 where at least half a patch lies on the object."""
    share = torch.nn.functional.avg_pool2d(objects.float(), patch, patch)  # [N, 1, H/p, W/p]
    return (share.flatten(1) >= 0.5).long()


def mean_fill_loss(images: torch.Tensor, visible: torch.Tensor, patch: int) -> torch.Tensor:
    """Zero-skill reference: per-image MSE on the removed patches when every removed pixel is predicted as the
    image's mean visible colour. images [N, C, H, W], visible [N, L] bool → (N,)."""
    keep = masks.token_to_pixel_mask(visible, patch).to(images.dtype)  # [N, 1, H, W]
    mean = (images * keep).sum((2, 3), keepdim=True) / keep.sum((2, 3), keepdim=True).clamp(min=1)  # [N, C, 1, 1]
    err = ((images - mean) ** 2).mean(1, keepdim=True)  # [N, 1, H, W]
    return (err * (1 - keep)).sum((1, 2, 3)) / (1 - keep).sum((1, 2, 3)).clamp(min=1)


def mean_attention_distance(attention: torch.Tensor, grid: int, patch_size: float = 1.0, prefix_tokens: int = 1,
                            renormalise: bool = True) -> torch.Tensor:
    """Mean attention distance (Dosovitskiy et al. 2021; Xie et al. 2023): for each query patch, the distance to
    every key patch weighted by its attention, averaged over the query patches.

    attention [..., T, T] (rows = queries, each row a softmax over the keys), T = ``prefix_tokens`` + grid²,
    the prefix ([CLS]) tokens first and the patches in row-major order. Distances are Euclidean between patch
    centres, in pixels (× ``patch_size``; 1 gives patches). The prefix tokens have no position and are left out;
    with ``renormalise`` each query's attention over the patches is rescaled to sum 1 (a weighted mean over
    patches), otherwise the mass on prefix tokens counts as distance 0. Returns [...] (e.g. [N, heads]).
    """
    length = grid * grid
    if attention.shape[-1] != prefix_tokens + length or attention.shape[-2] != prefix_tokens + length:
        raise ValueError(f"attention must be [..., {prefix_tokens + length}, {prefix_tokens + length}] for a "
                         f"{grid}x{grid} grid with {prefix_tokens} prefix tokens, got {tuple(attention.shape)}")
    att = attention[..., prefix_tokens:, prefix_tokens:].float()  # [..., L, L]
    if renormalise:
        att = att / att.sum(-1, keepdim=True).clamp(min=1e-12)
    yy, xx = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).float()  # [L, 2]
    dist = torch.cdist(pos, pos).to(att.device) * patch_size  # [L, L]
    return (att * dist).sum(-1).mean(-1)


@torch.no_grad()
def encoder_attention_distance(model, images: torch.Tensor, batch_size: int = 256, attention=None,
                               **kwargs) -> torch.Tensor:
    """Mean attention distance of every encoder block and head of an MAE on unmasked images, in pixels.

    Returns [depth, N, heads] on the CPU (per image, so two models can be compared pairwise); ``kwargs`` go to
    ``mean_attention_distance`` (e.g. ``renormalise``). ``attention(x)`` → per-block maps [n, heads, T, T]
    replaces the MAE encoder for other models with ``grid`` and ``cfg.patch_size`` (e.g. a ``ViT``).
    """
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        if attention is not None:
            maps = attention(x)
        else:
            every = torch.ones(len(x), model.num_patches, dtype=torch.bool, device=device)
            maps = model.forward_encoder(x, every, return_attention=True).attention  # depth × [n, heads, T, T]
        out.append(torch.stack([mean_attention_distance(a, model.grid, model.cfg.patch_size, **kwargs).cpu()
                                for a in maps]))
    return torch.cat(out, dim=1)


def patch_mean_fill_loss(model, images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``mean_fill_loss`` for any MAE (images or clips): per-item MSE on the removed tokens when each removed
    value is predicted as the item's mean visible colour, computed on ``model.patchify`` (channel last).
    images as the model takes them, visible [N, L] bool → (N,)."""
    c = model.cfg.in_channels
    target = model.patchify(images)  # [N, L, P]
    target = target.reshape(*target.shape[:2], -1, c)  # [N, L, P/C, C]
    keep = visible[..., None, None].to(target.dtype)
    mean = (target * keep).sum((1, 2), keepdim=True) / (keep.sum((1, 2), keepdim=True) * target.shape[2]).clamp(min=1)
    err = ((target - mean) ** 2).mean((2, 3))  # [N, L]
    removed = (~visible).to(err.dtype)
    return (err * removed).sum(1) / removed.sum(1).clamp(min=1)


# ----------------------------------------------------------------------------------------------------
# Premises of the MIM notebooks: the (zoo) model has learned its pretext task and features worth probing.


def fill_loss(model, images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Zero-skill reference in the model's own loss units, per image (N,): the mean-colour fill
    (``patch_mean_fill_loss``) for pixel targets; for per-patch normalised targets (``norm_pix_loss``) a flat
    patch at its own true mean colour, whose normalised error is the target's mean square."""
    if not model.cfg.norm_pix_loss:
        return patch_mean_fill_loss(model, images, visible)
    target = model.patchify(images)
    target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
    per_patch = (target**2).mean(dim=-1)  # [N, L]
    removed = (~visible).to(per_patch.dtype)
    return (per_patch * removed).sum(1) / removed.sum(1).clamp(min=1)


@torch.no_grad()
def pretext_premise(table, name: str, model, images: torch.Tensor, mask_fn: MaskFn, generator: torch.Generator,
                    margin: float = 0.1):
    """Record the premise "``model`` reconstructs removed patches better than the zero-skill fill" on held-out
    ``images``, one mask per image from ``mask_fn``: paired per image, the model's loss must be lower than
    ``fill_loss`` by more than ``margin`` × the fill's mean loss. Returns the claim."""
    model.eval()
    visible = mask_fn(len(images), generator)
    device = next(model.parameters()).device
    loss = []
    for i in range(0, len(images), 256):
        x, v = images[i:i + 256].to(device), visible[i:i + 256].to(device)
        _, pred, _ = model(x, token_mask=v)
        per_patch = model.forward_loss(x, pred, v, reduction="none")
        removed = (~v).float()
        loss.append(((per_patch * removed).sum(1) / removed.sum(1).clamp(min=1)).cpu())
    loss, fill = torch.cat(loss), fill_loss(model, images, visible)
    ref = "flat fill at each patch's true mean" if model.cfg.norm_pix_loss else "mean-colour fill"
    return table.add(name, "loss on removed patches (held out)", ref, fill.mean(), "model", loss.mean(), "lower",
                     kind="premise", paired=(fill, loss), margin=margin * float(fill.mean()),
                     note=f"must beat the fill by > {margin:.0%} of its loss")


def probe_premise(table, name: str, model, init, train_set, test_set, pool: str = "mean", margin: float = 0.02):
    """Record the premise "a linear probe on ``model``'s frozen features beats the same probe on its random
    initialisation ``init``" by more than ``margin`` accuracy, paired on the test items. ``train_set`` and
    ``test_set`` are ``ImageSet``s (their labels are probed). Returns (claim, init correctness, model correctness)."""
    correct = [linear_probe(encoder_features(m, train_set.images, pool), train_set.labels,
                            encoder_features(m, test_set.images, pool), test_set.labels).float()
               for m in (init, model)]
    claim = table.add(name, "linear-probe accuracy", "random initialisation", correct[0].mean(), "pretrained",
                      correct[1].mean(), "higher", kind="premise", paired=tuple(correct), margin=margin,
                      note=f"must beat the random-init probe by > {margin:g}")
    return claim, correct[0], correct[1]
