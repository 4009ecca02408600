import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from companion.methods.masked_image_modeling import hpm
from companion import masks, metrics, train
from companion.models import MAE, MAEConfig

torch.set_num_threads(1)
CFG = dict(image_size=16, patch_size=4, dim=32, depth=2, heads=4, decoder_dim=32, decoder_depth=1, decoder_heads=4)


def make(loss_predictor=True, **kw):
    torch.manual_seed(0)
    return MAE(MAEConfig(loss_predictor=loss_predictor, **{**CFG, **kw}))


def images(n=4, seed=1):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


# ---- the hard-patch mask -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio,fraction", [(0.75, 0.5), (0.5, 1.0), (0.75, 0.0), (0.9, 0.3)])
def test_hard_patch_mask_removes_an_exact_count_and_the_hardest_first(ratio, fraction):
    scores = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    visible = masks.hard_patch_mask(scores, ratio, fraction, torch.Generator().manual_seed(1))
    n_removed = round(ratio * 16)
    assert visible.dtype == torch.bool and ((~visible).sum(1) == n_removed).all()
    n_hard = int(n_removed * fraction)
    hardest = scores.argsort(dim=1, descending=True)[:, :n_hard]
    assert not visible.gather(1, hardest).any()


def test_hard_patch_mask_without_hard_share_is_the_random_mae_mask():
    scores = torch.randn(5, 16)
    visible = masks.hard_patch_mask(scores, 0.75, 0.0, torch.Generator().manual_seed(3))
    assert torch.equal(visible, masks.token_ratio_mask(5, 16, 0.75, torch.Generator().manual_seed(3)))


