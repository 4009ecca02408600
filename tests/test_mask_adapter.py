"""Tests of companion.methods.segmentation.mask_adapter: the activation-map pooling, the head, the consistency loss
and the two-stage training objective."""

from __future__ import annotations

import torch

from companion.data import refer
from companion.masks.jitter import iou
from companion.methods.segmentation import mask_adapter as ma
from companion.models.seg import mask_pool


def _data(n_scenes=3, seed=0):
    scenes = refer.make_refer_scenes(n_scenes, seed=seed, objects=(2, 3), clutter=(0, 0))
    scene, slot = scenes.named.nonzero(as_tuple=True)
    torch.manual_seed(seed)
    features = torch.randn(n_scenes, 16, 8, 8)
    return features, scene, scenes.instances[scene, slot], scenes.labels[scene, slot]


def test_pooling_weights_are_a_distribution_over_positions_per_map():
    w = ma.pooling_weights(torch.randn(2, 3, 4, 4))
    assert w.shape == (2, 3, 16) and (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(2, 3))


def test_saturated_activation_maps_inside_a_grid_mask_reduce_to_mask_pooling():
    features = torch.randn(2, 5, 8, 8)
    grid_masks = torch.rand(2, 8, 8) < 0.4
    grid_masks[:, 0, 0] = True
    maps = (grid_masks.float() * 2 - 1)[:, None].expand(2, 4, 8, 8) * 60.0  # +60 inside, -60 outside
    pooled = ma.weighted_pool(features, maps)
    assert torch.allclose(pooled, mask_pool(features, grid_masks[:, None])[:, 0], atol=1e-5)


def test_adapter_embeds_each_mask_and_only_its_own_parameters_get_gradients():
    features, scene, masks, _ = _data()
    features.requires_grad_(False)
    model = ma.MaskAdapter(feature_dim=16, channels=8, maps=4, blocks=2)
    maps = model.activation_maps(features[scene], masks)
    assert maps.shape == (len(masks), 4, 8, 8)
    emb = model(features[scene], masks)
    assert emb.shape == (len(masks), 16)
    emb.sum().backward()
    assert all(p.grad is not None for p in model.parameters()) and features.grad is None
    assert torch.allclose(ma.embed(model, features, scene, masks, batch_size=2), emb.detach(), atol=1e-5)


def test_the_mask_changes_the_embedding_of_the_same_features():
    features, scene, masks, _ = _data()
    model = ma.MaskAdapter(feature_dim=16, channels=8, maps=4, blocks=1).eval()
    with torch.no_grad():
        a = model(features[scene[:1]], masks[:1])
        b = model(features[scene[:1]], ~masks[:1])
    assert not torch.allclose(a, b)


def test_consistency_loss_is_zero_for_equal_directions_and_stops_the_ground_truth_gradient():
    gt = torch.randn(4, 8, requires_grad=True)
    prop = (gt.detach() * 3.0).requires_grad_()
    assert abs(ma.consistency_loss(prop, gt).item()) < 1e-6
    loss = ma.consistency_loss(torch.randn(4, 8, requires_grad=True), gt)
    loss.backward()
    assert gt.grad is None
    assert abs(ma.consistency_loss(-gt.detach(), gt).item() - 2.0) < 1e-5


def test_jittered_pool_reaches_its_target_range():
    _, _, masks, _ = _data(6)
    g = torch.Generator().manual_seed(0)
    jit, reached = ma.jittered_pool(masks, 3, 0.7, 0.9, g)
    assert jit.shape == (len(masks), 3, 32, 32) and jit.dtype == torch.bool
    assert torch.allclose(iou(jit, masks[:, None].expand_as(jit)), reached)
    assert reached.min() > 0.5 and reached.max() < 1.0


def test_objective_trains_on_ground_truth_in_the_warmup_then_adds_proposals_and_consistency():
    features, scene, masks, labels = _data()
    jit, _ = ma.jittered_pool(masks, 2, 0.7, 0.9, torch.Generator().manual_seed(0))
    classifier = torch.nn.functional.normalize(torch.randn(24, 16), dim=1)
    model = ma.MaskAdapter(feature_dim=16, channels=8, maps=4, blocks=1)
    idx = torch.arange(len(masks))
    plain = ma.AdapterObjective(features, scene, masks, jit, classifier, 10.0, warmup=0.5, consistency=0.0)
    plain.step, plain.total = 0, 10
    warm = plain(model, idx, labels)
    assert torch.is_tensor(warm) and torch.isfinite(warm)
    plain.step = 5
    out = plain(model, idx, labels)
    assert torch.allclose(out["loss"], out["ce"]) and out["consistency"].item() >= 0
    weighted = ma.AdapterObjective(features, scene, masks, jit, classifier, 10.0, warmup=0.5, consistency=5.0)
    weighted.step, weighted.total = 5, 10
    out2 = weighted(model, idx, labels)
    assert torch.allclose(out2["loss"], out2["ce"] + 5.0 * out2["consistency"])
    assert torch.allclose(out2["ce"], out["ce"])  # same proposals drawn: both generators start from seed 0
    out2["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_class_logits_are_scaled_cosines():
    emb = torch.tensor([[2.0, 0.0], [0.0, -1.0]])
    classifier = torch.eye(2)
    assert torch.allclose(ma.class_logits(emb, classifier, 10.0), torch.tensor([[10.0, 0.0], [0.0, -10.0]]))
