"""``--resume`` on a throw-away fixture project: a finished run leaves ``run.json`` (slug, profile, seed, resolved
parameters, digests of the notebook and of the companion sources); a run whose manifest matches is reused, one
whose parameters, seed, notebook or sources changed runs again."""

from __future__ import annotations

import hashlib
import json

import nbformat
import pytest

from companion import runner


import fixture_project as fx


call = fx.call


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = fx.make_project(tmp_path_factory.mktemp("resume"), [fx.paper("quick", fx.QUICK_BODY),
                                                               fx.paper("other", fx.QUICK_BODY)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPANION_ROOT", str(root))
        mp.delenv("MPLBACKEND", raising=False)
        yield root


@pytest.fixture(scope="module")
def first(project):
    return runner.run_all(jobs=2, progress_bar=False)


def test_a_finished_run_writes_its_manifest(project, first):
    assert all(r.ok and not r.reused for r in first)
    for r in first:
        m = json.loads((r.out_dir / "run.json").read_text())
        assert m["manifest_version"] == 1 and m["slug"] == r.slug and m["profile"] == "ci" and m["seed"] == 0
        assert m["parameters"] == {"profile": "ci", "seed": 0, "device": "auto", "mask_fraction": 0.5,
                                   "dataset": "shapes", "data_dir": ""}  # resolved; out_dir is where it lies
        nb = project / "notebooks" / f"{r.slug}.ipynb"
        assert m["notebook_sha256"] == hashlib.sha256(nb.read_bytes()).hexdigest()
        assert m["companion_sha256"] == runner.source_digest() and len(m["companion_sha256"]) == 64
        assert m["seconds"] > 0 and m["finished"]


def test_resume_reuses_matching_runs_and_reruns_changed_ones(project, first):
    runs = project.resolve() / "runs"
    stamp = {r.slug: (r.out_dir / "claims.json").stat().st_mtime_ns for r in first}
    again = runner.run_all(jobs=2, progress_bar=False, resume=True)
    assert [(r.slug, r.ok, r.reused) for r in again] == [("quick", True, True), ("other", True, True)]
    assert [r.claims for r in again] == [r.claims for r in first]
    assert again[0].seconds == json.loads((runs / "quick" / "run.json").read_text())["seconds"]
    assert {r.slug: (r.out_dir / "claims.json").stat().st_mtime_ns for r in again} == stamp  # nothing ran

    nb_path = project / "notebooks" / "other.ipynb"  # the source of one notebook changes
    nb = nbformat.read(str(nb_path), as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("A new closing note."))
    nbformat.write(nb, str(nb_path))
    third = runner.run_all(jobs=2, progress_bar=False, resume=True)
    assert [(r.slug, r.ok, r.reused) for r in third] == [("quick", True, True), ("other", True, False)]
    assert (runs / "other" / "claims.json").stat().st_mtime_ns > stamp["other"]

    rc, out, err = call("run-all", "--resume")  # the command says what it reused
    assert rc == 0, err
    assert "2/2 notebooks ok (2 reused from earlier runs)" in out
    assert [ln.split()[1] for ln in out.splitlines() if ln.split()[:1] in (["quick"], ["other"])] == ["reused"] * 2
    rc, out, err = call("run", "quick", "--resume")
    assert rc == 0 and out.startswith("quick: ok (reused: run.json matches)")


def test_what_makes_a_run_stale(project, first, monkeypatch):
    """``reuse`` compares parameters, seed, profile, notebook and sources; it needs claims.json and the notebook."""
    paper, values, out = runner.prepare("quick")
    assert runner.reuse(paper, values, out) is not None
    assert runner.run_notebook("quick", resume=True).reused
    for changed in ({"seed": 1}, {"mask_fraction": 0.25}, {"dataset": "fashion_mnist"}, {"profile": "full"}):
        assert runner.reuse(paper, {**values, **changed}, out) is None, changed
    assert runner.reuse(paper, values, out.parent / "elsewhere") is None
    monkeypatch.setattr(runner, "source_digest", lambda: "0" * 64)  # companion's sources changed
    assert runner.reuse(paper, values, out) is None
    monkeypatch.undo()

    manifest = out / "run.json"
    saved = manifest.read_text()
    manifest.write_text(saved[:20])  # a truncated manifest
    assert runner.reuse(paper, values, out) is None
    manifest.write_text(saved)
    claims_file = out / "claims.json"
    text = claims_file.read_text()
    claims_file.write_text("{")
    assert runner.reuse(paper, values, out) is None
    claims_file.write_text(text)
    assert runner.reuse(paper, values, out) is not None

