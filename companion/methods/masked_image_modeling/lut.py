"""Learning with Unmasked Tokens (LUT, Kim et al.): MAE plus a loss on the *unmasked* tokens.

MAE supervises only the removed patches: the decoder regresses their pixels. LUT adds a second, global
objective on the tokens the encoder *sees* ("broader contextualisation"). Each step (official code,
``naver-ai/lut``, ``models/models_lut.py`` and ``engines/engine_lut.py``):

1. two augmented views of every image (view 2 adds colour jitter and one of grey / solarise / blur);
2. one random permutation of the patches: view 1 keeps its first ``K`` patches, view 2 the next ``K``
   (disjoint positions); MAE's reconstruction loss is computed on view 1 only;
3. the student's query of each view is ``predictor(projector(mean of its visible encoded tokens))``;
4. an EMA teacher encodes both views *unmasked* and gives ``projector(mean of all encoded tokens)``;
5. the "BC" loss is ``2 − 2·cos(query of view a, teacher target of view b)`` for a ≠ b, averaged;
6. total = ``w_mae · MAE + w_bc · BC`` (recommended ``w_bc = 0.25``), the teacher's momentum following a
   cosine schedule from its base value (0.996 in the repo) to 1.

Mask convention: as in ``companion.models.mae``, token masks are bool ``(N, L)`` with **True = visible**.
Setting ``bc_weight=0`` in :class:`LUTObjective` gives plain MAE on view 1 with the *same* random draws
(views, masks, batches), so a baseline and LUT run are paired. ``views="full"`` is the control that is not in
the paper: the same loss and teacher, but each student query pools *every* token of its view (no masking, so
no disjoint visible sets): MAE plus a BYOL-style global objective, which separates "learning with the unmasked
tokens of the masked views" from "adding any global objective".
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import train
from ...eval import training_step_flops
from ...masking import gaussian_blur
from ...masks.tokens import disjoint_masks
from ...models.mae import MAE
from ...zoo import ema_update


def mlp_head(in_dim: int, hidden: int, out_dim: int, layers: int = 2) -> nn.Module:
    """LUT's projector / predictor: ``layers`` bias-free linear layers, BatchNorm + ReLU between them.

    ``layers=0`` is the identity. Shapes: [N, in_dim] → [N, out_dim].
    """
    if layers < 0:
        raise ValueError(f"layers must be >= 0, got {layers}")
    if layers == 0:
        return nn.Identity()
    mods: list[nn.Module] = []
    for i in range(layers):
        a = in_dim if i == 0 else hidden
        b = out_dim if i == layers - 1 else hidden
        mods.append(nn.Linear(a, b, bias=False))
        if i < layers - 1:
            mods += [nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*mods)


class LUT(nn.Module):
    """An :class:`~companion.models.MAE` with LUT's projector and predictor heads.

    The MAE is built by the caller (so a plain-MAE baseline can start from identical weights); the heads are
    built here, after it. ``encode_pooled`` gives the mean of the encoded patch tokens (the [CLS] token left
    out, as in the official code).
    """

    def __init__(self, mae: MAE, hidden: int = 256, projector_layers: int = 2, predictor_layers: int = 2):
        super().__init__()
        self.mae = mae
        dim = mae.cfg.dim
        self.projector = mlp_head(dim, hidden, dim, projector_layers)
        self.predictor = mlp_head(dim, hidden, dim, predictor_layers)

    def encode_pooled(self, imgs: torch.Tensor, visible: torch.Tensor | None = None):
        """imgs [N, C, H, W], visible [N, L] bool or None (every patch) → (Encoded, pooled [N, D])."""
        if visible is None:
            visible = torch.ones(len(imgs), self.mae.num_patches, dtype=torch.bool, device=imgs.device)
        enc = self.mae.forward_encoder(imgs, visible)
        return enc, enc.latent[:, 1:].mean(1)


BLUR_SIGMA = 0.7  # px: the small blur of view 2 (the variance of a 3×3 binomial kernel, σ ≈ 0.71)


def _uniform(n: int, lo: float, hi: float, generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop after reflect-padding by ``pad`` pixels, then a random horizontal flip (p = 0.5).

    The "simple resized crop" of LUT's views (the images already have the model's size). x [N, C, H, W].
    """
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # [N, H]
        cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # [N, W]
        idx = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x * weights).sum(1, keepdim=True).expand_as(x)


def photometric(x: torch.Tensor, generator: torch.Generator | None = None, jitter_p: float = 0.8) -> torch.Tensor:
    """View 2's extra augmentations: with probability ``jitter_p`` brightness (±0.4), contrast (±0.4) and
    saturation (±0.2) jitter; then one of grey-scale, solarisation (invert above 0.5) or a small Gaussian blur
    (σ = ``BLUR_SIGMA``), chosen uniformly ("three-augment"). x [N, C, H, W] in [0, 1] → same shape, clamped
    to [0, 1]."""
    n = len(x)
    jitter = (torch.rand(n, generator=generator) < jitter_p)[:, None, None, None].to(x.device)
    b = _uniform(n, 0.6, 1.4, generator)[:, None, None, None].to(x.device)
    c = _uniform(n, 0.6, 1.4, generator)[:, None, None, None].to(x.device)
    s = _uniform(n, 0.8, 1.2, generator)[:, None, None, None].to(x.device)
    choice = torch.randint(0, 3, (n,), generator=generator)[:, None, None, None].to(x.device)
    y = x * b
    y = (y - y.mean((1, 2, 3), keepdim=True)) * c + y.mean((1, 2, 3), keepdim=True)
    y = (_grey(y) + (y - _grey(y)) * s).clamp(0, 1)
    x = torch.where(jitter, y, x)
    solarised = torch.where(x >= 0.5, 1 - x, x)
    out = torch.where(choice == 0, _grey(x), torch.where(choice == 1, solarised, gaussian_blur(x, BLUR_SIGMA)))
    return out.clamp(0, 1)


