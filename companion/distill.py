"""Feature distillation for masked image modelling: align a student's token features to a frozen teacher's.

Used by MaskAlign (Xue et al., CVPR 2023) and Hybrid Distillation (Shi et al., ICLR 2024); the method-specific
pieces (MaskAlign's Dynamic Alignment, Hybrid Distill's relation loss) live in their method modules. Training
goes through ``train.fit`` (``targets=None``; measurements along training with its ``checkpoints``). The pieces:

* ``block_outputs`` / ``teacher_tokens`` — the per-block hidden states of any model with a ``blocks`` list
  (captured with forward hooks, so the model's own forward runs unchanged), e.g. a frozen ``ViT`` teacher.
* ``feature_alignment_loss`` — the distance between student predictions and (normalised) teacher features,
  at a subset of the tokens (MaskAlign: the visible ones; masked feature reconstruction: the removed ones) or
  at every token.
* measurements: ``ridge_readout`` / ``readout_cosine`` (how well a linear map of the student's features
  predicts the teacher's, per held-out image), ``visible_features`` and ``tokens_to_grid``. Training cost is counted by
  :func:`companion.eval.training_step_flops`.

Mask convention (as in ``companion.masks`` and ``companion.models.mae``): a token mask is bool ``(N, L)`` with
**True = visible** (seen by the student). Token tensors carry the [CLS] token first: ``[N, 1+L, D]`` for the
full image, ``[N, 1+K, D]`` for the K visible tokens, which are kept in their original (raster) order — the
order ``MAE.forward_encoder`` uses for a given ``token_mask``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

LOSSES = ("smooth_l1", "mse", "cosine")
TARGET_NORMS = ("whiten", "l2", "none")


# ---- teacher / student hidden states -------------------------------------------------------------------
def block_outputs(model: nn.Module, run: Callable[[], object]) -> list[torch.Tensor]:
    """The output of every block in ``model.blocks`` during ``run()`` (a call of the model's own forward).

    A block returning a tuple contributes its first element. Returns one tensor per block, in order.
    """
    outs: list[torch.Tensor] = []
    hooks = [blk.register_forward_hook(lambda _m, _i, o: outs.append(o[0] if isinstance(o, tuple) else o))
             for blk in model.blocks]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return outs


@torch.no_grad()
def teacher_tokens(teacher: nn.Module, images: torch.Tensor, layers: Sequence[int] | None = None,
                   forward: Callable[[torch.Tensor], object] | None = None) -> list[torch.Tensor]:
    """Hidden states [N, 1+L, D] of a frozen teacher on the intact ``images``, for the blocks in ``layers``
    (0-based indices into ``teacher.blocks``; default all). ``forward`` defaults to
    ``teacher.forward_features`` (a ``ViT``)."""
    forward = forward or teacher.forward_features
    hidden = block_outputs(teacher, lambda: forward(images))
    return [hidden[i] for i in layers] if layers is not None else hidden


def gather_visible(tokens: torch.Tensor, visible: torch.Tensor, cls: bool = True) -> torch.Tensor:
    """tokens [N, 1+L, D] (``cls=True``) or [N, L, D]; visible [N, L] bool, same count K per row →
    [N, 1+K, D] (or [N, K, D]): the visible tokens in raster order, [CLS] kept first."""
    patches = tokens[:, 1:] if cls else tokens
    if visible.shape != patches.shape[:2]:
        raise ValueError(f"visible must be (N, L) = {tuple(patches.shape[:2])}, got {tuple(visible.shape)}")
    counts = visible.sum(1)
    if (counts != counts[0]).any():
        raise ValueError(f"visible must keep the same number of tokens per row, got {counts.tolist()}")
    kept = patches[visible].view(len(patches), int(counts[0]), patches.shape[-1])
    return torch.cat([tokens[:, :1], kept], dim=1) if cls else kept


def normalise_target(y: torch.Tensor, target_norm: str = "whiten") -> torch.Tensor:
    """Teacher-target normalisation of MaskAlign's code: ``"whiten"`` = parameter-free LayerNorm per token,
    ``"l2"`` = unit length per token, ``"none"``."""
    if target_norm == "whiten":
        return F.layer_norm(y, y.shape[-1:])
    if target_norm == "l2":
        return F.normalize(y, dim=-1)
    if target_norm == "none":
        return y
    raise ValueError(f"target_norm must be one of {TARGET_NORMS}, got {target_norm!r}")


# ---- the loss ------------------------------------------------------------------------------------------
def feature_alignment_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor],
                           visible: torch.Tensor | None = None, weights: Sequence[float] | None = None,
                           loss: str = "smooth_l1", target_norm: str = "whiten", cls: bool = True,
                           reduction: str = "mean") -> torch.Tensor:
    """Weighted sum over aligned layer pairs of the distance between student predictions and teacher features.

    student_feats: one tensor per aligned layer, [N, 1+K, D] (visible tokens only, as an MAE-mode encoder
    produces) or [N, 1+L, D] (every token); teacher_feats: the matching teacher layers, [N, 1+L, D] on the
    intact image. ``visible`` [N, L] bool selects the tokens compared (teacher tokens, and full-length
    student tokens, are gathered there); None compares every token. ``cls=False`` means the tensors carry
    no [CLS] token. ``weights`` default to the mean over layers. Teacher targets are normalised
    (``normalise_target``) and never receive gradients.

    ``loss``: ``"smooth_l1"`` (MaskAlign's choice, 2·SmoothL1 with β=1: equal to the MSE for small errors),
    ``"mse"``, or ``"cosine"`` (1 − cosine similarity per token). ``reduction="none"`` returns the loss per
    image [N] instead of the scalar mean.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(f"need one teacher layer per student prediction, got {len(student_feats)} and "
                         f"{len(teacher_feats)}")
    weights = list(weights) if weights is not None else [1.0 / len(student_feats)] * len(student_feats)
    if len(weights) != len(student_feats):
        raise ValueError(f"weights must have {len(student_feats)} entries, got {len(weights)}")
    total = 0.0
    for w, x, y in zip(weights, student_feats, teacher_feats, strict=True):
        y = normalise_target(y.detach(), target_norm)
        if visible is not None:
            if x.shape[1] == y.shape[1]:  # a full-length student (e.g. SimMIM mode): compare visible tokens only
                x = gather_visible(x, visible, cls)
            y = gather_visible(y, visible, cls)
        if x.shape != y.shape:
            raise ValueError(f"student prediction {tuple(x.shape)} and teacher target {tuple(y.shape)} differ")
        if loss == "smooth_l1":
            per_token = 2 * F.smooth_l1_loss(x, y, reduction="none").mean(-1)
        elif loss == "mse":
            per_token = ((x - y) ** 2).mean(-1)
        else:
            per_token = 1 - F.cosine_similarity(x, y, dim=-1)
        total = total + w * per_token.mean(1)  # [N]
    return total if reduction == "none" else total.mean()


# ---- measurements -----------------------------------------------------------------------------------------
def ridge_readout(train_x: torch.Tensor, train_y: torch.Tensor, lam: float = 1e-2) -> Callable[[torch.Tensor],
                                                                                             torch.Tensor]:
    """Closed-form ridge regression y ≈ [x, 1] W fit on train_x [M, Dx] → train_y [M, Dy] (features
    standardised with the training statistics, ``lam`` relative to the mean eigenvalue). Returns the map."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)

    def design(x):
        x = ((x - mean) / std).double()
        return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)

    a = design(train_x)
    gram = a.T @ a
    reg = lam * gram.diagonal()[:-1].mean() * torch.eye(len(gram), dtype=gram.dtype)
    reg[-1, -1] = 0  # no penalty on the bias
    w = torch.linalg.solve(gram + reg, a.T @ train_y.double())
    return lambda x: (design(x) @ w).float()


def readout_cosine(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                   lam: float = 1e-2, per_token: bool = False) -> torch.Tensor:
    """How well a linear map of the student's token features predicts the teacher's, per held-out image.

    train_x [N, K, Ds] / train_y [N, K, Dt]: student and teacher features at the same tokens of the fit
    images; test_x / test_y likewise for held-out images. The ridge map is fit on every fit token; the
    score of a held-out image is the mean cosine similarity of predicted and true (mean-centred with the
    fit statistics) teacher features over its tokens. Returns (N_test,), or (N_test, K) with ``per_token``.
    """
    centre = train_y.reshape(-1, train_y.shape[-1]).mean(0)
    read = ridge_readout(train_x.reshape(-1, train_x.shape[-1]), train_y.reshape(-1, train_y.shape[-1]) - centre,
                         lam)
    pred = read(test_x.reshape(-1, test_x.shape[-1])).view(*test_y.shape[:2], -1)
    cos = F.cosine_similarity(pred, test_y - centre, dim=-1)  # [N_test, K]
    return cos if per_token else cos.mean(1)


def tokens_to_grid(values: torch.Tensor, visible: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Per-visible-token values [N, K] (raster order) → token maps [N, g, g], ``fill`` at removed tokens."""
    grid = torch.full(visible.shape, fill, dtype=values.dtype)
    grid[visible] = values.reshape(-1)
    side = int(visible.shape[1] ** 0.5)
    return grid.view(len(visible), side, side)


@torch.no_grad()
def visible_features(encoder: nn.Module, images: torch.Tensor, visible: torch.Tensor,
                     batch_size: int = 256) -> torch.Tensor:
    """An MAE-mode encoder's final features (after its LayerNorm) of the visible tokens: images [N, C, H, W],
    visible [N, L] bool → [N, K, D] (no [CLS]), in raster order. Evaluated in eval mode without gradients."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out = torch.cat([encoder.forward_encoder(images[i:i + batch_size].to(device),
                                             visible[i:i + batch_size].to(device)).latent[:, 1:].float().cpu()
                     for i in range(0, len(images), batch_size)])
    encoder.train(was_training)
    return out


__all__ = ["block_outputs", "feature_alignment_loss", "gather_visible", "normalise_target",
           "readout_cosine", "ridge_readout", "teacher_tokens", "tokens_to_grid", "visible_features"]
