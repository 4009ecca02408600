"""SamLite (models/sam_lite.py): shapes, every prompt kind, the features= shortcut, the prompt sampler."""

import pytest
import torch

from companion.data import refer
from companion.models.sam_lite import PROMPT_KINDS, SamLite, mask_loss, sample_prompts


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = SamLite(dim=32, width=16).eval()
    scenes = refer.make_refer_scenes(4, seed=3)
    masks = scenes.instances[:, 0]  # slot 0 always holds a named object
    return model, scenes.images, masks


def test_feature_shape(setup):
    model, images, _ = setup
    assert model.image_features(images).shape == (4, 32, 8, 8)


@pytest.mark.parametrize("kind", PROMPT_KINDS)
def test_each_prompt_kind_runs(setup, kind):
    model, images, masks = setup
    prompts = sample_prompts(masks, kind, torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(images, **prompts)
    assert out.shape == (4, 32, 32) and torch.isfinite(out).all()


def test_sparse_and_combined_prompts(setup):
    model, images, masks = setup
    g = torch.Generator().manual_seed(1)
    prompts = {**sample_prompts(masks, "point", g), **sample_prompts(masks, "box", g)}
    with torch.no_grad():
        plain = model(images, **prompts)
        zeros = model(images, **prompts, sparse=torch.zeros(4, 2, 32))
        some = model(images, **prompts, sparse=torch.randn(4, 2, 32))
    assert torch.allclose(plain, zeros, atol=1e-6)  # zero sparse embeddings = none
    assert some.shape == (4, 32, 32) and not torch.allclose(plain, some)


def test_features_equal_recomputing(setup):
    model, images, masks = setup
    prompts = sample_prompts(masks, "dense", torch.Generator().manual_seed(2))
    with torch.no_grad():
        direct = model(images, **prompts)
        cached = model(None, features=model.image_features(images), **prompts)
    assert torch.equal(direct, cached)


def test_prompts_point_inside_and_box_covers():
    scenes = refer.make_refer_scenes(16, seed=5)
    masks = scenes.instances[:, 0]
    g = torch.Generator().manual_seed(0)
    pts = sample_prompts(masks, "point", g)["points"]
    assert pts.shape == (16, 2, 3)
    x, y = pts[:, 0, 0].long(), pts[:, 0, 1].long()
    assert masks[torch.arange(16), y, x].all() and (pts[:, 0, 2] == 1).all()
    neg = pts[:, 1, 2] == -1
    assert (~masks[torch.arange(16), pts[:, 1, 1].long(), pts[:, 1, 0].long()][neg]).all()
    boxes = sample_prompts(masks, "box", g, box_noise=0)["boxes"]
    ys, xs = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    inside = ((xs >= boxes[:, 0, None, None]) & (xs <= boxes[:, 2, None, None])
              & (ys >= boxes[:, 1, None, None]) & (ys <= boxes[:, 3, None, None]))
    assert not (masks & ~inside).any()
    dense = sample_prompts(masks, "dense", g)["dense"]
    assert dense.shape == (16, 32, 32) and set(dense.unique().tolist()) <= {-4.0, 4.0}


def test_mask_loss_prefers_the_truth():
    masks = refer.make_refer_scenes(4, seed=6).instances[:, 0]
    good = mask_loss(masks.float() * 20 - 10, masks)
    bad = mask_loss(-(masks.float() * 20 - 10), masks)
    assert good < 0.05 < bad
