"""Claims: what a notebook measured, the direction the paper expects, an interval, and the verdict.

Every claim compares a baseline and a method on the same data, seed and steps, and has a **kind**:

- ``paper`` — the paper's own claim, as the paper states it, at this scale: the headline;
- ``premise`` — what the test stands on (the model learned; the effect the paper builds on exists here). A
  ``paper`` claim names the premises it depends on (``premises=[...]``); if one of them is not
  ``supported``, the claim is ``inconclusive`` with reason ``premise_failed`` — never ``not_supported``;
- ``sanity`` — true by construction (a valid 2:4 pattern, a cache that changes nothing). It belongs in
  ``tests/``; a notebook may show one, but it never counts as support.

Every judged claim has a 95 % bootstrap **interval** of ``method - baseline`` (``scipy.stats.bootstrap``,
percentile method, 2000 resamples, a fixed random state): *paired* when the per-item values pair
(``paired=(baseline_items, method_items)``, the same test items under both), *two-sample* otherwise
(``samples=(baseline_items, method_items)``), or given (``interval=(lo, hi)``) when a notebook computes
it another way. With ``gain = ±(method - baseline)`` (the sign makes the expected direction positive):

- ``supported`` — the whole interval of the gain lies above ``margin``;
- ``not_supported`` — the whole interval lies at or below ``margin`` (the method is confidently not
  better by more than the margin; a tie is not support);
- ``inconclusive`` — the interval straddles the margin (reason ``within_noise``), or a premise failed
  (reason ``premise_failed``; ``failed_premises`` names them);
- ``not_testable`` — this profile cannot test the claim (``testable=False``); ``full`` computes it.

Recording a claim never raises because it failed. ``ClaimTable.write(out_dir)`` writes ``claims.json``
(``schema_version`` 2). :func:`stability` summarises the same notebook run at several seeds.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 2
KINDS = ("paper", "premise", "sanity")
VERDICTS = ("supported", "not_supported", "inconclusive", "not_testable")
REASONS = ("premise_failed", "within_noise")
# One colour per verdict, for the notebook tables and the report.
VERDICT_COLOURS = {"supported": "#c8e6c9", "not_supported": "#ffcdd2", "inconclusive": "#fff3c4",
                   "not_testable": "#e0e0e0", "failed": "#f48fb1", "not run": "#ffffff"}
CONFIDENCE = 0.95
N_RESAMPLES = 2000


@dataclass
class Claim:
    name: str
    kind: str
    metric: str
    baseline: str
    baseline_value: float | None
    method: str
    method_value: float | None
    expected: str  # "higher" or "lower": the direction the paper expects method - baseline to go
    verdict: str
    margin: float = 0.0
    interval: list[float] | None = None  # 95 % bootstrap interval of method - baseline
    interval_kind: str = ""  # "paired", "two_sample" or "given"
    n_items: int = 0
    reason: str = ""  # for inconclusive: "premise_failed" or "within_noise"
    premises: list[str] = field(default_factory=list)
    failed_premises: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def difference(self) -> float | None:
        if self.baseline_value is None or self.method_value is None:
            return None
        return self.method_value - self.baseline_value


def fmt(v) -> str:
    """The one number format of tables and the report: 4 significant digits, an em dash for no value."""
    return "—" if v is None else f"{v:.4g}"


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _as_array(items) -> np.ndarray:
    if hasattr(items, "detach"):  # torch tensors
        items = items.detach().cpu().double().numpy()
    return np.asarray(items, dtype=float).ravel()


def bootstrap_interval(baseline_items, method_items, paired: bool) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of ``mean(method) - mean(baseline)`` (deterministic)."""
    from scipy import stats

    b, m = _as_array(baseline_items), _as_array(method_items)
    if paired and len(b) != len(m):
        raise ValueError(f"paired items must have the same length, got {len(b)} and {len(m)}")
    if min(len(b), len(m)) < 2:
        raise ValueError("a bootstrap interval needs at least two items per side")
    rng = np.random.default_rng(0)
    kw = dict(confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES, method="percentile", random_state=rng,
              vectorized=True)
    if paired:
        diff = m - b
        if np.all(diff == diff[0]):  # every resample has the same mean
            return float(diff[0]), float(diff[0])
        res = stats.bootstrap((diff,), np.mean, axis=-1, **kw)
    else:
        res = stats.bootstrap((m, b), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), axis=-1, **kw)
    ci = res.confidence_interval
    return float(ci.low), float(ci.high)


