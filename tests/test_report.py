"""companion.report on synthetic run folders: claims.json files and tiny executed notebooks written with nbformat
(no papermill, no kernel). Covers a paper with no run, a failed run, a seed sweep with disagreement, premise
failures, sanity claims that never count, thumbnails and the rendered notebooks."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path

import nbformat
import pytest

from companion import catalog, claims, report

# A 1x1 PNG: enough for <img> and for the report's figure discovery.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360f8cf000000030101009a5b1d9f0000000049454e44ae426082")

PAPERS = [  # slug, status, key_figure
    ("plain", "implemented", "curve"),
    ("broken", "implemented", ""),
    ("nodoc", "implemented", ""),
    ("swept", "implemented", "main"),
    ("unrun", "implemented", ""),
    ("oldschema", "implemented", ""),
    ("idea", "planned", ""),
]


def claim(name, verdict, kind="paper", diff=0.5, reason="", failed_premises=(), interval=True, **kw) -> dict:
    c = {"name": name, "kind": kind, "metric": "accuracy", "baseline": "random", "baseline_value": 0.5,
         "method": "masked", "method_value": 0.5 + diff, "expected": "higher", "verdict": verdict, "margin": 0.0,
         "interval": [round(diff - 0.1, 6), round(diff + 0.1, 6)] if interval else None,
         "interval_kind": "paired" if interval else "", "n_items": 64, "reason": reason,
         "premises": list(failed_premises), "failed_premises": list(failed_premises), "note": ""}
    c.update(kw)
    return c


def doc(slug, claim_list, seed=0, profile="ci") -> dict:
    return {"schema_version": claims.SCHEMA_VERSION, "paper": slug, "profile": profile, "seed": seed,
            "claims": claim_list}


def write_notebook(path: Path, slug: str, error: str | None = None) -> Path:
    """A tiny 'executed' notebook: papermill's injected-parameters cell, a cell with output, maybe an error."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"exception": bool(error), "parameters": {"seed": 0}}
    params = nbformat.v4.new_code_cell("# Parameters\nseed = 0\nSECRET_INJECTED = 1", execution_count=1,
                                       metadata={"tags": ["injected-parameters"]})
    body = nbformat.v4.new_code_cell(f"print('hello from {slug}')", execution_count=2,
                                     outputs=[nbformat.v4.new_output("stream", name="stdout",
                                                                     text=f"hello from {slug}\n"),
                                              nbformat.v4.new_output("display_data", data={
                                                  "image/png": base64.b64encode(PNG).decode(),
                                                  "text/plain": "<Figure>"})])
    nb.cells = [nbformat.v4.new_markdown_cell(f"# The {slug} notebook"), params, body]
    if error:
        ename, evalue = error.split(": ", 1)
        nb.cells.append(nbformat.v4.new_code_cell("raise", execution_count=3, outputs=[nbformat.v4.new_output(
            "error", ename=ename, evalue=evalue, traceback=[f"\x1b[0;31m{ename}\x1b[0m: {evalue}"])]))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def write_run(d: Path, slug: str, claims_doc: dict | None, pngs=(), error: str | None = None) -> Path:
    write_notebook(d / f"{slug}.ipynb", slug, error)
    if claims_doc is not None:
        (d / "claims.json").write_text(json.dumps(claims_doc, indent=2))
    for i, name in enumerate(pngs):
        (d / f"{name}.png").write_bytes(PNG)
        t = time.time() - 100 + i  # the order the notebook saved them
        os.utime(d / f"{name}.png", (t, t))
    return d


def make_project(root: Path) -> Path:
    nbdir = root / "notebooks"
    nbdir.mkdir(parents=True)
    toml = ""
    for i, (slug, status, key) in enumerate(PAPERS, 1):
        toml += (f'[[papers]]\nnumber = {i}\nslug = "{slug}"\ntitle = "The {slug} paper on masking"\nyear = 2024\n'
                 f'venue = "X 2024"\npaper_url = "https://example.org/{slug}"\ncode_url = ""\ntopic = "test"\n'
                 f'status = "{status}"\n' + (f'key_figure = "{key}"\n' if key else "") + "\n")
    (nbdir / "papers.toml").write_text(toml)
    return root


