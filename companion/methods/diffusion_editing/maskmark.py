"""MaskMark-D (Hu et al., 2025) at toy scale: masked watermark training for local extraction and localisation.

The network is :mod:`companion.models.watermark` (HiDDeN-style encoder/decoder, localiser, distortion layer).
Training draws fresh random 16-bit messages each step (:class:`WatermarkObjective`):

- ``global``: image → encoder → distortion → decoder; BCE on the bits (the classical encoder-distortion-decoder
  training, and the warm start).
- ``masked`` (MaskMark-D): the watermarked image is fused with the original through a random free-form mask M
  (watermark inside, original outside), distorted, and then (a) the localiser predicts M from the distorted image
  (per-pixel BCE) and (b) the decoder reads the bits from the distorted image *masked* by M — pixels outside M
  zeroed through ``masking.apply(decoder, x, M, "black")``, the paper's I_mask = I'_fuse ⊙ M. At test time the
  localiser's predicted mask replaces M.

The encoder rescales its residual to a fixed PSNR, so there is no image-quality loss: both arms' watermarked
images have the same PSNR by construction.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import masking, masks, train
from ...eval import bit_accuracy, mask_iou
from ...models.watermark import Distortion, Localiser, WatermarkDecoder, WatermarkEncoder, psnr


class MaskMark(nn.Module):
    """Encoder, decoder, localiser and distortion layer of one watermarking model."""

    def __init__(self, bits: int = 16, channels: int = 32, depth: int = 3, target_psnr: float = 30.0,
                 kinds: tuple[str, ...] = ("identity", "noise", "blur", "jpeg", "resize"),
                 max_strength: dict[str, float] | None = None, tile: int = 4):
        super().__init__()
        self.bits = bits
        self.encoder = WatermarkEncoder(bits, channels, depth, target_psnr, tile)
        self.decoder = WatermarkDecoder(bits, channels, depth, tile)
        self.localiser = Localiser(channels, depth)
        self.distortion = Distortion(masking.gaussian_blur, kinds, max_strength)


def splice(x: torch.Tensor, watermarked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Watermarked pixels inside the bool mask (N,1,H,W), original pixels outside (the paper's I_fuse)."""
    return torch.where(mask, watermarked, x)


