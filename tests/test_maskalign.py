import pytest
import torch

from companion import distill, masks, train
from companion.eval import training_step_flops
from companion.methods.masked_image_modeling import maskalign
from companion.models import MAE, ViT


def _mae(depth=3, dim=16, decoder_depth=0):
    torch.manual_seed(0)
    return MAE(image_size=8, patch_size=4, dim=dim, depth=depth, heads=2, decoder_dim=dim, decoder_depth=decoder_depth)


def _student(depth=3, targets=2, dynamic=True, dim=16, teacher_dim=8, init_layers=None):
    return maskalign.AlignedStudent(_mae(depth, dim), maskalign.DynamicAlignment(depth, targets, dim, teacher_dim,
                                                                                 dynamic, init_layers))


def _teacher(dim=8, depth=3):
    torch.manual_seed(1)
    teacher = ViT(image_size=8, patch_size=4, dim=dim, depth=depth, heads=2).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def test_static_alignment_is_a_fixed_one_to_one_assignment():
    da = maskalign.DynamicAlignment(3, 2, 4, 6, dynamic=False, init_layers=[0, 2])
    assert "weights" not in dict(da.named_parameters())
    hidden = [torch.randn(2, 5, 4) for _ in range(3)]
    out = da(hidden)
    assert torch.allclose(out[0], da.heads[0](hidden[0])) and torch.allclose(out[1], da.heads[1](hidden[2]))
    with pytest.raises(ValueError, match="init_layers"):
        maskalign.DynamicAlignment(3, 2, 4, 6, init_layers=[0, 3])


def test_dynamic_alignment_learns_a_layer_mixing_initialised_near_the_static_one():
    da = maskalign.DynamicAlignment(4, 2, 4, 6)
    assert da.weights.requires_grad
    expected = torch.zeros(2, 4)
    expected[0, 2] = expected[1, 3] = 1.0
    assert torch.allclose(da.weights, expected + 0.01)  # default: the last blocks, + 0.01 as in the paper's code
    hidden = [torch.randn(2, 5, 4) for _ in range(4)]
    sum(o.sum() for o in da(hidden)).backward()
    assert da.weights.grad is not None and da.weights.grad.abs().sum() > 0


def test_maskalign_loss_trains_the_student_and_never_the_teacher():
    student, teacher = _student(), _teacher()
    x = torch.rand(4, 3, 8, 8)
    visible = masks.token_ratio_mask(4, 4, 0.5, torch.Generator().manual_seed(0))
    loss = maskalign.maskalign_loss(student, teacher, x, visible, [1, 2])
    loss.backward()
    assert loss.item() > 0
    assert student.encoder.blocks[0].attn.qkv.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    preds, enc = student(x, visible)
    assert [p.shape for p in preds] == [(4, 3, 8)] * 2 and enc.visible.equal(visible)
    per_image = maskalign.maskalign_loss(student, teacher, x, visible, [1, 2], reduction="none")
    assert per_image.shape == (4,) and per_image.mean().item() == pytest.approx(loss.item(), rel=1e-5)


def test_feature_reconstructor_predicts_the_teacher_at_removed_tokens_only():
    student, teacher = maskalign.FeatureReconstructor(_mae(decoder_depth=1), 8), _teacher()
    x = torch.rand(3, 3, 8, 8)
    visible = masks.token_ratio_mask(3, 4, 0.5, torch.Generator().manual_seed(0))
    pred, enc = student(x, visible)
    assert pred.shape == (3, 4, 8) and enc.latent.shape == (3, 3, 16)  # every patch predicted; encoder sees K=2
    target = distill.teacher_tokens(teacher, x, [2])[0][:, 1:]
    loss = maskalign.reconstruction_loss(student, teacher, x, visible, 2, reduction="none")
    expected = distill.feature_alignment_loss([pred], [target], ~visible, cls=False, reduction="none")
    torch.testing.assert_close(loss, expected)
    # the visible tokens' predictions do not enter the loss
    spoil = torch.cat([torch.zeros(3, 1, dtype=torch.bool), visible], 1)[..., None]  # [CLS] first
    student.encoder.decoder_pred.register_forward_hook(lambda m, i, o: torch.where(spoil, 1e3, o))
    assert (student(x, visible)[0][visible] == 1e3).all()
    torch.testing.assert_close(maskalign.reconstruction_loss(student, teacher, x, visible, 2, reduction="none"), loss)
    with pytest.raises(ValueError, match="decoder"):
        maskalign.FeatureReconstructor(_mae(decoder_depth=0), 8)