def make_runs(runs: Path) -> Path:
    """The synthetic runs folder of the fixture papers."""
    write_run(runs / "plain", "plain", doc("plain", [
        claim("model learned", "supported", kind="premise"),
        claim("masks help", "supported"),
        claim("masks help a lot", "not_supported", diff=-0.2),
        claim("within noise", "inconclusive", diff=0.01, reason="within_noise"),
        claim("needs the full profile", "not_testable", interval=False, method_value=None, baseline_value=None),
        claim("a 2:4 pattern is 2:4", "sanity", kind="sanity"),
        claim("another true-by-construction", "supported", kind="sanity"),
    ]), pngs=("data", "curve", "zzz"))
    write_run(runs / "broken", "broken", None, pngs=("data",), error="ValueError: boom from the broken notebook")
    (runs / "nodoc").mkdir()
    write_notebook(runs / "nodoc" / "nodoc.ipynb", "nodoc")  # finished, but wrote no claims.json
    # a sweep over seeds 0, 1, 2 whose premise fails at seed 0; the paper claim disagrees across seeds
    per_seed = {
        0: [claim("teacher learned", "not_supported", kind="premise", diff=-0.1),
            claim("hybrid beats single", "inconclusive", reason="premise_failed",
                  failed_premises=["teacher learned"]),
            claim("stable claim", "supported")],
        1: [claim("teacher learned", "supported", kind="premise"), claim("hybrid beats single", "supported"),
            claim("stable claim", "supported")],
        2: [claim("teacher learned", "supported", kind="premise"),
            claim("hybrid beats single", "not_supported", diff=-0.3), claim("stable claim", "supported")],
    }
    docs = []
    for s, cl in per_seed.items():
        docs.append(doc("swept", cl, seed=s))
        write_run(runs / "swept" / f"seed-{s}", "swept", docs[-1], pngs=("first", "main"))
    stab = claims.stability(docs)
    stab["runs"] = {str(s): f"seed-{s}" for s in per_seed}
    (runs / "swept" / "stability.json").write_text(json.dumps(stab, indent=2))
    # schema 1: no kind, no interval, no reason
    old = {"paper": "oldschema", "profile": "ci", "seed": 0, "claims": [
        {k: v for k, v in claim("old claim", "supported").items()
         if k not in ("kind", "interval", "interval_kind", "reason", "premises", "failed_premises", "n_items")}]}
    write_run(runs / "oldschema", "oldschema", old)
    return runs


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = make_project(tmp_path / "proj")
    monkeypatch.setenv("COMPANION_ROOT", str(root))
    make_runs(root / "runs")
    return root


@pytest.fixture
def page(project):
    index = report.build_report()
    assert index == project.resolve() / "runs" / "index.html"
    return index.read_text()


def overview_row(page: str, slug: str) -> str:
    """The overview table row of one paper."""
    rows = re.findall(r"<tr>\s*<td class=\"num\">.*?</tr>", page, flags=re.S)
    found = [r for r in rows if f"<b>{slug}</b>" in r]
    assert len(found) == 1, slug
    return found[0]


def section(page: str, slug: str) -> str:
    m = re.search(rf'<section class="paper" id="{slug}">.*?</section>', page, flags=re.S)
    assert m, slug
    return m.group(0)


def test_every_paper_has_one_row_and_planned_ones_are_grouped(page):
    for slug, _status, _ in PAPERS:
        assert f"<b>{slug}</b>" in page
    planned = page.split('<tbody class="planned">', 1)[1].split("</tbody>", 1)[0]
    assert "<b>idea</b>" in planned and "<b>plain</b>" not in planned
    assert "Planned — 1 paper without a notebook yet" in planned
    assert 'id="idea"' not in page  # no section for a paper with no run
    assert "<script" not in page.lower()  # static: no JavaScript
    assert "<style>" in page and 'rel="stylesheet"' not in page  # inline CSS


def test_paper_with_no_run(page):
    row = overview_row(page, "unrun")
    assert "not run" in row and "chip" in row
    assert 'id="unrun"' not in page


def test_failed_run_shows_its_error_line(page, project):
    row = overview_row(page, "broken")
    assert "failed" in row and "ValueError: boom from the broken notebook" in row
    assert "\x1b" not in page
    sec = section(page, "broken")
    assert "ValueError: boom from the broken notebook" in sec and 'href="broken/broken.html"' in sec
    rendered = (project / "runs" / "broken" / "broken.html").read_text()
    assert "boom from the broken notebook" in rendered
    nodoc = overview_row(page, "nodoc")
    assert "failed" in nodoc and "no claims.json" in nodoc


