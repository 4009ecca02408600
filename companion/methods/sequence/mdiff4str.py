"""MDiff4STR (Du et al., 2025): a mask-diffusion text recogniser against an autoregressive one, on glyph
features or text-line images (:mod:`companion.data.glyphs`; images go through the package's ViT first,
:class:`ImageReader`).

Both recognisers are the package's encoder–decoder (:class:`companion.models.seq2seq.Seq2Seq`) over a small
glyph encoder (a linear projection of the feature frames and ``n_enc`` bidirectional layers): the AR reader has
a causal decoder trained with teacher forcing and decodes greedily with the KV cache; the MDM reader has a
bidirectional decoder trained as an absorbing-state denoiser (:mod:`companion.diffusion.masked`) and decodes
from all-``[MASK]`` in a few passes. Targets are (N, L) tokens (letters, EOS, EOS padding); real lengths are
read off them (:func:`lengths_of`).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ...data import glyphs
from ...diffusion import masked
from ...models.seq2seq import Seq2Seq, Seq2SeqConfig
from ...models.vit import ViT, ViTConfig
from ...train import Objective


class ImageReader(Seq2Seq):
    """The ``images`` view: the package's ViT (its patch embedding, [CLS] and position table, blocks and final
    LayerNorm; no classification head) turns a text-line image (N, C, H, W) into (N, 1 + patches, vit.dim)
    tokens, which the encoder–decoder reads as continuous source features (``src_dim = vit.dim``)."""

    def __init__(self, config: Seq2SeqConfig, vit_config: ViTConfig):
        super().__init__(config)
        self.vit = ViT(vit_config)

    def encode(self, src, n_layers: int | None = None) -> list[torch.Tensor]:
        """Images (N,C,H,W) → the ViT's tokens → the encoder's residual streams (see :meth:`Seq2Seq.encode`)."""
        v = self.vit
        tokens = torch.cat([v.cls_token.expand(len(src), -1, -1), v.patch_embed(src)], 1) + v.pos_embed
        for block in v.blocks:
            tokens, _ = block(tokens)
        return super().encode(v.norm(tokens), n_layers)


def make_reader(kind: str, width: int, dim: int, max_len: int, n_enc: int = 1, n_dec: int = 2, n_head: int = 4,
                n_embd: int = 64, seed: int = 0, image_size: int = 0, patch_size: int = 8,
                vit_depth: int = 2) -> Seq2Seq:
    """An ``"ar"`` (causal decoder) or ``"mdm"`` (bidirectional decoder) reader of (N, width, dim) glyph
    features into ``max_len + 1`` tokens; the same seed gives the same initial weights to both kinds. With
    ``image_size`` > 0 it reads (N, 1, image_size, image_size) text-line images through a ``vit_depth``-layer
    ViT of width ``n_embd`` instead (:class:`ImageReader`; ``width`` and ``dim`` are then unused)."""
    if kind not in ("ar", "mdm"):
        raise ValueError(f"kind must be 'ar' or 'mdm', got {kind!r}")
    torch.manual_seed(seed)
    if image_size:
        n_tokens = (image_size // patch_size) ** 2 + 1
        cfg = Seq2SeqConfig(vocab_size=glyphs.VOCAB, src_len=n_tokens, tgt_len=max_len + 1, n_enc=n_enc,
                            n_dec=n_dec, n_head=n_head, n_embd=n_embd, causal=kind == "ar", src_dim=n_embd)
        vit = ViTConfig(image_size=image_size, patch_size=patch_size, in_channels=1, dim=n_embd, depth=vit_depth,
                        heads=n_head)
        return ImageReader(cfg, vit)
    cfg = Seq2SeqConfig(vocab_size=glyphs.VOCAB, src_len=width, tgt_len=max_len + 1, n_enc=n_enc, n_dec=n_dec,
                        n_head=n_head, n_embd=n_embd, causal=kind == "ar", src_dim=dim)
    return Seq2Seq(cfg)


def lengths_of(targets: torch.Tensor) -> torch.Tensor:
    """Real tokens per target row (letters + the EOS): (N, L) → (N,)."""
    return (targets != glyphs.EOS).sum(1) + 1


def ar_loss(model: Seq2Seq, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Teacher forcing: input BOS + targets[:-1], cross-entropy on the real positions (letters and EOS)."""
    bos = torch.full_like(targets[:, :1], glyphs.BOS)
    logits = model(feats, torch.cat([bos, targets[:, :-1]], 1))
    inside = torch.arange(targets.shape[1], device=targets.device) < lengths_of(targets)[:, None]
    return F.cross_entropy(logits[inside], targets[inside])