def verdict(difference_interval, expected: str, margin: float = 0.0, testable: bool = True,
            failed_premises=()) -> tuple[str, str]:
    """``(verdict, reason)`` of a claim whose ``method - baseline`` lies in ``difference_interval``."""
    if expected not in ("lower", "higher"):
        raise ValueError(f"expected must be 'lower' or 'higher', not {expected!r}")
    if not testable:
        return "not_testable", ""
    if failed_premises:
        return "inconclusive", "premise_failed"
    lo, hi = difference_interval
    if expected == "lower":
        lo, hi = -hi, -lo
    if lo > margin:
        return "supported", ""
    if hi <= margin:
        return "not_supported", ""
    return "inconclusive", "within_noise"


class ClaimTable:
    """The claims of one notebook run. Displays as a table in Jupyter (premises, paper claims, sanity)."""

    def __init__(self, paper: str, profile: str, seed: int):
        self.paper, self.profile, self.seed = paper, profile, seed
        self.claims: list[Claim] = []

    def get(self, name: str) -> Claim:
        for c in self.claims:
            if c.name == name:
                return c
        raise KeyError(f"no claim {name!r} recorded yet; recorded: {', '.join(c.name for c in self.claims)}")

    def add(self, name: str, metric: str, baseline: str, baseline_value, method: str, method_value,
            expected: str, *, kind: str = "paper", paired=None, samples=None, interval=None, margin: float = 0.0,
            premises=(), testable: bool = True, note: str = "") -> Claim:
        """Record a claim; its interval and verdict are computed here. Returns the claim.

        Give the per-item values behind ``baseline_value`` and ``method_value`` as ``paired=(b, m)`` (the
        same items under both) or ``samples=(b, m)`` (independent items), or a precomputed ``interval`` of
        ``method - baseline``. ``premises`` names premise claims recorded before this one.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if any(c.name == name for c in self.claims):
            raise ValueError(f"claim {name!r} is already recorded; claim names must be unique")
        if sum(x is not None for x in (paired, samples, interval)) > 1:
            raise ValueError(f"claim {name!r}: give one of paired=, samples= or interval=")
        baseline_value = None if baseline_value is None else float(baseline_value)  # tensors, numpy scalars
        method_value = None if method_value is None else float(method_value)
        failed = [p for p in premises if self.get(p).verdict != "supported"] if testable else []
        ci, ci_kind, n = None, "", 0
        if testable:
            if paired is not None:
                ci, ci_kind, n = bootstrap_interval(*paired, paired=True), "paired", len(_as_array(paired[0]))
            elif samples is not None:
                ci, ci_kind = bootstrap_interval(*samples, paired=False), "two_sample"
                n = min(len(_as_array(s)) for s in samples)
            elif interval is not None:
                ci, ci_kind = (float(interval[0]), float(interval[1])), "given"
            else:
                raise ValueError(f"claim {name!r} is judged, so it needs an interval: pass paired=(baseline_items, "
                                 "method_items), samples=(...) or interval=(lo, hi); or testable=False")
        if testable and not (_finite(baseline_value) and _finite(method_value) and all(map(_finite, ci))):
            failed = [*failed, "finite measurements"]
        v, reason = verdict(ci or (0.0, 0.0), expected, margin, testable, failed)
        r6 = lambda x: None if x is None else round(x, 6)
        claim = Claim(name, kind, metric, baseline, r6(baseline_value), method, r6(method_value), expected, v,
                      margin, None if ci is None else [r6(ci[0]), r6(ci[1])], ci_kind, n, reason, list(premises),
                      failed, note)
        self.claims.append(claim)
        return claim

    def premise(self, name: str, metric: str, items, reference: float, reference_name: str = "chance",
                expected: str = "higher", margin: float = 0.0, note: str = "") -> Claim:
        """A premise that a measured mean beats a fixed reference: "the model learned" = accuracy above chance.

        ``items`` are the per-item values (e.g. per-example correctness); the interval is paired with the
        constant reference.
        """
        m = _as_array(items)
        return self.add(name, metric, reference_name, reference, "measured", m.mean(), expected, kind="premise",
                        paired=(np.full_like(m, reference), m), margin=margin, note=note)

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "paper": self.paper, "profile": self.profile, "seed": self.seed,
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


def ordered(doc: dict) -> list[dict]:
    """The claims of a document in reading order: premises, then the paper's claims, then sanity checks."""
    return sorted(doc["claims"], key=lambda c: ("premise", "paper", "sanity").index(c.get("kind", "paper")))


