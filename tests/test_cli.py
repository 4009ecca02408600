"""The ``companion`` command on a throw-away fixture project (built by tests/fixture_project.py's
``make_project``): 2 real papermill runs (one succeeds, one fails); bad inputs exit 2 with one line and
write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from companion import cli, runner
from companion.claims import VERDICTS
from fixture_project import call, make_project




@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("cliproj"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPANION_ROOT", str(root))
        mp.delenv("MPLBACKEND", raising=False)
        yield root


@pytest.fixture(scope="module")
def good_run(project):
    out = project / "report" / "good"
    return (out, *call("run", "good", "--out", out, "-p", "mask_fraction", "0.25", "--seed", "3"))


@pytest.fixture(scope="module")
def broken_run(project):
    out = project / "report" / "broken"
    return (out, *call("run", "broken", "--out", out))


def test_list_shows_every_paper(project):
    rc, out, err = call("list")
    assert rc == 0 and err == ""
    for slug, status in (("good", "implemented"), ("broken", "implemented"), ("idea", "planned")):
        line = next(ln for ln in out.splitlines() if f" {slug} " in ln)
        assert status in line and "2024" in line and f"The {slug} paper" in line
        assert f"https://example.org/{slug}/code" in out and f"https://example.org/{slug}" in out
    assert "3 papers, 2 with a runnable notebook" in out


def test_python_m_companion(project):
    env = {**os.environ, "COMPANION_ROOT": str(project)}
    ok = subprocess.run([sys.executable, "-m", "companion", "list"], capture_output=True, text=True, env=env, check=False)
    assert ok.returncode == 0 and "idea" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "companion", "run", "nope"], capture_output=True, text=True, env=env, check=False)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == "companion: error: unknown paper slug 'nope'; `companion list` shows all slugs"


BAD = [
    (["run", "nope"], "unknown paper slug 'nope'"),
    (["run", "goood"], "did you mean good"),
    (["run", "idea"], "idea has no notebook"),
    (["run", "good", "--profile", "huge"], "invalid choice: 'huge'"),
    (["run", "good", "-p", "mask_fractoin", "0.3"], "unknown parameter 'mask_fractoin' for good; did you mean mask_fraction?"),
    (["run", "good", "-p", "mask_fraction", "1.5"], "mask_fraction=1.5 is out of range; allowed [0.0, 1.0]"),
    (["run", "good", "-p", "mask_fraction", "lots"], "mask_fraction='lots' is not a valid float"),
    (["run", "good", "-p", "dataset", "mnist"], "dataset='mnist' is not allowed; choose one of shapes, fashion_mnist"),
    (["run", "good", "--seed", "abc"], "argument --seed: 'abc' is not an integer"),
    (["run", "good", "--seed", "-4"], "seed=-4 is out of range"),
    (["run", "good", "-p", "profile", "huge"], "profile='huge' is not allowed"),
    (["run", "good", "--profile", "full"], "dataset 'fashion_mnist' is not prepared; run: python data_scripts/"),
    (["run", "good", "-p", "device", "cuda"], "device='cuda' but no CUDA GPU is visible"),
    (["run-all", "--profile", "full"], "dataset 'fashion_mnist' is not prepared"),
    (["run-all", "--jobs", "0"], "argument --jobs: '0' must be at least 1"),
    (["run-all", "--threads", "x"], "argument --threads: 'x' is not an integer"),
    (["run-all", "--seed", "1", "--seeds", "1,2"], "argument --seeds: not allowed with argument --seed"),
    (["run", "good", "--seeds", "1,2,1"], "argument --seeds: '1,2,1' repeats a seed"),
    (["run", "good", "--seeds", "0,1", "-p", "mask_fraction", "3"], "mask_fraction=3.0 is out of range"),
    (["run", "good", "--seeds", "0,1", "--profile", "full"], "dataset 'fashion_mnist' is not prepared"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(project, tmp_path, monkeypatch, argv, message):
    from companion import data

    monkeypatch.setattr(data.files, "available", lambda name, data_dir="": name == "shapes")  # no real data here
    if "cuda" in argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is visible")
    out = tmp_path / "out"
    rc, stdout, stderr = call(*argv, "--out", out) if argv[0] != "frobnicate" else call(*argv)
    assert rc == 2
    assert stdout == ""
    assert len(stderr.splitlines()) == 1 and stderr.startswith("companion: error: "), stderr
    assert message in stderr
    assert not out.exists() and not (project / "runs").exists()


def test_report_missing_dir(project, tmp_path):
    rc, _out, err = call("report", tmp_path / "none")
    assert rc == 2 and err.startswith("companion: error: no runs directory") and len(err.splitlines()) == 1
    assert not (tmp_path / "none").exists()


def test_run_writes_notebook_claims_and_figure(good_run):
    out, rc, stdout, stderr = good_run
    assert rc == 0, stderr
    out = out.resolve()
    nb, claims_json, png = out / "good.ipynb", out / "claims.json", out / "curve.png"
    assert nb.is_file() and claims_json.is_file() and png.is_file()
    assert f"executed notebook: {nb}" in stdout and str(claims_json) in stdout and str(png) in stdout
    assert "| kind | claim | baseline | method | method − baseline [95 % CI] | expected | verdict | note |" in stdout
    for v in VERDICTS:
        assert f"| {v} |" in stdout or f"| {v} (" in stdout
    doc = json.loads(claims_json.read_text())
    assert doc["seed"] == 3 and doc["profile"] == "ci"  # --seed reached the notebook
    assert doc["claims"][1]["method_value"] == 0.25  # -p mask_fraction 0.25 reached the notebook
    assert json.loads(nb.read_text())["metadata"]["papermill"]["parameters"]["mask_fraction"] == 0.25


def test_run_failing_notebook_exits_1(broken_run):
    out, rc, stdout, stderr = broken_run
    assert rc == 1
    assert "broken: FAILED" in stdout
    assert "companion: broken failed: ValueError: boom from the broken notebook" in stderr
    assert (out / "broken.ipynb").is_file() and not (out / "claims.json").exists()


def test_report_command(project, good_run, broken_run):
    """The command's part: it prints the index path (the page itself is tests/test_report.py's)."""
    rc, stdout, _stderr = call("report", project / "report")
    index = (project / "report" / "index.html").resolve()
    assert rc == 0 and stdout.strip() == str(index)
    page = index.read_text()
    assert "good/good.html" in page and (project / "report" / "good" / "good.html").is_file()
    assert "boom from the broken notebook" in page
    for v in VERDICTS:
        assert v in page


def _fake(slug, ok, root, verdicts=()):
    doc = {"paper": slug, "profile": "ci", "seed": 0,
           "claims": [{"name": "c", "metric": "m", "baseline": "b", "baseline_value": 1.0, "method": "x",
                       "method_value": 2.0, "expected": "higher", "verdict": v, "note": ""} for v in verdicts]}
    return runner.RunResult(slug, ok, root / slug, root / slug / f"{slug}.ipynb", doc if ok else None, 1.5,
                            "" if ok else "ValueError: boom")


def test_run_all_summary_and_exit_code(project, tmp_path, monkeypatch):
    """The CLI's part of run-all (runner.run_all itself runs for real in test_runner.py)."""
    seen = {}

    def fake_run_all(profile, jobs, out_root, seed, threads, timeout, seeds, resume):
        assert seeds is None and resume is False
        seen.update(profile=profile, jobs=jobs, out_root=out_root, seed=seed, threads=threads)
        return [_fake("good", True, tmp_path, ["supported", "supported", "inconclusive"]),
                _fake("broken", not fail, tmp_path, ["not_testable"])]

    monkeypatch.setattr(runner, "run_all", lambda profile, **kw: fake_run_all(profile, **kw))
    fail = False
    rc, stdout, stderr = call("run-all", "--jobs", "3", "--threads", "2", "--out", tmp_path, "--seed", "5")
    assert rc == 0 and stderr == ""
    assert seen == {"profile": "ci", "jobs": 3, "out_root": str(tmp_path), "seed": 5, "threads": 2}
    rows = {ln.split()[0]: ln.split() for ln in stdout.splitlines() if ln.split() and ln.split()[0] in ("good", "broken")}
    assert rows["good"] == ["good", "ok", "1.5", "2", "0", "1", "0"]
    assert rows["broken"] == ["broken", "ok", "1.5", "0", "0", "0", "1"]
    assert "2/2 notebooks ok" in stdout

    fail = True
    rc, stdout, stderr = call("run-all")
    assert rc == 1
    assert seen["jobs"] is None and seen["threads"] == 1 and seen["out_root"] is None
    assert "broken  FAILED" in stdout and "1/2 notebooks ok" in stdout
    assert "broken: ValueError: boom" in stderr