class MDMObjective(Objective):
    """The MDM training loss: a noising drawn per sample among ``noisings`` (vanilla MDM: ``("random",)``; the
    paper's recipe: all six), the 1/p-weighted masked loss, plus ``replacement`` × the token-replacement loss
    (a second decoder pass on the same memory; 0 turns it off)."""

    def __init__(self, noisings=masked.NOISINGS, replacement: float = 0.0, seed: int = 0):
        self.noisings = tuple(noisings)
        self.replacement = replacement
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, model: Seq2Seq, feats: torch.Tensor, targets: torch.Tensor):
        lengths = lengths_of(targets)
        memory = model.memory(model.encode(feats)[-1])
        noisy, where, p = masked.noise(targets, lengths, glyphs.MASK, self.noisings, self.generator)
        loss_mask = masked.masked_loss(model.logits(model.decode(noisy, memory)[-1]), targets, where, p, lengths)
        if not self.replacement:
            return loss_mask
        swapped = masked.replace_tokens(targets, lengths, glyphs.MASK, glyphs.MASK, generator=self.generator)
        loss_rep = masked.replacement_loss(model.logits(model.decode(swapped, memory)[-1]), targets, lengths)
        return {"loss": loss_mask + self.replacement * loss_rep, "masked": loss_mask, "replacement": loss_rep}


def denoiser(model: Seq2Seq, feats: torch.Tensor):
    """Encode once; return ``tokens (N,L) -> logits (N,L,V)`` for :mod:`companion.diffusion.masked`."""
    memory = model.memory(model.encode(feats)[-1])
    return lambda tokens: model.logits(model.decode(tokens, memory)[-1])


def _elapsed(start: float, result: torch.Tensor) -> float:
    """Wall-clock seconds since ``start``, after the device has finished computing ``result``."""
    if result.is_cuda:
        torch.cuda.synchronize(result.device)
    return time.perf_counter() - start


@torch.no_grad()
def read_mdm(model: Seq2Seq, feats: torch.Tensor, steps: int, method: str = "low_confidence",
             revision: bool = False, batch_size: int = 1000, trace: bool = False) -> dict:
    """Decode (N, W, F) features with the MDM reader → {"tokens" (N,L), "passes" (most decoder passes in a
    batch, the revision pass included), "row_passes" (N,) (the passes each word needs), "seconds" (wall clock),
    "trace" (per-pass states of the first batch)}."""
    model.eval()
    length = model.config.tgt_len
    out, rows, passes, states = [], [], 0, []
    start = time.perf_counter()
    for i in range(0, len(feats), batch_size):
        f = feats[i:i + batch_size]
        fn = denoiser(model, f)
        res = masked.decode(fn, len(f), length, glyphs.MASK, glyphs.EOS, steps, method, trace=trace and i == 0,
                            device=f.device)
        tokens = res.tokens
        if revision:
            tokens = masked.revise(fn, tokens, glyphs.MASK, glyphs.EOS)
            if trace and i == 0:
                res.trace.append(tokens.clone())
        out.append(tokens)
        rows.append(res.row_passes + revision)
        passes = max(passes, res.passes + revision)
        states = states or res.trace
    tokens = torch.cat(out)
    return {"tokens": tokens, "passes": passes, "row_passes": torch.cat(rows).cpu(), "seconds": _elapsed(start, tokens),
            "trace": states}


@torch.no_grad()
def read_ar(model: Seq2Seq, feats: torch.Tensor, batch_size: int = 1000) -> dict:
    """Greedy AR decoding with the KV cache (stops when every word of a batch has emitted EOS) → {"tokens",
    "passes" (most decoder passes in a batch), "row_passes" (N,) (passes up to each word's first EOS),
    "seconds"}."""
    model.eval()
    out, passes = [], 0
    start = time.perf_counter()
    for i in range(0, len(feats), batch_size):
        f = feats[i:i + batch_size]
        tokens, n = model.greedy(model.memory(model.encode(f)[-1]), model.config.tgt_len, glyphs.BOS, glyphs.EOS)
        out.append(tokens)
        passes = max(passes, n)
    tokens = torch.cat(out)
    seconds = _elapsed(start, tokens)
    first_eos = torch.where((tokens == glyphs.EOS).any(1), (tokens == glyphs.EOS).float().argmax(1) + 1,
                            tokens.shape[1])
    return {"tokens": tokens, "passes": passes, "row_passes": first_eos.cpu(), "seconds": seconds}


def exact(tokens: torch.Tensor, words: list[str]) -> torch.Tensor:
    """Per word, 1.0 if the decoded tokens (cut at the first EOS) read it exactly: (N,) float."""
    return torch.tensor([float(a == b) for a, b in zip(glyphs.decode(tokens), words, strict=True)])


__all__ = ["ImageReader", "MDMObjective", "ar_loss", "denoiser", "exact", "lengths_of", "make_reader", "read_ar",
           "read_mdm"]
