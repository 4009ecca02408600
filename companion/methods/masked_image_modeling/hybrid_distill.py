"""Hybrid Distillation (Shi et al., "Hybrid Distillation: Connecting Masked Autoencoders with Contrastive
Learners", ICLR 2024): one student, two frozen teachers, and progressive redundant-token masking.

* From a supervised (or contrastive) teacher the student distils **features** — the teacher's last block
  output, token by token (``companion.distill.feature_alignment_loss``) — for discrimination.
* From a masked-image-modelling teacher it imitates the **token relations** — the attention maps of the
  ``relation_blocks`` (the paper: intermediate blocks; KL divergence, teacher ‖ student, per query, block i
  against block i) — for diverse, local attention.
* **Progressive redundant-token masking** cuts the distillation cost: the patches the feature teacher's
  [CLS] token attends to least (its last block, averaged over heads) are *redundant* and are dropped from the
  student's input; the dropped share rises stage by stage during training (``progressive_ratio``), so the
  student first sees every patch and later only the informative ones. Both losses are computed on the kept
  tokens: the teacher's features there, and its attention among them (rows renormalised).

Mask convention (as in ``companion.distill`` and ``companion.models.mae``): a token mask is bool ``(N, L)``
with **True = kept** (seen by the student), in raster order; token tensors carry [CLS] first.

Models: the teachers are a supervised ``ViT`` and an ``MAE``; the student is an ``MAE`` encoder (mode "mae",
so dropped tokens never enter it and cost nothing) with a linear head to the feature teacher's width
(``HybridStudent``). ``attention_maps`` reads any of them. Measurements: mean attention distance per head
(``head_distances``), its spread across heads (``head_distance_spread``), how closely a student's attention
follows a teacher's (``profile_gap``), frozen features for linear probes (``frozen_features``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ... import distill, train
from ...masks import num_visible
from ...mim import encoder_attention_distance, encoder_features


def attention_maps(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Per-block attention [N, heads, T, T] on the intact images, [CLS] first: a ``ViT``, an ``MAE`` or a
    ``HybridStudent``."""
    model = getattr(model, "encoder", model)
    if hasattr(model, "forward_encoder"):
        every = torch.ones(len(images), model.num_patches, dtype=torch.bool, device=images.device)
        return model.forward_encoder(images, every, return_attention=True).attention
    return model.forward_features(images, return_attention=True)[1]


# ---- progressive redundant-token masking ------------------------------------------------------------------
def redundant_token_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """scores [N, L] (higher = more informative) → kept tokens [N, L] bool: the ``L - round(ratio·L)``
    highest-scoring tokens of each row (ties: the earlier token is kept). The kept sets are nested: a
    higher ``ratio`` keeps a subset of what a lower one keeps."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    n, length = scores.shape
    order = scores.argsort(dim=1, descending=True, stable=True)  # most informative first
    kept = torch.zeros(n, length, dtype=torch.bool, device=scores.device)
    return kept.scatter_(1, order[:, :num_visible(length, ratio)], True)


def progressive_ratio(step: int, total: int, ratios: Sequence[float]) -> float:
    """The dropped share at ``step`` of ``total``: training is cut into ``len(ratios)`` equal stages and stage
    s drops ``ratios[s]`` (e.g. (0.25, 0.375, 0.5): more tokens dropped as training goes on)."""
    if not ratios:
        raise ValueError("need at least one stage ratio")
    if list(ratios) != sorted(ratios):
        raise ValueError(f"stage ratios must not decrease (progressive masking), got {list(ratios)}")
    return float(ratios[min(len(ratios) - 1, step * len(ratios) // max(total, 1))])


def cls_attention_scores(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per-block attention maps [N, heads, 1+L, 1+L] → the last block's [CLS]→patch attention averaged over
    heads [N, L]: the redundancy score (low = redundant)."""
    return maps[-1][:, :, 0, 1:].mean(1)


