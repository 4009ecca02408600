import pytest
import torch

from companion import distill, masks
from companion.models import MAE, ViT
from companion.methods.masked_image_modeling import maskalign


def _student(depth=3, targets=2, dynamic=True, dim=16, teacher_dim=8, init_layers=None):
    torch.manual_seed(0)
    enc = MAE(image_size=8, patch_size=4, dim=dim, depth=depth, heads=2, decoder_depth=0)
    return maskalign.AlignedStudent(enc, maskalign.DynamicAlignment(depth, targets, dim, teacher_dim, dynamic,
                                                                init_layers))


def _teacher(dim=8, depth=3):
    torch.manual_seed(1)
    return ViT(image_size=8, patch_size=4, dim=dim, depth=depth, heads=2).eval()


def test_block_outputs_are_the_hidden_states_of_the_models_own_forward():
    teacher = _teacher()
    x = torch.rand(2, 3, 8, 8)
    hidden = distill.teacher_tokens(teacher, x)
    assert len(hidden) == 3 and hidden[0].shape == (2, 5, 8)
    assert torch.allclose(teacher.norm(hidden[-1][:, 0]), teacher.forward_features(x))  # last block → [CLS] feature
    assert [h.shape for h in distill.teacher_tokens(teacher, x, [2])] == [hidden[2].shape]
    assert not any(blk._forward_hooks for blk in teacher.blocks)  # hooks are removed again


def test_gather_visible_keeps_cls_and_visible_tokens_in_raster_order():
    tokens = torch.arange(5.0).view(1, 5, 1).repeat(2, 1, 2)  # [CLS], patches 1..4
    visible = torch.tensor([[True, False, False, True], [False, True, True, False]])
    out = distill.gather_visible(tokens, visible)
    assert out[..., 0].tolist() == [[0, 1, 4], [0, 2, 3]]
    assert distill.gather_visible(tokens[:, 1:], visible, cls=False)[..., 0].tolist() == [[1, 4], [2, 3]]
    with pytest.raises(ValueError, match="same number"):
        distill.gather_visible(tokens, torch.tensor([[True, True, False, True], [False, True, True, False]]))


def test_gather_matches_the_order_the_mae_encoder_uses():
    enc = _student().encoder
    x = torch.rand(2, 3, 8, 8)
    visible = masks.token_ratio_mask(2, 4, 0.5, torch.Generator().manual_seed(0))
    every = torch.ones(2, 4, dtype=torch.bool)
    # the encoder gathers the embedded visible patches with ids_from_mask: gather_visible picks the same ones
    emb = enc.patch_embed(x) + enc.pos_embed[:, 1:]
    ids_keep, _ = enc.ids_from_mask(visible)
    assert torch.equal(torch.gather(emb, 1, ids_keep[..., None].expand(-1, -1, emb.shape[-1])),
                       distill.gather_visible(emb, visible, cls=False))
    assert enc.forward_encoder(x, every).latent.shape == (2, 5, 16)


def test_alignment_loss_is_zero_for_a_perfect_student_and_ignores_removed_tokens():
    teacher = [torch.randn(2, 5, 8) for _ in range(2)]
    visible = torch.tensor([[True, False, True, False], [False, True, False, True]])
    perfect = [distill.gather_visible(distill.normalise_target(t), visible) for t in teacher]
    for kind in distill.LOSSES:
        assert distill.feature_alignment_loss(perfect, teacher, visible, loss=kind).abs().item() < 1e-5
    spoiled = [t.clone() for t in teacher]
    for t in spoiled:
        t[:, 1:][~visible] += 100.0  # change only the removed tokens of the teacher
    assert distill.feature_alignment_loss(perfect, spoiled, visible).abs().item() < 1e-5
    # a full-length student (every token predicted) is compared at the visible tokens only
    full = [distill.normalise_target(t) for t in teacher]
    assert distill.feature_alignment_loss(full, teacher, visible).abs().item() < 1e-5


def test_alignment_loss_kinds_weights_and_per_image_reduction():
    x, y = [torch.zeros(3, 4, 2)], [torch.full((3, 4, 2), 0.5)]
    assert distill.feature_alignment_loss(x, y, target_norm="none", loss="mse").item() == pytest.approx(0.25)
    # 2 * SmoothL1 equals the MSE for errors below 1
    assert distill.feature_alignment_loss(x, y, target_norm="none").item() == pytest.approx(0.25)
    y2 = [torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]]])]
    x2 = [torch.tensor([[[2.0, 0.0]]]), torch.tensor([[[1.0, 0.0]]])]
    loss = distill.feature_alignment_loss(x2, y2, loss="cosine", target_norm="l2", weights=[0.25, 0.75], cls=False)
    assert loss.item() == pytest.approx(0.75)  # first pair aligned (0), second orthogonal (1)
    per_image = distill.feature_alignment_loss(x, y, target_norm="none", reduction="none")
    assert per_image.shape == (3,)
    with pytest.raises(ValueError, match="loss must be"):
        distill.feature_alignment_loss(x, y, loss="huber")
    with pytest.raises(ValueError, match="one teacher layer"):
        distill.feature_alignment_loss(x, y + y)


def test_teacher_targets_get_no_gradient():
    y = torch.randn(2, 5, 8, requires_grad=True)
    x = torch.randn(2, 5, 8, requires_grad=True)
    distill.feature_alignment_loss([x], [y]).backward()
    assert x.grad is not None and y.grad is None


def test_readout_cosine_is_one_when_the_teacher_is_a_linear_function_of_the_student():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, generator=g)
    sx, tx = torch.randn(40, 4, 5, generator=g), torch.randn(20, 4, 5, generator=g)
    score = distill.readout_cosine(sx, sx @ w + 1.0, tx, tx @ w + 1.0, lam=1e-6)
    assert score.shape == (20,) and torch.allclose(score, torch.ones(20), atol=1e-3)
    noise = distill.readout_cosine(sx, torch.randn(40, 4, 3, generator=g), tx, torch.randn(20, 4, 3, generator=g))
    assert noise.mean().abs() < 0.3
    assert distill.readout_cosine(sx, sx @ w, tx, tx @ w, per_token=True).shape == (20, 4)


def test_tokens_to_grid_places_values_at_visible_tokens():
    visible = torch.tensor([[True, False, False, True]])
    grid = distill.tokens_to_grid(torch.tensor([[0.5, 0.25]]), visible)
    assert grid.tolist() == [[[0.5, 0.0], [0.0, 0.25]]]


def test_visible_features_are_the_encoders_final_visible_tokens():
    enc = _student().encoder
    x = torch.rand(3, 3, 8, 8)
    visible = masks.token_ratio_mask(3, 4, 0.5, torch.Generator().manual_seed(0))
    out = distill.visible_features(enc, x, visible, batch_size=2)
    assert out.shape == (3, 2, 16)
    assert torch.allclose(out, enc.forward_encoder(x, visible).latent[:, 1:], atol=1e-6)
