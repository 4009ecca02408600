"""tgm_video_mae: scenes that break the motion assumption, captions without the probed label, the guided-tube
measure, paired continued pretraining, and the zoo's aligner and warm start (cached bit for bit)."""

import torch

from companion import mim, zoo
from companion.data import video
from companion.methods.masked_image_modeling import tgm_video_mae
from companion.models.video_mae import VideoMAE, VideoText

KW = dict(image_size=16, patch_size=4, frames=4, tubelet=2, dim=16, depth=1, heads=2, decoder_dim=16,
          decoder_depth=1)


def test_captions_can_leave_out_the_probed_direction():
    d = video.make_clips(64, scenes=video.SCENES, name_direction=False, seed=0)
    assert d.captions.shape == (64, 2)
    directions = {video.VOCAB.index(w) for w in video.DIRECTIONS}
    assert not directions & set(d.captions.flatten().tolist())
    assert d.caption(0).count(" ") == 2 and "moves" not in d.caption(0)
    assert set(d.scenes.tolist()) == {0, 1, 2}
    assert len(d.scene("pan")) == (d.scenes == 2).sum()


def outside_motion(d):
    """Mean frame-difference energy away from the captioned object (N,)."""
    energy = video.motion_energy(d.clips)[:, 1:]
    away = ~(d.objects[:, 1:] | d.objects[:, :-1])
    return (energy * away).sum((1, 2, 3)) / away.sum((1, 2, 3))


def test_scenes_move_what_they_say():
    kw = dict(n=16, distractor=True, texture=0.15, seed=3)
    static = video.make_clips(scenes=("static",), **kw)
    moving = video.make_clips(scenes=("moving_distractor",), **kw)
    pan = video.make_clips(scenes=("pan",), **kw)
    # a tracking shot keeps the captioned object still in the frame, and the background moves instead
    assert torch.equal(pan.objects[:, 0], pan.objects[:, -1])
    assert not torch.equal(static.objects[:, 0], static.objects[:, -1])
    # away from the captioned object, only noise changes in a static scene; a moving distractor or a pan adds motion
    assert outside_motion(static).max() < 0.15
    assert outside_motion(moving).mean() > 1.4 * outside_motion(static).mean()
    assert outside_motion(pan).mean() > 2 * outside_motion(static).mean()


def test_top_k_capture_counts_the_object_on_the_best_scored_tubes():
    weights = torch.tensor([[1.0, 1.0, 0.0, 2.0]])
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.5]])
    assert tgm_video_mae.top_k_capture(scores, weights, 1).item() == 0.25  # tube 0 holds 1 of 4
    assert tgm_video_mae.top_k_capture(scores, weights, 2).item() == 0.25  # tube 2 holds nothing
    assert tgm_video_mae.top_k_capture(scores, weights, 3).item() == 0.75
    assert tgm_video_mae.top_k_capture(weights, weights, 1).item() == 0.5  # the oracle


def train_arm(scores, guided_fraction=1.0, vtc_weight=0.0, steps=3):
    torch.manual_seed(0)
    model = VideoText(VideoMAE(**KW), 8)
    d = video.make_clips(32, scenes=video.SCENES, name_direction=False, seed=1)
    tgm_video_mae.continue_pretraining(model, d.clips, d.captions, steps, scores, 0.75, guided_fraction, vtc_weight,
                                       seed=0, batch_size=8, device="cpu", progress=False)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_continued_pretraining_arms_are_paired():
    random_arm = train_arm(None)
    assert torch.equal(random_arm, train_arm(torch.rand(32, 32), guided_fraction=0.0))  # same batches and draws
    assert not torch.equal(random_arm, train_arm(torch.rand(32, 32), guided_fraction=0.5))
    assert not torch.equal(random_arm, train_arm(None, vtc_weight=1.0))


def test_zoo_models_load_bit_identical_to_a_fresh_build(tmp_path, monkeypatch):
    d = video.make_clips(64, scenes=video.SCENES, name_direction=False, seed=0)
    builds = []
    for where in ("a", "a", "b"):  # train, load, train afresh elsewhere
        monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / where))
        aligner = zoo.video_text_aligner(d.clips, d.captions, 4, embed_dim=8, batch_size=16, device="cpu", **KW)
        warm = zoo.video_mae_warm_start(d.clips, 4, embed_dim=8, batch_size=16, device="cpu", **KW)
        builds.append(torch.cat([p.flatten() for m in (aligner, warm) for p in m.parameters()]))
        assert not any(p.requires_grad for p in aligner.parameters())
    assert torch.equal(builds[0], builds[1]) and torch.equal(builds[0], builds[2])
    assert tgm_video_mae.aligner is zoo.video_text_aligner


def test_zoo_recipes_follow_the_notebook_parameters():
    from companion.params import profile_values

    P = profile_values("tgm_video_mae", "ci")
    corpus = zoo.tgm_corpus(P)
    assert len(corpus) == P["n_corpus"] and corpus.captions.shape[1] == 2
    arch = zoo.tgm_arch(P, P["dim"])
    assert VideoMAE(**arch).num_patches == (P["frames"] // P["tubelet"]) * (P["image_size"] // P["patch_size"]) ** 2


def test_time_pooled_features_keep_the_tube_layers_apart():
    torch.manual_seed(0)
    model = VideoMAE(**KW).eval()
    clips = torch.rand(3, 3, 4, 16, 16)
    feats = tgm_video_mae.time_pooled_features(model, clips)
    assert feats.shape == (3, 2 * 16)
    every = mim.encoder_features(model, clips, pool="none")  # [3, 32, 16]
    assert torch.allclose(feats[:, :16], every[:, :16].mean(1)) and torch.allclose(feats[:, 16:], every[:, 16:].mean(1))
