import json

import pytest

from companion import claims


def test_better_in_expected_direction_is_supported():
    assert claims.verdict(0.30, 0.05, "lower") == "supported"
    assert claims.verdict(0.30, 0.60, "higher") == "supported"


def test_worse_or_equal_is_not_supported():
    assert claims.verdict(0.05, 0.30, "lower") == "not_supported"
    assert claims.verdict(0.30, 0.30, "lower") == "not_supported"


def test_gain_within_margin_is_inconclusive():
    assert claims.verdict(0.30, 0.28, "lower", margin=0.05) == "inconclusive"


def test_untestable_and_invalid_claims():
    assert claims.verdict(0.3, 0.1, "lower", testable=False) == "not_testable"
    assert claims.verdict(0.3, 0.1, "lower", valid=False) == "inconclusive"
    assert claims.verdict(None, 0.1, "lower") == "inconclusive"
    assert claims.verdict(float("nan"), 0.1, "lower") == "inconclusive"


def test_paired_values_use_a_bootstrap_interval():
    base = [1.0] * 30
    better = [0.0] * 30
    assert claims.verdict(1.0, 0.0, "lower", paired=(base, better)) == "supported"
    # the mean favours the method but a single item drives it: the interval straddles zero
    noisy = [1.0] * 29 + [-5.0]
    assert claims.verdict(1.0, sum(noisy) / 30, "lower", paired=(base, noisy)) == "inconclusive"
    assert claims.verdict(0.0, 1.0, "lower", paired=(better, base)) == "not_supported"


def test_bad_direction_is_rejected():
    with pytest.raises(ValueError, match="expected"):
        claims.verdict(1, 2, "bigger")


def test_table_writes_the_schema(tmp_path):
    t = claims.ClaimTable("layer_masking", "ci", 3)
    t.add("leak", "accuracy", "grey", 0.7, "layer", 0.25, "lower", note="n")
    t.add("span", "distance", "mae", 1.0, "lut", 2.0, "higher", testable=False)
    doc = json.loads(t.write(tmp_path).read_text())
    assert doc["paper"] == "layer_masking" and doc["profile"] == "ci" and doc["seed"] == 3
    assert [c["verdict"] for c in doc["claims"]] == ["supported", "not_testable"]
    assert set(doc["claims"][0]) == {"name", "metric", "baseline", "baseline_value", "method", "method_value",
                                     "expected", "verdict", "note"}
    assert claims.load(tmp_path) == doc
    assert "supported" in t._repr_html_() and "| leak |" in t.to_markdown()


def test_tensor_values_are_accepted_and_names_are_unique():
    import torch

    t = claims.ClaimTable("p", "ci", 0)
    c = t.add("a", "m", "b", torch.tensor(0.5), "x", torch.tensor(0.1), "lower")
    assert c.verdict == "supported" and c.baseline_value == 0.5
    with pytest.raises(ValueError, match="unique"):
        t.add("a", "m", "b", 0.5, "x", 0.1, "lower")
