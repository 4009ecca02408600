"""Applying a mask to a model: fill the input, or mask inside the model.

Convention for this module: ``mask`` is bool (N,1,H,W), **True = keep**. One call for every strategy::

    logits = apply(model, x, mask, "layer")

- ``black`` / ``grey`` / ``mean`` / ``blur`` replace removed pixels by 0, 0.5, the mean colour of the
  image's kept pixels, or a Gaussian blur of the image (which still carries some removed content), then
  run the plain forward. Inputs are images in [0, 1], before any normalisation.
- ``layer`` masks inside the model, so removed pixels have no influence on the output: layer masking
  (:mod:`companion.masking.layer`) for CNNs, token dropping for models with ``forward_masked`` (the ViT).
"""

from __future__ import annotations

import torch

from ..data.filters import gaussian_blur  # noqa: F401  (the package's one blur, re-exported here)

STRATEGIES = ("black", "grey", "mean", "blur", "layer")
FILLS = STRATEGIES[:4]


def fill(x: torch.Tensor, mask: torch.Tensor, strategy: str) -> torch.Tensor:
    """The input with removed pixels replaced according to a fill ``strategy`` (see module docstring)."""
    keep = mask.to(x.dtype)
    if strategy == "black":
        value = torch.zeros_like(x)
    elif strategy == "grey":
        value = torch.full_like(x, 0.5)
    elif strategy == "mean":
        visible = keep.sum(dim=(2, 3), keepdim=True)
        mean = (x * keep).sum(dim=(2, 3), keepdim=True) / visible.clamp_min(1)
        value = torch.where(visible > 0, mean, torch.full_like(mean, 0.5)).expand_as(x)
    elif strategy == "blur":
        value = gaussian_blur(x, sigma=max(1.0, x.shape[-1] / 8))
    else:
        raise ValueError(f"unknown fill {strategy!r}; choose one of {', '.join(FILLS)}")
    return torch.where(mask, x, value)


def apply(model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, strategy: str) -> torch.Tensor:
    """Model output for images ``x`` (N,C,H,W) with keep-mask ``mask`` (N,1,H,W) under ``strategy``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown masking strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be bool (N,1,H,W), got {tuple(mask.shape)} {mask.dtype}")
    mask = mask.expand(x.shape[0], 1, *x.shape[2:]).to(x.device)
    if strategy != "layer":
        return model(fill(x, mask, strategy))
    if hasattr(model, "forward_masked"):
        return model.forward_masked(x, mask)
    from .layer import layer_masked_forward

    return layer_masked_forward(model, x, mask)
