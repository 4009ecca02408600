import pytest
import torch

from companion.methods.masked_image_modeling import hybrid_distill
from companion import mim, train
from companion.models import MAE, ViT

ARCH = dict(image_size=8, patch_size=4, in_channels=3, dim=16, depth=2, heads=2)


def _vit(seed=0):
    torch.manual_seed(seed)
    return ViT(num_classes=3, **ARCH).eval()


def _mae(seed=0):
    torch.manual_seed(seed)
    return MAE(decoder_dim=16, decoder_depth=1, decoder_heads=2, **ARCH).eval()


def _student(seed=0, teacher_dim=16):
    return hybrid_distill.HybridStudent(_vit(seed), teacher_dim)


def test_attention_maps_of_vit_and_mae_are_row_stochastic_per_block():
    x = torch.rand(3, 3, 8, 8)
    for model in (_vit(), _mae()):
        maps = hybrid_distill.attention_maps(model, x)
        assert len(maps) == 2
        for a in maps:
            assert a.shape == (3, 2, 5, 5)
            torch.testing.assert_close(a.sum(-1), torch.ones(3, 2, 5))


def test_relation_loss_is_zero_for_identical_maps_and_positive_otherwise():
    a = torch.softmax(torch.randn(2, 2, 5, 5), -1)
    b = torch.softmax(torch.randn(2, 2, 5, 5), -1)
    assert hybrid_distill.relation_loss([a], [a]).item() == pytest.approx(0.0, abs=1e-6)
    assert hybrid_distill.relation_loss([b, a], [a, a]).item() > 0
    with pytest.raises(ValueError):
        hybrid_distill.relation_loss([a], [a, a])
    with pytest.raises(ValueError):
        hybrid_distill.relation_loss([a], [a[:, :1]])


def test_student_predicts_teacher_width_for_every_token_and_returns_maps():
    preds, maps = _student(teacher_dim=24)(torch.rand(4, 3, 8, 8))
    assert preds.shape == (4, 5, 24)
    assert len(maps) == 2 and maps[0].shape == (4, 2, 5, 5)


def test_hybrid_loss_terms_reach_the_right_parameters():
    x = torch.rand(4, 3, 8, 8)
    sup, mae = _vit(1), _mae(2)
    with pytest.raises(ValueError):
        hybrid_distill.hybrid_loss(_student(), x)
    # relation only: the feature head gets no gradient, the ViT does; equal to the KL of the last blocks
    s = _student()
    loss = hybrid_distill.hybrid_loss(s, x, None, mae, relation_layers=1)
    loss.backward()
    assert s.feature_head.weight.grad is None
    assert s.vit.blocks[-1].attn.qkv.weight.grad.abs().sum() > 0
    expected = hybrid_distill.relation_loss(hybrid_distill.attention_maps(s.vit, x)[-1:], hybrid_distill.attention_maps(mae, x)[-1:])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # feature only: the head gets a gradient, the teacher none
    s = _student()
    hybrid_distill.hybrid_loss(s, x, sup, None).backward()
    assert s.feature_head.weight.grad is not None and s.feature_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in sup.parameters())
    # hybrid = feature + relation, with weights
    s = _student()
    f = hybrid_distill.hybrid_loss(s, x, sup, None).item()
    r = hybrid_distill.hybrid_loss(s, x, None, mae).item()
    assert hybrid_distill.hybrid_loss(s, x, sup, mae, 2.0, 0.5).item() == pytest.approx(2 * f + 0.5 * r, rel=1e-5)


def test_head_distances_reuse_the_mae_measurement_and_read_vits_and_students():
    x = torch.rand(5, 3, 8, 8)
    mae = _mae()
    torch.testing.assert_close(hybrid_distill.head_distances(mae, x, batch_size=2), mim.encoder_attention_distance(mae, x))
    s = _student()
    d = hybrid_distill.head_distances(s, x, batch_size=2)
    assert d.shape == (2, 5, 2)
    torch.testing.assert_close(d, hybrid_distill.head_distances(s.vit, x))
    maps = hybrid_distill.attention_maps(s.vit, x)
    torch.testing.assert_close(d[1], mim.mean_attention_distance(maps[1], 2, 4))


def test_head_distance_spread_and_profile_gap():
    d = torch.tensor([[[1.0, 1.0]], [[1.0, 3.0]], [[2.0, 2.0]]])  # [depth 3, N 1, heads 2]
    torch.testing.assert_close(hybrid_distill.head_distance_spread(d, 1), torch.tensor([0.0]))
    assert hybrid_distill.head_distance_spread(d, 2).item() == pytest.approx(torch.tensor([1.0, 3.0]).std().item() / 2)
    ref = torch.zeros_like(d)
    torch.testing.assert_close(hybrid_distill.profile_gap(d, d, 3), torch.tensor([0.0]))
    assert hybrid_distill.profile_gap(d, ref, 1).item() == pytest.approx(2.0)
    assert hybrid_distill.profile_gap(d, ref, 2).item() == pytest.approx((1 + 3 + 2 + 2) / 4)
    with pytest.raises(ValueError):
        hybrid_distill.profile_gap(d, ref[:2], 1)


def test_frozen_features_of_every_model_kind():
    x = torch.rand(6, 3, 8, 8)
    v, mae, s = _vit(), _mae(), _student()
    torch.testing.assert_close(hybrid_distill.frozen_features(v, x, batch_size=4), v.forward_features(x))
    torch.testing.assert_close(hybrid_distill.frozen_features(mae, x), mim.encoder_features(mae, x, pool="cls"))
    assert hybrid_distill.frozen_features(s, x).shape == (6, 16)
    patches = hybrid_distill.frozen_features(v, x, pool="none")
    assert patches.shape == (6, 4, 16)
    torch.testing.assert_close(hybrid_distill.frozen_features(mae, x, pool="none"), mim.encoder_features(mae, x, pool="none"))
    with pytest.raises(ValueError):
        hybrid_distill.frozen_features(v, x, pool="mean")


def test_relation_distillation_pulls_the_student_attention_toward_the_teacher():
    """By construction: the student imitates what it is trained to imitate (the notebook's sanity row)."""
    x = torch.rand(64, 3, 8, 8)
    mae = _mae(3)
    s = _student()
    before = hybrid_distill.profile_gap(hybrid_distill.head_distances(s, x), hybrid_distill.head_distances(mae, x), 1).mean()
    train.fit(s, x, None, 40, batch_size=16, lr=1e-2, progress=False,
              loss_fn=lambda m, xb, _y: hybrid_distill.hybrid_loss(m, xb, None, mae, relation_layers=1))
    after = hybrid_distill.profile_gap(hybrid_distill.head_distances(s, x), hybrid_distill.head_distances(mae, x), 1).mean()
    assert after < before
