import pytest
import torch

from companion import distill, mim, train
from companion.methods.masked_image_modeling import hybrid_distill
from companion.models import MAE, ViT

ARCH = dict(image_size=8, patch_size=4, in_channels=3, dim=16, depth=2, heads=2)


def _vit(seed=0):
    torch.manual_seed(seed)
    return ViT(num_classes=3, **ARCH).eval()


def _mae(seed=0):
    torch.manual_seed(seed)
    return MAE(decoder_dim=16, decoder_depth=1, decoder_heads=2, **ARCH).eval()


def _student(seed=0, teacher_dim=16):
    return hybrid_distill.HybridStudent(_mae(seed), teacher_dim)


# ---- redundant-token masking ---------------------------------------------------------------------------
def test_redundant_token_masking_keeps_the_tokens_it_should():
    scores = torch.tensor([[0.1, 0.4, 0.2, 0.3],
                           [0.9, 0.0, 0.5, 0.5]])  # [N 2, L 4], higher = more informative
    torch.testing.assert_close(hybrid_distill.redundant_token_mask(scores, 0.0), torch.ones(2, 4, dtype=torch.bool))
    # drop round(0.5·4) = 2 per row: the two lowest-scoring tokens
    assert hybrid_distill.redundant_token_mask(scores, 0.5).tolist() == [[False, True, False, True],
                                                                          [True, False, True, False]]
    # drop 3: the single most informative token survives; a tie keeps the earlier token
    assert hybrid_distill.redundant_token_mask(scores, 0.75).tolist() == [[False, True, False, False],
                                                                           [True, False, False, False]]
    with pytest.raises(ValueError):
        hybrid_distill.redundant_token_mask(scores, 1.0)


def test_redundant_token_masks_are_nested_and_exact_in_count():
    scores = torch.rand(5, 64, generator=torch.Generator().manual_seed(0))
    previous = torch.ones(5, 64, dtype=torch.bool)
    for ratio in (0.0, 0.25, 0.375, 0.5, 0.75):
        kept = hybrid_distill.redundant_token_mask(scores, ratio)
        assert (kept.sum(1) == 64 - round(ratio * 64)).all()
        assert not (kept & ~previous).any()  # a token dropped at a lower ratio stays dropped
        # every kept token scores at least as high as every dropped one
        assert (scores.masked_fill(~kept, float("inf")).amin(1) >= scores.masked_fill(kept, -float("inf")).amax(1)).all()
        previous = kept


def test_progressive_ratio_rises_stage_by_stage():
    ratios = (0.25, 0.375, 0.5)
    got = [hybrid_distill.progressive_ratio(s, 90, ratios) for s in range(90)]
    assert got[:30] == [0.25] * 30 and got[30:60] == [0.375] * 30 and got[60:] == [0.5] * 30
    assert hybrid_distill.progressive_ratio(0, 0, (0.3,)) == 0.3
    with pytest.raises(ValueError):
        hybrid_distill.progressive_ratio(0, 10, (0.5, 0.25))
    with pytest.raises(ValueError):
        hybrid_distill.progressive_ratio(0, 10, ())


def test_cls_attention_scores_read_the_last_block_averaged_over_heads():
    maps = [torch.softmax(torch.randn(3, 2, 5, 5), -1) for _ in range(2)]
    torch.testing.assert_close(hybrid_distill.cls_attention_scores(maps), maps[1][:, :, 0, 1:].mean(1))
    v = _vit()
    x = torch.rand(3, 3, 8, 8)
    tokens, scores = hybrid_distill.feature_teacher_outputs(v, x)
    torch.testing.assert_close(tokens, distill.teacher_tokens(v, x, [1])[0])
    torch.testing.assert_close(scores, hybrid_distill.cls_attention_scores(hybrid_distill.attention_maps(v, x)))


