"""The static HTML report: ``index.html`` (one row per paper, then one section per paper) and each executed
notebook as HTML.

:func:`build_report` reads the runs under ``runs/`` as ``companion run``/``run-all`` write them:

- a plain run: ``<runs>/<slug>/`` holds ``claims.json``, ``<slug>.ipynb`` and the PNGs;
- a seed sweep (``--seeds 0,1,2``): ``<runs>/<slug>/seed-<N>/`` holds each seed's run and
  ``<runs>/<slug>/stability.json`` is :func:`companion.claims.stability` of their claims plus
  ``"runs": {"<seed>": "seed-<N>", ...}``. The report shows the first seed's run and, per claim, how many
  seeds agree. When a folder holds both, the newer of ``claims.json`` and ``stability.json`` wins.

A run *failed* when its notebook raised (papermill's ``exception`` metadata) or it wrote no ``claims.json``.
Each executed notebook is rendered to ``<slug>.html`` beside it, without the ``injected-parameters`` cell.
The page comes from the jinja2 templates in ``companion/templates/report/``: static HTML, inline CSS, relative
links, no JavaScript. Only ``paper`` claims count in the summary (a claim without ``kind`` is a paper claim);
premises and sanity checks are listed, folded away, under each paper.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import catalog, claims

VERDICTS = claims.VERDICTS
TEMPLATES = Path(__file__).resolve().parent / "templates"
# A symbol beside each verdict colour, so that a chip reads without colour too.
SYMBOLS = {"supported": "✓", "not_supported": "✗", "inconclusive": "?", "not_testable": "–", "failed": "!",
           "not run": "·", "missing": "·"}
def _failed(premise: dict) -> bool:
    """A premise failed when it was judged and did not hold (a premise only ``full`` can test has not failed)."""
    return premise["verdict"] in ("not_supported", "inconclusive")


# Fields an older claims.json may lack (schema 1 had no kind, interval, reason or premises).
_CLAIM_DEFAULTS = {"metric": "", "baseline": "baseline", "baseline_value": None, "method": "method",
                   "method_value": None, "expected": "", "verdict": "not_testable", "margin": 0.0, "interval": None,
                   "interval_kind": "", "n_items": 0, "reason": "", "premises": [], "failed_premises": [], "note": ""}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def render_notebook(ipynb: Path, dest: Path) -> Path:
    """Render an executed notebook to a self-contained HTML file, without the injected-parameters cell."""
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    nb = nbformat.read(str(ipynb), as_version=4)
    exporter = HTMLExporter()
    exporter.register_preprocessor(TagRemovePreprocessor(remove_cell_tags={"injected-parameters"}), enabled=True)
    body, _ = exporter.from_notebook_node(nb)
    dest.write_text(body, encoding="utf-8")
    return dest


def _one_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in _ANSI.sub("", str(text)).splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def notebook_error(ipynb: Path) -> str | None:
    """``None`` if the executed notebook finished; otherwise one line (``ename: evalue``, or why unreadable)."""
    try:
        nb = json.loads(ipynb.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        return f"unreadable notebook {ipynb.name}: {_one_line(str(exc))}"
    if not nb.get("metadata", {}).get("papermill", {}).get("exception"):
        return None
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else ():
            if out.get("output_type") == "error":
                where = f" (cell [{cell['execution_count']}])" if cell.get("execution_count") else ""
                return _one_line(f"{out.get('ename', 'Error')}: {_one_line(out.get('evalue', ''))}{where}")
    return "the notebook raised (see the rendered notebook)"


def _figures(d: Path) -> list[Path]:
    """The PNGs of a run folder in the order the notebook saved them."""
    return sorted(d.glob("*.png"), key=lambda p: (p.stat().st_mtime, p.name))


@dataclass
class Run:
    """One run folder: its claims, its error (``""`` if it finished) and what the report links to."""

    dir: Path
    rel: str  # the folder relative to the runs root, with "/"
    seed: str = ""
    doc: dict | None = None
    error: str = ""
    notebook: str = ""  # link to the rendered notebook, relative to the runs root
    figures: list[tuple[str, str]] = field(default_factory=list)  # (stem, link)

    @property
    def failed(self) -> bool:
        return bool(self.error)


def _read_run(root: Path, d: Path, slug: str, seed: str = "", render: bool = True) -> Run:
    rel = d.relative_to(root).as_posix()
    run = Run(d, rel, seed)
    ipynb = d / f"{slug}.ipynb"
    error = None
    if ipynb.is_file():
        error = notebook_error(ipynb)
        html_file = d / f"{slug}.html"
        if render and not (html_file.is_file() and html_file.stat().st_mtime >= ipynb.stat().st_mtime):
            render_notebook(ipynb, html_file)
        if html_file.is_file():
            run.notebook = f"{rel}/{html_file.name}"
    if (d / "claims.json").is_file():
        try:
            run.doc = claims.load(d / "claims.json")
        except (ValueError, OSError) as exc:
            error = error or f"unreadable claims.json: {_one_line(str(exc))}"
        else:
            if not run.doc.get("claims"):
                error = error or "claims.json lists no claims"
    elif not d.is_dir():
        error = error or f"no run folder {rel}/"
    elif not ipynb.is_file():
        error = error or "no executed notebook and no claims.json"
    else:
        error = error or "the notebook wrote no claims.json"
    run.error = error or ""
    run.figures = [(p.stem, f"{rel}/{p.name}") for p in _figures(d)] if d.is_dir() else []
    return run


@dataclass
class PaperView:
    """What the report shows about one paper of the catalog."""

    paper: catalog.Paper
    status: str  # "ok", "failed", "not run" or "planned"
    run: Run | None = None  # the run shown: the plain run, or a sweep's first seed that finished
    seed_runs: list[Run] = field(default_factory=list)  # a sweep's runs, in seed order
    stability: dict | None = None
    paper_claims: list[dict] = field(default_factory=list)
    premises: list[dict] = field(default_factory=list)
    sanity: list[dict] = field(default_factory=list)
    thumbnail: tuple[str, str] | None = None  # (stem, link)

    @property
    def swept(self) -> bool:
        return self.stability is not None

    @property
    def error(self) -> str:
        if self.run is not None and self.run.error:
            return self.run.error
        failed = [r for r in self.seed_runs if r.failed]
        return f"seed {failed[0].seed}: {failed[0].error}" if failed else ""

    @property
    def failed_premises(self) -> list[str]:
        names = [c["name"] for c in self.premises if _failed(c)]
        for c in self.paper_claims:
            names += [p for p in c.get("failed_premises", []) if p not in names]
        return names

    @property
    def figures(self) -> list[tuple[str, str]]:
        return self.run.figures if self.run else []

    @property
    def unanimous(self) -> tuple[int, int]:
        """(paper claims on which every seed agrees, paper claims) of a sweep."""
        rows = [r for r in (self.stability or {}).get("claims", []) if r.get("kind", "paper") == "paper"]
        return sum(bool(r.get("unanimous")) for r in rows), len(rows)


def _agreement(row: dict, seeds: list[str]) -> dict:
    verdicts = row.get("verdicts", {})
    n = len(seeds) or len(verdicts)
    agree = sum(v == row.get("majority") for v in verdicts.values())
    return {"n": n, "agree": agree, "unanimous": bool(row.get("unanimous", agree == n)),
            "majority": row.get("majority", ""), "verdicts": [(s, verdicts.get(s, "missing")) for s in seeds]}


def _paper_view(root: Path, p: catalog.Paper, render: bool) -> PaperView:
    d = root / p.slug
    plain, sweep = d / "claims.json", d / "stability.json"
    has_plain = plain.is_file() or (d / f"{p.slug}.ipynb").is_file()
    use_sweep = sweep.is_file() and not (plain.is_file() and plain.stat().st_mtime > sweep.stat().st_mtime)
    view = PaperView(p, "planned" if p.status != "implemented" else "not run")
    if use_sweep:
        try:
            view.stability = json.loads(sweep.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            view.status, view.run = "failed", Run(d, p.slug, error=f"unreadable stability.json: {_one_line(str(exc))}")
            return view
        seeds = [str(s) for s in view.stability.get("seeds", [])]  # the seeds the agreement is over
        runs = view.stability.get("runs") or {s: f"seed-{s}" for s in seeds}  # every seed run, failed ones too
        seeds = seeds or list(runs)
        view.seed_runs = [_read_run(root, d / runs.get(s, f"seed-{s}"), p.slug, s, render)
                          for s in [*runs, *(s for s in seeds if s not in runs)]]
        with_claims = [r for r in view.seed_runs if r.doc and r.doc.get("claims")]
        view.run = next((r for r in with_claims if not r.failed), None) or next(iter(with_claims), None) or \
            (view.seed_runs[0] if view.seed_runs else Run(d, p.slug, error="stability.json names no runs"))
        rows = {r["name"]: _agreement(r, seeds) for r in view.stability.get("claims", [])}
    elif has_plain:
        view.run = _read_run(root, d, p.slug, render=render)
        rows = {}
    else:
        return view
    run = view.run
    view.status = "failed" if run.failed else "ok"
    for c in claims.ordered(run.doc) if run.doc and run.doc.get("claims") else []:
        c = {**_CLAIM_DEFAULTS, **c, "kind": c.get("kind") or "paper", "seeds": rows.get(c["name"])}
        {"paper": view.paper_claims, "premise": view.premises, "sanity": view.sanity}.get(
            c["kind"], view.paper_claims).append(c)
    if run.figures:
        by_stem = dict(run.figures)
        stem = p.key_figure if p.key_figure in by_stem else run.figures[0][0]
        view.thumbnail = (stem, by_stem[stem])
    return view


def _summary(views: list[PaperView]) -> dict:
    counts = dict.fromkeys(VERDICTS, 0)
    premise_failed = 0
    for v in views:
        for c in v.paper_claims:
            counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
            premise_failed += c.get("reason") == "premise_failed"
    status = dict.fromkeys(("ok", "failed", "not run", "planned"), 0)
    for v in views:
        status[v.status] += 1
    return {"verdicts": counts, "paper_claims": sum(counts.values()), "premise_failed": premise_failed,
            "status": status, "sanity": sum(len(v.sanity) for v in views),
            "premises": sum(len(v.premises) for v in views),
            "premises_failed": sum(_failed(c) for v in views for c in v.premises),
            "swept": sum(v.swept for v in views)}


def verdict_label(c: dict) -> str:
    """:func:`companion.claims.verdict_text` with the verdict in words: ``not supported``, not ``not_supported``."""
    return claims.verdict_text(c).replace(c["verdict"], c["verdict"].replace("_", " "), 1)


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=claims.fmt, describe=claims.describe, verdict_label=verdict_label,
                       vclass=lambda v: "v-" + str(v).replace(" ", "_"), symbol=lambda v: SYMBOLS.get(v, "·"))
    env.globals.update(colours=claims.VERDICT_COLOURS, verdicts=VERDICTS, symbols=SYMBOLS)
    return env


def render_index(views: list[PaperView], root: Path) -> str:
    """The ``index.html`` page for these papers (``root`` is only named on the page)."""
    active = [v for v in views if v.status != "planned"]
    planned = [v for v in views if v.status == "planned"]
    return _environment().get_template("report/index.html.j2").render(
        active=active, planned=planned, papers=views, summary=_summary(views), root=str(root),
        generated=time.strftime("%Y-%m-%d %H:%M"))


def build_report(root=None) -> Path:
    """Write ``<root>/index.html`` (default ``<project_root>/runs``) and render the executed notebooks.

    One row per paper of the catalog, then a section per paper with a run. Papers without a run show
    "not run" (planned ones are grouped at the end); runs whose notebook raised or that wrote no claims show
    "failed" with the error line. Returns the index path.
    """
    root = Path(root).expanduser().resolve() if root else catalog.project_root() / "runs"
    if not root.is_dir():
        raise FileNotFoundError(f"no runs directory {root} (run `companion run SLUG` or `companion run-all` first)")
    views = [_paper_view(root, p, render=True) for p in catalog.papers()]
    index = root / "index.html"
    index.write_text(render_index(views, root), encoding="utf-8")
    return index
