"""MaskAlign (Xue et al., "Stare at What You See: Masked Image Modeling without Reconstruction", CVPR 2023):
align the visible tokens' features of a masked student with a frozen teacher's features of the whole image,
through Dynamic Alignment (learnable per-layer mixing of student levels) — no decoder, no reconstruction.

The baseline the paper asks about ("is reconstruction necessary in MIM with a teacher model?") is
``FeatureReconstructor``: the same encoder, plus a decoder that reconstructs the teacher's features of the
*removed* tokens (decoder-style MIM with a teacher target, as MILAN or MaskDistill).

MaskAlign's recipe samples the visible tokens from the teacher's attention ("stare at what you see"):
``teacher_view`` returns the teacher's hidden states and its last block's [CLS] attention over the patches
(the teacher is a ``ViT`` or the encoder of an ``MAE`` that sees every token),
``attention_guided_mask`` draws the visible tokens with probability proportional to it, without replacement
(the official code's ``attention_masking``: ``torch.multinomial`` on the head-averaged [CLS] row).

The shared feature-distillation pieces (teacher features, alignment losses, FLOP counts) are in
``companion.distill``. Token masks are bool ``(N, L)``, True = visible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ...distill import block_outputs, feature_alignment_loss, teacher_tokens
from ...masks import num_visible
from ...mim import encoder_features


def _is_mae(teacher: nn.Module) -> bool:
    return hasattr(teacher, "forward_encoder")


@torch.no_grad()
def teacher_view(teacher: nn.Module, images: torch.Tensor,
                 layers: Sequence[int] | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One forward pass of a frozen teacher on the intact images [N, C, H, W] →
    (hidden states [N, 1+L, D] of the blocks in ``layers``, default all; the last block's attention from
    [CLS] to each patch, averaged over heads, [N, L], each row summing to at most 1).

    The teacher is a ``ViT`` or an ``MAE``, whose encoder then sees every token (its block outputs before the
    final LayerNorm, as a ``ViT``'s)."""
    if _is_mae(teacher):
        every = torch.ones(len(images), teacher.num_patches, dtype=torch.bool, device=images.device)
        enc = teacher.forward_encoder(images, every, return_hidden=True, return_attention=True)
        hidden, maps = enc.hidden, enc.attention
    else:
        maps = []
        hidden = block_outputs(teacher, lambda: maps.extend(teacher.forward_features(images, return_attention=True)[1]))
    importance = maps[-1][:, :, 0, 1:].mean(1)  # [N, L]
    return ([hidden[i] for i in layers] if layers is not None else hidden), importance


