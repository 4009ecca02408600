import pytest
import torch

from companion import masks, mim
from companion.methods.masked_image_modeling import colormae
from companion.models import mae


def tiny_mae():
    torch.manual_seed(0)
    return mae.MAE(mae.MAEConfig(image_size=8, patch_size=2, dim=16, depth=1, heads=2, decoder_dim=16,
                                 decoder_depth=1, decoder_heads=2))


@pytest.mark.parametrize("kind", ["random", *masks.NOISE_COLOURS])
def test_mask_generator_removes_an_exact_count_of_tokens(kind):
    visible = mim.mask_generator(kind, 4, 0.75)(5, torch.Generator().manual_seed(0))
    assert visible.shape == (5, 16) and visible.dtype == torch.bool and (visible.sum(1) == 4).all()


def test_mask_generator_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="mask kind"):
        mim.mask_generator("pink", 4, 0.5)


def test_pretrain_is_paired_and_deterministic_for_a_seed():
    images = torch.rand(32, 3, 8, 8)
    runs = []
    for _ in range(2):
        model = tiny_mae()
        runs.append(mim.pretrain(model, images, mim.mask_generator("green", 4, 0.5), 3, seed=1, batch_size=8,
                                 progress=False, device="cpu"))
    assert runs[0] == runs[1] and len(runs[0]) == 3


def test_per_image_loss_is_the_mean_over_removed_patches():
    model, images = tiny_mae(), torch.rand(6, 3, 8, 8)
    fn = mim.mask_generator("random", 4, 0.5)
    per_image = mim.per_image_loss(model, images, fn, torch.Generator().manual_seed(0), batch_size=4)
    visible = fn(4, torch.Generator().manual_seed(0))  # the first batch's masks
    loss, _, _ = model(images[:4], token_mask=visible)
    assert per_image.shape == (6,) and torch.allclose(per_image[:4].mean(), loss, atol=1e-6)


def test_reconstruct_keeps_visible_pixels_and_greys_removed_ones():
    model, images = tiny_mae(), torch.rand(2, 3, 8, 8)
    visible = mim.mask_generator("random", 4, 0.5)(2, torch.Generator().manual_seed(0))
    shown, recon = mim.reconstruct(model, images, visible)
    keep = masks.token_to_pixel_mask(visible, 2).expand_as(images)
    assert torch.equal(shown[keep], images[keep]) and torch.equal(recon[keep], images[keep])
    assert (shown[~keep] == 0.5).all() and recon.min() >= 0 and recon.max() <= 1


def test_encoder_features_see_every_token():
    model, images = tiny_mae(), torch.rand(3, 3, 8, 8)
    assert mim.encoder_features(model, images).shape == (3, 16)
    assert mim.encoder_features(model, images, pool="none").shape == (3, 16, 16)
    assert mim.encoder_features(model, images, pool="cls").shape == (3, 16)


def test_patch_labels_mark_patches_mostly_on_the_object():
    objects = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    objects[0, 0, :2, :2] = True  # top-left patch fully
    objects[0, 0, 2, 2] = True  # one pixel of the bottom-right patch
    assert mim.patch_labels(objects, 2).tolist() == [[1, 0, 0, 0]]


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = torch.randn(200, 4, generator=g) + 3 * y[:, None]
    correct = mim.linear_probe(x[:100], y[:100], x[100:], y[100:])
    assert correct.shape == (100,) and correct.float().mean() > 0.95


def test_band_shares_sum_to_one_and_follow_the_noise_colours():
    g = torch.Generator().manual_seed(0)
    shares = {c: colormae.band_shares(mim.mask_generator(c, 8, 0.75)(200, g)) for c in ("white", "red", "blue", "green")}
    assert torch.allclose(shares["white"].sum(1), torch.ones(200))
    low, mid, high = (torch.stack([s.mean(0)[i] for s in shares.values()]) for i in range(3))
    assert shares["red"].mean(0)[0] > shares["white"].mean(0)[0] > shares["blue"].mean(0)[0]
    assert shares["green"].mean(0)[1] > shares["white"].mean(0)[1]
    assert low.shape == mid.shape == high.shape == (4,)


def test_distance_to_visible_counts_tokens_on_the_grid():
    visible = torch.zeros(1, 9, dtype=torch.bool)
    visible[0, 4] = True  # the centre of a 3x3 grid: 4 edge neighbours at 1, 4 corners at sqrt 2
    expected = (4 * 1 + 4 * 2**0.5) / 8
    assert torch.allclose(colormae.distance_to_visible(visible), torch.tensor([expected]))
    assert colormae.distance_to_visible(torch.ones(2, 9, dtype=torch.bool)).tolist() == [0.0, 0.0]


