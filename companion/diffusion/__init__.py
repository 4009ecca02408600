"""Diffusion over images, sequences and tokens: one Gaussian toolkit and one absorbing-state (mask) toolkit.

- :mod:`companion.diffusion.gaussian`: noise schedules, epsilon / x0 prediction and the training loss, DDPM and
  DDIM sampling with the hooks the papers need (projection of known entries after each step, an output mask over
  chosen channels, inpainting by replacement, RePaint resampling, extra noise inside the mask). Models are called
  as ``model(x_t, t, cond)``; tensors are (N, C, ...) of any trailing shape.
- :mod:`companion.diffusion.masked`: absorbing-state (``[MASK]``) diffusion over token sequences: the training
  noisings, the 1/p-weighted masked loss, token replacement, and the parallel / low-confidence / semi-
  autoregressive decoders.

Import the submodule you need: ``from companion.diffusion import gaussian`` or ``... import masked``.
"""