def test_plain_run_lists_paper_claims_with_intervals_and_folds_the_rest(page):
    row = overview_row(page, "plain")
    for name in ("masks help", "masks help a lot", "within noise", "needs the full profile"):
        assert f"{name}</span>" in row
    assert "a 2:4 pattern is 2:4" not in row  # sanity checks never show as chips
    assert "2 sanity checks (not counted)" in row and "1 premise holds" in row
    # the chip's hover text names the claim and its interval
    assert 'title="masks help — supported. accuracy: masked − random = 0.5 [0.4, 0.6]' in row
    assert f"background:{claims.VERDICT_COLOURS['supported']}" in page
    sec = section(page, "plain")
    paper_part, rest = sec.split("<details>", 1)
    assert "0.5 [0.4, 0.6]" in paper_part and "-0.2 [-0.3, -0.1]" in paper_part
    assert "inconclusive (within noise)" in paper_part
    assert "model learned" not in paper_part and "a 2:4 pattern is 2:4" not in paper_part
    assert "Premises: 1, all hold" in rest and "model learned" in rest
    assert "Sanity checks: 2" in rest and "a 2:4 pattern is 2:4" in rest


def test_summary_counts_paper_claims_only(project):
    views = [report._paper_view(project / "runs", p, render=False) for p in catalog.papers()]
    s = report._summary(views)
    # plain: 1 supported, 1 not_supported, 1 inconclusive, 1 not_testable; swept (seed 0): 1 inconclusive,
    # 1 supported; oldschema: 1 supported. Sanity claims (one of them "supported") and premises never count.
    assert s["verdicts"] == {"supported": 3, "not_supported": 1, "inconclusive": 2, "not_testable": 1}
    assert s["paper_claims"] == 7 and s["premise_failed"] == 1 and s["sanity"] == 2
    assert s["status"] == {"ok": 3, "failed": 2, "not run": 1, "planned": 1}
    assert s["swept"] == 1


def test_summary_on_the_page(page):
    summary = page.split('<div class="summary">', 1)[1].split("</div>\n</div>", 1)[0]
    assert "7 paper claims" in summary
    assert re.search(r"✓ 3</span><span class=\"label\">supported", summary)
    assert "1 inconclusive because a premise failed" in summary


def test_swept_run_shows_seed_agreement_and_premise_failure(page, project):
    row = overview_row(page, "swept")
    assert "3 seeds" in row and "1/2 paper claims agree" in row
    # the disagreeing claim shows each seed's verdict; the unanimous one says 3/3
    assert '<span class="agree">?✓✗</span>' in row and '<span class="agree">3/3</span>' in row
    assert "premise-failed" in row and "⚠ premise failed: teacher learned" in row
    assert "1/3 seeds agree: seed 0 inconclusive, seed 1 supported, seed 2 not supported" in row
    sec = section(page, "swept")
    assert "inconclusive (premise failed: teacher learned)" in sec
    assert 'href="swept/seed-0/swept.html"' in sec and 'href="swept/seed-2/swept.html"' in sec
    assert "Premises: 1, <b>1 failed</b>" in sec
    assert "3/3 agree" in sec and 'title="seed 2: not supported"' in sec
    for s in (0, 1, 2):
        assert (project / "runs" / "swept" / f"seed-{s}" / "swept.html").is_file()


def test_sweep_shows_first_finished_seed(project):
    runs = project / "runs"
    write_run(runs / "swept" / "seed-0", "swept", json.loads((runs / "swept/seed-0/claims.json").read_text()),
              error="RuntimeError: CUDA out of memory")
    view = report._paper_view(runs, catalog.get("swept"), render=False)
    assert view.status == "ok" and view.run.seed == "1"
    assert "seed 0: RuntimeError: CUDA out of memory" in view.error
    page = report.build_report().read_text()
    assert "seed 0 failed" in overview_row(page, "swept")


def test_newer_plain_run_wins_over_an_older_sweep(project):
    runs = project / "runs"
    write_run(runs / "swept", "swept", doc("swept", [claim("plain now", "supported")]))
    view = report._paper_view(runs, catalog.get("swept"), render=False)
    assert not view.swept and [c["name"] for c in view.paper_claims] == ["plain now"]