def test_maskalign_training_pulls_the_student_toward_the_teacher():
    """By construction: the student gets closer to what it is trained to match (the notebook's sanity row)."""
    student, teacher = _student(targets=1), _teacher()
    x = torch.rand(64, 3, 8, 8)
    held_out = masks.token_ratio_mask(64, 4, 0.5, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    history = train.fit(student, x, None, 30, batch_size=16, lr=1e-2, progress=False,
                        loss_fn=lambda m, xb, y: maskalign.maskalign_loss(
                            m, teacher, xb, masks.token_ratio_mask(len(xb), 4, 0.5, g), [2]),
                        checkpoints={"at": [0, 30], "fn": lambda m, s: maskalign.maskalign_loss(
                            m, teacher, x, held_out, [2]).item()})
    assert len(history) == 30 and history.checkpoints[30] < history.checkpoints[0]


def test_a_maskalign_step_costs_less_than_a_feature_reconstruction_step():
    """By construction at the notebook's sizes (the zoo's encoder shape): no decoder outweighs DA's heads."""
    arch = dict(image_size=32, patch_size=4, dim=64, depth=4, heads=4)
    torch.manual_seed(0)
    teacher = ViT(**arch).eval()
    recon = maskalign.FeatureReconstructor(MAE(**arch, decoder_dim=64, decoder_depth=2), 64)
    student = maskalign.AlignedStudent(MAE(**arch, decoder_depth=0), maskalign.DynamicAlignment(4, 2, 64, 64))
    x = torch.rand(8, 3, 32, 32)
    visible = masks.token_ratio_mask(8, 64, 0.7, torch.Generator().manual_seed(0))
    recon_flops = training_step_flops(
        recon, lambda m, xb, y: maskalign.reconstruction_loss(m, teacher, xb, visible, 3), x)
    align_flops = training_step_flops(
        student, lambda m, xb, y: maskalign.maskalign_loss(m, teacher, xb, visible, [2, 3]), x)
    assert 0 < align_flops < recon_flops


def test_teacher_view_returns_the_hidden_states_and_the_last_cls_attention():
    teacher, x = _teacher(), torch.rand(3, 3, 8, 8)
    hidden, importance = maskalign.teacher_view(teacher, x, [0, 2])
    expected = distill.teacher_tokens(teacher, x, [0, 2])
    for h, e in zip(hidden, expected, strict=True):  # explicit attention vs the fused kernel: equal up to rounding
        torch.testing.assert_close(h, e)
    _, maps = teacher.forward_features(x, return_attention=True)
    torch.testing.assert_close(importance, maps[-1][:, :, 0, 1:].mean(1))
    assert importance.shape == (3, 4) and (importance >= 0).all() and (importance.sum(1) <= 1 + 1e-6).all()
    # precomputed targets give the same losses as letting the teacher run
    student, visible = _student(), masks.token_ratio_mask(3, 4, 0.5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(maskalign.maskalign_loss(student, teacher, x, visible, [0, 2], targets=hidden),
                               maskalign.maskalign_loss(student, teacher, x, visible, [0, 2]))
    recon = maskalign.FeatureReconstructor(_mae(decoder_depth=1), 8)
    torch.testing.assert_close(maskalign.reconstruction_loss(recon, teacher, x, visible, 2, target=hidden[1]),
                               maskalign.reconstruction_loss(recon, teacher, x, visible, 2))


def test_teacher_features_pool_the_normalised_last_block():
    teacher, x = _teacher(), torch.rand(5, 3, 8, 8)
    feats = maskalign.teacher_features(teacher, x, batch_size=2)
    expected = teacher.norm(distill.teacher_tokens(teacher, x)[-1][:, 1:]).mean(1)
    torch.testing.assert_close(feats, expected)


def test_attention_guided_mask_keeps_exactly_k_tokens_drawn_by_importance():
    importance = torch.tensor([[0.5, 0.3, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0]]).repeat(4000, 1)
    visible = maskalign.attention_guided_mask(importance, 0.75, torch.Generator().manual_seed(0))
    assert visible.dtype == torch.bool and visible.shape == (4000, 8) and (visible.sum(1) == 2).all()
    assert not visible[:, 3:].any()  # tokens the teacher ignores are never drawn while others are left
    share = visible.float().mean(0)  # 0.5 is drawn first half the time, then among the rest
    assert share[0] > share[1] > share[2] > 0
    # P(token 2 kept) = P(first 0, then 2) + P(first 1, then 2) + P(first 2) = .5·.4 + .3·(2/7) + .2
    assert share[2].item() == pytest.approx(0.5 * 0.4 + 0.3 * 2 / 7 + 0.2, abs=0.03)
    again = maskalign.attention_guided_mask(importance, 0.75, torch.Generator().manual_seed(0))
    assert torch.equal(visible, again)
    uniform = maskalign.attention_guided_mask(torch.ones(2, 8), 0.0, torch.Generator().manual_seed(0))
    assert uniform.all()
    with pytest.raises(ValueError, match="non-negative"):
        maskalign.attention_guided_mask(-torch.ones(1, 8), 0.5)


def _mae_teacher(dim=8, depth=3):
    torch.manual_seed(2)
    teacher = MAE(image_size=8, patch_size=4, dim=dim, depth=depth, heads=2, decoder_dim=dim).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def test_an_mae_teacher_sees_every_token_and_gives_its_block_outputs_and_last_cls_attention():
    teacher, x = _mae_teacher(), torch.rand(3, 3, 8, 8)
    hidden, importance = maskalign.teacher_view(teacher, x, [0, 2])
    enc = teacher.forward_encoder(x, torch.ones(3, 4, dtype=torch.bool), return_hidden=True, return_attention=True)
    assert [h.shape for h in hidden] == [(3, 5, 8)] * 2  # [CLS] + all 4 patches: nothing is masked
    torch.testing.assert_close(hidden[1], enc.hidden[2])
    torch.testing.assert_close(teacher.norm(hidden[1]), enc.latent)  # block outputs before the final LayerNorm
    torch.testing.assert_close(importance, enc.attention[-1][:, :, 0, 1:].mean(1))
    assert (importance >= 0).all() and (importance.sum(1) <= 1 + 1e-6).all()
    torch.testing.assert_close(maskalign.teacher_features(teacher, x, batch_size=2), enc.latent[:, 1:].mean(1))
    # the losses run the MAE teacher themselves when no targets are given, and never train it
    student, visible = _student(), masks.token_ratio_mask(3, 4, 0.5, torch.Generator().manual_seed(0))
    loss = maskalign.maskalign_loss(student, teacher, x, visible, [0, 2])
    torch.testing.assert_close(loss, maskalign.maskalign_loss(student, teacher, x, visible, [0, 2], targets=hidden))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    recon = maskalign.FeatureReconstructor(_mae(decoder_depth=1), 8)
    torch.testing.assert_close(maskalign.reconstruction_loss(recon, teacher, x, visible, 2, target=hidden[1]),
                               maskalign.reconstruction_loss(recon, teacher, x, visible, 2))
