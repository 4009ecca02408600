"""Ctrl-C and SIGTERM on a real ``companion`` process over a throw-away fixture project: it stops within
seconds, leaves no worker, kernel or process a kernel started, keeps what finished, prints one line (no
traceback) and exits 128 + the signal number."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from companion import runner


import fixture_project as fx
STOP_BUDGET_S = 10.0  # "within a few seconds" on a loaded 2-core machine; it takes about 2-3 s


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return fx.make_project(tmp_path_factory.mktemp("signals"), [fx.paper("quick", fx.QUICK_BODY),
                                                                fx.paper("slow1", fx.SLOW_BODY),
                                                                fx.paper("slow2", fx.SLOW_BODY)])


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _start(project: Path, tmp: Path, *argv: str) -> tuple[subprocess.Popen, Path, Path]:
    """``companion ARGV`` in its own session (so its process group is what a terminal would signal)."""
    env = {**os.environ, "COMPANION_ROOT": str(project), "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter")}
    env.pop("MPLBACKEND", None)
    out, err = tmp / "stdout.txt", tmp / "stderr.txt"
    companion = Path(sys.executable).with_name("companion")
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([str(companion), *argv], stdout=o, stderr=e, env=env, start_new_session=True)
    return proc, out, err


def _wait_for(proc, paths, err: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.is_file() for p in paths):
        assert proc.poll() is None, f"companion exited early ({proc.returncode}): {err.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"notebooks did not start: {err.read_text()[-2000:]}"
        time.sleep(0.2)


def _stop(proc, signum: int, whole_group: bool) -> float:
    t0 = time.monotonic()
    if whole_group:
        os.killpg(proc.pid, signum)  # what a terminal does on Ctrl-C
    else:
        proc.send_signal(signum)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"companion still running 60 s after {signal.Signals(signum).name}")
    return time.monotonic() - t0


def _assert_all_gone(tree: list[psutil.Process]) -> None:
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [(p.pid, " ".join(p.cmdline())[:80]) for p in tree if _alive(p)]
    for p in tree:  # never leave them to the rest of the test run
        if _alive(p):
            p.kill()
    assert not left, f"orphans: {left}"


def _tree(proc) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def _kernels(tree) -> list[psutil.Process]:
    return [p for p in tree if "ipykernel" in " ".join(p.cmdline())]


CASES = [("run-all", signal.SIGINT, True), ("run-all", signal.SIGTERM, False), ("run", signal.SIGINT, True)]


@pytest.mark.parametrize("command,signum,whole_group", CASES,
                         ids=["run-all SIGINT to the group", "run-all SIGTERM", "run SIGINT to the group"])
def test_a_signal_stops_everything_within_seconds(project, tmp_path, command, signum, whole_group):
    out = tmp_path / "runs"
    if command == "run-all":
        proc, stdout, stderr = _start(project, tmp_path, "run-all", "--jobs", "2", "--out", str(out))
        # quick finishes first; then slow1 and slow2 both sleep in their kernels, each with a grandchild
        _wait_for(proc, [out / "quick" / "run.json", out / "slow1" / "started", out / "slow2" / "started"], stderr)
        expected_kernels, finished = 2, "1 of 3 runs finished (quick)"
    else:
        proc, stdout, stderr = _start(project, tmp_path, "run", "slow1", "--out", str(out / "slow1"))
        _wait_for(proc, [out / "slow1" / "started"], stderr)
        expected_kernels, finished = 1, "0 of 1 run finished"
    tree = _tree(proc)
    kernels = _kernels(tree)
    assert len(kernels) == expected_kernels
    assert sum("time.sleep(600)" in " ".join(p.cmdline()) for p in tree) == expected_kernels
    connection_files = [runner._kernel_connection_file(k.cmdline()) for k in kernels]
    assert all(f is not None and f.is_file() for f in connection_files)

    seconds = _stop(proc, signum, whole_group)
    print(f"\n{command}: {signal.Signals(signum).name} -> exit in {seconds:.2f} s")
    _assert_all_gone(tree)
    gone = [p for p in psutil.process_iter() if _alive(p) and _pgid(p) == proc.pid]
    assert not gone, f"left in the process group: {gone}"
    assert seconds < STOP_BUDGET_S, f"took {seconds:.1f} s to stop"
    assert proc.returncode == 128 + signum

    err = stderr.read_text()
    ours = [ln for ln in re.split(r"[\r\n]", err) if ln.startswith("companion")]  # papermill's bar uses \r
    assert len(ours) == 1, err
    assert ours[0].startswith(f"companion: interrupted by {signal.Signals(signum).name} after ")
    assert finished in ours[0] and f"results kept in {out}" in ours[0]
    assert "Traceback" not in err
    assert not any(f.exists() for f in connection_files)  # the kernels' connection files are removed

    for slow in ("slow1", "slow2"):  # an interrupted notebook leaves no results to resume from
        assert not (out / slow / "claims.json").exists() and not (out / slow / "run.json").exists()
    if command == "run-all":
        assert (out / "quick" / "claims.json").is_file()  # what finished is kept
        assert "[1/3] quick: ok" in stdout.read_text()


def _pgid(p: psutil.Process) -> int | None:
    try:
        return os.getpgid(p.pid)
    except OSError:
        return None


def test_terminate_tree_kills_what_a_kernel_started_in_its_own_session(tmp_path):
    """The building block: a child in another session (as kernels are) and its grandchild die with the tree."""
    script = ("import subprocess, sys, time; "
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
              "time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 30
        while len(psutil.Process(parent.pid).children(recursive=True)) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = [psutil.Process(parent.pid), *psutil.Process(parent.pid).children(recursive=True)]
        t0 = time.monotonic()
        runner.terminate_tree([parent.pid], grace=2.0)
        assert time.monotonic() - t0 < 5
        parent.wait(5)
        _assert_all_gone(tree)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_workers_and_kernels_die_with_a_killed_supervisor(project, tmp_path):
    """SIGKILL cannot be caught: the worker gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and takes its
    notebook kernel and what that started down with it."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    out = tmp_path / "runs" / "slow1"
    proc, _, stderr = _start(project, tmp_path, "run", "slow1", "--out", str(out))
    _wait_for(proc, [out / "started"], stderr)
    tree = _tree(proc)
    assert len(_kernels(tree)) == 1
    proc.kill()
    proc.wait(10)
    _assert_all_gone(tree)