def test_thumbnail_is_the_key_figure_or_the_first_png(page):
    assert '<img src="plain/curve.png"' in overview_row(page, "plain")  # key_figure = "curve"
    assert '<img src="swept/seed-0/main.png"' in overview_row(page, "swept")  # a sweep's first seed
    assert '<img src="broken/data.png"' in overview_row(page, "broken")  # no key_figure: the first PNG saved
    assert "<img" not in overview_row(page, "unrun")
    sec = section(page, "plain")
    assert "curve (key figure)" in sec
    assert 'href="plain/data.png">data</a> · <a href="plain/curve.png">curve</a> · <a href="plain/zzz.png">' in sec


def test_old_schema_claims_count_as_paper_claims(page):
    row = overview_row(page, "oldschema")
    assert "old claim</span>" in row and "v-supported" in row
    assert "0.5</td>" in section(page, "oldschema")  # no interval: the difference alone


def test_rendered_notebook_drops_the_injected_parameters(page, project):
    assert 'href="plain/plain.html"' in page
    rendered = (project / "runs" / "plain" / "plain.html").read_text()
    assert "hello from plain" in rendered and "data:image/png" in rendered  # the notebook and its figure
    assert "SECRET_INJECTED" not in rendered and "# Parameters" not in rendered  # the injected cell is removed
    assert "SECRET_INJECTED" in (project / "runs" / "plain" / "plain.ipynb").read_text()


def test_notebooks_are_rendered_again_only_when_newer(project, monkeypatch):
    report.build_report()
    calls = []
    monkeypatch.setattr(report, "render_notebook", lambda ipynb, dest: calls.append(ipynb))
    report.build_report()
    assert calls == []
    nb = project / "runs" / "plain" / "plain.ipynb"
    t = time.time() + 5
    os.utime(nb, (t, t))
    report.build_report()
    assert calls == [nb]


def test_links_are_relative(page):
    for href in re.findall(r'(?:href|src)="([^"]+)"', page):
        assert href.startswith(("#", "https://")) or not href.startswith("/"), href
        assert not href.startswith("file:"), href


def test_build_report_missing_dir(project, tmp_path):
    with pytest.raises(FileNotFoundError):
        report.build_report(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_templates_are_package_data():
    import tomllib

    root = Path(report.__file__).resolve().parent
    templates = sorted(p.relative_to(root).as_posix() for p in (root / "templates").rglob("*.j2"))
    assert "templates/report/index.html.j2" in templates
    cfg = tomllib.loads((root.parent / "pyproject.toml").read_text())
    globs = cfg["tool"]["setuptools"]["package-data"]["companion"]
    from fnmatch import fnmatch

    for t in templates:
        assert any(fnmatch(t, g.replace("**/", "*/")) or fnmatch(t, g) for g in globs), t


def test_key_figures_of_the_catalog_are_figures_their_notebooks_save(monkeypatch):
    monkeypatch.delenv("COMPANION_ROOT", raising=False)
    monkeypatch.chdir(Path(report.__file__).resolve().parent.parent)
    for p in catalog.papers():
        if p.status != "implemented":
            assert not p.key_figure, p.slug
            continue
        nb = nbformat.read(str(p.notebook), as_version=4)
        saved = {m for c in nb.cells if c.cell_type == "code"
                 for m in re.findall(r"""viz\.save\(\s*\w+\s*,\s*[\w.]+\s*,\s*["'](\w+)["']""", c.source)}
        assert p.key_figure in saved, f"{p.slug}: key_figure {p.key_figure!r} is not one of {sorted(saved)}"


def test_sweep_lists_a_failed_seed_that_stability_leaves_out(project):
    runs = project / "runs"
    stab = json.loads((runs / "swept" / "stability.json").read_text())
    stab["runs"]["3"] = "seed-3"
    (runs / "swept" / "stability.json").write_text(json.dumps(stab))
    write_run(runs / "swept" / "seed-3", "swept", None, error="KeyboardInterrupt: ")
    view = report._paper_view(runs, catalog.get("swept"), render=False)
    assert [r.seed for r in view.seed_runs] == ["0", "1", "2", "3"] and view.seed_runs[-1].failed
    assert view.run.seed == "0" and view.paper_claims[0]["seeds"]["n"] == 3  # agreement over the seeds that ran
