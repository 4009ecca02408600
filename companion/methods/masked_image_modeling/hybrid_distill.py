"""Hybrid Distillation (Shi et al., "Hybrid Distillation: Connecting Masked Autoencoders with Contrastive
Learners", ICLR 2024): one student, two frozen teachers.

* From a supervised (or contrastive) teacher the student distils **features** — the teacher's last block
  output, token by token (``companion.distill.feature_alignment_loss``) — for discrimination.
* From a masked-image-modelling teacher it imitates the **token relations** — the attention maps of the last
  ``relation_layers`` blocks (KL divergence, teacher ‖ student, per query) — for diverse, local attention.

Measurements of "diversity": the mean attention distance per head (``companion.mim.mean_attention_distance``)
and how much it differs between the heads of a layer (``head_distance_spread``); how closely a student's
attention follows a teacher's (``profile_gap``); frozen features for linear probes (``frozen_features``).

Models: the student and the supervised teacher are ``companion.models.ViT``; the MIM teacher an ``MAE``
(every token visible). ``attention_maps`` reads either.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ... import distill
from ...mim import encoder_attention_distance, encoder_features
from ...train import predict


def attention_maps(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Per-block attention [N, heads, T, T] on the intact images, [CLS] first: a ``ViT`` or an ``MAE``."""
    if hasattr(model, "forward_encoder"):
        every = torch.ones(len(images), model.num_patches, dtype=torch.bool, device=images.device)
        return model.forward_encoder(images, every, return_attention=True).attention
    return model.forward_features(images, return_attention=True)[1]


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
    """A ``ViT`` student with a linear head that maps its last block's tokens to the feature teacher's width."""

    def __init__(self, vit: nn.Module, teacher_dim: int):
        super().__init__()
        self.vit = vit
        self.feature_head = nn.Linear(vit.cfg.dim, teacher_dim)

    def forward(self, images: torch.Tensor):
        """→ (predicted teacher features of every token [N, 1+L, Dt], attention maps per block)."""
        maps: list[torch.Tensor] = []
        hidden = distill.block_outputs(self.vit, lambda: maps.extend(
            self.vit.forward_features(images, return_attention=True)[1]))
        return self.feature_head(hidden[-1]), maps


def hybrid_loss(student: HybridStudent, images: torch.Tensor, feature_teacher: nn.Module | None = None,
                relation_teacher: nn.Module | None = None, feature_weight: float = 1.0,
                relation_weight: float = 1.0, relation_layers: int = 2) -> torch.Tensor:
    """``feature_weight`` · feature distillation from ``feature_teacher`` (its last block, every token) +
    ``relation_weight`` · attention-relation distillation from ``relation_teacher`` (the last
    ``relation_layers`` blocks of each). A teacher given as None contributes nothing (single-teacher baselines)."""
    if feature_teacher is None and relation_teacher is None:
        raise ValueError("give at least one teacher")
    preds, maps = student(images)
    total = images.new_zeros(())
    if feature_teacher is not None and feature_weight:
        target = distill.teacher_tokens(feature_teacher, images, [len(feature_teacher.blocks) - 1])
        total = total + feature_weight * distill.feature_alignment_loss([preds], target)
    if relation_teacher is not None and relation_weight:
        with torch.no_grad():
            teacher_maps = attention_maps(relation_teacher, images)
        total = total + relation_weight * relation_loss(maps[-relation_layers:], teacher_maps[-relation_layers:])
    return total


def head_distances(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Mean attention distance in pixels of every block and head, per image: [depth, N, heads], for a ``ViT``,
    an ``MAE`` or a ``HybridStudent`` (its ``vit``). One loop: ``mim.encoder_attention_distance``."""
    model = getattr(model, "vit", model)
    return encoder_attention_distance(model, images, batch_size, attention=lambda x: attention_maps(model, x))


@torch.no_grad()
def frozen_features(model: nn.Module, images: torch.Tensor, pool: str = "cls", batch_size: int = 256) -> torch.Tensor:
    """Frozen features after the final LayerNorm, on intact images, of a ``ViT``, an ``MAE`` or a
    ``HybridStudent`` (its ``vit``): ``pool="cls"`` → the [CLS] token [N, D] (input of a linear probe);
    ``"none"`` → every patch token [N, L, D] (a patch-level probe)."""
    if pool not in ("cls", "none"):
        raise ValueError(f"pool must be 'cls' or 'none', got {pool!r}")
    model = getattr(model, "vit", model)
    if hasattr(model, "forward_encoder"):
        return encoder_features(model, images, pool=pool, batch_size=batch_size)
    model.eval()

    def encode(x):
        if pool == "cls":
            return model.forward_features(x)
        return model.norm(distill.block_outputs(model, lambda: model.forward_features(x))[-1][:, 1:])

    return predict(encode, images, batch_size=batch_size, device=next(model.parameters()).device)


def profile_gap(distances: torch.Tensor, reference: torch.Tensor, layers: int) -> torch.Tensor:
    """How far one model's attention-distance profile is from a reference model's, per image: the mean over
    the last ``layers`` blocks and the heads (head i against head i) of |distance − reference distance|.
    distances, reference [depth, N, heads] (same depth and heads) → [N]."""
    if distances.shape != reference.shape:
        raise ValueError(f"distance tensors differ in shape: {tuple(distances.shape)} and {tuple(reference.shape)}")
    return (distances[-layers:] - reference[-layers:]).abs().mean(dim=(0, 2))


def head_distance_spread(distances: torch.Tensor, layers: int) -> torch.Tensor:
    """Attention diversity per image: the standard deviation across heads of the mean attention distance,
    averaged over the last ``layers`` blocks. distances [depth, N, heads] → [N]."""
    return distances[-layers:].std(dim=-1).mean(0)