def restrict_relations(maps: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Attention among the kept tokens: maps [N, heads, 1+L, 1+L] ([CLS] first), kept [N, L] bool with the
    same count K per row → [N, heads, 1+K, 1+K], [CLS] kept, each row renormalised to sum 1."""
    n, length = kept.shape
    counts = kept.sum(1)
    if (counts != counts[0]).any():
        raise ValueError(f"kept must keep the same number of tokens per row, got {counts.tolist()}")
    ids = torch.arange(1, length + 1, device=maps.device).expand(n, -1)[kept].view(n, -1)  # [N, K] (+1: [CLS])
    ids = torch.cat([torch.zeros(n, 1, dtype=ids.dtype, device=ids.device), ids], dim=1)  # [N, 1+K]
    heads = maps.shape[1]
    rows = torch.gather(maps, 2, ids[:, None, :, None].expand(-1, heads, -1, maps.shape[-1]))
    sub = torch.gather(rows, 3, ids[:, None, None, :].expand(-1, heads, ids.shape[1], -1))
    return sub / sub.sum(-1, keepdim=True).clamp_min(1e-12)


# ---- the losses -------------------------------------------------------------------------------------------
def relation_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layer pairs, heads and queries of KL(teacher ‖ student) between attention rows."""
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ValueError(f"need matching non-empty lists of maps, got {len(student_maps)} and {len(teacher_maps)}")
    total = 0.0
    for s, t in zip(student_maps, teacher_maps, strict=True):
        if s.shape != t.shape:
            raise ValueError(f"student attention {tuple(s.shape)} and teacher attention {tuple(t.shape)} differ")
        t = t.detach()
        total = total + (t * (t.clamp_min(1e-8).log() - s.clamp_min(1e-8).log())).sum(-1).mean()
    return total / len(student_maps)


class HybridStudent(nn.Module):
    """An ``MAE`` encoder (mode "mae") with a linear head that maps its last block's tokens to the feature
    teacher's width. The decoder of ``encoder`` is never used."""

    def __init__(self, encoder: nn.Module, teacher_dim: int):
        super().__init__()
        if getattr(encoder.cfg, "mode", "mae") != "mae":
            raise ValueError("the student must be an MAE in mode 'mae' (dropped tokens never enter the encoder)")
        self.encoder = encoder
        self.feature_head = nn.Linear(encoder.cfg.dim, teacher_dim)

    def forward(self, images: torch.Tensor, kept: torch.Tensor | None = None, return_attention: bool = True):
        """images [N, C, H, W], kept [N, L] bool (None = every token) → (predicted teacher features of the
        [CLS] and kept tokens [N, 1+K, Dt], attention maps per block [N, heads, 1+K, 1+K] or None)."""
        if kept is None:
            kept = torch.ones(len(images), self.encoder.num_patches, dtype=torch.bool, device=images.device)
        enc = self.encoder.forward_encoder(images, kept, return_hidden=True, return_attention=return_attention)
        return self.feature_head(enc.hidden[-1]), enc.attention


@torch.no_grad()
def feature_teacher_outputs(teacher: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass of a frozen ``ViT`` teacher → (its last block's tokens [N, 1+L, D], the redundancy
    scores [N, L] of ``cls_attention_scores``)."""
    maps: list[torch.Tensor] = []
    hidden = distill.block_outputs(teacher, lambda: maps.extend(teacher.forward_features(images,
                                                                                         return_attention=True)[1]))
    return hidden[-1], cls_attention_scores(maps)


class HybridLoss(train.Objective):
    """The Hybrid Distill objective for ``train.fit`` (``targets=None``):
    ``feature_weight`` · feature distillation from ``feature_teacher`` (its last block, at the kept tokens) +
    ``relation_weight`` · KL of the attention of the blocks ``relation_blocks`` (0-based indices, the same in
    student and teacher) from ``relation_teacher`` (among the kept tokens). A teacher given as None contributes
    nothing (the single-teacher students).

    ``stage_ratios`` switches on progressive redundant-token masking (``progressive_ratio`` of the step; the
    scores come from ``score_teacher``, default the feature teacher); None keeps every token. Each call
    logs ``kept``, the share of patch tokens the student saw."""

    def __init__(self, feature_teacher: nn.Module | None = None, relation_teacher: nn.Module | None = None,
                 feature_weight: float = 1.0, relation_weight: float = 1.0, relation_blocks: Sequence[int] = (-1,),
                 stage_ratios: Sequence[float] | None = None, score_teacher: nn.Module | None = None):
        if feature_teacher is None and relation_teacher is None:
            raise ValueError("give at least one teacher")
        if stage_ratios is not None and (score_teacher or feature_teacher) is None:
            raise ValueError("redundant-token masking needs a teacher to score the tokens (score_teacher)")
        self.feature_teacher, self.relation_teacher = feature_teacher, relation_teacher
        self.feature_weight, self.relation_weight = feature_weight, relation_weight
        self.relation_blocks = tuple(relation_blocks)
        self.stage_ratios = None if stage_ratios is None else tuple(stage_ratios)
        self.score_teacher = score_teacher or feature_teacher

    def ratio(self) -> float:
        """The share of patch tokens dropped at the current step (0 without masking)."""
        return 0.0 if self.stage_ratios is None else progressive_ratio(self.step, self.total, self.stage_ratios)

    def __call__(self, student: HybridStudent, images: torch.Tensor, _targets=None) -> dict:
        target = scores = None
        if self.feature_teacher is not None:
            target, scores = feature_teacher_outputs(self.feature_teacher, images)
        kept = None
        if self.stage_ratios is not None:
            if self.score_teacher is not self.feature_teacher:
                scores = feature_teacher_outputs(self.score_teacher, images)[1]
            kept = redundant_token_mask(scores, self.ratio())
        use_relations = self.relation_teacher is not None and self.relation_weight
        preds, maps = student(images, kept, return_attention=bool(use_relations))
        total = images.new_zeros(())
        if target is not None and self.feature_weight:
            total = total + self.feature_weight * distill.feature_alignment_loss([preds], [target], visible=kept)
        if use_relations:
            with torch.no_grad():
                every = attention_maps(self.relation_teacher, images)
            teacher_maps = [every[b] if kept is None else restrict_relations(every[b], kept)
                            for b in self.relation_blocks]
            total = total + self.relation_weight * relation_loss([maps[b] for b in self.relation_blocks], teacher_maps)
        return {"loss": total, "kept": (preds.shape[1] - 1) / student.encoder.num_patches}


# ---- measurements -----------------------------------------------------------------------------------------
def head_distances(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Mean attention distance in pixels of every block and head, per image: [depth, N, heads], for a ``ViT``,
    an ``MAE`` or a ``HybridStudent``. One loop: ``mim.encoder_attention_distance``."""
    model = getattr(model, "encoder", model)
    if hasattr(model, "forward_encoder"):
        return encoder_attention_distance(model, images, batch_size)
    return encoder_attention_distance(model, images, batch_size, attention=lambda x: attention_maps(model, x))


@torch.no_grad()
def frozen_features(model: nn.Module, images: torch.Tensor, pool: str = "cls", batch_size: int = 256) -> torch.Tensor:
    """Frozen features after the final LayerNorm, on intact images, of a ``ViT``, an ``MAE`` or a
    ``HybridStudent``: ``pool="cls"`` → the [CLS] token [N, D]; ``"mean"`` → the mean patch token [N, D];
    ``"none"`` → every patch token [N, L, D]."""
    if pool not in ("cls", "mean", "none"):
        raise ValueError(f"pool must be 'cls', 'mean' or 'none', got {pool!r}")
    model = getattr(model, "encoder", model)
    if hasattr(model, "forward_encoder"):
        return encoder_features(model, images, pool=pool, batch_size=batch_size)
    model.eval()

    def encode(x):
        tokens = model.norm(distill.block_outputs(model, lambda: model.forward_features(x))[-1])  # [n, 1+L, D]
        return {"cls": tokens[:, 0], "mean": tokens[:, 1:].mean(1), "none": tokens[:, 1:]}[pool]

    return train.predict(encode, images, batch_size=batch_size, device=next(model.parameters()).device)


def profile_gap(distances: torch.Tensor, reference: torch.Tensor, blocks: Sequence[int]) -> torch.Tensor:
    """How far one model's attention-distance profile is from a reference model's, per image: the mean over
    the ``blocks`` (0-based indices) and the heads (head i against head i) of |distance − reference distance|.
    distances, reference [depth, N, heads] (same depth and heads) → [N]."""
    if distances.shape != reference.shape:
        raise ValueError(f"distance tensors differ in shape: {tuple(distances.shape)} and {tuple(reference.shape)}")
    return (distances[list(blocks)] - reference[list(blocks)]).abs().mean(dim=(0, 2))


def locality(distances: torch.Tensor, blocks: Sequence[int]) -> torch.Tensor:
    """Mean attention distance per image over the ``blocks`` (0-based) and the heads: distances [depth, N,
    heads] → [N] (lower = more local)."""
    return distances[list(blocks)].mean(dim=(0, 2))


def head_distance_spread(distances: torch.Tensor, blocks: Sequence[int]) -> torch.Tensor:
    """Attention diversity per image: the standard deviation across heads of the mean attention distance,
    averaged over the ``blocks`` (0-based). distances [depth, N, heads] → [N]."""
    return distances[list(blocks)].std(dim=-1).mean(0)
