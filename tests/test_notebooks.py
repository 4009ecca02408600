"""Every implemented notebook, executed by papermill on the ci profile, as a user would run it."""

import json
import os
import shutil
import tomllib
from pathlib import Path

import pytest

from companion import catalog, claims, runner

# Time budget per notebook under the test suite (2 workers on 2 cores, so about twice the ~60 s a
# notebook takes alone).
BUDGET_S = 150

# Verdicts each notebook's ci run must reach live in tests/expected/<slug>.toml: only verdicts that were
# unanimous across a seed sweep, since CI may run any seed.
EXPECTED_DIR = Path(__file__).resolve().parent / "expected"


def expected_verdicts(slug: str) -> dict[str, str]:
    """``tests/expected/<slug>.toml``: the verdicts that agreed across a seed sweep (Fashion-MNIST ones if installed)."""
    from companion import data

    path = EXPECTED_DIR / f"{slug}.toml"
    doc = tomllib.loads(path.read_text()) if path.is_file() else {}
    expected = dict(doc.get("ci", {}))
    if data.available("fashion_mnist"):
        expected.update(doc.get("fashion_mnist", {}))
    return expected


# Each notebook's tests share one papermill run (``_RUNS``): tests/conftest.py puts them on one xdist worker.
PAPERS = [p.slug for p in catalog.implemented()]


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_kernel():
    """Tests run two at a time on two cores: one torch thread per kernel avoids oversubscription."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("COMPANION_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            mp.setenv(var, "1")
        yield


def zoo_files() -> set[str]:
    """Every trained model in the zoo's cache (one file per name and cache key)."""
    from companion import zoo

    return {p.name for p in zoo.cache_dir().glob("*.pt")}


_RUNS: dict[str, runner.RunResult] = {}  # one papermill run per notebook and worker, whatever the test order


def missing_programs(slug: str) -> list[str]:
    """Programs the notebook needs (``needs`` in papers.toml) that are not on PATH."""
    return [prog for prog in catalog.get(slug).needs if shutil.which(prog) is None]


@pytest.fixture(params=PAPERS)
def run(request, tmp_path_factory, one_thread_per_kernel):
    from companion import zoo

    slug = request.param
    missing = missing_programs(slug)
    if missing and os.environ.get("CI") != "true":  # set-up installs them; under CI nothing may skip
        pytest.skip(f"{', '.join(missing)} not installed (`make setup` installs it)")
    if slug not in _RUNS:
        zoo.build()  # `make test` built it already: this only loads (or builds it when pytest runs alone)
        before = zoo_files()
        out = tmp_path_factory.mktemp(slug)
        result = runner.run_notebook(slug, "ci", seed=0, out_dir=out, progress_bar=False)
        result.new_zoo_files = zoo_files() - before
        _RUNS[slug] = result
    return _RUNS[slug]


def test_the_zoo_prebuilt_what_the_notebook_loads(run):
    """A notebook's shared models come from `companion zoo build` (the zoo's recipes match the notebook's calls)."""
    assert not run.new_zoo_files, f"{run.slug} trained {sorted(run.new_zoo_files)}: its zoo recipe drifted"


def test_notebook_runs_within_budget(run):
    assert run.ok, run.error
    assert run.seconds < BUDGET_S, f"{run.slug} took {run.seconds:.0f} s (budget {BUDGET_S} s)"


def test_claims_follow_the_schema(run):
    doc = claims.load(run.out_dir)
    assert doc["paper"] == run.slug and doc["profile"] == "ci" and doc["seed"] == 0
    assert doc["claims"], "a notebook records at least one claim"
    assert doc["schema_version"] == claims.SCHEMA_VERSION
    for c in doc["claims"]:
        assert set(c) == set(claims.Claim.__dataclass_fields__), c["name"]
        assert c["kind"] in claims.KINDS and c["expected"] in ("lower", "higher") and c["verdict"] in claims.VERDICTS
        if c["verdict"] == "inconclusive":
            assert c["reason"] in claims.REASONS, c["name"]
            assert bool(c["failed_premises"]) == (c["reason"] == "premise_failed"), c["name"]
        if c["verdict"] != "not_testable" and c["reason"] != "premise_failed":
            assert isinstance(c["baseline_value"], float) and isinstance(c["method_value"], float), c["name"]
            lo, hi = c["interval"]
            assert lo <= hi, c["name"]
        for p in c["premises"]:
            assert next(x for x in doc["claims"] if x["name"] == p)["kind"] == "premise", (c["name"], p)
    assert any(c["kind"] == "paper" for c in doc["claims"]), "the notebook tests its paper's own claim"
    assert any(c["verdict"] != "not_testable" for c in doc["claims"]), "at least one claim is judged at ci"


def test_expected_verdicts(run):
    got = {c["name"]: c["verdict"] for c in claims.load(run.out_dir)["claims"]}
    for name, verdict in expected_verdicts(run.slug).items():
        assert got.get(name) == verdict, f"{name}: expected {verdict}, got {got.get(name)}"