def test_restrict_relations_keeps_the_rows_and_columns_of_kept_tokens_renormalised():
    maps = torch.softmax(torch.randn(2, 3, 5, 5), -1)  # [N, heads, 1+L, 1+L], L = 4
    kept = torch.tensor([[True, False, True, False], [False, False, True, True]])
    sub = hybrid_distill.restrict_relations(maps, kept)
    assert sub.shape == (2, 3, 3, 3)
    torch.testing.assert_close(sub.sum(-1), torch.ones(2, 3, 3))
    idx = [0, 1, 3]  # [CLS], tokens 0 and 2 of the first image
    manual = maps[0][:, idx][:, :, idx]
    torch.testing.assert_close(sub[0], manual / manual.sum(-1, keepdim=True))
    every = torch.ones(2, 4, dtype=torch.bool)
    torch.testing.assert_close(hybrid_distill.restrict_relations(maps, every), maps)
    with pytest.raises(ValueError):
        hybrid_distill.restrict_relations(maps, torch.tensor([[True, False, True, False], [True] * 4]))


# ---- the student and the losses -------------------------------------------------------------------------
def test_attention_maps_of_vit_mae_and_student_are_row_stochastic_per_block():
    x = torch.rand(3, 3, 8, 8)
    for model in (_vit(), _mae(), _student()):
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


def test_student_sees_only_the_kept_tokens():
    s = _student(teacher_dim=24)
    x = torch.rand(4, 3, 8, 8)
    preds, maps = s(x)
    assert preds.shape == (4, 5, 24) and len(maps) == 2 and maps[0].shape == (4, 2, 5, 5)
    kept = torch.tensor([[True, False, True, False]] * 4)
    preds, maps = s(x, kept)
    assert preds.shape == (4, 3, 24) and maps[0].shape == (4, 2, 3, 3)
    # a dropped patch has no influence on the student's outputs
    y = x.clone()
    y[:, :, :4, 4:] = 0  # patch 1 (row 0, column 1) is dropped
    torch.testing.assert_close(s(y, kept)[0], preds)
    with pytest.raises(ValueError):
        hybrid_distill.HybridStudent(MAE(mode="simmim", decoder_dim=16, decoder_depth=1, decoder_heads=2, **ARCH), 8)


def test_hybrid_loss_terms_reach_the_right_parameters():
    x = torch.rand(4, 3, 8, 8)
    sup, mae = _vit(1), _mae(2)
    with pytest.raises(ValueError):
        hybrid_distill.HybridLoss()
    # relation only: the feature head gets no gradient, the encoder does; equal to the KL of the last block
    s = _student()
    out = hybrid_distill.HybridLoss(None, mae, relation_blocks=[1])(s, x)
    out["loss"].backward()
    assert out["kept"] == 1.0
    assert s.feature_head.weight.grad is None
    assert s.encoder.blocks[-1].attn.qkv.weight.grad.abs().sum() > 0
    expected = hybrid_distill.relation_loss(hybrid_distill.attention_maps(s, x)[-1:],
                                            hybrid_distill.attention_maps(mae, x)[-1:])
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    # feature only: the head gets a gradient, the teacher none
    s = _student()
    hybrid_distill.HybridLoss(sup, None)(s, x)["loss"].backward()
    assert s.feature_head.weight.grad is not None and s.feature_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in sup.parameters())
    # hybrid = feature + relation, with weights
    s = _student()
    f = hybrid_distill.HybridLoss(sup, None)(s, x)["loss"].item()
    r = hybrid_distill.HybridLoss(None, mae)(s, x)["loss"].item()
    assert hybrid_distill.HybridLoss(sup, mae, 2.0, 0.5)(s, x)["loss"].item() == pytest.approx(2 * f + 0.5 * r, rel=1e-5)


def test_masked_hybrid_loss_distils_at_the_kept_tokens_only():
    x = torch.rand(4, 3, 8, 8)
    sup, mae, s = _vit(1), _mae(2), _student()
    objective = hybrid_distill.HybridLoss(sup, mae, relation_blocks=[0, 1], stage_ratios=(0.0, 0.5))
    objective.step, objective.total = 0, 10
    assert objective.ratio() == 0.0 and objective(s, x)["kept"] == 1.0
    objective.step = 5
    out = objective(s, x)
    assert objective.ratio() == 0.5 and out["kept"] == 0.5
    target, scores = hybrid_distill.feature_teacher_outputs(sup, x)
    kept = hybrid_distill.redundant_token_mask(scores, 0.5)
    preds, maps = s(x, kept)
    teacher_maps = [hybrid_distill.restrict_relations(t, kept) for t in hybrid_distill.attention_maps(mae, x)]
    expected = distill.feature_alignment_loss([preds], [target], visible=kept) + hybrid_distill.relation_loss(
        maps, teacher_maps)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError):
        hybrid_distill.HybridLoss(None, mae, stage_ratios=(0.5,))  # nothing to score the tokens with


