"""Hard Patches Mining (Wang et al., "Bootstrap Masked Visual Modeling via Hard Patches Mining", TPAMI 2025).

An MAE that also predicts, per patch, how hard that patch will be to reconstruct, and then masks the patches
it predicts to be hard. Three pieces, all on ``companion.models.MAE(MAEConfig(loss_predictor=True))``:

* the **relative loss** (:func:`relative_loss`): the predictor is trained only to *rank* the removed patches
  by their actual reconstruction loss — a binary cross-entropy on ``sigmoid(pred_k − pred_j)`` for every
  pair of removed patches with target ``[loss_k > loss_j]``;
* the **hard-patch mask** (``companion.masks.hard_patch_mask``), fed by the predictor's scores on the full
  image (:func:`predicted_losses`);
* the **easy → hard schedule** (:func:`easy_to_hard_fraction`): the share of removed patches chosen by the
  predictor grows linearly from 0 to ``max_fraction`` (0.5 in the paper) over training; the rest are random.

:class:`HPMObjective` puts them together as a ``loss_fn`` for ``companion.train.fit`` (a ``train.Objective``:
the schedule reads ``fit``'s step counter); with ``guided=False`` (random masks) it trains "MAE + loss
prediction", and on a model without a predictor it is plain MAE.

Mask convention as in ``companion.masks``: token masks are bool (N, L), True = visible, False = removed.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ... import masks, train
from ...models.mae import MAE


def relative_loss(predicted: torch.Tensor, actual: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """HPM's relative (ranking) objective for the loss predictor.

    predicted, actual [N, L] (``actual`` is the per-patch reconstruction loss, detached by the caller);
    removed [N, L] bool. For every ordered pair (j, k) of removed patches of one image with different actual
    losses: BCE of ``sigmoid(predicted_k − predicted_j)`` against ``actual_k > actual_j``. Mean over those pairs.
    """
    diff = predicted[:, None, :] - predicted[:, :, None]  # [N, L, L], entry (j, k) = pred_k - pred_j
    pair = removed[:, None, :] & removed[:, :, None]
    harder = (actual[:, None, :] > actual[:, :, None]) & pair
    easier = (actual[:, None, :] < actual[:, :, None]) & pair
    loss = -(harder * F.logsigmoid(diff) + easier * F.logsigmoid(-diff))
    return loss.sum() / (harder | easier).sum().clamp(min=1)


def easy_to_hard_fraction(step: int, total_steps: int, max_fraction: float = 0.5) -> float:
    """Share of the removed patches chosen by predicted difficulty at ``step`` (0-based): linear from
    ``max_fraction / total_steps`` to ``max_fraction`` (HPM: ``(epoch + 1) / epochs · 0.5``)."""
    return min(1.0, (step + 1) / total_steps) * max_fraction


def full_view(model: MAE, n: int, device=None) -> torch.Tensor:
    """A token mask that keeps every patch: [n, L] all True."""
    return torch.ones(n, model.num_patches, dtype=torch.bool, device=device)


@torch.no_grad()
def predicted_losses(model: MAE, imgs: torch.Tensor) -> torch.Tensor:
    """The loss predictor's scores on the whole image (nothing removed), as HPM uses them to choose the
    mask: imgs [N, C, H, W] → [N, L], higher = predicted harder."""
    enc = model.forward_encoder(imgs, token_mask=full_view(model, len(imgs), imgs.device))
    return model.forward_loss_predictor(enc.latent, enc.ids_restore)


@torch.no_grad()
def patch_losses(model: MAE, imgs: torch.Tensor, visible: torch.Tensor, predictor: bool = True) -> torch.Tensor:
    """Actual per-patch reconstruction loss under the mask ``visible`` [N, L] and, with ``predictor``, the
    predictor's scores under that same mask (the condition it is trained in): → [N, L] or [N, 2, L]."""
    enc = model.forward_encoder(imgs, token_mask=visible)
    actual = model.forward_loss(imgs, model.forward_decoder(enc.latent, enc.ids_restore), visible, reduction="none")
    if not predictor:
        return actual
    return torch.stack([actual, model.forward_loss_predictor(enc.latent, enc.ids_restore)], dim=1)


