"""Linear probes on frozen features (scikit-learn, standardised inputs): per-item results, so that two
representations probed on the same test items can be compared pairwise.

- :func:`linear_probe` — logistic regression; per-item correctness of the test items;
- :func:`ridge_probe` — ridge regression of vector targets (e.g. clean log-mel frames); per-item squared error.
"""

from __future__ import annotations

import torch


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 c: float = 1.0, max_iter: int = 1000) -> torch.Tensor:
    """Logistic regression fit on train_x [N, D], train_y [N]; returns (M,) bool per-item correctness of the test
    items. Deterministic (lbfgs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    probe.fit(train_x.numpy(), train_y.numpy())
    return torch.from_numpy(probe.predict(test_x.numpy()) == test_y.numpy())


def ridge_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                alpha: float = 1.0) -> torch.Tensor:
    """Ridge regression fit on train_x [N, D] → train_y [N, K]; returns (M,) the mean squared error of each test
    item over its K outputs."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), Ridge(alpha=alpha))
    probe.fit(train_x.numpy(), train_y.reshape(len(train_y), -1).numpy())
    pred = torch.from_numpy(probe.predict(test_x.numpy())).float()
    return (pred - test_y.reshape(len(test_y), -1).float()).pow(2).mean(dim=1)