def test_mean_fill_loss_is_zero_on_flat_images_and_counts_removed_pixels_only():
    visible = torch.tensor([[True, False, False, False]])
    flat = torch.full((1, 3, 4, 4), 0.3)
    assert mim.mean_fill_loss(flat, visible, 2).tolist() == [0.0]
    img = torch.zeros(1, 1, 4, 4)
    img[0, 0, 2:, 2:] = 1.0  # the last (removed) patch is white, the visible one black
    assert torch.allclose(mim.mean_fill_loss(img, visible, 2), torch.tensor([1 / 3]))


def test_mean_attention_distance_is_zero_for_self_attention_and_known_for_uniform_attention():
    grid, patch = 2, 4
    identity = torch.eye(1 + grid * grid).expand(3, 2, -1, -1)  # [N, heads, T, T]
    assert torch.equal(mim.mean_attention_distance(identity, grid, patch), torch.zeros(3, 2))
    uniform = torch.full((1, 1, 5, 5), 1 / 5)  # 1/5 on [CLS], renormalised away
    # on a 2x2 grid each patch is at 0, 1, 1 and sqrt(2) patches from the four patches
    expected = patch * (2 + 2**0.5) / 4
    assert torch.allclose(mim.mean_attention_distance(uniform, grid, patch), torch.tensor([[expected]]))
    raw = mim.mean_attention_distance(uniform, grid, patch, renormalise=False)
    assert torch.allclose(raw, torch.tensor([[expected * 4 / 5]]))


def test_mean_attention_distance_follows_the_attended_patch():
    att = torch.zeros(1, 1, 10, 10)  # 3x3 grid, no prefix token shift: [CLS] + 9 patches
    att[..., :, 1] = 1.0  # every query attends to the top-left patch
    dist = mim.mean_attention_distance(att, 3, 1.0)
    pos = torch.tensor([[y, x] for y in range(3) for x in range(3)], dtype=torch.float)
    assert torch.allclose(dist, pos.norm(dim=1).mean().view(1, 1))
    with pytest.raises(ValueError, match="attention must be"):
        mim.mean_attention_distance(att, 4, 1.0)


def test_encoder_attention_distance_has_one_value_per_block_image_and_head():
    model = tiny_mae()
    dist = mim.encoder_attention_distance(model, torch.rand(5, 3, 8, 8), batch_size=2)
    assert dist.shape == (1, 5, 2) and (dist >= 0).all() and (dist <= 2 * 3 * 2**0.5).all()


def test_encoder_attention_distance_accepts_the_attention_of_another_model():
    from companion.models import ViT

    torch.manual_seed(0)
    vit = ViT(image_size=8, patch_size=4, dim=16, depth=2, heads=2).eval()
    x = torch.rand(5, 3, 8, 8)
    dist = mim.encoder_attention_distance(vit, x, batch_size=2,
                                          attention=lambda b: vit.forward_features(b, return_attention=True)[1])
    maps = vit.forward_features(x, return_attention=True)[1]
    torch.testing.assert_close(dist, torch.stack([mim.mean_attention_distance(a, 2, 4) for a in maps]))


def test_fill_loss_in_the_models_units_and_norm_pix_reconstruction():
    from companion.models import MAE

    torch.manual_seed(0)
    images = torch.rand(4, 3, 16, 16)
    visible = torch.zeros(4, 16, dtype=torch.bool)
    visible[:, :4] = True
    pix = MAE(image_size=16, patch_size=4, dim=16, depth=1, heads=2, decoder_dim=16, decoder_depth=1)
    assert torch.allclose(mim.fill_loss(pix, images, visible), mim.patch_mean_fill_loss(pix, images, visible))
    norm = MAE(image_size=16, patch_size=4, dim=16, depth=1, heads=2, decoder_dim=16, decoder_depth=1,
               norm_pix_loss=True)
    # a flat patch at its own mean has normalised error = the normalised target's mean square ≈ (P-1)/P
    fill = mim.fill_loss(norm, images, visible)
    assert torch.allclose(fill, torch.full((4,), 47 / 48), atol=1e-3)
    masked, recon = mim.reconstruct(norm, images, visible)
    keep = mim.masks.token_to_pixel_mask(visible, 4)
    assert torch.equal(recon * keep, images * keep) and recon.min() >= 0 and recon.max() <= 1
