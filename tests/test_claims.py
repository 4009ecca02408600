import json
import warnings

import numpy as np
import pytest

from companion import claims


def test_whole_interval_above_the_margin_is_supported():
    assert claims.verdict((0.1, 0.3), "higher") == ("supported", "")
    assert claims.verdict((-0.3, -0.1), "lower") == ("supported", "")


def test_a_tie_or_a_loss_is_not_supported():
    assert claims.verdict((0.0, 0.0), "higher") == ("not_supported", "")
    assert claims.verdict((0.1, 0.3), "lower") == ("not_supported", "")
    assert claims.verdict((0.01, 0.03), "higher", margin=0.05) == ("not_supported", "")


def test_an_interval_across_the_margin_is_inconclusive_within_noise():
    assert claims.verdict((-0.1, 0.2), "higher") == ("inconclusive", "within_noise")


def test_untestable_and_failed_premises():
    assert claims.verdict((0.1, 0.2), "higher", testable=False) == ("not_testable", "")
    assert claims.verdict((0.1, 0.2), "higher", failed_premises=["learned"]) == ("inconclusive", "premise_failed")


def test_bad_direction_and_kind_are_rejected():
    with pytest.raises(ValueError, match="expected"):
        claims.verdict((0, 1), "bigger")
    with pytest.raises(ValueError, match="kind"):
        claims.ClaimTable("p", "ci", 0).add("a", "m", "b", 1, "x", 2, "higher", kind="headline", interval=(0, 1))


def test_paired_bootstrap_interval_is_deterministic_and_covers_the_mean():
    rng = np.random.default_rng(1)
    b, m = rng.normal(0, 1, 200), rng.normal(0.5, 1, 200)
    lo, hi = claims.bootstrap_interval(b, m, paired=True)
    assert lo < (m - b).mean() < hi and (lo, hi) == claims.bootstrap_interval(b, m, paired=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # constant differences: no degenerate-data warning
        assert claims.bootstrap_interval([1.0] * 30, [0.0] * 30, paired=True) == (-1.0, -1.0)


def test_two_sample_interval_for_unpaired_items():
    lo, hi = claims.bootstrap_interval([0.0, 0.1, 0.2, 0.1] * 10, [1.0, 0.9, 1.1] * 10, paired=False)
    assert 0.8 < lo < hi < 1.0


def test_a_noisy_gain_driven_by_one_item_is_inconclusive():
    t = claims.ClaimTable("p", "ci", 0)
    noisy = [1.0] * 29 + [-5.0]
    c = t.add("noisy", "loss", "base", 1.0, "method", float(np.mean(noisy)), "lower", paired=([1.0] * 30, noisy))
    assert (c.verdict, c.reason) == ("inconclusive", "within_noise")


def test_a_judged_claim_without_items_or_interval_is_an_error():
    with pytest.raises(ValueError, match="needs an interval"):
        claims.ClaimTable("p", "ci", 0).add("a", "m", "b", 1, "x", 2, "higher")


def test_a_failed_premise_makes_the_paper_claim_inconclusive_never_not_supported():
    t = claims.ClaimTable("p", "ci", 0)
    p = t.premise("model learned", "accuracy", [0, 1, 0, 0, 1, 0] * 5, reference=0.5)
    assert p.kind == "premise" and p.verdict == "not_supported"
    c = t.add("headline", "acc", "base", 0.9, "method", 0.1, "higher", paired=([1] * 10, [0] * 10),
              premises=["model learned"])
    assert (c.verdict, c.reason, c.failed_premises) == ("inconclusive", "premise_failed", ["model learned"])
    with pytest.raises(KeyError, match="no claim"):
        t.add("other", "acc", "b", 0, "m", 1, "higher", interval=(0.5, 1), premises=["not recorded"])


def test_non_finite_values_are_inconclusive():
    c = claims.ClaimTable("p", "ci", 0).add("nan", "m", "b", float("nan"), "x", 1.0, "higher", interval=(0.1, 0.2))
    assert c.verdict == "inconclusive" and c.failed_premises == ["finite measurements"]


def test_table_writes_schema_v2(tmp_path):
    t = claims.ClaimTable("layer_masking", "ci", 3)
    t.add("leak", "accuracy", "grey", 0.7, "layer", 0.25, "lower", paired=([1, 1, 0, 1] * 5, [0, 1, 0, 0] * 5), note="n")
    t.add("span", "distance", "mae", 1.0, "lut", 2.0, "higher", testable=False)
    t.add("valid 2:4", "share", "none", 0.0, "learned", 1.0, "higher", kind="sanity", interval=(1, 1))
    doc = json.loads(t.write(tmp_path).read_text())
    assert doc["schema_version"] == 2 and doc["paper"] == "layer_masking" and doc["seed"] == 3
    assert [c["verdict"] for c in doc["claims"]] == ["supported", "not_testable", "supported"]
    first = doc["claims"][0]
    assert first["kind"] == "paper" and first["interval_kind"] == "paired" and first["n_items"] == 20
    assert first["interval"][0] <= -0.45 + 1e-9 <= first["interval"][1]
    assert doc["claims"][1]["interval"] is None
    assert claims.load(tmp_path) == doc
    assert "supported" in t._repr_html_() and "| leak |" in t.to_markdown()


def test_tensor_values_are_accepted_and_names_are_unique():
    import torch

    t = claims.ClaimTable("p", "ci", 0)
    c = t.add("a", "m", "b", torch.tensor(0.5), "x", torch.tensor(0.1), "lower",
              paired=(torch.ones(10) * 0.5, torch.ones(10) * 0.1))
    assert c.verdict == "supported" and c.baseline_value == 0.5
    with pytest.raises(ValueError, match="unique"):
        t.add("a", "m", "b", 0.5, "x", 0.1, "lower", interval=(-0.4, -0.4))


def test_stability_counts_agreement_across_seeds():
    def doc(seed, v):
        return {"paper": "p", "profile": "ci", "seed": seed, "claims": [
            {"name": "a", "kind": "paper", "verdict": v, "baseline_value": 0.0, "method_value": 1.0}]}

    s = claims.stability([doc(0, "supported"), doc(1, "supported"), doc(2, "inconclusive")])
    row = s["claims"][0]
    assert s["seeds"] == [0, 1, 2] and row["majority"] == "supported" and row["agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert row["verdicts"] == {"0": "supported", "1": "supported", "2": "inconclusive"} and not row["unanimous"]
