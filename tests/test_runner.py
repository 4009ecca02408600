"""companion.runner on a throw-away fixture project: run_all (2 real papermill runs), build_report, and
validation before anything is written. The flagship notebooks are not needed."""

from __future__ import annotations

import os

import nbformat
import pytest

from companion import catalog, claims, runner
from companion.params import ParamError
from fixture_project import make_project

@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("proj"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPANION_ROOT", str(root))
        mp.setenv("MPLBACKEND", "Agg")  # the runner must hide it from kernels, or figures vanish
        mp.delenv("COMPANION_THREADS", raising=False)
        yield root


@pytest.fixture(scope="module")
def results(project):
    """The two implemented fixture notebooks, run once in worker processes with 2 threads each."""
    out = runner.run_all(jobs=2, threads=2, progress_bar=False)
    return {r.slug: r for r in out}


def test_fixture_catalog(project):
    assert [p.slug for p in catalog.implemented()] == ["good", "broken"]
    assert catalog.project_root() == project.resolve()


def no_real_data(monkeypatch):
    """Pretend no real dataset is prepared (this machine may have Fashion-MNIST installed)."""
    from companion import data

    monkeypatch.setattr(data.files, "available", lambda name, data_dir="": name == "shapes")


def test_bad_input_raises_before_anything_is_written(project, tmp_path, monkeypatch):
    no_real_data(monkeypatch)
    out = tmp_path / "out"
    cases = [
        ({"slug": "nope"}, catalog.CatalogError, "nope"),
        ({"slug": "idea"}, catalog.CatalogError, "no notebook"),
        ({"slug": "good", "profile": "huge"}, ParamError, "huge"),
        ({"slug": "good", "overrides": {"mask_fractoin": 0.1}}, ParamError, "did you mean mask_fraction"),
        ({"slug": "good", "overrides": {"mask_fraction": 2}}, ParamError, "out of range"),
        ({"slug": "good", "overrides": {"mask_fraction": "lots"}}, ParamError, "not a valid float"),
        ({"slug": "good", "seed": -1}, ParamError, "seed"),
        ({"slug": "good", "profile": "full"}, ParamError, "dataset 'fashion_mnist' is not prepared; run: python data_scripts/"),
    ]
    for kwargs, exc, text in cases:
        with pytest.raises(exc, match=text) as info:
            runner.run_notebook(out_dir=out, **kwargs)
        assert "\n" not in str(info.value)
        assert not out.exists(), kwargs
    assert not (project / "runs").exists()
    with pytest.raises(ParamError, match="threads"):
        runner.run_all(threads=0)
    assert not (project / "runs").exists()


def test_prepare_resolves_profile_seed_overrides_and_out_dir(project, tmp_path):
    paper, values, out = runner.prepare("good", "ci", seed=7, overrides={"mask_fraction": "0.125"})
    assert paper.slug == "good"
    assert values["seed"] == 7 and values["mask_fraction"] == 0.125 and values["profile"] == "ci"
    assert out == project.resolve() / "runs" / "good" and values["out_dir"] == str(out)
    _, values, out = runner.prepare("good", out_dir=tmp_path / "x")
    assert values["out_dir"] == str((tmp_path / "x").resolve()) and not out.exists()


def test_run_all_runs_every_notebook_and_survives_a_failure(project, results):
    assert list(results) == ["good", "broken"]
    good, broken = results["good"], results["broken"]
    runs = project.resolve() / "runs"

    assert good.ok, good.error
    assert good.out_dir == runs / "good" and good.notebook == runs / "good" / "good.ipynb"
    assert good.notebook.is_file() and good.seconds > 0
    assert good.claims == claims.load(runs / "good" / "claims.json")
    assert good.claims["paper"] == "good" and good.claims["profile"] == "ci"
    assert [c["verdict"] for c in good.claims["claims"]] == list(claims.VERDICTS)
    assert good.verdict_counts() == dict.fromkeys(claims.VERDICTS, 1)
    assert good.figures == [runs / "good" / "curve.png"]
    note = good.claims["claims"][1]["note"]
    assert "threads=2" in note  # the thread setting reached the kernel
    assert f"launcher={os.getpid()}" not in note  # the kernel was started by a worker process

    assert not broken.ok and broken.claims is None
    assert "ValueError" in broken.error and "boom from the broken notebook" in broken.error
    assert "\n" not in broken.error
    assert broken.notebook.is_file()  # papermill writes the failed notebook, for inspection
    assert "MPLBACKEND" not in os.environ or os.environ["MPLBACKEND"] == "Agg"


def test_executed_notebook_has_parameters_and_inline_figure(results):
    nb = nbformat.read(str(results["good"].notebook), as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and str(results["good"].out_dir) in injected[0].source
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    # MPLBACKEND=Agg in the parent would leave no image/png output
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert nb.metadata.papermill.parameters["profile"] == "ci"
