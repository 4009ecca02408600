"""Attention control while sampling (Prompt-to-Prompt's controller): record, replace or re-weight the cross-attention
maps of a model's :class:`~companion.models.layers.Attention` layers, step by step.

``ctl = AttentionControl(model, layers)`` is called like the model, ``ctl(x_t, t, cond)``, and notes the level of
each call, so the map hook knows which denoising step it is in. ``layers`` is a dict {name: Attention} (e.g.
``ToySD.cross_attention_layers()``); maps are att (N, heads, L, S) after the softmax. Inside

- ``with ctl.store():`` every call appends each layer's map to ``ctl.maps[name][level]`` (a list: one entry per
  call at that level, e.g. several with RePaint-style resampling);
- ``with ctl.replace(source_rows, target_rows, until=level):`` the maps of batch rows ``target_rows`` are replaced by
  those of ``source_rows`` at levels ≥ ``until`` (the first, noisiest steps: τ·T of them), as Prompt-to-Prompt's word
  swap does — the source and edited prompts are sampled side by side in one batch from the same noise;
- ``with ctl.reweight(token, factor, rows):`` the maps of caption position ``token`` are scaled by ``factor`` in
  ``rows`` (attention re-weighting; rows are not renormalised, as in the paper).

Contexts nest (e.g. store while replacing). Batch rows are indices into the batch the model sees (with
classifier-free guidance the conditional rows come first, then the unconditional ones).
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager

import torch

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

    def replace(self, source_rows, target_rows, until: int):
        """Target rows take the source rows' maps at levels ≥ ``until`` (module doc)."""
        src, tgt = torch.as_tensor(source_rows), torch.as_tensor(target_rows)

        def edit(name, att):
            if self.level < until:
                return att
            att = att.clone()
            att[tgt] = att[src]
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