def mask_pool(n: int, size: int, min_area: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` free-form training masks (n, 1, size, size) with area shares uniform in [min_area, 1]."""
    areas = min_area + (1 - min_area) * torch.rand(n, generator=generator, dtype=torch.float64)
    return masks.free_form(n, size, areas, generator)


class WatermarkObjective(train.Objective):
    """The training loss of one arm (``mode`` = ``"global"`` or ``"masked"``; see the module docstring).

    Messages, distortions and the masks (drawn from ``pool``, needed for ``masked``) come from a generator seeded
    with ``seed``. ``loc_weight`` weighs the localiser's BCE next to the bits' BCE. ``detect`` (global mode only)
    also trains the localiser on whole images: the distorted watermarked batch (all pixels 1) and the distorted
    originals (all pixels 0) — global detection, no masks; its gradient stops at the watermarked images, so the
    encoder and decoder train exactly as without it.
    """

    def __init__(self, mode: str, seed: int, pool: torch.Tensor | None = None, loc_weight: float = 1.0,
                 detect: bool = False):
        if mode not in ("global", "masked"):
            raise ValueError(f"mode must be 'global' or 'masked', not {mode!r}")
        if mode == "masked" and pool is None:
            raise ValueError("masked training needs a mask pool")
        self.mode, self.pool, self.loc_weight, self.detect = mode, pool, loc_weight, detect
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, model: MaskMark, x: torch.Tensor, y=None):
        msg = torch.randint(0, 2, (len(x), model.bits), generator=self.g).to(x)
        wm = model.encoder(x, msg)
        if self.mode == "global":
            distorted = model.distortion(wm, self.g)
            logits = model.decoder(distorted)
            loss = F.binary_cross_entropy_with_logits(logits, msg)
            out = {"bit_acc": bit_accuracy(logits.detach(), msg).mean()}
            if self.detect:  # whole-image detection: every pixel of a watermarked image is 1, of an original 0
                loc = model.localiser(torch.cat([distorted.detach(), model.distortion(x, self.g)]))
                target = torch.cat([torch.ones_like(loc[:len(x)]), torch.zeros_like(loc[len(x):])])
                out["loc"] = F.binary_cross_entropy_with_logits(loc, target)
                loss = loss + self.loc_weight * out["loc"]
            return {"loss": loss, **out}
        mask = self.pool[torch.randint(len(self.pool), (len(x),), generator=self.g)].to(x.device)
        distorted = model.distortion(splice(x, wm, mask), self.g)
        logits = masking.apply(model.decoder, distorted, mask, "black")
        loc = model.localiser(distorted)
        bit_loss = F.binary_cross_entropy_with_logits(logits, msg)
        loc_loss = F.binary_cross_entropy_with_logits(loc, mask.to(x.dtype))
        return {"loss": bit_loss + self.loc_weight * loc_loss, "bits": bit_loss.detach(), "loc": loc_loss.detach(),
                "bit_acc": bit_accuracy(logits.detach(), msg).mean()}


DECODES = ("whole", "localiser", "true")


@torch.no_grad()
def evaluate(model: MaskMark, x: torch.Tensor, msg: torch.Tensor, mask: torch.Tensor, kind: str, strength: float,
             decode: str, seed: int = 0, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Splice, distort, decode: per-image scores of one model on images x (N,3,H,W), bits (N,B), marked regions
    mask (N,1,H,W).

    The watermark goes inside ``mask`` only, the distortion ``kind`` at ``strength`` is applied to the spliced
    image, then the decoder reads the whole image (``decode="whole"``, global extraction), the image masked by the
    localiser's prediction (``"localiser"``, logit > 0) or the image masked by the true region (``"true"``, an
    oracle localiser). Returns ``bit_acc`` (N,), ``iou`` (N,) of the mask used vs ``mask`` (the whole image for
    ``"whole"``), ``psnr`` (N,) of the watermarked image before splicing, and ``pred`` (N,1,H,W) bool.
    """
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {', '.join(DECODES)}, not {decode!r}")
    model.eval()
    g = torch.Generator().manual_seed(seed)
    out: dict[str, list[torch.Tensor]] = {"bit_acc": [], "iou": [], "psnr": [], "pred": []}
    for i in range(0, len(x), batch_size):
        xb, mb, kb = x[i:i + batch_size], msg[i:i + batch_size], mask[i:i + batch_size]
        wm = model.encoder(xb, mb)
        distorted = model.distortion.apply(splice(xb, wm, kb), kind, strength, g)
        if decode == "whole":
            pred = torch.ones_like(kb)
            logits = model.decoder(distorted)
        else:
            pred = model.localiser(distorted) > 0 if decode == "localiser" else kb
            logits = masking.apply(model.decoder, distorted, pred, "black")
        out["bit_acc"].append(bit_accuracy(logits, mb))
        out["iou"].append(mask_iou(pred, kb))
        out["psnr"].append(psnr(wm, xb))
        out["pred"].append(pred)
    return {k: torch.cat(v) for k, v in out.items()}


def evaluate_shares(model: MaskMark, x: torch.Tensor, msg: torch.Tensor, regions: dict[float, torch.Tensor],
                    attacks: dict[str, float], decode: str, seed: int = 0) -> dict:
    """:func:`evaluate` for every marked-area share (``regions[share]`` = (N,1,H,W) masks), with the distortions of
    ``attacks`` (kind → strength) dealt out over the images: image i gets the (i mod K)-th of the K distortions.

    Returns ``{"bit_acc": {share: (N,)}, "iou": {share: (N,)}, "psnr": (N,)}`` in the images' order.
    """
    kinds = list(attacks)
    groups = [torch.arange(k, len(x), len(kinds)) for k in range(len(kinds))]
    order = torch.argsort(torch.cat(groups))
    out: dict = {"bit_acc": {}, "iou": {}}
    for share, region in regions.items():
        runs = [evaluate(model, x[i], msg[i], region[i], kind, attacks[kind], decode, seed)
                for kind, i in zip(kinds, groups)]
        for key in ("bit_acc", "iou"):
            out[key][share] = torch.cat([r[key] for r in runs])[order]
        out["psnr"] = torch.cat([r["psnr"] for r in runs])[order]
    return out
