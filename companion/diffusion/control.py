"""Attention control while sampling (Prompt-to-Prompt's controller): record, replace or re-weight the cross-attention
maps of a model's :class:`~companion.models.layers.Attention` layers, step by step.

``ctl = AttentionControl(model, layers)`` is called like the model, ``ctl(x_t, t, cond)``, and notes the level of
each call, so the map hook knows which denoising step it is in. ``layers`` is a dict {name: Attention} (e.g.
``ToySD.cross_attention_layers()``); maps are att (N, heads, L, S) after the softmax. Inside

- ``with ctl.store():`` every call appends each layer's map to ``ctl.maps[name][level]`` (a list: one entry per
  call at that level, e.g. several with RePaint-style resampling);
- ``with ctl.replace(source_rows, target_rows, until=level):`` the maps of batch rows ``target_rows`` are replaced by
  those of ``source_rows`` at levels ≥ ``until`` (the first, noisiest steps: τ·T of them), as Prompt-to-Prompt's word
  swap does — the source and edited prompts are sampled side by side in one batch from the same noise; with
  ``tokens=[...]`` only those keys' maps are replaced (refinement: words the source lacks keep their own maps);
- ``with ctl.inject(maps, rows, until=level):`` ``rows`` take maps recorded earlier by ``store()`` (replaying a
  sample's maps, e.g. a real image's inversion);
- ``with ctl.reweight(token, factor, rows):`` the maps of caption position ``token`` are scaled by ``factor`` in
  ``rows`` (attention re-weighting; rows are not renormalised, as in the paper).

Contexts nest (e.g. store while replacing). Batch rows are indices into the batch the model sees (with
classifier-free guidance the conditional rows come first, then the unconditional ones). :func:`word_maps` turns
stored maps into one map per word, :func:`mass_inside` measures how much of a word's map lies inside a region.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..models.layers import attention_map_hook


class AttentionControl:
    def __init__(self, model, layers: dict):
        self.model, self.layers = model, dict(layers)
        self._names = {id(m): name for name, m in self.layers.items()}
        self.level: int | None = None
        self.maps: dict[str, dict[int, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
        self._edits: list = []  # functions (name, att) -> att, applied in order
        self._storing = 0

    def __call__(self, x, t, cond):
        self.level = int(t.flatten()[0])
        with attention_map_hook(self.model, self._hook):
            return self.model(x, t, cond)

    def _hook(self, module, att):
        name = self._names.get(id(module))
        if name is None:
            return None
        for edit in self._edits:
            att = edit(name, att)
        if self._storing:
            self.maps[name][self.level].append(att.detach().cpu())
        return att

    @contextmanager
    def _editing(self, fn):
        self._edits.append(fn)
        try:
            yield self
        finally:
            self._edits.remove(fn)

    @contextmanager
    def store(self):
        """Record every map (see the module doc); clears earlier records."""
        self.maps.clear()
        self._storing += 1
        try:
            yield self
        finally:
            self._storing -= 1

    def replace(self, source_rows, target_rows, until: int, tokens=None):
        """Target rows take the source rows' maps at levels ≥ ``until`` (module doc); with ``tokens`` (key
        positions) only those keys' maps are taken — Prompt-to-Prompt's refinement, where words the source prompt
        lacks keep their own maps (the official ``AttentionRefine`` blend)."""
        src, tgt = torch.as_tensor(source_rows), torch.as_tensor(target_rows)
        keys = None if tokens is None else torch.as_tensor(tokens)

        def edit(name, att):
            if self.level < until:
                return att
            att = att.clone()
            if keys is None:
                att[tgt] = att[src]
            else:
                att[tgt[:, None], :, :, keys] = att[src[:, None], :, :, keys]
            return att

        return self._editing(edit)

    def inject(self, maps: dict, rows=None, until: int = -1):
        """``rows`` (default: all) take recorded maps at levels ≥ ``until``: ``maps[name][level][i]`` (a
        ``store()`` record, e.g. ``ctl.maps`` of an earlier sample) for the i-th call at that level; layers or
        levels without a record keep their own maps."""
        calls: dict = defaultdict(int)
        rows = None if rows is None else torch.as_tensor(rows)

        def edit(name, att):
            record = maps.get(name, {}).get(self.level)
            if self.level < until or not record:
                return att
            i = calls[name, self.level]
            calls[name, self.level] += 1
            saved = record[i % len(record)].to(att)
            if rows is None:
                return saved.clone()
            att = att.clone()
            att[rows] = saved[rows]
            return att

        return self._editing(edit)

    def reweight(self, token: int, factor: float, rows):
        """Scale caption position ``token``'s maps by ``factor`` in ``rows`` (module doc)."""
        rows = torch.as_tensor(rows)

        def edit(name, att):
            att = att.clone()
            att[rows, :, :, token] = att[rows, :, :, token] * factor
            return att

        return self._editing(edit)

    def mean_maps(self, name: str, levels=None) -> torch.Tensor:
        """A layer's stored maps averaged over heads, calls and the given levels (default: all): (N, L, S)."""
        by_level = self.maps[name]
        chosen = sorted(by_level) if levels is None else [lv for lv in levels if lv in by_level]
        if not chosen:
            raise ValueError(f"no maps stored for {name!r} at those levels (use `with ctl.store():` while sampling)")
        return torch.stack([m.mean(dim=1) for lv in chosen for m in by_level[lv]]).mean(dim=0)


def word_maps(maps: list[torch.Tensor], size: int, offset: int = 0) -> torch.Tensor:
    """Per-word cross-attention maps averaged over layers (and heads): ``maps`` is a list of att (N, heads, P, K) or
    head-averaged (N, P, K) (``AttentionControl.mean_maps``), P = h·w pixels of any square resolution, the words
    the keys after the first ``offset`` (``ToySD``'s start token: ``TOKEN_OFFSET``) → (N, K − offset, size, size).
    Each layer's map is upsampled bilinearly to ``size`` and normalised to sum 1 over the pixels before averaging,
    so every resolution weighs the same; the average is normalised again."""
    out = 0
    for att in maps:
        att = att.float().cpu()
        att = (att.mean(1) if att.dim() == 4 else att)[..., offset:]  # (N, P, S)
        n, p, s = att.shape
        side = int(round(p ** 0.5))
        m = att.transpose(1, 2).reshape(n, s, side, side)
        if side != size:
            m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)
        out = out + m / m.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    out = out / len(maps)
    return out / out.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)


def mass_inside(word_map: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Share of a word map (..., H, W) that falls inside ``region`` (..., H, W) bool → (...): compare it with the
    region's share of the image to see whether a word's attention lies on its object."""
    return (word_map * region).sum(dim=(-2, -1)) / word_map.sum(dim=(-2, -1)).clamp_min(1e-12)
