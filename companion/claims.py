"""Claims: what a notebook measured, the direction the paper expects, and the verdict.

Each claim compares a baseline and a method on the same data, seed and steps. Verdicts:

- ``supported`` — the method is better than the baseline in the expected direction by more than the
  claim's ``margin`` (with paired per-item values: the 95 % bootstrap interval of the mean difference lies
  above the margin);
- ``not_supported`` — it is not better (the difference is at most zero, or the whole interval lies below
  the margin);
- ``inconclusive`` — the difference is positive but within the margin or the interval straddles it, or a
  precondition failed (``valid=False``, e.g. the baseline never learned the task);
- ``not_testable`` — this profile cannot test the claim (``testable=False``); ``full`` computes it.

Recording a claim never raises because it failed. ``ClaimTable.write(out_dir)`` writes ``claims.json``.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

VERDICTS = ("supported", "not_supported", "inconclusive", "not_testable")


@dataclass
class Claim:
    name: str
    metric: str
    baseline: str
    baseline_value: float | None
    method: str
    method_value: float | None
    expected: str
    verdict: str
    note: str = ""


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def verdict(baseline_value, method_value, expected: str, margin: float = 0.0, paired=None,
            testable: bool = True, valid: bool = True) -> str:
    """The verdict for one claim (see the module docstring). ``paired`` = (baseline_items, method_items)."""
    if expected not in ("lower", "higher"):
        raise ValueError(f"expected must be 'lower' or 'higher', not {expected!r}")
    if not testable:
        return "not_testable"
    if not valid or not (_finite(baseline_value) and _finite(method_value)):
        return "inconclusive"
    sign = 1.0 if expected == "higher" else -1.0
    if paired is not None:
        b, m = (np.asarray(a, dtype=float) for a in paired)
        gain = sign * (m - b)
        rng = np.random.default_rng(0)
        means = gain[rng.integers(0, len(gain), size=(2000, len(gain)))].mean(axis=1)
        lo, hi = np.quantile(means, [0.025, 0.975])
        if lo > margin:
            return "supported"
        if hi < margin or gain.mean() <= 0:
            return "not_supported"
        return "inconclusive"
    gain = sign * (method_value - baseline_value)
    if gain > margin:
        return "supported"
    return "not_supported" if gain <= 0 else "inconclusive"


class ClaimTable:
    """The claims of one notebook run. Displays as a table in Jupyter."""

    def __init__(self, paper: str, profile: str, seed: int):
        self.paper, self.profile, self.seed = paper, profile, seed
        self.claims: list[Claim] = []

    def add(self, name: str, metric: str, baseline: str, baseline_value, method: str, method_value,
            expected: str, note: str = "", margin: float = 0.0, paired=None, testable: bool = True,
            valid: bool = True) -> Claim:
        """Record a claim; its verdict is computed from the values. Returns the claim."""
        baseline_value = None if baseline_value is None else float(baseline_value)  # tensors, numpy scalars
        method_value = None if method_value is None else float(method_value)
        if any(c.name == name for c in self.claims):
            raise ValueError(f"claim {name!r} is already recorded; claim names must be unique")
        v = verdict(baseline_value, method_value, expected, margin, paired, testable, valid)
        rounded = lambda x: None if x is None else round(x, 6)
        claim = Claim(name, metric, baseline, rounded(baseline_value), method, rounded(method_value), expected, v, note)
        self.claims.append(claim)
        return claim

    def to_dict(self) -> dict:
        return {"paper": self.paper, "profile": self.profile, "seed": self.seed,
                "claims": [asdict(c) for c in self.claims]}

    def write(self, out_dir) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "claims.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def to_markdown(self) -> str:
        return format_markdown(self.to_dict())

    def _repr_html_(self) -> str:
        return format_html(self.to_dict())


def load(path) -> dict:
    """Read a ``claims.json`` (a file or the directory holding it)."""
    path = Path(path)
    return json.loads((path / "claims.json" if path.is_dir() else path).read_text())


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.4g}"


_COLUMNS = ("claim", "metric", "baseline", "method", "expected", "verdict", "note")


def _rows(doc: dict):
    for c in doc["claims"]:
        yield (c["name"], c["metric"], f"{c['baseline']} = {_fmt(c['baseline_value'])}",
               f"{c['method']} = {_fmt(c['method_value'])}", c["expected"], c["verdict"], c["note"])


def format_markdown(doc: dict) -> str:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(str(x).replace("|", "/") for x in row) + " |" for row in _rows(doc)]
    return "\n".join(lines)


_COLOURS = {"supported": "#d4edda", "not_supported": "#f8d7da", "inconclusive": "#fff3cd", "not_testable": "#e2e3e5"}


def format_html(doc: dict) -> str:
    head = "".join(f"<th style='text-align:left'>{c}</th>" for c in _COLUMNS)
    body = ""
    for row in _rows(doc):
        cells = "".join(f"<td style='text-align:left'>{html.escape(str(x))}</td>" for x in row)
        body += f"<tr style='background:{_COLOURS[row[5]]}'>{cells}</tr>"
    title = f"<b>{html.escape(doc['paper'])}</b> — profile {doc['profile']}, seed {doc['seed']}"
    return f"<p>{title}</p><table>{'<tr>' + head + '</tr>'}{body}</table>"