def test_figures_are_written_and_shown(run):
    assert run.figures, "the notebook saves its figures into out_dir"
    nb = json.loads(run.notebook.read_text())
    assert any("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", [])), \
        "figures must be shown inline (is MPLBACKEND=Agg leaking into the kernel?)"


def test_executed_notebook_reads_cleanly(run):
    """No stderr block (warnings, progress bars) and no stray ``Out[]`` repr: only rich displays (tables, figures)."""
    nb = json.loads(run.notebook.read_text())
    for i, cell in enumerate(nb["cells"]):
        for o in cell.get("outputs", []):
            assert not (o["output_type"] == "stream" and o["name"] == "stderr"), f"cell {i} writes to stderr: {o['text']}"
            if o["output_type"] == "execute_result":
                assert set(o["data"]) - {"text/plain"}, f"cell {i} ends in a bare repr: {o['data']['text/plain']}"


def test_same_parameters_give_identical_claims(run, tmp_path):
    """Determinism: two runs with the same parameters and seed record identical claims. Both run at the notebook's
    ``smoke`` values (``notebooks/params/<slug>.toml``; ``ci`` where none is set): the same cells on less data and
    fewer steps, so the check costs seconds rather than a second ci run."""
    from companion import params

    overrides = params.smoke_overrides(run.slug)
    docs = []
    for name in ("a", "b"):
        result = runner.run_notebook(run.slug, "ci", seed=0, overrides=overrides, out_dir=tmp_path / name,
                                     progress_bar=False)
        assert result.ok, result.error
        docs.append(claims.load(result.out_dir))
    assert docs[0] == docs[1]


def test_nbval_runs_the_flagship_as_the_readme_says(one_thread_per_kernel):
    """The README's `pytest --nbval-lax notebooks/layer_masking.ipynb` (the notebook's own defaults = ci profile,
    seed 0, writing to runs/layer_masking) passes and writes its claims."""
    import os
    import subprocess
    import sys

    nb = catalog.get("layer_masking").notebook
    root = catalog.project_root()
    (root / "runs" / "layer_masking" / "claims.json").unlink(missing_ok=True)
    env = {**os.environ, "COMPANION_ROOT": str(root)}
    env.pop("MPLBACKEND", None)
    result = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:xdist", "-q", "-p",
                             "no:cacheprovider", str(nb)], cwd=nb.parent, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:]
    doc = claims.load(root / "runs" / "layer_masking")
    assert doc["paper"] == "layer_masking" and doc["profile"] == "ci" and doc["seed"] == 0


def test_a_two_seed_sweep_of_a_real_notebook_writes_stability(tmp_path, one_thread_per_kernel):
    """`companion run dma --seeds 0,1 -p train_steps 40`: each seed in its own folder, stability.json with every
    claim's verdicts (few steps: this checks the sweep, not the verdicts)."""
    results, doc = runner.sweep("dma", [0, 1], overrides={"train_steps": 40}, out_dir=tmp_path / "dma", jobs=1,
                                progress_bar=False)
    assert [r.ok for r in results] == [True, True], [r.error for r in results]
    assert doc == json.loads((tmp_path / "dma" / "stability.json").read_text())
    assert doc["seeds"] == [0, 1] and doc["runs"] == {"0": "seed-0", "1": "seed-1"}
    names = {c["name"] for c in claims.load(tmp_path / "dma" / "seed-0")["claims"]}
    assert {c["name"] for c in doc["claims"]} == names
    for c in doc["claims"]:
        assert set(c["verdicts"]) == {"0", "1"} and c["agreement"] in (0.5, 1.0)


def test_layer_masking_full_profile_runs_on_a_fake_foreground_folder(tmp_path, one_thread_per_kernel):
    """The flagship's `full` path end to end on CPU: a random-weight ResNet-50 and a fake folder in the layout
    `data_scripts/foreground.py` prepares (sizes shrunk; random weights classify nothing, so every claim is gated)."""
    from companion.data import foreground

    foreground.write_fake(tmp_path / "fake", n=6, size=64)
    overrides = {"device": "cpu", "dataset": "imagenet_fg", "data_dir": str(tmp_path / "fake"), "image_size": 64,
                 "n_test": 6, "mask_sizes": [8, 16], "curve_cell": 16, "curve_fractions": [0.25, 0.5, 0.75],
                 "curve_images": 6, "lime_images": 2, "lime_samples": 20, "n_segments": 10}
    result = runner.run("layer_masking", profile="full", overrides=overrides, out_dir=tmp_path / "out",
                        progress_bar=False)
    assert result.ok, result.error
    table = claims.load(tmp_path / "out")
    assert table["profile"] == "full" and table["claims"]
    assert all(c["verdict"] != "supported" for c in table["claims"] if c["kind"] == "paper")
