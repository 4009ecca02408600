"""Tests of companion.methods.segmentation.uground: the <seg> prompt ids, the Grounder's two prompts and its layer
policy, the training objective, and the grounding metrics (cIoU, its paired interval, empty predictions)."""

from __future__ import annotations

import math

import pytest
import torch

from companion import train
from companion.data import refer
from companion.methods.segmentation import uground
from companion.models.sam_lite import SamLite


def _grounder(prompt="masp", policy=False, seed=0):
    torch.manual_seed(seed)
    return uground.Grounder(SamLite(dim=16, width=8), 16, prompt, policy, grid=4, image_dim=8, n_layer=2, dim=16,
                            n_head=2)


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    scenes = refer.make_refer_scenes(n, seed=seed)
    expr = refer.referring(scenes, seed=seed)
    tokens = torch.randn(n, 16, 8, generator=g)
    return tokens, uground.prompt_ids(expr.text), scenes.images, expr.targets


def test_prompt_ids_append_seg_and_keep_refer_ids():
    text = torch.tensor([[3, 9, 0, 0, 0]])
    ids = uground.prompt_ids(text)
    assert ids.tolist() == [[3, 9, 0, 0, 0, uground.SEG]]
    assert uground.VOCAB[:len(refer.VOCAB)] == refer.VOCAB and uground.VOCAB[uground.SEG] == "<seg>"


def test_image_token_states_do_not_depend_on_the_text_but_seg_does():
    model = _grounder().eval()
    tokens, ids, _, _ = _batch(2)
    other = ids.clone()
    other[:, 0] = (ids[:, 0] % (len(refer.VOCAB) - 1)) + 1
    seg_a, img_a = model.states(tokens, ids)
    seg_b, img_b = model.states(tokens, other)
    assert seg_a.shape == (2, 3, 16) and img_a.shape == (2, 3, 16, 16)
    assert torch.allclose(img_a, img_b)  # causal, image first: the image side of the map is text-free
    assert not torch.allclose(seg_a[:, 1:], seg_b[:, 1:])


def test_masp_feeds_the_similarity_map_as_the_dense_prompt_and_sparse_does_not():
    tokens, ids, images, _ = _batch(3)
    masp = _grounder("masp").eval()
    with torch.no_grad():
        seg, img = masp.states(tokens, ids)
        last = torch.full((3,), 2)
        out = masp.decode(seg, img, last, images, None)
        sim = masp.similarity(seg[:, 2], img[:, 2])
        assert out["sim"].shape == (3, 32, 32) and torch.equal(out["sim"], sim)
        direct = masp.sam(images, sparse=masp.seg_proj(seg[:, 2])[:, None], dense=sim)
        assert torch.allclose(out["masks"], direct, atol=1e-6)
        maps = uground.layer_similarities(masp, tokens, ids)
        assert maps.shape == (3, 3, 32, 32) and torch.allclose(maps[:, 2], sim, atol=1e-6)
    sparse = _grounder("sparse").eval()
    with torch.no_grad():
        seg, img = sparse.states(tokens, ids)
        out = sparse.decode(seg, img, last, images, None)
    assert out["sim"] is None and out["masks"].shape == (3, 32, 32)
    with pytest.raises(ValueError):
        _grounder("sparse", policy=True)


def test_the_policy_starts_uniform_and_predict_follows_its_choice():
    model = _grounder("masp", policy=True).eval()
    tokens, ids, images, _ = _batch(4)
    with torch.no_grad():
        seg, _ = model.states(tokens, ids)
        probs = torch.softmax(model.layer_logits(seg), -1)
    # all-ones gate on LayerNorm'd states (unit weight, zero bias at init): every layer's logit is 0
    assert torch.allclose(probs, torch.full_like(probs, 1 / 3), atol=1e-4)
    with torch.no_grad():
        model.gate[1] += 5 * seg[:, 1].mean(0)
    feats = model.sam.image_features(images)
    out = uground.predict(model, tokens, ids, images, feats, layer="policy")
    assert (out["layer"] == 1).all()
    assert (uground.predict(model, tokens, ids, images, feats)["layer"] == 2).all()


def test_objective_trains_the_right_parameters_and_is_deterministic():
    tokens, ids, images, targets = _batch(8)
    for prompt, policy in (("sparse", False), ("masp", False), ("masp", True)):
        model = _grounder(prompt, policy)
        feats = model.sam.image_features(images).detach()
        obj = uground.GroundingObjective(tokens, ids, images, feats, targets, torch.Generator().manual_seed(0))
        out = obj(model, torch.arange(8))
        out["loss"].backward()
        assert math.isfinite(out["loss"].item()) and 0 <= out["iou"].item() <= 1
        assert all(p.grad is None for p in model.sam.encoder.parameters())
        assert model.seg_proj[0].weight.grad is not None and model.mllm.gpt.blocks[0].attn.qkv.weight.grad is not None
        if policy:
            assert model.gate.grad is not None and model.gate.grad.abs().sum() > 0
    runs = []
    for _ in range(2):
        model = _grounder("masp", True)
        feats = model.sam.image_features(images).detach()
        obj = uground.GroundingObjective(tokens, ids, images, feats, targets, torch.Generator().manual_seed(1))
        hist = train.fit(model, torch.arange(8), None, 3, batch_size=4, loss_fn=obj, device="cpu", progress=False)
        runs.append((list(hist), hist.metrics["layer"]))
    assert runs[0] == runs[1]


def test_mask_loss_skips_dice_on_empty_targets():
    target = torch.zeros(2, 4, 4, dtype=torch.bool)
    target[0, :2] = True
    logits = torch.where(target, 20.0, -20.0)
    loss = uground.mask_loss(logits, target)
    assert loss.shape == (2,) and (loss < 1e-3).all()
    off = uground.mask_loss(torch.full((1, 4, 4), -20.0), target[1:])
    assert off.item() < 1e-6  # an all-off prediction of an empty target costs nothing


def test_ciou_is_the_cumulative_ratio_and_its_interval_is_paired():
    t = torch.zeros(3, 4, 4, dtype=torch.bool)
    t[0, 0, :2] = True  # 2 pixels
    t[1, :2, :2] = True  # 4 pixels
    a = t.clone()
    a[1, 3, 3] = True  # one false positive
    assert math.isclose(uground.ciou(a, t), 6 / 7)
    assert uground.ciou(torch.zeros_like(t), torch.zeros_like(t)) == 1.0
    assert uground.paired_ratio_interval(a, a, t) == (0.0, 0.0)
    lo, hi = uground.paired_ratio_interval(a, t, t)
    assert 0 <= lo <= uground.ciou(t, t) - uground.ciou(a, t) <= hi


def test_empty_predictions():
    pred = torch.zeros(2, 4, 4, dtype=torch.bool)
    pred[1, 2, 2] = True
    assert uground.empty_predictions(pred).tolist() == [True, False]
