"""Spec for companion.masking.explain: LIME over segments and the metrics that judge it.

The world of these tests: a 12x12 image cut into a 3x3 grid of 4x4 segments (ids row-major, 0..8).
A hand-made model looks only at segment 5 (row 1, column 2): the logit of class 0 is
``8 * (mean intensity inside segment 5 - 0.5)``, class 1 has logit 0. The image is bright (1.0) in
segment 5, so the model predicts class 0 with p = sigmoid(4); hiding segment 5 with black drops it
to sigmoid(-4), with grey to exactly 0.5. Nothing else matters to the model. Masking is a fill-based
stand-in for ``companion.masking.apply``, passed as ``apply_fn``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from companion.masking import explain

H = W = 12
CELL = 4
INFORMATIVE = 5  # row 1, col 2: its transpose (row 2, col 1) would be segment 7
S = 9


def grid_segments() -> torch.Tensor:
    """(H, W) long, 3x3 grid of 4x4 cells, ids row-major."""
    rows = torch.arange(H) // CELL
    cols = torch.arange(W) // CELL
    return rows[:, None] * 3 + cols[None, :]


def segment_region(seg_id: int) -> torch.Tensor:
    """(H, W) bool, the pixels of one grid cell."""
    return grid_segments() == seg_id


class OneRegionModel(nn.Module):
    """logits (N, 2) = [8 * (mean of channel-average inside segment 5 - 0.5), 0]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("region", segment_region(INFORMATIVE).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = (x.mean(1) * self.region).sum((-2, -1)) / self.region.sum()
        return torch.stack([8.0 * (inside - 0.5), torch.zeros_like(inside)], dim=1)


FILLS = {"black": 0.0, "grey": 0.5}


def fill_apply(model, x, mask, strategy):
    """Stand-in for companion.masking.apply: removed pixels (mask False) get a constant fill."""
    return model(torch.where(mask, x, torch.full_like(x, FILLS[strategy])))


P_FULL = 1 / (1 + math.exp(-4.0))  # p(class 0) on the unmasked image
P_BLACK = 1 / (1 + math.exp(4.0))  # ... with segment 5 blacked out


@pytest.fixture
def image() -> torch.Tensor:
    """(1, 3, H, W): background noise in [0.2, 0.8], segment 5 at 1.0."""
    g = torch.Generator().manual_seed(0)
    x = 0.2 + 0.6 * torch.rand(1, 3, H, W, generator=g)
    x[:, :, segment_region(INFORMATIVE)] = 1.0
    return x


@pytest.fixture
def model() -> OneRegionModel:
    return OneRegionModel().eval()


def lime(model, image, strategy="black", **kw):
    kw = {"n_samples": 120, "batch_size": 40, "apply_fn": fill_apply, **kw}
    return explain.lime_segments(model, image, grid_segments(), strategy, **kw)


def one_hot(seg_id: int, value: float = 1.0) -> torch.Tensor:
    attr = torch.zeros(S)
    attr[seg_id] = value
    return attr


# ---------------------------------------------------------------------------- building blocks


def test_segments_to_mask_keeps_exactly_the_kept_segments():
    keep = torch.zeros(2, S)
    keep[0, INFORMATIVE] = 1
    keep[1, [0, 8]] = 1
    mask = explain.segments_to_mask(keep, grid_segments())
    assert mask.shape == (2, 1, H, W) and mask.dtype == torch.bool
    assert torch.equal(mask[0, 0], segment_region(INFORMATIVE))
    assert torch.equal(mask[1, 0], segment_region(0) | segment_region(8))


# ---------------------------------------------------------------------------- LIME


@pytest.mark.parametrize("strategy", ["black", "grey"])
def test_lime_ranks_the_informative_segment_first(model, image, strategy):
    attr = lime(model, image, strategy)
    assert attr.shape == (S,)
    assert int(attr.argmax()) == INFORMATIVE
    others = torch.cat([attr[:INFORMATIVE], attr[INFORMATIVE + 1 :]])
    assert attr[INFORMATIVE] > 10 * others.abs().max()


def test_lime_segments_is_captums_lime_over_the_keep_vector(model, image):
    """Same samples, kernel and surrogate as captum.attr.Lime on inputs ones(1, S), baselines 0."""
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime

    forward = explain.segment_forward(model, grid_segments(), "black", 0, fill_apply)
    torch.manual_seed(3)
    expected = Lime(forward, interpretable_model=SkLearnRidge(alpha=1.0)).attribute(
        torch.ones(1, S),
        baselines=0.0,
        additional_forward_args=(image,),
        n_samples=80,
        perturbations_per_eval=20,
        return_input_shape=False,
    )
    ours = lime(model, image, n_samples=80, batch_size=20, seed=3, target=0)
    assert torch.allclose(ours, expected.reshape(S), atol=1e-6)


def test_lime_kernel_width_is_captums_exponential_kernel_width(model, image):
    """kernel_width=0.25 (the lime package's image default, used by the paper's code) = captum's cosine
    exponential kernel of width 0.25, and it changes the attribution."""
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    forward = explain.segment_forward(model, grid_segments(), "black", 0, fill_apply)
    torch.manual_seed(3)
    expected = Lime(forward, interpretable_model=SkLearnRidge(alpha=1.0),
                    similarity_func=get_exp_kernel_similarity_function("cosine", kernel_width=0.25)).attribute(
        torch.ones(1, S), baselines=0.0, additional_forward_args=(image,), n_samples=80, perturbations_per_eval=20,
        return_input_shape=False)
    ours = lime(model, image, n_samples=80, batch_size=20, seed=3, target=0, kernel_width=0.25)
    assert torch.allclose(ours, expected.reshape(S), atol=1e-6)
    assert not torch.allclose(ours, lime(model, image, n_samples=80, batch_size=20, seed=3, target=0), atol=1e-4)


def test_lime_explains_the_unmasked_prediction_by_default(model, image):
    # class 0 is predicted; explaining class 1 instead flips the sign of the informative segment
    default, class1 = lime(model, image), lime(model, image, target=1)
    assert default[INFORMATIVE] > 0
    assert class1[INFORMATIVE] < 0
    assert torch.allclose(default, lime(model, image, target=0))


def test_lime_calls_apply_fn_with_boolean_pixel_masks_in_batches(model, image):
    calls = []

    def recording_apply(m, x, mask, strategy):
        calls.append((x.shape, mask.shape, mask.dtype, strategy, mask.clone()))
        return fill_apply(m, x, mask, strategy)

    explain.lime_segments(
        model, image, grid_segments(), "grey", n_samples=100, batch_size=40, apply_fn=recording_apply
    )
    assert [c[1][0] for c in calls] == [40, 40, 20]  # n_samples in batches of batch_size
    for x_shape, mask_shape, dtype, strategy, mask in calls:
        assert x_shape == (mask_shape[0], 3, H, W)
        assert mask_shape[1:] == (1, H, W) and dtype == torch.bool
        assert strategy == "grey"
        # every mask is a union of whole segments
        for seg_id in range(S):
            cell = mask[:, 0, segment_region(seg_id)]
            assert torch.equal(cell.all(1), cell.any(1))


def test_lime_is_deterministic_per_seed_and_leaves_global_rng_alone(model, image):
    torch.manual_seed(123)
    expected_next = torch.rand(3)

    torch.manual_seed(123)
    a = lime(model, image, seed=7)
    assert torch.equal(torch.rand(3), expected_next)

    assert torch.equal(a, lime(model, image, seed=7))
    assert not torch.allclose(a, lime(model, image, seed=8))


def test_lime_uses_companion_masking_apply_by_default(model, image, monkeypatch):
    import sys
    import types

    seen = []

    def fake_apply(m, x, mask, strategy):
        seen.append(strategy)
        return fill_apply(m, x, mask, "black")

    masking = sys.modules.get("companion.masking") or types.ModuleType("companion.masking")
    monkeypatch.setitem(sys.modules, "companion.masking", masking)
    monkeypatch.setattr(masking, "apply", fake_apply, raising=False)
    import companion

    monkeypatch.setattr(companion, "masking", masking, raising=False)

    attr = explain.lime_segments(model, image, grid_segments(), "layer", n_samples=40)
    assert set(seen) == {"layer"}
    assert int(attr.argmax()) == INFORMATIVE


def test_lime_rejects_a_batch_of_images(model, image):
    with pytest.raises(ValueError, match="one image"):
        lime(model, image.repeat(2, 1, 1, 1))


# ---------------------------------------------------------------------------- plausibility metrics


def test_pointing_game_hits_for_the_object_segment_and_misses_when_permuted():
    gt = segment_region(INFORMATIVE)
    attr = torch.linspace(0.1, 0.9, S)
    attr[INFORMATIVE] = 2.0
    assert explain.pointing_game(attr, grid_segments(), gt) is True
    permuted = attr.roll(1)  # the top score now sits on segment 6
    assert explain.pointing_game(permuted, grid_segments(), gt) is False


def test_pointing_game_needs_the_top_segment_to_be_mostly_object():
    # object = half of segment 5: 50 % is not "mostly"; 9/16 is
    half = segment_region(INFORMATIVE) & (torch.arange(W) < 2 * CELL + 2)[None, :]
    assert explain.pointing_game(one_hot(INFORMATIVE), grid_segments(), half) is False
    more = half.clone()
    more[CELL, 2 * CELL + 2] = True
    assert explain.pointing_game(one_hot(INFORMATIVE), grid_segments(), more) is True


def test_topk_iou_is_one_for_a_perfect_attribution():
    gt = segment_region(INFORMATIVE) | segment_region(0)
    attr = torch.zeros(S)
    attr[INFORMATIVE], attr[0] = 2.0, 1.0
    assert explain.topk_segment_iou(attr, grid_segments(), gt) == pytest.approx(1.0)
    # the default k is 2 here: a ranking with one object segment in its top 2 gets 1/3
    wrong = torch.zeros(S)
    wrong[INFORMATIVE], wrong[4] = 2.0, 1.0
    assert explain.topk_segment_iou(wrong, grid_segments(), gt) == pytest.approx(16 / 48)


def test_topk_iou_counts_pixels_of_partly_covered_segments():
    gt = segment_region(INFORMATIVE).clone()
    gt[0, :4] = True  # 4 pixels of segment 0: not "mostly object", so k stays 1
    assert explain.topk_segment_iou(one_hot(INFORMATIVE), grid_segments(), gt) == pytest.approx(16 / 20)
    assert explain.topk_segment_iou(one_hot(INFORMATIVE), grid_segments(), gt, k=2) == pytest.approx(20 / 32)


def test_coverage_is_the_cosine_with_the_ground_truth_segment_importance():
    gt = segment_region(INFORMATIVE)
    # ground truth: segment 5 holds all 16 object pixels; every segment also loses 16 * (16 / 144) pixels' worth
    g = -torch.full((S,), 16 * 16 / 144)
    g[INFORMATIVE] += 16
    assert explain.coverage(g, grid_segments(), gt) == pytest.approx(1.0)
    assert explain.coverage(2.5 * g, grid_segments(), gt) == pytest.approx(1.0)  # scale-free
    assert explain.coverage(-g, grid_segments(), gt) == pytest.approx(-1.0)
    assert explain.coverage(one_hot(INFORMATIVE), grid_segments(), gt) == pytest.approx(
        float(g[INFORMATIVE] / g.norm()))
    assert explain.coverage(one_hot(INFORMATIVE), grid_segments(), gt) > explain.coverage(
        one_hot(0), grid_segments(), gt)


# ---------------------------------------------------------------------------- faithfulness metrics


def test_deletion_curve_drops_when_the_informative_segment_is_removed(model, image):
    ranking = torch.arange(S, 0, -1).float()  # segment 0 first ... segment 8 last
    curve = explain.deletion_curve(model, image, ranking, grid_segments(), "black", 0, apply_fn=fill_apply)
    assert curve.shape == (S + 1,)
    removed_at = INFORMATIVE + 1  # ranked 6th: gone from curve point 6 on
    assert torch.allclose(curve[:removed_at], torch.tensor(P_FULL))
    assert torch.allclose(curve[removed_at:], torch.tensor(P_BLACK))


def test_deletion_score_is_lower_for_the_correct_ranking(model, image):
    def score(attr):
        return explain.deletion_score(model, image, attr, grid_segments(), "black", 0, apply_fn=fill_apply)

    correct = torch.linspace(0, 1, S)
    correct[INFORMATIVE] = 5.0
    reversed_ = -correct
    assert score(correct) < score(reversed_)
    # exact area: P_FULL at 0, P_BLACK from the first removal on, trapezoid with dx = 1/S
    expected = ((P_FULL + P_BLACK) / 2 + (S - 1) * P_BLACK) / S
    assert score(correct) == pytest.approx(expected, rel=1e-5)


def test_deletion_steps_remove_several_segments_per_step(model, image):
    curve = explain.deletion_curve(
        model, image, one_hot(INFORMATIVE), grid_segments(), "black", 0, steps=3, apply_fn=fill_apply
    )
    assert curve.shape == (4,)
    assert curve[0] == pytest.approx(P_FULL) and curve[1:].allclose(torch.tensor(P_BLACK))


def test_infidelity_is_zero_for_the_exact_effect_and_positive_otherwise(model, image):
    def score(attr, seed=0):
        return explain.infidelity_score(
            model,
            image,
            attr,
            grid_segments(),
            "grey",
            0,
            n_perturb_samples=30,
            seed=seed,
            apply_fn=fill_apply,
        )

    exact = one_hot(INFORMATIVE, P_FULL - 0.5)  # removing segment 5 with grey costs P_FULL - 0.5
    wrong = one_hot(0, P_FULL - 0.5)
    assert score(exact) == pytest.approx(0.0, abs=1e-10)
    assert score(wrong) > 0.05
    assert score(wrong, seed=3) == score(wrong, seed=3)
    assert score(wrong, seed=3) != score(wrong, seed=4)


# ---------------------------------------------------------------------------- evaluate_lime


def test_evaluate_lime_reports_every_metric_per_strategy(model, image):
    other = image.clone()
    background = ~segment_region(INFORMATIVE)
    other[:, :, background] = torch.rand(
        1, 3, int(background.sum()), generator=torch.Generator().manual_seed(1)
    )
    images = torch.cat([image, other])  # same object, different backgrounds
    segs = [grid_segments()] * 2
    gts = [segment_region(INFORMATIVE)] * 2
    result = explain.evaluate_lime(
        model,
        images,
        segs,
        gts,
        ["black", "grey"],
        n_samples=60,
        seed=0,
        apply_fn=fill_apply,
        progress=False,
    )
    assert set(result) == {"black", "grey"}
    for metrics in result.values():
        assert set(metrics) == set(explain.METRICS)
        assert metrics["pointing_game"] == 1.0
        assert metrics["topk_iou"] == pytest.approx(1.0)
        assert metrics["infidelity"] >= 0
    # the model only sees segment 5, so deletion with the right ranking is ~ one step of P_FULL
    assert result["black"]["deletion"] == pytest.approx(((P_FULL + P_BLACK) / 2 + 8 * P_BLACK) / 9, rel=1e-4)
    assert result["grey"]["deletion"] == pytest.approx(((P_FULL + 0.5) / 2 + 8 * 0.5) / 9, rel=1e-4)
    per = explain.evaluate_lime(model, images, segs, gts, ["black", "grey"], n_samples=60, seed=0,
                                apply_fn=fill_apply, progress=False, per_image=True)
    assert len(per["grey"]["topk_iou"]) == 2
    assert sum(per["black"]["deletion"]) / 2 == pytest.approx(result["black"]["deletion"])


def test_evaluate_lime_computes_only_the_metrics_asked_for(model, image, monkeypatch):
    def no_faithfulness(*args, **kwargs):
        raise AssertionError("deletion and infidelity were not asked for")

    monkeypatch.setattr(explain, "deletion_score", no_faithfulness)
    monkeypatch.setattr(explain, "infidelity_score", no_faithfulness)
    per = explain.evaluate_lime(model, image, [grid_segments()], [segment_region(INFORMATIVE)], ["black", "grey"],
                                n_samples=60, apply_fn=fill_apply, progress=False, per_image=True,
                                metrics=["coverage", "topk_iou"])
    assert set(per["grey"]) == {"coverage", "topk_iou"} and per["black"]["coverage"][0] > 0.5
    with pytest.raises(ValueError, match="unknown metrics"):
        explain.evaluate_lime(model, image, [grid_segments()], [segment_region(INFORMATIVE)], ["black"],
                              metrics=["auc"], progress=False)


def test_evaluate_lime_can_score_every_strategy_with_one_evaluation_strategy(model, image):
    result = explain.evaluate_lime(
        model,
        image,
        [grid_segments()],
        [segment_region(INFORMATIVE)],
        ["black", "grey"],
        n_samples=60,
        apply_fn=fill_apply,
        eval_strategy="black",
        progress=False,
    )
    assert result["grey"]["deletion"] == pytest.approx(result["black"]["deletion"], rel=1e-6)


@pytest.mark.parametrize("strategy", ["black", "grey", "mean"])
def test_lime_with_the_real_masking_module(model, image, strategy):
    pytest.importorskip("companion.masking")
    attr = explain.lime_segments(model, image, grid_segments(), strategy, n_samples=60)
    assert int(attr.argmax()) == INFORMATIVE


# ---------------------------------------------------------------------------- unchanged_predictions


def test_unchanged_predictions_follow_the_removal_order(model, image):
    """The prediction flips under black exactly when segment 5 is among the removed cells; grey ties at logit 0
    (argmax keeps class 0), so it never flips; removal is nested across fractions."""
    images = image.expand(6, -1, -1, -1).clone()
    fractions = [0.0, 0.2, 0.5, 0.8, 1.0]
    out = explain.unchanged_predictions(model, images, CELL, fractions, ["black", "grey"],
                                        generator=torch.Generator().manual_seed(3), apply_fn=fill_apply)
    assert out["black"].shape == out["grey"].shape == (6, 5)
    assert torch.equal(out["grey"], torch.ones(6, 5))
    assert torch.equal(out["black"][:, 0], torch.ones(6)) and torch.equal(out["black"][:, -1], torch.zeros(6))
    assert (out["black"].diff(dim=1) <= 0).all()  # once removed, segment 5 stays removed
    order = torch.rand(6, S, generator=torch.Generator().manual_seed(3)).argsort(1)
    position = (order == INFORMATIVE).float().argmax(1)  # where segment 5 comes in each image's order
    expected = torch.stack([(position >= int(d * S)).float() for d in fractions], 1)
    assert torch.equal(out["black"], expected)
