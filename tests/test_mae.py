import pytest
import torch

from companion import masks
from companion.models import MAE, MAEConfig

torch.set_num_threads(1)
CFG = dict(image_size=16, patch_size=4, dim=32, depth=2, heads=4, decoder_dim=32, decoder_depth=1, decoder_heads=4)


def make(mode="mae", **kw):
    torch.manual_seed(0)
    return MAE(MAEConfig(mode=mode, **{**CFG, **kw})).eval()


def images(n=4, seed=1):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_patchify_unpatchify_round_trip_and_patch_order():
    model, x = make(), images()
    patches = model.patchify(x)
    assert patches.shape == (4, 16, 48)
    assert torch.equal(model.unpatchify(patches), x)
    # patch 5 = row 1, column 1; its values are (row, column, channel) ordered
    assert torch.equal(patches[0, 5].view(4, 4, 3), x[0, :, 4:8, 4:8].permute(1, 2, 0))


@pytest.mark.parametrize("ratio,kept", [(0.75, 4), (0.5, 8), (0.0, 16), (0.9, 2)])
def test_random_masking_keeps_an_exact_count(ratio, kept):
    model = make()
    x = torch.randn(6, 16, 32)
    x_vis, visible, ids_restore = model.random_masking(x, ratio, torch.Generator().manual_seed(0))
    assert x_vis.shape == (6, kept, 32)
    assert visible.dtype == torch.bool and (visible.sum(1) == kept).all()
    # the kept rows are exactly the visible tokens, in shuffled order
    for i in range(6):
        order = ids_restore[i].argsort()[:kept]
        assert visible[i, order].all() and torch.equal(x_vis[i], x[i, order])


def test_random_masking_equals_token_ratio_mask_for_the_same_seed():
    model = make()
    _, visible, _ = model.random_masking(torch.zeros(5, 16, 1), 0.75, torch.Generator().manual_seed(3))
    assert torch.equal(visible, masks.token_ratio_mask(5, 16, 0.75, torch.Generator().manual_seed(3)))


def test_forward_shapes_and_determinism():
    model, x = make(), images()
    loss, pred, visible = model(x, 0.75, generator=torch.Generator().manual_seed(0))
    assert pred.shape == (4, 16, 48) and visible.shape == (4, 16) and loss.dim() == 0
    loss2, pred2, visible2 = model(x, 0.75, generator=torch.Generator().manual_seed(0))
    assert torch.equal(visible, visible2) and torch.equal(pred, pred2) and loss == loss2
    _, _, visible3 = model(x, 0.75, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(visible, visible3)


def test_encoder_sees_visible_tokens_only_with_hidden_states():
    model, x = make(), images()
    enc = model.forward_encoder(x, ratio=0.75, generator=torch.Generator().manual_seed(0), return_hidden=True)
    assert enc.latent.shape == (4, 1 + 4, 32)
    assert len(enc.hidden) == 2 and all(h.shape == (4, 5, 32) for h in enc.hidden)
    assert torch.allclose(model.norm(enc.hidden[-1]), enc.latent)


def full_sequence_with_attention_mask(model, x, visible):
    """Reference: every token goes through the encoder, but removed tokens are never attended (keys masked)."""
    tokens = model.patch_embed(x) + model.pos_embed[:, 1:]
    cls = (model.cls_token + model.pos_embed[:, :1]).expand(len(x), -1, -1)
    tokens = torch.cat([cls, tokens], dim=1)
    attend = torch.cat([torch.ones(len(x), 1, dtype=torch.bool), visible], dim=1)[:, None, None, :]
    for blk in model.blocks:
        tokens, _ = blk(tokens, attend)
    return model.norm(tokens)  # [N, 1+L, D]


def test_visible_only_encoder_equals_full_sequence_with_dropped_tokens_masked_out():
    model, x = make(), images()
    visible = masks.token_ratio_mask(4, 16, 0.75, torch.Generator().manual_seed(0))
    enc = model.forward_encoder(x, token_mask=visible)
    ref = full_sequence_with_attention_mask(model, x, visible)
    assert torch.allclose(enc.latent[:, 0], ref[:, 0], atol=1e-5)  # [CLS]
    # token_mask path keeps visible tokens in their original order
    assert torch.allclose(enc.latent[:, 1:], ref[:, 1:][visible].view(4, 4, 32), atol=1e-5)
    # and it is not trivially so: attending to every token gives something else
    everything = full_sequence_with_attention_mask(model, x, torch.ones_like(visible))
    assert not torch.allclose(enc.latent[:, 0], everything[:, 0], atol=1e-3)


def test_random_and_given_mask_give_the_same_reconstruction():
    model, x = make(), images()
    _, pred, visible = model(x, 0.75, generator=torch.Generator().manual_seed(0))
    _, pred2, _ = model(x, token_mask=visible)
    assert torch.allclose(pred, pred2, atol=1e-5)


def test_token_mask_must_keep_equal_counts():
    model, x = make(), images()
    visible = torch.zeros(4, 16, dtype=torch.bool)
    visible[:, :4] = True
    visible[0, 5] = True
    with pytest.raises(ValueError, match="same number"):
        model.forward_encoder(x, token_mask=visible)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_counts_removed_patches_only(norm_pix):
    model, x = make(norm_pix_loss=norm_pix), images()
    visible = masks.token_ratio_mask(4, 16, 0.5, torch.Generator().manual_seed(0))
    pred = torch.randn(4, 16, 48)
    loss = model.forward_loss(x, pred, visible)
    pixels = masks.token_to_pixel_mask(visible, 4).expand_as(x)
    changed = torch.where(pixels, torch.rand_like(x), x)  # new content on visible patches only
    assert torch.allclose(model.forward_loss(changed, pred, visible), loss)
    changed_removed = torch.where(pixels, x, torch.rand_like(x))
    assert not torch.allclose(model.forward_loss(changed_removed, pred, visible), loss)
    per_patch = model.forward_loss(x, pred, visible, reduction="none")
    assert per_patch.shape == (4, 16)
    assert torch.allclose(per_patch[~visible].mean(), loss)


def test_simmim_mode_uses_the_full_sequence_with_a_mask_token():
    model, x = make("simmim", decoder_depth=0), images()
    visible = masks.token_ratio_mask(4, 16, 0.75, torch.Generator().manual_seed(0))
    enc = model.forward_encoder(x, token_mask=visible, return_hidden=True)
    assert enc.latent.shape == (4, 17, 32)
    loss, pred, _ = model(x, token_mask=visible)
    assert pred.shape == (4, 16, 48)
    # removed patches' content is invisible: changing them changes nothing in the encoder
    pixels = masks.token_to_pixel_mask(visible, 4).expand_as(x)
    enc2 = model.forward_encoder(torch.where(pixels, x, torch.rand_like(x)), token_mask=visible)
    assert torch.allclose(enc.latent, enc2.latent, atol=1e-6)
    loss.backward()
    assert model.enc_mask_token.grad.abs().sum() > 0


def test_mae_gradients_reach_encoder_and_mask_token():
    model, x = make(), images()
    model.train()
    loss, _, _ = model(x, 0.75, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert model.mask_token.grad.abs().sum() > 0 and model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        MAE(MAEConfig(mode="beit"))