def test_hard_patch_mask_with_full_share_removes_exactly_the_top_scores():
    scores = torch.arange(16.0).repeat(3, 1)
    visible = masks.hard_patch_mask(scores, 0.75, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(visible, (scores < 4).expand(3, -1))


def test_hard_patch_mask_rejects_a_bad_fraction():
    with pytest.raises(ValueError, match="hard_fraction"):
        masks.hard_patch_mask(torch.zeros(1, 4), 0.5, 1.5)


def test_easy_to_hard_schedule_rises_linearly_to_the_maximum():
    fractions = [hpm.easy_to_hard_fraction(s, 10) for s in range(10)]
    assert fractions[0] == pytest.approx(0.05) and fractions[-1] == pytest.approx(0.5)
    assert all(b > a for a, b in itertools.pairwise(fractions))


# ---- the relative loss -----------------------------------------------------------------------------------------

def reference_relative_loss(predicted, actual, removed):
    total, pairs = 0.0, 0
    for n in range(len(predicted)):
        idx = removed[n].nonzero().flatten().tolist()
        for j, k in itertools.product(idx, idx):
            if actual[n, k] == actual[n, j]:
                continue
            d = predicted[n, k] - predicted[n, j]
            total += -F.logsigmoid(d if actual[n, k] > actual[n, j] else -d)
            pairs += 1
    return total / pairs


def test_relative_loss_is_the_pairwise_bce_over_removed_patches():
    g = torch.Generator().manual_seed(0)
    predicted, actual = torch.randn(3, 9, generator=g), torch.rand(3, 9, generator=g)
    removed = ~masks.token_ratio_mask(3, 9, 0.6, g)
    assert torch.allclose(hpm.relative_loss(predicted, actual, removed),
                          reference_relative_loss(predicted, actual, removed), atol=1e-6)


def test_relative_loss_rewards_the_right_order_and_ignores_visible_patches():
    actual = torch.rand(2, 16, generator=torch.Generator().manual_seed(0))
    removed = torch.ones(2, 16, dtype=torch.bool)
    assert hpm.relative_loss(100 * actual, actual, removed) < 0.1 < 1.0 < hpm.relative_loss(-100 * actual, actual, removed)
    removed[:, :8] = False
    predicted = torch.randn(2, 16, requires_grad=True)
    hpm.relative_loss(predicted, actual, removed).backward()
    assert (predicted.grad[:, :8] == 0).all() and (predicted.grad[:, 8:] != 0).any()


def test_spearman_is_one_for_the_same_order_and_minus_one_reversed():
    a = torch.rand(4, 10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(metrics.spearman_rows(a, a.exp()), torch.ones(4))
    assert torch.allclose(metrics.spearman_rows(a, -a), -torch.ones(4))
    valid = torch.zeros(4, 10, dtype=torch.bool)
    valid[:, :5] = True
    b = torch.cat([a[:, :5], -a[:, 5:]], 1)  # agrees on the valid part only
    assert torch.allclose(metrics.spearman_rows(a, b, valid), torch.ones(4))
    valid[0, 7] = True
    with pytest.raises(ValueError, match="same number"):
        metrics.spearman_rows(a, b, valid)


# ---- the loss predictor on the MAE -------------------------------------------------------------------------------

def test_loss_predictor_leaves_the_plain_mae_unchanged():
    plain, with_lp = make(False), make(True)
    shared = plain.state_dict()
    assert all(torch.equal(v, with_lp.state_dict()[k]) for k, v in shared.items())
    assert set(with_lp.state_dict()) - set(shared) == {k for k in with_lp.state_dict() if k.startswith("loss_predictor.")}
    x, visible = images(), masks.token_ratio_mask(4, 16, 0.75, torch.Generator().manual_seed(0))
    assert torch.equal(plain(x, token_mask=visible)[1], with_lp(x, token_mask=visible)[1])
    with pytest.raises(ValueError, match="no loss predictor"):
        enc = plain.forward_encoder(x, token_mask=visible)
        plain.forward_loss_predictor(enc.latent, enc.ids_restore)


def test_predicted_and_actual_patch_losses_have_one_value_per_patch():
    model, x = make().eval(), images()
    visible = masks.token_ratio_mask(4, 16, 0.75, torch.Generator().manual_seed(0))
    both = hpm.patch_losses(model, x, visible)
    assert both.shape == (4, 2, 16)
    assert torch.allclose(hpm.removed_mean(both[:, 0], visible).mean(), model(x, token_mask=visible)[0])
    assert hpm.predicted_losses(model, x).shape == (4, 16)
    dense = hpm.dense_patch_loss(model, x, 0.75, 4, torch.Generator().manual_seed(0))
    assert dense.shape == (4, 16) and (dense >= 0).all()


def test_with_predictor_from_swaps_only_the_predictor():
    trained, init = make(), make()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    swapped = hpm.with_predictor_from(trained, init)
    for k, v in swapped.state_dict().items():
        source = init if k.startswith("loss_predictor.") else trained
        assert torch.equal(v, source.state_dict()[k])


def test_objective_follows_fits_schedule_and_trains_both_branches():
    model, x = make(), images(8)
    before = copy.deepcopy(model)
    objective = hpm.HPMObjective(ratio=0.75, generator=torch.Generator().manual_seed(0))
    history = train.fit(model, x, None, 4, batch_size=4, loss_fn=objective, device="cpu", progress=False)
    assert history.metrics["hard_fraction"] == pytest.approx([0.125, 0.25, 0.375, 0.5])
    assert all(v > 0 for v in history.metrics["predictor"]) and len(history.metrics["pretext"]) == 4
    for name in ("loss_predictor.head.weight", "patch_embed.proj.weight"):  # both branches were updated
        assert not torch.equal(model.state_dict()[name], before.state_dict()[name])


def test_guided_mask_removes_the_patches_the_predictor_ranks_hardest():
    model, x = make().eval(), images(6)
    objective = hpm.HPMObjective(ratio=0.75, max_fraction=1.0, generator=torch.Generator())
    objective.step, objective.total = 0, 1
    visible = objective.mask(model, x)
    hardest = hpm.predicted_losses(model, x).argsort(dim=1, descending=True)[:, :12]
    assert not visible.gather(1, hardest).any()
    random = hpm.HPMObjective(guided=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(random.mask(model, x), masks.token_ratio_mask(6, 16, 0.75, torch.Generator().manual_seed(0)))


def test_objective_on_a_plain_mae_is_the_mae_loss():
    model, x = make(False), images()
    out = hpm.HPMObjective(guided=False, generator=torch.Generator().manual_seed(0))(model, x)
    expected = model(x, token_mask=masks.token_ratio_mask(4, 16, 0.75, torch.Generator().manual_seed(0)))[0]
    assert torch.allclose(out["loss"], expected) and torch.equal(out["loss"], out["pretext"])
    assert out["predictor"] == 0.0 and out["hard_fraction"] == 0.0


def test_with_loss_predictor_carries_every_pretrained_weight_and_adds_a_fresh_predictor():
    plain = make(False).eval()
    for p in plain.parameters():
        p.requires_grad_(False)
    with_lp = hpm.with_loss_predictor(plain, seed=3)
    assert with_lp.loss_predictor is not None and with_lp.training
    assert all(p.requires_grad for p in with_lp.parameters())
    assert all(torch.equal(v, with_lp.state_dict()[k]) for k, v in plain.state_dict().items())
    again = hpm.with_loss_predictor(plain, seed=3)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in with_lp.state_dict().items())
    x, visible = images(), masks.token_ratio_mask(4, 16, 0.75, torch.Generator().manual_seed(0))
    assert torch.allclose(plain(x, token_mask=visible)[1], with_lp.eval()(x, token_mask=visible)[1])
