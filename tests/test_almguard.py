import torch
import torch.nn.functional as F

from companion.methods.audio import almguard


class BinModel(torch.nn.Module):
    """A linear 'ALM' on time-averaged bins: logits = mean_t(x) @ W, (N, T, C) -> (N, K)."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(weights, requires_grad=False)

    def forward(self, x):
        return x.mean(dim=1) @ self.w


def test_command_labels_map_harmful_commands_to_refuse():
    texts = almguard.BENIGN[:2] + almguard.HARMFUL[:1]
    labels, harmful = almguard.command_labels(texts, torch.tensor([0, 1, 2, 2]))
    refuse = len(almguard.BENIGN)
    assert labels.tolist() == [0, 1, refuse, refuse] and harmful.tolist() == [False, False, True, True]


def test_mgsm_keeps_the_top_ratio_bins_and_controls_have_k_bins():
    jail = torch.tensor([1.0, 4.0, 2.0, 8.0, 0.5])
    util = torch.tensor([1.0, 1.0, 4.0, 4.0, 0.1])  # ratios 1, 4, 0.5, 2, 5
    assert almguard.mgsm_bins(jail, util, 2).tolist() == [False, True, False, False, True]
    assert almguard.mgsm_bins(jail, util, 3).tolist() == [False, True, False, True, True]
    assert almguard.top_bins(jail, 2).tolist() == [False, True, False, True, False]
    r = almguard.random_bins(40, 15, torch.Generator().manual_seed(0))
    assert r.dtype == torch.bool and int(r.sum()) == 15
    assert torch.equal(r, almguard.random_bins(40, 15, torch.Generator().manual_seed(0)))


def test_bin_saliency_is_the_mean_time_averaged_abs_gradient():
    w = torch.tensor([[1.0, -1.0], [2.0, 0.0], [0.0, 3.0]])  # 3 bins, 2 classes
    model = BinModel(w)
    x = torch.randn(5, 4, 3)
    # loss = logit of class 0: d/dx[t, c] = w[c, 0] / T for every frame
    sal = almguard.bin_saliency(model, x, lambda logits, idx: logits[:, 0], batch_size=2)
    assert torch.allclose(sal, w[:, 0].abs() / 4)


def test_time_patches_cover_one_window_per_clip():
    m = almguard.time_patches(6, 20, 0.25, torch.Generator().manual_seed(1))
    assert m.shape == (6, 20, 1) and m.dtype == torch.bool
    assert (m.sum(dim=1) == 5).all()
    starts = m[..., 0].float().argmax(dim=1)
    for row, s in zip(m[..., 0], starts):
        assert row[s:s + 5].all()


def test_jailbreak_stays_in_the_ball_and_region_and_lowers_refusal():
    torch.manual_seed(0)
    w = torch.randn(3, 4)
    w[:, 3] = torch.tensor([2.0, 2.0, 2.0])
    model = BinModel(w)
    x = torch.full((4, 6, 3), 1.0)  # refused: class 3 dominates
    region = almguard.time_patches(4, 6, 0.5, torch.Generator().manual_seed(0))
    adv = almguard.jailbreak(model, x, 3, eps=0.4, steps=10, step_size=0.1, region=region)
    d = adv - x
    assert d.abs().max() <= 0.4 + 1e-6 and (d * ~region).abs().max() == 0
    before = F.cross_entropy(model(x), torch.full((4,), 3))
    assert F.cross_entropy(model(adv), torch.full((4,), 3)) > before


def test_sap_stays_within_tau_and_its_bins_and_raises_refusal():
    torch.manual_seed(0)
    w = torch.randn(5, 3)
    model = BinModel(w)
    x = torch.randn(8, 6, 5)
    bins = torch.tensor([True, False, True, True, False])
    delta, losses = almguard.train_sap(model, x, 2, bins, tau=0.3, epochs=2, max_iter=5, lr=0.05, seed=0)
    assert delta.shape == (1, 6, 5)
    assert delta.abs().max() <= 0.3 + 1e-6 and delta[..., ~bins].abs().max() == 0
    target = torch.full((8,), 2)
    assert F.cross_entropy(model(x + delta), target) < F.cross_entropy(model(x), target)
    again, losses2 = almguard.train_sap(model, x, 2, bins, tau=0.3, epochs=2, max_iter=5, lr=0.05, seed=0)
    assert torch.equal(delta, again) and losses == losses2


def test_sap_stops_on_a_clip_once_its_loss_is_low():
    model = BinModel(torch.tensor([[0.0, 10.0]]))  # class 1 always wins by far: loss of refuse=1 is ~0
    x = torch.ones(3, 4, 1)
    _, losses = almguard.train_sap(model, x, 1, torch.tensor([True]), tau=1.0, epochs=2, max_iter=7, lr=0.1)
    assert len(losses) == 6  # one (stopping) evaluation per clip per pass


def test_respond_adds_the_perturbation():
    model = BinModel(torch.eye(2))
    x = torch.tensor([[[1.0, 0.0]]]).repeat(3, 2, 1)
    assert almguard.respond(model, x).tolist() == [0, 0, 0]
    assert almguard.respond(model, x, torch.tensor([[[0.0, 2.0]]]), batch_size=2).tolist() == [1, 1, 1]
