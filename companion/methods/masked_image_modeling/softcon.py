"""SoftCon (Wang, Albrecht, Zhu 2024): multi-label guided soft contrastive pretraining, at toy scale.

What only this notebook needs: the encoder (a :class:`~companion.models.cnn.SmallCNN` backbone with an MLP
projection head), the two-view augmentation every arm shares, the per-arm losses (the losses themselves live
in :mod:`companion.train`), the linear probe, and a paired bootstrap over test scenes of a difference in mAP.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from companion import train
from companion.models.cnn import SmallCNN

ARMS = ("SimCLR", "multi-label SupCon", "SoftCon", "supervised BCE")


class Encoder(nn.Module):
    """SmallCNN backbone (its classifier head unused) + MLP projection head.

    ``features(x)``: (N, 6, S, S) -> (N, widths[-1]) pooled backbone features (what the probe reads);
    ``forward(x)``: -> (N, out_dim) projections (what the losses read; class logits for the supervised arm).
    """

    def __init__(self, in_channels: int = 6, widths: tuple[int, ...] = (32, 64, 128), out_dim: int = 64):
        super().__init__()
        self.backbone = SmallCNN(in_channels, num_classes=1, widths=tuple(widths))
        width = widths[-1]
        self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, out_dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        return b.flatten(b.pool(b.forward_features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def standardise(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-band standardisation of (N, C, H, W) ``images`` with the mean and std of ``reference``."""
    mean = reference.mean((0, 2, 3), keepdim=True)
    std = reference.std((0, 2, 3), keepdim=True)
    return (images - mean) / std


def augment(x: torch.Tensor, g: torch.Generator, jitter: float = 0.2, offset: float = 0.5,
            noise: float = 0.1) -> torch.Tensor:
    """One random view of each (N, C, S, S) image: a random dihedral transform (flips and 90° turns), a random
    circular shift, per-band gain jitter (x (1 ± ``jitter``)), a per-band offset (± ``offset``) — the spectral
    analogue of SimCLR's colour jitter — and additive Gaussian noise (std ``noise``), all on standardised bands.
    The land cover of a scene, hence its labels, is unchanged."""
    n = len(x)
    k = torch.randint(0, 4, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    shift = torch.randint(0, x.shape[-1], (n, 2), generator=g)
    out = torch.empty_like(x)
    for i in range(n):
        v = torch.rot90(x[i], int(k[i]), (1, 2))
        v = v.flip(2) if flip[i] else v
        out[i] = torch.roll(v, (int(shift[i, 0]), int(shift[i, 1])), (1, 2))
    gain = 1 + jitter * (2 * torch.rand(n, x.shape[1], 1, 1, generator=g) - 1)
    shift_bands = offset * (2 * torch.rand(n, x.shape[1], 1, 1, generator=g) - 1)
    return out * gain + shift_bands + noise * torch.randn(x.shape, generator=g)


def two_views(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(N, C, S, S) -> (2N, C, S, S): two independent :func:`augment` views, first views then second views."""
    return torch.cat([augment(x, g), augment(x, g)])


def arm_loss(arm: str, temperature: float, soft_form: str = "softmax"):
    """``loss_fn(model, x, y)`` of one pretraining arm for ``train.fit`` with ``augment=two_views``: ``x`` is
    (2N, ...) two views, ``y`` (N, 8) the scenes' multi-hot labels. SimCLR ignores ``y``."""

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = model(x)
        if arm == "supervised BCE":
            return nn.functional.binary_cross_entropy_with_logits(out, torch.cat([y, y]))
        z1, z2 = out.chunk(2)
        if arm == "SimCLR":
            return train.info_nce(z1, z2, temperature)
        if arm == "multi-label SupCon":
            return train.multilabel_supcon(z1, z2, y, temperature, weighting="any")
        if arm == "SoftCon":
            return train.soft_contrastive(z1, z2, y, temperature, form=soft_form)
        raise ValueError(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")

    return loss_fn


def probe_scores(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 C: float = 1.0) -> torch.Tensor:
    """Linear probe: one logistic regression per class (one-vs-rest, L2 penalty ``C``) on standardised frozen
    features (N, D) with multi-hot labels (N, K); returns test decision scores (M, K)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=C, max_iter=2000)))
    clf.fit(train_features.numpy(), train_labels.numpy().astype(int))
    return torch.from_numpy(clf.decision_function(test_features.numpy())).float()


def weighted_map(scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mAP (macro mean of per-class average precision, classes with a positive) of scores (N, K) against
    multi-hot labels (N, K), with each scene counted ``weights`` times: weights (B, N) -> (B,). With all weights
    1 it equals :func:`companion.eval.mean_average_precision` (no tied scores assumed)."""
    aps = []
    for k in range(labels.shape[1]):
        order = torch.argsort(scores[:, k], descending=True)
        pos = labels[order, k].double()
        w = weights[:, order].double()
        tp = (w * pos).cumsum(1)
        precision = tp / w.cumsum(1).clamp_min(1e-12)
        n_pos = (w * pos).sum(1)
        aps.append((precision * w * pos).sum(1) / n_pos.clamp_min(1e-12))
    present = (weights.double() @ labels.double()) > 0  # (B, K)
    ap = torch.stack(aps, 1)
    return (ap * present).sum(1) / present.sum(1)


def map_difference_interval(scores_base: torch.Tensor, scores_method: torch.Tensor, labels: torch.Tensor,
                            n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of mAP(method) - mAP(base), paired bootstrap over test scenes (both score sets
    resampled with the same scenes). scores (N, K), labels (N, K)."""
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    idx = torch.randint(0, n, (n_boot, n), generator=g)
    weights = torch.zeros(n_boot, n).scatter_add_(1, idx, torch.ones(n_boot, n))
    diff = weighted_map(scores_method, labels, weights) - weighted_map(scores_base, labels, weights)
    lo, hi = np.percentile(diff.numpy(), [2.5, 97.5])
    return float(lo), float(hi)


def embedding_similarity(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, N) cosine similarity of the model's projections of (N, C, S, S) ``images``."""
    with torch.no_grad():
        z = nn.functional.normalize(model(images), dim=1)
    return z @ z.T


def rowwise_correlation(learned: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per scene, the Pearson correlation between its learned and its target similarities to every other scene:
    (N, N) and (N, N) -> (N,) (the diagonal is left out; a row with constant entries gives 0)."""
    n = len(learned)
    off = ~torch.eye(n, dtype=torch.bool, device=learned.device)
    a = learned[off].view(n, n - 1).double()
    b = target.to(learned.device)[off].view(n, n - 1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    return ((a * b).sum(1) / den).float().cpu()
