import math

import pytest
import torch
import torch.nn.functional as F

from companion import train


def _views(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def _by_hand_supcon(z1, z2, positive):
    """Khosla et al.'s L_out by explicit loops: positive (2N, 2N) bool, self excluded."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / 0.2
    total = 0.0
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        log_den = torch.logsumexp(sim[i, others], 0)
        pos = [j for j in others if positive[i, j]]
        total += -sum(sim[i, j] - log_den for j in pos) / len(pos)
    return total / len(z)


def test_info_nce_matches_by_hand_and_ignores_labels():
    z1, z2 = _views()
    n = len(z1)
    partner = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    partner[torch.arange(2 * n), torch.cat([torch.arange(n, 2 * n), torch.arange(n)])] = True
    assert train.info_nce(z1, z2, 0.2).item() == pytest.approx(_by_hand_supcon(z1, z2, partner).item(), rel=1e-5)
    # two identical, well-separated views: only the partner is close, the loss is near its minimum 0
    z = torch.eye(4) * 10
    assert train.info_nce(z, z, 0.05).item() < 1e-6


def test_multilabel_supcon_hard_positives_share_a_label():
    z1, z2 = _views()
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1], [1, 0, 0]]).float()
    y = torch.cat([labels, labels])
    positive = (y @ y.T > 0) & ~torch.eye(12, dtype=torch.bool)
    expected = _by_hand_supcon(z1, z2, positive)
    assert train.multilabel_supcon(z1, z2, labels, 0.2, "any").item() == pytest.approx(expected.item(), rel=1e-5)


def test_multilabel_supcon_jaccard_weights_partial_overlap_less():
    z1, z2 = _views(n=3)
    labels = torch.tensor([[1, 1], [1, 0], [0, 1]]).float()
    # with Jaccard weights, scene 0 and scene 1 share half their labels; "any" counts them as full positives
    hard = train.multilabel_supcon(z1, z2, labels, 0.2, "any")
    soft = train.multilabel_supcon(z1, z2, labels, 0.2, "jaccard")
    assert torch.isfinite(hard) and torch.isfinite(soft) and hard.item() != pytest.approx(soft.item())
    with pytest.raises(ValueError):
        train.multilabel_supcon(z1, z2, labels, 0.2, "nope")


def test_soft_contrastive_with_one_hot_labels_is_its_hard_form():
    """One-hot labels make the label-cosine target exactly the same-class indicator, so the soft loss reduces to
    its hard form: softmax form = single-label SupCon (L_out, positives = same class); bce form = the pairwise
    sigmoid loss with same-class pairs positive and all others negative."""
    z1, z2 = _views(n=8, d=4, seed=1)
    classes = torch.tensor([0, 1, 2, 0, 1, 0, 3, 2])
    one_hot = F.one_hot(classes, 4).float()
    soft = train.soft_contrastive(z1, z2, one_hot, 0.2, form="softmax")
    supcon = train.multilabel_supcon(z1, z2, one_hot, 0.2, weighting="any")
    assert soft.item() == pytest.approx(supcon.item(), rel=1e-6)
    c = torch.cat([classes, classes])
    eye = torch.eye(16, dtype=torch.bool)
    assert soft.item() == pytest.approx(_by_hand_supcon(z1, z2, (c[:, None] == c) & ~eye).item(), rel=1e-5)

    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T / 0.2)[~eye]
    same = (c[:, None] == c).float()[~eye]
    by_hand = -(same * F.logsigmoid(logits) + (1 - same) * F.logsigmoid(-logits)).mean()
    bce = train.soft_contrastive(z1, z2, one_hot, 0.2, form="bce")
    assert bce.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_soft_contrastive_target_is_label_cosine_and_differentiable():
    labels = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 1]]).float()
    sim = train.label_similarity(labels)
    assert sim[0, 1].item() == pytest.approx(1 / math.sqrt(2))
    assert sim[0, 2].item() == 0.0 and torch.allclose(sim.diagonal(), torch.ones(3))
    z1, z2 = _views(n=3)
    z1.requires_grad_(True)
    for form in ("softmax", "bce"):
        loss = train.soft_contrastive(z1, z2, labels, 0.2, form=form)
        (grad,) = torch.autograd.grad(loss, z1)
        assert torch.isfinite(grad).all()
    with pytest.raises(ValueError):
        train.soft_contrastive(z1, z2, labels, form="nope")
