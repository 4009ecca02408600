import pytest
import torch

from companion import masks, mim
from companion.methods.masked_image_modeling import tgm_video_mae
from companion.data import video
from companion.models.video_mae import VideoMAE, sincos_1d

KW = dict(image_size=16, patch_size=4, frames=4, tubelet=2, dim=16, depth=1, heads=2, decoder_dim=16,
          decoder_depth=1)


def test_make_clips_shapes_captions_and_motion():
    d = video.make_clips(32, frames=4, size=16, seed=0)
    assert d.clips.shape == (32, 3, 4, 16, 16) and d.objects.shape == (32, 4, 16, 16)
    assert d.clips.min() >= 0 and d.clips.max() <= 1
    assert torch.equal(d.labels + len(video.COLOURS) + 4, d.captions[:, 2])  # direction word = label
    assert d.caption(0).startswith("a ") and " moves " in d.caption(0)
    assert torch.equal(video.make_clips(32, seed=0).clips, d.clips)  # deterministic
    # the object moves in the captioned direction: its centroid shifts along the right axis
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    cx = lambda t: (d.objects[:, t] * xs).sum((1, 2)) / d.objects[:, t].sum((1, 2))
    cy = lambda t: (d.objects[:, t] * ys).sum((1, 2)) / d.objects[:, t].sum((1, 2))
    dx, dy = cx(3) - cx(0), cy(3) - cy(0)
    expected = {0: dx < -2, 1: dx > 2, 2: dy < -2, 3: dy > 2}
    assert all(bool(expected[int(lab)][i]) for i, lab in enumerate(d.labels))


def test_tube_means_and_removed_share():
    maps = torch.zeros(1, 4, 16, 16)
    maps[0, :2, :4, :4] = 1  # exactly the first tube
    share = video.tube_means(maps, 2, 4)
    assert share.shape == (1, 32) and share[0, 0] == 1 and share[0, 1:].sum() == 0
    visible = torch.ones(1, 32, dtype=torch.bool)
    assert video.removed_share(visible, share).item() == 0
    visible[0, 0] = False
    assert video.removed_share(visible, share).item() == 1


def test_motion_energy_is_zero_for_a_static_clip():
    clip = torch.rand(2, 3, 1, 8, 8).expand(-1, -1, 4, -1, -1)
    assert video.motion_energy(clip).abs().max() == 0


def test_video_mae_patchify_roundtrip_and_token_order():
    m = VideoMAE(**KW)
    x = torch.rand(2, 3, 4, 16, 16)
    assert m.num_patches == 32 and m.patchify(x).shape == (2, 32, 2 * 4 * 4 * 3)
    assert torch.equal(m.unpatchify(m.patchify(x)), x)
    # token order of patchify, of the conv embedding and of tube_means agree: mark one tube
    x = torch.zeros(1, 3, 4, 16, 16)
    x[..., 2:4, 4:8, 8:12] = 1  # second tube layer, row 1, column 2
    idx = 16 + 1 * 4 + 2
    assert m.patchify(x)[0].abs().sum(1).nonzero().flatten().tolist() == [idx]
    assert video.tube_means(x[:, 0], 2, 4)[0].nonzero().flatten().tolist() == [idx]
    visible = torch.ones(1, 32, dtype=torch.bool)
    visible[0, idx] = False
    assert torch.equal(m.visible_pixels(visible)[0, 0] == 0, x[0, 0] == 1)


def test_video_mae_forward_and_mean_fill():
    m = VideoMAE(**KW)
    d = video.make_clips(4, seed=1)
    vis = masks.token_ratio_mask(4, 32, 0.75, torch.Generator().manual_seed(0))
    loss, pred, visible = m(d.clips, token_mask=vis)
    assert pred.shape == (4, 32, 96) and torch.equal(visible, vis) and loss.item() > 0
    assert mim.patch_mean_fill_loss(m, d.clips, vis).shape == (4,)
    with pytest.raises(ValueError, match="multiple of tubelet"):
        VideoMAE(**{**KW, "frames": 3})
    assert sincos_1d(8, 5).shape == (6, 8)


def test_patch_mean_fill_loss_equals_the_image_version():
    from companion.data import make_shapes
    from companion.models import MAE

    d = make_shapes(8, size=16)
    m = MAE(image_size=16, patch_size=4, dim=16, depth=1, heads=2, decoder_dim=16, decoder_depth=1)
    v = masks.token_ratio_mask(8, 16, 0.75, torch.Generator().manual_seed(0))
    assert torch.allclose(mim.patch_mean_fill_loss(m, d.images, v), mim.mean_fill_loss(d.images, v, 4), atol=1e-6)


def test_info_nce_prefers_the_diagonal_and_handles_repeated_captions():
    scale = torch.tensor(10.0)
    good, bad = torch.eye(4), torch.eye(4).flip(0)
    assert tgm_video_mae.info_nce(good, scale) < tgm_video_mae.info_nce(bad, scale)
    same = torch.ones(4, 4, dtype=torch.bool)  # all captions equal: every pair is a positive
    # soft targets: the best a model can do is spread evenly, reaching the entropy log 4, not 0
    assert torch.isclose(tgm_video_mae.info_nce(torch.zeros(4, 4), scale, same), torch.log(torch.tensor(4.0)))
    assert tgm_video_mae.info_nce(torch.eye(4), scale, same) > tgm_video_mae.info_nce(torch.zeros(4, 4), scale, same)


def test_video_text_losses_and_scores():
    torch.manual_seed(0)
    model = tgm_video_mae.VideoText(VideoMAE(**KW), embed_dim=8)
    d = video.make_clips(6, seed=2)
    vis = masks.token_ratio_mask(6, 32, 0.5, torch.Generator().manual_seed(0))
    recon = model.loss(d.clips, d.captions, vis)
    both = model.loss(d.clips, d.captions, vis, vtc_weight=1.0)
    assert both > recon  # the contrastive term is positive
    vtc = model.loss(d.clips, d.captions, None, recon_weight=0.0, vtc_weight=1.0, pool="max")
    vtc.backward()
    assert model.text.weight.grad is not None and model.mae.patch_embed.proj.weight.grad is not None
    score = model.tube_caption_similarity(d.clips, d.captions)
    assert score.shape == (6, 32) and score.abs().max() <= 1 + 1e-5
    correct = model.retrieval_correct(d.clips, d.captions)  # per clip, for a paired premise
    assert correct.shape == (6,) and correct.dtype == torch.bool
    assert model.retrieval_accuracy(d.clips, d.captions) == pytest.approx(correct.float().mean().item())
    with pytest.raises(ValueError, match="pool"):
        model.similarity(torch.zeros(2, 3, 8), torch.zeros(2, 8), "sum")


def test_aligner_is_cached_and_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    d = video.make_clips(256, seed=0)
    kw = {**KW, "dim": 32, "decoder_dim": 32}
    a = tgm_video_mae.aligner(d.clips, d.captions, steps=60, embed_dim=16, batch_size=32, device="cpu", **kw)
    b = tgm_video_mae.aligner(d.clips, d.captions, steps=60, embed_dim=16, batch_size=32, device="cpu", **kw)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    n_captions = len(torch.unique(d.captions, dim=0))
    assert a.retrieval_accuracy(d.clips, d.captions) > 2 / n_captions