def two_views(x: torch.Tensor, pad: int, generator: torch.Generator | None = None):
    """LUT's two global views of a batch: (crop+flip, crop+flip+photometric), each drawn independently."""
    return crop_flip(x, pad, generator), photometric(crop_flip(x, pad, generator), generator)


def bc_loss(query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LUT's (BYOL's) regression loss per item: ``2 − 2·cos(query, target)``, [N, D] × [N, D] → [N] in [0, 4]."""
    return 2 - 2 * F.cosine_similarity(query, target.detach(), dim=-1)


def momentum_at(step: int, total_steps: int, base: float) -> float:
    """The teacher's EMA momentum at ``step``: a cosine from ``base`` (step 0) to 1 (last step)."""
    t = step / max(1, total_steps - 1)
    return 1 - (1 - base) * (math.cos(math.pi * min(t, 1.0)) + 1) / 2


class LUTObjective(train.Objective):
    """``loss_fn`` for ``companion.train.fit``: MAE on view 1 + ``bc_weight`` × LUT's unmasked-token loss.

    The model passed in is a :class:`LUT`. On the first call the objective copies it as the EMA teacher;
    each later call first moves the teacher towards the student (the student of the previous step), the
    same order as the reference code's update after each optimizer step, with the momentum of
    :func:`momentum_at` at ``fit``'s ``step`` of ``total``. With ``bc_weight=0`` neither the second view nor
    the teacher is run, but every random draw is the same, so the run is the paired plain-MAE baseline.
    ``views="disjoint"`` is LUT (each query pools the visible tokens of its masked view); ``views="full"`` the
    control whose queries pool every token of the unmasked views (the reconstruction and the draws unchanged).
    Returns ``{"loss", "mae"}`` plus, with ``bc_weight > 0``, ``"bc"`` and ``"momentum"``: ``fit`` logs them
    per step in ``History.metrics``.
    """

    def __init__(self, ratio: float = 0.75, bc_weight: float = 0.25, momentum: float = 0.996, pad: int = 2,
                 generator: torch.Generator | None = None, views: str = "disjoint"):
        if views not in ("disjoint", "full"):
            raise ValueError(f"views must be 'disjoint' (LUT) or 'full' (control), got {views!r}")
        if bc_weight < 0:
            raise ValueError(f"bc_weight must be >= 0, got {bc_weight}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.ratio, self.bc_weight, self.momentum, self.pad, self.views = ratio, bc_weight, momentum, pad, views
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.teacher: LUT | None = None

    def __call__(self, model: LUT, x: torch.Tensor, y=None) -> dict[str, torch.Tensor | float]:
        n = len(x)
        view1, view2 = two_views(x, self.pad, self.generator)
        visible1, visible2 = (v.to(x.device) for v in disjoint_masks(n, model.mae.num_patches, self.ratio,
                                                                     self.generator))
        masked_queries = self.bc_weight > 0 and self.views == "disjoint"
        if masked_queries:  # both views keep K patches, so one encoder pass serves both: [2N, 1+K, D]
            enc, pooled = model.encode_pooled(torch.cat([view1, view2]), torch.cat([visible1, visible2]))
            latent1, ids_restore1 = enc.latent[:n], enc.ids_restore[:n]
        else:
            enc = model.mae.forward_encoder(view1, visible1)
            latent1, ids_restore1 = enc.latent, enc.ids_restore
        pred = model.mae.forward_decoder(latent1, ids_restore1)
        mae_loss = model.mae.forward_loss(view1, pred, visible1)
        if self.bc_weight == 0:
            return {"loss": mae_loss, "mae": mae_loss.detach()}
        m = momentum_at(self.step, self.total, self.momentum)
        if self.teacher is None:
            self.teacher = copy.deepcopy(model).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        else:
            ema_update(self.teacher, model, m)
        if not masked_queries:  # the control: each view's query pools every token of the unmasked view, [2N, D]
            pooled = model.encode_pooled(torch.cat([view1, view2]))[1]
        # each view's query passes the heads on its own (BatchNorm statistics per view, as in the repo)
        queries = torch.cat([model.predictor(model.projector(p)) for p in pooled.chunk(2)])  # [2N, D]
        with torch.no_grad():
            targets = self.teacher.projector(self.teacher.encode_pooled(torch.cat([view1, view2]))[1])
        # the query of each view regresses the teacher's target of the *other* view
        bc = bc_loss(queries, targets.roll(n, dims=0)).mean()
        return {"loss": mae_loss + self.bc_weight * bc, "mae": mae_loss.detach(), "bc": bc.detach(), "momentum": m}


def step_flops(model: LUT, objective: LUTObjective, batch: torch.Tensor) -> int:
    """Counted FLOPs (``companion.eval.count_flops``: matrix multiplies and attention, forward and backward,
    the teacher's no-grad passes included) of one training step of ``objective`` on ``batch`` [N, C, H, W],
    run on a deep copy of ``model``. Pass an objective built for counting: the call draws from its generator and
    creates its teacher."""
    return training_step_flops(copy.deepcopy(model).train(), lambda m, x, y: objective(m, x)["loss"], batch)


__all__ = ["LUT", "LUTObjective", "bc_loss", "crop_flip", "mlp_head", "momentum_at",
           "photometric", "step_flops", "two_views"]