def removed_mean(per_patch: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Mean of per-patch values [N, L] over each image's removed patches → [N]."""
    removed = (~visible).to(per_patch.dtype)
    return (per_patch * removed).sum(1) / removed.sum(1).clamp(min=1)


@torch.no_grad()
def dense_patch_loss(model: MAE, imgs: torch.Tensor, ratio: float, n_masks: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """How hard each patch is, averaged over ``n_masks`` random masks: the mean reconstruction loss of a patch
    over the masks that removed it → [N, L] (0 for a patch no mask removed)."""
    total = torch.zeros(len(imgs), model.num_patches, device=imgs.device)
    count = torch.zeros_like(total)
    for _ in range(n_masks):
        visible = masks.token_ratio_mask(len(imgs), model.num_patches, ratio, generator).to(imgs.device)
        removed = (~visible).float()
        total += patch_losses(model, imgs, visible, predictor=False) * removed
        count += removed
    return total / count.clamp(min=1)


def with_predictor_from(model: MAE, source: MAE) -> MAE:
    """A copy of ``model`` whose loss-predictor branch has ``source``'s weights (e.g. its initial ones: the
    paired "untrained predictor" baseline on the same trained encoder and decoder)."""
    out = copy.deepcopy(model)
    out.loss_predictor.load_state_dict(source.loss_predictor.state_dict())
    return out


class HPMObjective(train.Objective):
    """``loss_fn`` for ``companion.train.fit``: one HPM training step (``fit`` sets ``step`` and ``total``).

    Each call: the current model scores the whole batch with its loss predictor (no gradient — HPM uses an
    EMA teacher, see the notebook), ``hard_patch_mask`` removes ``ratio`` of the patches, the
    scheduled share of them chosen by those scores (``guided``; otherwise a uniform random mask); the MAE
    loss on the removed patches plus ``predictor_weight`` × :func:`relative_loss` is the loss. A model
    without a loss predictor gets the plain MAE loss. Returns ``{"loss", "pretext", "predictor",
    "hard_fraction"}``: ``fit`` logs the last three per step in ``History.metrics``.
    """

    def __init__(self, ratio: float = 0.75, guided: bool = True, max_fraction: float = 0.5,
                 predictor_weight: float = 1.0, generator: torch.Generator | None = None):
        self.ratio, self.guided = ratio, guided
        self.max_fraction, self.predictor_weight = max_fraction, predictor_weight
        self.generator = generator

    def hard_fraction(self) -> float:
        """This step's share of the removed patches chosen by predicted difficulty."""
        if not self.guided:
            return 0.0
        return easy_to_hard_fraction(self.step, max(self.total, 1), self.max_fraction)

    def mask(self, model: MAE, imgs: torch.Tensor) -> torch.Tensor:
        """This step's token mask [N, L] (True = visible)."""
        fraction = self.hard_fraction()
        n_removed = model.num_patches - masks.num_visible(model.num_patches, self.ratio)
        if int(n_removed * fraction) == 0:  # nothing to choose by difficulty yet: skip the scoring pass
            return masks.token_ratio_mask(len(imgs), model.num_patches, self.ratio, self.generator).to(imgs.device)
        return masks.hard_patch_mask(predicted_losses(model, imgs), self.ratio, fraction, self.generator)

    def __call__(self, model: MAE, imgs: torch.Tensor, y=None) -> dict[str, torch.Tensor | float]:
        fraction = self.hard_fraction()
        visible = self.mask(model, imgs)
        enc = model.forward_encoder(imgs, token_mask=visible)
        per_patch = model.forward_loss(imgs, model.forward_decoder(enc.latent, enc.ids_restore), visible,
                                       reduction="none")  # [N, L]
        pretext = removed_mean(per_patch, visible).mean()
        loss = pretext
        predictor = torch.zeros(())
        if model.loss_predictor is not None:
            scores = model.forward_loss_predictor(enc.latent, enc.ids_restore)
            predictor = relative_loss(scores, per_patch.detach(), ~visible)
            loss = pretext + self.predictor_weight * predictor
        return {"loss": loss, "pretext": pretext.detach(), "predictor": predictor.detach(), "hard_fraction": fraction}


def with_loss_predictor(model: MAE, seed: int = 0) -> MAE:
    """A trainable copy of a (pretrained) MAE with HPM's loss predictor added: every weight of ``model``
    carried over, the predictor branch freshly initialised from ``seed`` (the start of an HPM arm that
    continues a pretrained MAE)."""
    from dataclasses import replace

    torch.manual_seed(seed)
    out = MAE(replace(model.cfg, loss_predictor=True))
    missing, unexpected = out.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("loss_predictor.") for k in missing):
        raise ValueError(f"model does not match: missing {missing}, unexpected {unexpected}")
    return out.to(next(model.parameters()).device).train().requires_grad_(True)