@pytest.fixture
def fake_zoo(monkeypatch):
    from companion import zoo

    built = []
    monkeypatch.setattr(zoo, "REGISTRY", {name: (lambda name=name: built.append(name)) for name in ("teacher", "mae")})
    return built


def test_zoo_list(fake_zoo):
    rc, out, err = call("zoo", "list")
    assert rc == 0 and err == "" and out.splitlines() == ["mae", "teacher"]
    assert fake_zoo == []


def test_zoo_build_prints_one_line_per_model(fake_zoo):
    rc, out, err = call("zoo", "build")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert [ln.split(":")[0] for ln in lines[:2]] == ["mae", "teacher"] and all(ln.endswith(" s") for ln in lines[:2])
    assert lines[2].startswith("2 models in ") and "cache: " in lines[2]
    assert fake_zoo == ["mae", "teacher"]
    rc, out, _ = call("zoo", "build", "teacher", "teacher")
    assert rc == 0 and out.splitlines()[0].startswith("teacher: ") and fake_zoo[2:] == ["teacher"]


def test_zoo_build_unknown_name_is_one_line_exit_2(fake_zoo):
    rc, out, err = call("zoo", "build", "teacher", "nope")
    assert rc == 2 and out == "" and fake_zoo == []  # nothing built
    assert err == "companion: error: unknown zoo model 'nope'; choose from mae, teacher\n"
    rc, _, err = call("zoo")
    assert rc == 2 and len(err.splitlines()) == 1


def test_keyboard_interrupt_outside_the_runner_is_one_line(monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_list", interrupted)
    rc, out, err = call("list")
    assert rc == 130 and out == "" and err == "companion: interrupted\n"


def test_damaged_dataset_is_one_line_naming_the_file_and_the_command(project, tmp_path, monkeypatch):
    """A truncated Fashion-MNIST file stops the run before anything is written (not in a notebook cell)."""
    import gzip

    folder = tmp_path / "fm"
    folder.mkdir()
    blob = gzip.compress(bytes(1000))
    (folder / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    monkeypatch.setenv("COMPANION_DATA", str(tmp_path / "cache"))
    out = tmp_path / "out"
    rc, stdout, stderr = call("run", "good", "--profile", "full", "-p", "data_dir", folder, "--out", out)
    assert rc == 2 and stdout == "" and len(stderr.splitlines()) == 1
    assert stderr.startswith(f"companion: error: dataset file {folder / 'train-images-idx3-ubyte.gz'} is damaged or "
                             "truncated (Compressed file ended before the end-of-stream marker was reached)")
    assert stderr.rstrip().endswith(f"prepare it again: python data_scripts/fashion_mnist.py --dest {folder}")
    assert not out.exists()
