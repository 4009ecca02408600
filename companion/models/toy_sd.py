"""``ToySD``: a pixel-space text-to-image *and* inpainting diffusion model on 16×16 captioned scenes.

The structural stand-in for Stable Diffusion in the editing notebooks: the package's one
:class:`~companion.models.unet.UNet` with a time embedding, caption cross-attention at both levels (16×16 and
8×8), self-attention at 8×8 and four extra input channels for inpainting, ``[mask, masked image]``, as in SD's
inpainting UNet: plain text-to-image is the same model with everything to fill (mask all ones, masked image all
zeros). The caption encoder is a word embedding plus a learned position embedding per slot (no transformer:
each word's cross-attention map belongs to that word alone), after a learned start token, as CLIP's text encoder
puts ``<|startoftext|>`` first: pixels that belong to no word (the background) can put their attention there
instead of on a word. Cross-attention maps are therefore
(N, heads, H·W, 1 + 4): key 0 is the start token, key ``k + TOKEN_OFFSET`` the caption's word k.

Called as ``model(x_t, t, cond) -> eps`` (the ``companion.diffusion.gaussian`` convention) with ``cond`` a dict:
``"captions"`` (N, 4) long ids into ``data.scenes.VOCAB``; optional ``"mask"`` (N, 1, H, W) float, 1 = the
region to fill, and ``"masked"`` (N, 3, H, W) the model-space image with that region zeroed (both absent:
text-to-image). Images live in
[-1, 1] inside the model: :func:`to_model` / :func:`from_model` convert from and to [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.scenes import CAPTION_LEN, PAD, VOCAB
from .layers import Attention
from .unet import UNet


def to_model(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images → the model's [-1, 1]."""
    return images * 2 - 1


def from_model(x: torch.Tensor) -> torch.Tensor:
    """The model's [-1, 1] → [0, 1] images (clamped)."""
    return ((x + 1) / 2).clamp(0, 1)


TOKEN_OFFSET = 1  # cross-attention key of caption word k: k + TOKEN_OFFSET (key 0 = the start token)


class ToySD(nn.Module):
    """Text-to-image + inpainting UNet (module doc); ``unet`` is the package UNet."""

    def __init__(self, channels=(32, 64), time_dim: int = 64, text_dim: int = 32, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), text_dim)
        self.start = nn.Parameter(torch.randn(1, 1, text_dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, CAPTION_LEN, text_dim) * 0.02)
        self.unet = UNet(3, 3, channels, time_dim=time_dim, extra_channels=4, context_dim=text_dim,
                         attn_levels=(0, 1), heads=heads, self_attn_levels=(1,))

    def encode(self, captions: torch.Tensor) -> torch.Tensor:
        """(N, 4) ids → the start token and the caption's word tokens (N, 1 + 4, text_dim)."""
        words = self.embed(captions) + self.pos
        return torch.cat([self.start.expand(len(words), -1, -1), words], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        mask, masked = cond.get("mask"), cond.get("masked")
        if (mask is None) != (masked is None):
            raise ValueError("cond holds 'mask' and 'masked' together (inpainting) or neither (text-to-image)")
        n, _, h, w = x.shape
        if mask is None:  # text-to-image: fill everything, nothing known
            extra = torch.cat([x.new_ones(n, 1, h, w), x.new_zeros(n, 3, h, w)], dim=1)
        else:
            extra = torch.cat([mask.to(x), masked.to(x)], dim=1)
        return self.unet(x, t, self.encode(cond["captions"].to(x.device)), extra)

    def cross_attention_layers(self) -> dict[str, Attention]:
        return self.unet.cross_attention_layers()

    @staticmethod
    def null_cond(cond: dict) -> dict:
        """``cond`` with an empty caption (all ``<pad>``): the unconditional branch of classifier-free guidance."""
        return {**cond, "captions": torch.full_like(cond["captions"], PAD)}


def inpaint_cond(captions: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> dict:
    """The inpainting condition: ``images`` (N, 3, H, W) in model space, ``mask`` (N, 1, H, W), 1 = fill."""
    mask = mask.float()
    return {"captions": captions, "mask": mask, "masked": images * (1 - mask)}
