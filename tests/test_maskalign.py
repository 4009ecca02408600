import pytest
import torch

from companion import distill, masks, train
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


def test_a_maskalign_step_costs_less_than_an_mae_step_with_a_decoder():
    """By construction at the notebook's ci sizes: no decoder outweighs the teacher's forward pass."""
    arch = dict(image_size=16, patch_size=4, dim=48, depth=4, heads=4)
    torch.manual_seed(0)
    teacher = ViT(**arch).eval()
    mae = MAE(**arch, decoder_dim=48, decoder_depth=2)
    student = maskalign.AlignedStudent(MAE(**arch, decoder_depth=0), maskalign.DynamicAlignment(4, 2, 48, 48))
    x = torch.rand(8, 3, 16, 16)
    visible = masks.token_ratio_mask(8, 16, 0.7, torch.Generator().manual_seed(0))
    mae_flops = distill.training_step_flops(mae, lambda m, xb, y: m(xb, token_mask=visible)[0], x)
    align_flops = distill.training_step_flops(
        student, lambda m, xb, y: maskalign.maskalign_loss(m, teacher, xb, visible, [2, 3]), x)
    assert 0 < align_flops < mae_flops