def describe(c: dict) -> str:
    """``method - baseline`` with its interval, e.g. ``-0.31 [-0.38, -0.25]``."""
    if c.get("baseline_value") is None or c.get("method_value") is None:
        return "—"
    d = c["method_value"] - c["baseline_value"]
    ci = c.get("interval")
    return fmt(d) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


def verdict_text(c: dict) -> str:
    if c["verdict"] != "inconclusive" or not c.get("reason"):
        return c["verdict"]
    if c["reason"] == "premise_failed":
        return f"inconclusive (premise failed: {', '.join(c.get('failed_premises', []))})"
    return f"inconclusive ({c['reason'].replace('_', ' ')})"


_COLUMNS = ("kind", "claim", "baseline", "method", "method − baseline [95 % CI]", "expected", "verdict", "note")


def _rows(doc: dict):
    for c in ordered(doc):
        yield (c.get("kind", "paper"), c["name"], f"{c['baseline']} = {fmt(c['baseline_value'])}",
               f"{c['method']} = {fmt(c['method_value'])}", describe(c),
               f"{c['expected']}" + (f" by > {fmt(c['margin'])}" if c.get("margin") else ""), verdict_text(c),
               c.get("note", ""))


def format_markdown(doc: dict) -> str:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(str(x).replace("|", "/") for x in row) + " |" for row in _rows(doc)]
    return "\n".join(lines)


def format_html(doc: dict) -> str:
    head = "".join(f"<th style='text-align:left'>{c}</th>" for c in _COLUMNS)
    body = ""
    for c, row in zip(ordered(doc), _rows(doc)):
        style = "" if c.get("kind") == "paper" else "color:#555;"
        cells = "".join(f"<td style='text-align:left;{style}'>{html.escape(str(x))}</td>" for x in row[:-2])
        cells += (f"<td style='text-align:left;background:{VERDICT_COLOURS[c['verdict']]}'>"
                  f"{html.escape(row[-2])}</td><td style='text-align:left;{style}'>{html.escape(row[-1])}</td>")
        body += f"<tr>{cells}</tr>"
    title = f"<b>{html.escape(doc['paper'])}</b> — profile {doc['profile']}, seed {doc['seed']}"
    return f"<p>{title}</p><table>{'<tr>' + head + '</tr>'}{body}</table>"


def stability(docs: list[dict]) -> dict:
    """Per claim, the verdict at each seed and their agreement: the ``stability.json`` of a seed sweep.

    ``docs`` are the ``claims.json`` documents of one notebook at several seeds (same profile).
    ``agreement`` is the share of seeds that reached the most common verdict; ``unanimous`` says all did.
    """
    if not docs:
        raise ValueError("stability needs the claims of at least one run")
    seeds = [d["seed"] for d in docs]
    names: list[str] = []
    for d in docs:
        names += [c["name"] for c in d["claims"] if c["name"] not in names]
    rows = []
    for name in names:
        per = {str(d["seed"]): next((c for c in d["claims"] if c["name"] == name), None) for d in docs}
        verdicts = {s: (c["verdict"] if c else "missing") for s, c in per.items()}
        majority, count = Counter(verdicts.values()).most_common(1)[0]
        kind = next(c.get("kind", "paper") for c in per.values() if c)
        rows.append({"name": name, "kind": kind, "verdicts": verdicts, "majority": majority,
                     "agreement": round(count / len(docs), 4), "unanimous": count == len(docs),
                     "differences": {s: (None if c is None or c["baseline_value"] is None or c["method_value"] is None
                                         else round(c["method_value"] - c["baseline_value"], 6))
                                     for s, c in per.items()}})
    return {"schema_version": SCHEMA_VERSION, "paper": docs[0]["paper"], "profile": docs[0]["profile"],
            "seeds": seeds, "claims": rows}
