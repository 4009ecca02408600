"""Seed sweeps on a throw-away fixture project (tests/test_runner.py's ``make_project``): ``run-all --seeds`` and
``run --seeds`` write each seed to ``<out>/<slug>/seed-<N>/`` and ``stability.json`` beside them (the verdict per
seed, their agreement, the ``runs`` mapping, failed seeds); the agreement table; one GPU per worker slot."""

from __future__ import annotations

import json
import time

import pytest

from companion import catalog, cli, runner


import fixture_project as fx


call = fx.call


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = fx.make_project(tmp_path_factory.mktemp("sweep"),
                           [fx.paper("quick", fx.QUICK_BODY), fx.paper("flaky", fx.FLAKY_BODY)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPANION_ROOT", str(root))
        mp.delenv("MPLBACKEND", raising=False)
        yield root


@pytest.fixture(scope="module")
def swept(project):
    """Both fixture notebooks at seeds 0 and 1, two workers, on a machine that pretends to have two GPUs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "visible_gpus", lambda: ["0", "1"])
        results = runner.run_all(jobs=2, seeds=[0, 1], progress_bar=False)
    return project.resolve() / "runs", results


def test_every_seed_runs_in_its_own_folder(swept):
    runs, results = swept
    assert [(r.slug, r.seed, r.ok) for r in results] == [("quick", 0, True), ("quick", 1, True), ("flaky", 0, True),
                                                        ("flaky", 1, False)]
    for r in results:
        assert r.out_dir == runs / r.slug / f"seed-{r.seed}"
        assert r.notebook == r.out_dir / f"{r.slug}.ipynb" and r.notebook.is_file()
        assert (r.out_dir / "claims.json").is_file() == r.ok and (r.out_dir / "run.json").is_file() == r.ok
        assert r.ok or "RuntimeError: flaky at seed 1" in r.error
    for slug in ("quick", "flaky"):
        assert (runs / slug / "stability.json").is_file() and not (runs / slug / "claims.json").exists()
        assert json.loads((runs / slug / "seed-0" / "claims.json").read_text())["seed"] == 0


def test_stability_json_has_verdicts_per_seed_agreement_and_runs(swept):
    runs, _ = swept
    doc = json.loads((runs / "quick" / "stability.json").read_text())
    assert doc["paper"] == "quick" and doc["profile"] == "ci" and doc["seeds"] == [0, 1]
    assert doc["runs"] == {"0": "seed-0", "1": "seed-1"} and doc["failed"] == {}
    rows = {r["name"]: r for r in doc["claims"]}
    assert rows["always"]["kind"] == "premise" and rows["always"]["unanimous"] and rows["always"]["agreement"] == 1.0
    even = rows["even seeds"]
    assert even["verdicts"] == {"0": "supported", "1": "not_supported"}
    assert even["agreement"] == 0.5 and not even["unanimous"] and even["differences"] == {"0": 1.0, "1": -1.0}
    for seed, folder in doc["runs"].items():  # what the report follows
        assert json.loads((runs / "quick" / folder / "claims.json").read_text())["seed"] == int(seed)


def test_a_failed_seed_counts_as_missing(swept):
    runs, _ = swept
    doc = json.loads((runs / "flaky" / "stability.json").read_text())
    assert doc["seeds"] == [0, 1] and doc["runs"] == {"0": "seed-0", "1": "seed-1"}
    assert list(doc["failed"]) == ["1"] and "flaky at seed 1" in doc["failed"]["1"]
    (row,) = doc["claims"]
    assert row["verdicts"] == {"0": "supported", "1": "missing"} and row["agreement"] == 0.5


def test_each_worker_gets_its_own_gpu(swept):
    """Two workers, two GPUs: the two seeds of the first notebook ran at once, one on each GPU."""
    _, results = swept
    notes = {r.seed: r.claims["claims"][1]["note"] for r in results if r.slug == "quick"}
    assert notes == {0: "gpu=0", 1: "gpu=1"}


def test_run_seeds_resume_prints_the_agreement_table(swept):
    runs, _ = swept
    rc, out, err = call("run", "quick", "--seeds", "0,1", "--resume", "--out", runs / "quick")
    assert rc == 0, err
    assert "quick seed 0: reused" in out and "quick seed 1: reused" in out
    assert "quick: seeds 0, 1; every seed agrees on 1 of 2 claims" in out
    line = next(ln for ln in out.splitlines() if "even seeds" in ln)
    assert line.split() == ["paper", "even", "seeds", "supp", "not_supp", "1/2", "<-", "differs"]
    assert f"stability: {runs / 'quick' / 'stability.json'}" in out


def test_run_all_seeds_summary(swept):
    """The CLI's sweep summary: a seed column, the agreement tables; the failed seed runs again (and fails)."""
    runs, _ = swept
    rc, out, err = call("run-all", "--seeds", "0,1", "--resume", "--out", runs, "--jobs", "2")
    assert rc == 1
    rows = [ln.split() for ln in out.splitlines() if ln.split()[:1] in (["quick"], ["flaky"]) and len(ln.split()) == 8]
    assert [r[:3] for r in rows] == [["quick", "0", "reused"], ["quick", "1", "reused"], ["flaky", "0", "reused"],
                                     ["flaky", "1", "FAILED"]]
    assert "flaky: seeds 0, 1; every seed agrees on 0 of 1 claims" in out and "failed: seed 1: RuntimeError" in out
    assert "3/4 runs ok (3 reused from earlier runs)" in out
    assert "flaky seed 1: RuntimeError: flaky at seed 1" in err


@pytest.mark.parametrize("argv,message", [
    (["run", "quick", "--seeds", "1,1"], "repeats a seed"),
    (["run", "quick", "--seeds", "a,b"], "is not a list of seeds"),
    (["run", "quick", "--seeds", "3-1"], "empty range"),
    (["run", "quick", "--seed", "1", "--seeds", "0,1"], "not allowed with argument"),
    (["run", "quick", "--seeds", "0,-1"], "seed=-1 is out of range"),
    (["run-all", "--seeds", "2,x"], "is not a list of seeds"),
])
def test_bad_seeds_are_one_line_exit_2(project, tmp_path, argv, message):
    rc, out, err = call(*argv, "--out", tmp_path / "out")
    assert rc == 2 and out == "" and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_parse_seeds():
    assert cli.parse_seeds("0,1,2") == [0, 1, 2]
    assert cli.parse_seeds("0-3") == [0, 1, 2, 3]
    assert cli.parse_seeds("5, 0-2") == [5, 0, 1, 2]
    assert cli.parse_seeds("0,,") == [0]
    assert cli.parse_seeds("-1") == [-1]  # refused later, by the seed parameter's range


def _fake_worker(task, env, options, conn, parent):
    """Stands in for a notebook run: reports its GPU and when it ran."""
    start = time.monotonic()
    time.sleep(0.4)
    conn.send(runner.RunResult(task.paper.slug, True, task.out, task.out / "x.ipynb", seed=task.seed,
                               error=json.dumps([env.get("CUDA_VISIBLE_DEVICES"), start, time.monotonic()])))
    conn.close()


@pytest.mark.parametrize("jobs,gpus", [(3, ["0", "1", "2"]), (2, ["4", "7", "9"]), (4, ["0", "1"]), (1, ["0", "1"]),
                                       (3, [])])
def test_gpus_round_robin_over_worker_slots(project, tmp_path, monkeypatch, jobs, gpus):
    monkeypatch.setattr(runner, "_worker_main", _fake_worker)
    paper = catalog.get("quick")
    tasks = [runner._Task(paper, {"seed": i}, tmp_path / str(i)) for i in range(7)]
    results = runner._supervise(tasks, jobs, {}, {}, gpus=gpus)
    assert [r.seed for r in results] == list(range(7))
    runs = [json.loads(r.error) for r in results]
    used = [gpu for gpu, _, _ in runs]
    if jobs == 1 or not gpus:
        assert used == [None] * 7  # one worker (or no GPU): the environment is left alone
        return
    assert set(used) == set(gpus[:jobs])  # round robin: slot i gets gpus[i % len(gpus)]
    for i, (gpu, start, end) in enumerate(runs):
        overlapping = [g for j, (g, s, e) in enumerate(runs) if j != i and s < end and start < e]
        if jobs <= len(gpus):
            assert gpu not in overlapping  # never two notebooks at once on one GPU
    assert runner.gpu_for_slot(5, ["a", "b"]) == "b" and runner.gpu_for_slot(0, []) is None


def test_visible_gpus(monkeypatch):
    import subprocess

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert runner.visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert runner.visible_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")

    def smi(argv, **kw):
        assert argv[0] == "nvidia-smi"
        return subprocess.CompletedProcess(argv, 0, "0\n1\n2\n", "")

    monkeypatch.setattr(subprocess, "run", smi)
    assert runner.visible_gpus() == ["0", "1", "2"]

    def missing(argv, **kw):
        raise FileNotFoundError(argv[0])

    monkeypatch.setattr(subprocess, "run", missing)
    assert runner.visible_gpus() == []


def _fake_sweep_worker(task, env, options, conn, parent):
    """Seeds of ``quick`` finish at once with claims; ``flaky`` (standing in for a long notebook) never does."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if task.paper.slug == "flaky":
        (task.out.parent / f"started-{task.seed}").write_text("")
        time.sleep(60)
    doc = {"paper": "quick", "profile": "ci", "seed": task.seed,
           "claims": [{"name": "c", "kind": "paper", "verdict": "supported", "baseline_value": 1.0,
                       "method_value": 2.0}]}
    conn.send(runner.RunResult(task.paper.slug, True, task.out, task.out / "x.ipynb", doc, seed=task.seed))
    conn.close()


def test_an_interrupted_sweep_keeps_the_sweeps_that_finished(project, tmp_path, monkeypatch):
    import os
    import signal
    import threading

    monkeypatch.setattr(runner, "_worker_main", _fake_sweep_worker)
    tasks, groups = [], {}
    for slug in ("quick", "flaky"):
        base, sweep_tasks = runner._sweep_tasks(slug, [0, 1], "ci", None, tmp_path / slug)
        groups[base] = [len(tasks), len(tasks) + 1]
        tasks += sweep_tasks
        (base / "stability.json").parent.mkdir(parents=True)
        (base / "stability.json").write_text("{}")  # a previous sweep's: removed, as the seeds run again

    def interrupt():  # Ctrl-C once both long runs are under way
        deadline = time.monotonic() + 30
        while not all((tmp_path / "flaky" / f"started-{s}").exists() for s in (0, 1)) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(runner.Interrupted) as info:
        runner._run_tasks(tasks, groups, 2, {}, {}, resume=False, progress=False)
    assert time.monotonic() - t0 < 30
    stop = info.value
    assert stop.signal_name == "SIGINT" and stop.total == 4 and sorted(stop.by_task) == [0, 1]
    assert [(r.slug, r.seed) for r in stop.finished] == [("quick", 0), ("quick", 1)]
    doc = json.loads((tmp_path / "quick" / "stability.json").read_text())
    assert doc["seeds"] == [0, 1] and doc["runs"] == {"0": "seed-0", "1": "seed-1"}
    assert not (tmp_path / "flaky" / "stability.json").exists()
