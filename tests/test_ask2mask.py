import torch

from companion.data import speech
from companion.methods.audio import ask2mask
from companion.models.msm import MSMEncoder, msm_loss


def clip_feats(n=3, t=20, c=8, speech_frames=(5, 12)):
    """Log-mel-like features: silence (ln 1e-6) everywhere except loud frames in ``speech_frames``."""
    x = torch.full((n, t, c), -13.8)
    x[:, speech_frames[0]:speech_frames[1]] = 0.0
    return x


def test_frame_labels_mark_loud_clean_frames_with_the_word_and_the_rest_background():
    labels = ask2mask.frame_labels(clip_feats(), torch.tensor([0, 2, 1]), n_words=3)
    assert labels.shape == (3, 20) and labels.dtype == torch.long
    assert torch.equal(labels[:, 5:12], torch.tensor([0, 2, 1])[:, None].expand(3, 7))
    assert (labels[:, :5] == 3).all() and (labels[:, 12:] == 3).all()


def test_energy_weights_are_the_voice_activity_indicator():
    w = ask2mask.energy_weights(clip_feats())
    assert torch.equal(w[0], (torch.arange(20) >= 5).float() * (torch.arange(20) < 12).float())
    noisy = clip_feats() + 0.0
    noisy[:, :5] = -1.0  # noise within 30 dB of the speech: the control counts it as active
    assert (ask2mask.energy_weights(noisy)[:, :12] == 1).all()


def test_confidence_excludes_background_and_utterance_confidence_is_the_mean():
    post = torch.tensor([[[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]])  # 2 words + background (last)
    conf = ask2mask.frame_confidence(post)
    assert torch.allclose(conf, torch.tensor([[0.2, 0.6]]))
    assert torch.allclose(ask2mask.utterance_confidence(conf), torch.tensor([0.4]))


def test_english_voices_alternate_male_and_female_and_keep_every_voice():
    voices = ask2mask.english_voices()
    assert sorted(voices) == sorted(speech.ENGLISH_VOICES)
    assert all("+m" in v for v in voices[0::2]) and all("+f" in v for v in voices[1::2])


def test_scorer_set_labels_noisy_copies_from_the_clean_signal_and_noise_as_background():
    g = torch.Generator().manual_seed(0)
    clean = torch.zeros(4, 3200)
    clean[:, 1200:2000] = 0.5 * torch.sin(torch.arange(800) * 0.3)
    feats, labels = ask2mask.scorer_set(clean, torch.tensor([0, 1, 2, 3]), 4, g)
    assert feats.shape[0] == labels.shape[0] == 2 * 4 + 2 and feats.shape[1] == labels.shape[1]
    assert torch.equal(labels[:4], labels[4:8])  # noisy copies keep the clean labels
    assert (labels[8:] == 4).all()  # noise-only clips: all background
    assert (labels[:4] < 4).any(dim=1).all()


def test_scorer_learns_and_keeps_time_resolution():
    torch.manual_seed(0)
    scorer = ask2mask.FrameScorer(8, 4, width=16, layers=2).normalize_with(clip_feats())
    x = clip_feats(4)
    y = ask2mask.frame_labels(x, torch.tensor([0, 1, 2, 0]), 3)
    x = x + 0.1 * torch.randn(x.shape) + torch.tensor([0.0, 1.0, 2.0, 0.0])[:, None, None]
    out = scorer(x)
    assert out.shape == (4, 20, 4)
    opt = torch.optim.Adam(scorer.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        loss = ask2mask.scorer_loss(scorer, x, y)
        loss["loss"].backward()
        opt.step()
    assert loss["frame_acc"] > 0.9


def test_msm_objective_masks_at_the_rate_follows_the_weights_and_is_seeded():
    n, t = 6, 20
    targets = torch.randint(0, 8, (n, t, 1), generator=torch.Generator().manual_seed(0))
    weights = torch.zeros(n, t)
    weights[:, 10:] = 1.0  # confident only on the second half
    obj = ask2mask.MSMObjective(targets, 0.3, 2, seed=1, span_weights=weights)
    keep = obj.keep(torch.arange(n))
    assert ((~keep).sum(1) == 6).all()
    assert keep[:, :10].all()  # no span starts where the weight is 0 (spans cannot reach back)
    again = ask2mask.MSMObjective(targets, 0.3, 2, seed=1, span_weights=weights).keep(torch.arange(n))
    assert torch.equal(keep, again)


def test_utterance_weights_scale_each_utterance_loss():
    torch.manual_seed(0)
    model = MSMEncoder(8, (8,), d=16, n_layer=1, n_head=2, max_frames=20)
    feats = torch.randn(2, 20, 8)
    targets = torch.randint(0, 8, (2, 10, 1))
    w = torch.tensor([1.0, 0.0])
    weighted = ask2mask.MSMObjective(targets, 0.5, 2, seed=3, utterance_weights=w)
    plain = ask2mask.MSMObjective(targets, 0.5, 2, seed=3)
    idx = torch.arange(2)
    keep = plain.keep(idx)
    plain.generator.manual_seed(3)
    first_only = msm_loss(model, feats[:1], targets[:1], keep[:1])
    assert torch.allclose(plain(model, feats, idx)["loss"], msm_loss(model, feats, targets, keep))
    # utterance 2 has weight 0: the loss is utterance 1's summed CE over all masked tokens of the batch
    assert torch.allclose(weighted(model, feats, idx)["loss"], first_only * (~keep[0]).sum() / (~keep).sum())


def test_finetune_returns_per_clip_correctness_and_leaves_the_encoder_alone():
    torch.manual_seed(0)
    enc = MSMEncoder(8, (8,), d=16, n_layer=1, n_head=2, max_frames=20)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    y = torch.arange(8) % 2
    x = torch.randn(8, 20, 8) + 3.0 * y[:, None, None]
    correct = ask2mask.finetune(enc, x, y, x, y, 2, steps=30, lr=1e-2, batch_size=8, seed=0)
    assert correct.shape == (8,) and correct.dtype == torch.bool and correct.float().mean() > 0.7
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())