@torch.no_grad()
def teacher_features(teacher: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """A teacher's frozen features of intact images for a linear probe, pooled as the students' are
    (``mim.encoder_features``): the last block's patch tokens after the final LayerNorm, averaged → [N, D].
    An ``MAE`` teacher's encoder sees every token."""
    if _is_mae(teacher):
        return encoder_features(teacher, images, batch_size=batch_size)
    device = next(teacher.parameters()).device
    return torch.cat([teacher.norm(teacher_tokens(teacher, images[i:i + batch_size].to(device))[-1][:, 1:])
                      .mean(1).float().cpu() for i in range(0, len(images), batch_size)])


def attention_guided_mask(importance: torch.Tensor, ratio: float,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """MaskAlign's attention-guided masking: importance [N, L] (non-negative, e.g. the teacher's [CLS]
    attention) → visible [N, L] bool with exactly ``num_visible(L, ratio)`` True per row, drawn one by one
    without replacement with probability proportional to the importance of the tokens not yet drawn."""
    if (importance < 0).any():
        raise ValueError("importance must be non-negative")
    n, length = importance.shape
    keep = num_visible(length, ratio)
    visible = torch.zeros(n, length, dtype=torch.bool)
    if keep:
        weights = importance.detach().float().cpu().clamp(min=1e-12)  # rows with < K positive weights still fill up
        ids = torch.multinomial(weights, keep, replacement=False, generator=generator)  # [N, K]
        visible[torch.arange(n)[:, None], ids] = True
    return visible.to(importance.device)


class DynamicAlignment(nn.Module):
    """MaskAlign's Dynamic Alignment: for each aligned teacher layer t, a mixture of the student's block
    outputs, ``Σ_s W[t, s] · h_s``, followed by a linear head to the teacher's width.

    ``init_layers[t]`` is the student block initially assigned to teacher target t (default: the last
    ``len(targets)`` student blocks, in order). ``dynamic=True``: W is learnable, initialised as that
    one-hot assignment + 0.01 everywhere (as the official code initialises ``eye + 0.01``). ``dynamic=False``:
    W is the fixed one-hot assignment (static alignment: student block s ↔ teacher layer t).
    """

    def __init__(self, student_depth: int, num_targets: int, student_dim: int, teacher_dim: int,
                 dynamic: bool = True, init_layers: Sequence[int] | None = None):
        super().__init__()
        if init_layers is None:
            init_layers = list(range(student_depth - num_targets, student_depth))
        init_layers = list(init_layers)
        if len(init_layers) != num_targets or not all(0 <= s < student_depth for s in init_layers):
            raise ValueError(f"init_layers must name {num_targets} student blocks in [0, {student_depth}), "
                             f"got {init_layers}")
        assign = torch.zeros(num_targets, student_depth)
        assign[torch.arange(num_targets), torch.tensor(init_layers)] = 1.0
        self.dynamic = dynamic
        if dynamic:
            self.weights = nn.Parameter(assign + 0.01)
        else:
            self.register_buffer("weights", assign)
        self.heads = nn.ModuleList(nn.Linear(student_dim, teacher_dim) for _ in range(num_targets))

    def forward(self, hidden: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """hidden: the student's block outputs, each [N, T, Ds] → one prediction [N, T, Dt] per teacher target."""
        if len(hidden) != self.weights.shape[1]:
            raise ValueError(f"expected {self.weights.shape[1]} student block outputs, got {len(hidden)}")
        stacked = torch.stack(list(hidden))  # [S, N, T, Ds]
        mixed = torch.einsum("ts,snkd->tnkd", self.weights.to(stacked.dtype), stacked)  # [Tt, N, T, Ds]
        return [head(m) for head, m in zip(self.heads, mixed, strict=True)]


class AlignedStudent(nn.Module):
    """A student encoder (an MAE in ``"mae"`` mode: it sees only the visible tokens) with an alignment module.

    ``forward(images, visible)`` → (predictions per aligned teacher layer [N, 1+K, Dt], the ``Encoded``).
    The encoder's decoder, if any, is not used: MaskAlign has no reconstruction.
    """

    def __init__(self, encoder: nn.Module, align: DynamicAlignment):
        super().__init__()
        self.encoder, self.align = encoder, align

    def forward(self, images: torch.Tensor, visible: torch.Tensor):
        enc = self.encoder.forward_encoder(images, visible, return_hidden=True)
        return self.align(enc.hidden), enc


def maskalign_loss(student: AlignedStudent, teacher: nn.Module, images: torch.Tensor, visible: torch.Tensor,
                   teacher_layers: Sequence[int], targets: Sequence[torch.Tensor] | None = None,
                   **loss_kwargs) -> torch.Tensor:
    """MaskAlign's objective: the student sees the visible tokens, the frozen teacher the intact image; the
    student's aligned predictions match the teacher's ``teacher_layers`` at the visible tokens.
    ``targets``: those teacher hidden states if already computed (``teacher_view``), else the teacher runs.
    ``loss_kwargs`` go to ``feature_alignment_loss`` (loss, target_norm, weights, reduction)."""
    if targets is None:
        targets = teacher_view(teacher, images, teacher_layers)[0]
    preds, _ = student(images, visible)
    return feature_alignment_loss(preds, targets, visible, **loss_kwargs)


class FeatureReconstructor(nn.Module):
    """The reconstruction baseline with a teacher: an ``MAE`` whose decoder predicts the teacher's features of
    every patch instead of its pixels (its pixel head is replaced by a linear head to the teacher's width).

    ``forward(images, visible)`` → (predicted teacher features of every patch [N, L, Dt], the ``Encoded``);
    ``encoder`` is the MAE itself (its ``forward_encoder`` sees only the visible tokens, as MaskAlign's).
    """

    def __init__(self, mae: nn.Module, teacher_dim: int):
        super().__init__()
        if not len(mae.decoder_blocks):
            raise ValueError("a feature reconstructor needs an MAE with decoder blocks (decoder_depth >= 1)")
        mae.decoder_pred = nn.Linear(mae.cfg.decoder_dim, teacher_dim)
        self.encoder = mae

    def forward(self, images: torch.Tensor, visible: torch.Tensor):
        enc = self.encoder.forward_encoder(images, visible)
        return self.encoder.forward_decoder(enc.latent, enc.ids_restore), enc


def reconstruction_loss(student: FeatureReconstructor, teacher: nn.Module, images: torch.Tensor,
                        visible: torch.Tensor, teacher_layer: int, target: torch.Tensor | None = None,
                        **loss_kwargs) -> torch.Tensor:
    """Masked feature reconstruction: the student's decoder output matches the teacher's ``teacher_layer``
    features of the intact image at the *removed* tokens. ``target``: that hidden state [N, 1+L, Dt] if
    already computed, else the teacher runs. ``loss_kwargs`` as in ``maskalign_loss``."""
    if target is None:
        target = teacher_view(teacher, images, [teacher_layer])[0][0]
    target = target[:, 1:]  # [N, L, Dt], no [CLS]
    pred, _ = student(images, visible)
    return feature_alignment_loss([pred], [target], ~visible, cls=False, **loss_kwargs)