# ---- measurements ---------------------------------------------------------------------------------------
def test_head_distances_reuse_the_mae_measurement_and_read_vits_and_students():
    x = torch.rand(5, 3, 8, 8)
    mae = _mae()
    torch.testing.assert_close(hybrid_distill.head_distances(mae, x, batch_size=2), mim.encoder_attention_distance(mae, x))
    s = _student()
    torch.testing.assert_close(hybrid_distill.head_distances(s, x), mim.encoder_attention_distance(s.encoder, x))
    v = _vit()
    d = hybrid_distill.head_distances(v, x, batch_size=2)
    assert d.shape == (2, 5, 2)
    torch.testing.assert_close(d[1], mim.mean_attention_distance(hybrid_distill.attention_maps(v, x)[1], 2, 4))


def test_locality_head_distance_spread_and_profile_gap_read_the_given_blocks():
    d = torch.tensor([[[1.0, 1.0]], [[1.0, 3.0]], [[2.0, 2.0]]])  # [depth 3, N 1, heads 2]
    torch.testing.assert_close(hybrid_distill.head_distance_spread(d, [2]), torch.tensor([0.0]))
    torch.testing.assert_close(hybrid_distill.head_distance_spread(d, [0]), torch.tensor([0.0]))
    assert hybrid_distill.head_distance_spread(d, [1, 2]).item() == pytest.approx(torch.tensor([1.0, 3.0]).std().item() / 2)
    assert hybrid_distill.locality(d, [0, 1]).item() == pytest.approx((1 + 1 + 1 + 3) / 4)
    assert hybrid_distill.locality(d, [2]).item() == pytest.approx(2.0)
    ref = torch.zeros_like(d)
    torch.testing.assert_close(hybrid_distill.profile_gap(d, d, [0, 1, 2]), torch.tensor([0.0]))
    assert hybrid_distill.profile_gap(d, ref, [2]).item() == pytest.approx(2.0)
    assert hybrid_distill.profile_gap(d, ref, [1, 2]).item() == pytest.approx((1 + 3 + 2 + 2) / 4)
    with pytest.raises(ValueError):
        hybrid_distill.profile_gap(d, ref[:2], [1])


def test_frozen_features_of_every_model_kind():
    x = torch.rand(6, 3, 8, 8)
    v, mae, s = _vit(), _mae(), _student()
    torch.testing.assert_close(hybrid_distill.frozen_features(v, x, batch_size=4), v.forward_features(x))
    torch.testing.assert_close(hybrid_distill.frozen_features(mae, x), mim.encoder_features(mae, x, pool="cls"))
    torch.testing.assert_close(hybrid_distill.frozen_features(s, x, pool="mean"), mim.encoder_features(s.encoder, x))
    assert hybrid_distill.frozen_features(v, x, pool="mean").shape == (6, 16)
    assert hybrid_distill.frozen_features(v, x, pool="none").shape == (6, 4, 16)
    with pytest.raises(ValueError):
        hybrid_distill.frozen_features(v, x, pool="max")


def test_relation_distillation_pulls_the_student_attention_toward_the_teacher():
    """By construction: the student imitates what it is trained to imitate (the notebook's sanity row)."""
    x = torch.rand(64, 3, 8, 8)
    mae = _mae(3)
    s = _student()
    before = hybrid_distill.profile_gap(hybrid_distill.head_distances(s, x), hybrid_distill.head_distances(mae, x), [1]).mean()
    train.fit(s, x, None, 40, batch_size=16, lr=1e-2, progress=False,
              loss_fn=hybrid_distill.HybridLoss(None, mae, relation_blocks=[1]))
    after = hybrid_distill.profile_gap(hybrid_distill.head_distances(s, x), hybrid_distill.head_distances(mae, x), [1]).mean()
    assert after < before
