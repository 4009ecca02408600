import pytest
import torch

from companion import eval as evaluation
from companion import train
from companion.data import landcover
from companion.methods.masked_image_modeling import softcon


def test_encoder_shapes():
    enc = softcon.Encoder(6, (8, 16), out_dim=5)
    x = torch.randn(3, 6, 16, 16)
    assert enc.features(x).shape == (3, 16) and enc(x).shape == (3, 5)


def test_two_views_are_seeded_and_keep_shape():
    x = torch.randn(4, 6, 8, 8)
    a = softcon.two_views(x, torch.Generator().manual_seed(0))
    b = softcon.two_views(x, torch.Generator().manual_seed(0))
    assert a.shape == (8, 6, 8, 8) and torch.equal(a, b)
    assert not torch.equal(a[:4], a[4:])


def test_every_arm_trains_on_two_views():
    m = landcover.make_mosaics(32, size=8, seed=0)
    x = softcon.standardise(m.images, m.images)
    for arm in softcon.ARMS:
        enc = softcon.Encoder(6, (4, 8), out_dim=8)
        h = train.fit(enc, x, m.labels, 2, batch_size=8, loss_fn=softcon.arm_loss(arm, 0.2),
                      augment=softcon.two_views, progress=False)
        assert len(h) == 2 and all(map(lambda v: v == v, h))
    with pytest.raises(ValueError):
        softcon.arm_loss("nope", 0.2)(enc, softcon.two_views(x[:4], torch.Generator()), m.labels[:4])


def test_weighted_map_equals_sklearn_map_with_unit_weights():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(60, 4, generator=g)
    labels = (torch.rand(60, 4, generator=g) < 0.4).float()
    labels[:, 3] = 0  # a class without positives is left out, as in companion.eval
    got = softcon.weighted_map(scores, labels, torch.ones(1, 60))
    assert got.item() == pytest.approx(evaluation.mean_average_precision(scores, labels), abs=1e-9)
    # integer weights = repeating scenes
    w = torch.randint(0, 3, (60,), generator=g)
    rep = torch.repeat_interleave(torch.arange(60), w)
    expected = evaluation.mean_average_precision(scores[rep], labels[rep])
    assert softcon.weighted_map(scores, labels, w[None].float()).item() == pytest.approx(expected, abs=1e-9)


def test_map_difference_interval_brackets_the_difference():
    g = torch.Generator().manual_seed(1)
    labels = (torch.rand(200, 3, generator=g) < 0.5).float()
    noisy = torch.randn(200, 3, generator=g)
    better = labels + 0.5 * torch.randn(200, 3, generator=g)
    lo, hi = softcon.map_difference_interval(noisy, better, labels, n_boot=200, seed=0)
    diff = evaluation.mean_average_precision(better, labels) - evaluation.mean_average_precision(noisy, labels)
    assert 0 < lo <= diff <= hi
    assert softcon.map_difference_interval(noisy, better, labels, n_boot=200, seed=0) == (lo, hi)
    lo0, hi0 = softcon.map_difference_interval(noisy, noisy, labels, n_boot=50)
    assert lo0 == hi0 == 0


def test_probe_scores_rank_the_labels():
    g = torch.Generator().manual_seed(2)
    labels = (torch.rand(120, 3, generator=g) < 0.5).float()
    feats = labels + 0.3 * torch.randn(120, 3, generator=g)
    s = softcon.probe_scores(feats[:80], labels[:80], feats[80:])
    assert s.shape == (40, 3) and evaluation.mean_average_precision(s, labels[80:]) > 0.9


def test_embedding_similarity_is_cosine():
    enc = softcon.Encoder(6, (4, 8), out_dim=5).eval()
    sim = softcon.embedding_similarity(enc, torch.randn(7, 6, 8, 8))
    assert sim.shape == (7, 7) and torch.allclose(sim.diagonal(), torch.ones(7), atol=1e-5)


def test_rowwise_correlation_by_hand():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(6, 6, generator=g), torch.randn(6, 6, generator=g)
    r = softcon.rowwise_correlation(a, b)
    for i in range(6):
        keep = [j for j in range(6) if j != i]
        expected = torch.corrcoef(torch.stack([a[i, keep], b[i, keep]]))[0, 1]
        assert r[i].item() == pytest.approx(expected.item(), abs=1e-6)
    assert torch.allclose(softcon.rowwise_correlation(b, b), torch.ones(6))
