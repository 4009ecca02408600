"""Statistics shared by the notebooks: rank correlation (one rule for ties: average ranks, as scipy).

Bootstrap intervals of claims are :func:`companion.claims.bootstrap_interval` (``scipy.stats.bootstrap``).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def spearman(x, y) -> float:
    """Spearman's rho of two sequences (``scipy.stats.spearmanr``: average ranks for ties); nan if one is constant."""
    from scipy.stats import ConstantInputWarning, spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return float(spearmanr(np.asarray(x, dtype=float), np.asarray(y, dtype=float)).statistic)


def spearman_rows(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Spearman's rho of each row of ``a`` and ``b`` [N, L] → [N] (average ranks for ties, as :func:`spearman`).

    ``valid`` [N, L] bool (the same count in every row) restricts each row to those entries.
    """
    from scipy.stats import rankdata

    if valid is not None:
        counts = valid.sum(1)
        if (counts != counts[0]).any():
            raise ValueError(f"valid must select the same number of entries per row, got {counts.tolist()}")
        a, b = a[valid].view(len(a), -1), b[valid].view(len(b), -1)
    ra = torch.from_numpy(rankdata(a.detach().cpu().double().numpy(), axis=1))
    rb = torch.from_numpy(rankdata(b.detach().cpu().double().numpy(), axis=1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return ((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp(min=1e-12)).float().to(a.device)
