"""Tests of companion.methods.sequence.mdiff4str: readers, losses and decoding on a tiny glyph task."""

from __future__ import annotations

import torch

from companion.data import glyphs
from companion.diffusion import masked
from companion.methods.sequence import mdiff4str

WORDS = ["cat", "dog", "bird", "ox"]


def _data():
    g = torch.Generator().manual_seed(0)
    protos = glyphs.prototypes(6, g)
    feats = glyphs.render(WORDS, protos, 7, generator=g)
    targets, lengths = glyphs.encode(WORDS, 5)
    return feats, targets, lengths


def test_lengths_and_shared_initialisation():
    _, targets, lengths = _data()
    assert torch.equal(mdiff4str.lengths_of(targets), lengths)
    ar = mdiff4str.make_reader("ar", 7, 6, 5, n_embd=16, seed=3)
    mdm = mdiff4str.make_reader("mdm", 7, 6, 5, n_embd=16, seed=3)
    assert ar.config.causal and not mdm.config.causal
    assert all(torch.equal(a, b) for a, b in zip(ar.state_dict().values(), mdm.state_dict().values(), strict=True))


def test_losses_are_finite_and_the_recipe_logs_both_terms():
    feats, targets, _ = _data()
    mdm = mdiff4str.make_reader("mdm", 7, 6, 5, n_embd=16)
    assert torch.isfinite(mdiff4str.ar_loss(mdiff4str.make_reader("ar", 7, 6, 5, n_embd=16), feats, targets))
    assert torch.isfinite(mdiff4str.MDMObjective(("random",))(mdm, feats, targets))
    out = mdiff4str.MDMObjective(masked.NOISINGS, replacement=1.0)(mdm, feats, targets)
    assert torch.allclose(out["loss"], out["masked"] + out["replacement"])


def test_readers_return_tokens_passes_and_per_word_passes():
    feats, _, _ = _data()
    mdm = mdiff4str.make_reader("mdm", 7, 6, 5, n_embd=16)
    res = mdiff4str.read_mdm(mdm, feats, 3, revision=True, batch_size=3, trace=True)
    assert res["tokens"].shape == (4, 6) and res["passes"] <= 4 and len(res["trace"]) == res["passes"]
    assert (res["row_passes"] <= res["passes"]).all()
    ar = mdiff4str.make_reader("ar", 7, 6, 5, n_embd=16)
    res = mdiff4str.read_ar(ar, feats, batch_size=3)
    assert res["tokens"].shape == (4, 6) and 1 <= res["passes"] <= 6 and (res["row_passes"] <= 6).all()


def test_exact():
    tokens, _ = glyphs.encode(["cat", "dog"], 4)
    assert mdiff4str.exact(tokens, ["cat", "dot"]).tolist() == [1.0, 0.0]


def test_image_reader_reads_text_lines_through_the_vit():
    g = torch.Generator().manual_seed(0)
    images = glyphs.render_lines(WORDS, 32, jitter=2, generator=g)
    targets, _ = glyphs.encode(WORDS, 5)
    models = {kind: mdiff4str.make_reader(kind, 0, 0, 5, n_embd=16, image_size=32, patch_size=8, vit_depth=1)
              for kind in ("ar", "mdm")}
    for model in models.values():
        assert isinstance(model, mdiff4str.ImageReader) and model.encode(images)[-1].shape == (4, 17, 16)
    mdiff4str.ar_loss(models["ar"], images, targets).backward()
    mdiff4str.MDMObjective()(models["mdm"], images, targets).backward()
    assert all(m.vit.patch_embed.proj.weight.grad is not None for m in models.values())
    assert mdiff4str.read_ar(models["ar"], images)["tokens"].shape == (4, 6)
    assert mdiff4str.read_mdm(models["mdm"], images, 3)["tokens"].shape == (4, 6)
