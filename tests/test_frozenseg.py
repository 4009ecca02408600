"""FrozenSeg (methods/segmentation/frozenseg.py): decoder shapes and injection, top-k, the automatic mask
generator's grid and NMS, the ensemble, the zero-shot crop premise."""

import pytest
import torch

from companion.data import refer
from companion.methods.segmentation import frozenseg
from companion.models.sam_lite import SamLite
from companion.models.seg import set_objective


@pytest.fixture(scope="module")
def scenes():
    return refer.make_refer_scenes(3, seed=4)


@pytest.mark.parametrize("inject", [False, True])
def test_decoder_shapes_and_loss(scenes, inject):
    torch.manual_seed(0)
    model = frozenseg.ProposalDecoder(queries=5, inject=inject, layers=2)
    inputs = {"clip": torch.randn(3, 64, 8, 8)} | ({"sam": torch.randn(3, 64, 8, 8)} if inject else {})
    out = model(**inputs)
    assert out["masks"].shape == (3, 5, 32, 32) and out["objectness"].shape == (3, 5)
    assert len(out["aux"]) == 2 and out["aux"][0][0].shape == (3, 5, 32, 32)
    loss = set_objective(inputs, scenes.instances, scenes.labels >= 0)(model, torch.arange(3), None)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for n, p in model.named_parameters() if "inject" in n]
    assert inject == bool(grads) and all(g is not None for g in grads)


def test_injected_decoder_needs_and_uses_sam_features():
    torch.manual_seed(0)
    model = frozenseg.ProposalDecoder(queries=4, inject=True, layers=1).eval()
    clip = torch.randn(2, 64, 8, 8)
    with pytest.raises(ValueError):
        model(clip)
    with torch.no_grad():
        a, b = model(clip, torch.randn(2, 64, 8, 8)), model(clip, torch.randn(2, 64, 8, 8))
    assert not torch.allclose(a["masks"], b["masks"])


def test_top_k_takes_the_most_confident():
    masks = torch.arange(4).view(1, 4, 1, 1).expand(1, 4, 2, 2) == torch.arange(4).view(1, 4, 1, 1)
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2]])
    picked = frozenseg.top_k(masks, scores, 2)
    assert picked.shape == (1, 2, 2, 2) and torch.equal(picked[0, :, 0, 0], masks[0, [1, 2], 0, 0])
    assert frozenseg.top_k(masks, scores, 10).shape[1] == 4


def test_grid_points_cover_the_image():
    pts = frozenseg.grid_points(4)
    assert pts.shape == (64, 2) and pts.min() == 2 and pts.max() == 30


def test_nms_drops_duplicates_only():
    a = torch.zeros(4, 8, 8, dtype=torch.bool)
    a[0, :4, :4] = a[1, :4, :4] = True  # duplicates
    a[1, 4, 0] = True
    a[2, 4:, 4:] = True
    a[3, :4, 4:] = True
    keep = frozenseg.nms(a[None], torch.tensor([[0.5, 0.9, 0.3, 0.2]]), 0.7)
    assert keep.tolist() == [[False, True, True, True]]


def test_everything_and_ensemble(scenes):
    torch.manual_seed(0)
    sam = SamLite(dim=32, width=16).eval()
    feats = sam.image_features(scenes.images)
    masks, keep = frozenseg.everything(sam, feats, stride=8, score_threshold=0.0)
    assert masks.shape == (3, 16, 32, 32) and keep.shape == (3, 16) and masks.dtype == torch.bool
    assert not (keep & ~masks.flatten(2).any(-1)).any()
    dec = torch.zeros(3, 2, 32, 32, dtype=torch.bool)
    ens = frozenseg.ensemble(dec, masks, keep)
    assert ens.shape == (3, 18, 32, 32) and not ens[:, 2:][~keep].any()


def test_paint_colours_each_proposal():
    m = torch.zeros(2, 4, 4, dtype=torch.bool)
    m[0, 0, 0] = m[1, 3, 3] = True
    pic = frozenseg.paint(m)
    assert pic.shape == (3, 4, 4) and pic[:, 1, 1].sum() == 0 and not torch.equal(pic[:, 0, 0], pic[:, 3, 3])
