"""Run companion notebooks with papermill: one, a seed sweep, or all of them; interruptible and resumable.

- :func:`run_notebook` validates the parameters of one notebook (before anything is written), runs it
  with papermill in this process into ``<out_dir>/<slug>.ipynb``, reads the ``claims.json`` it wrote and,
  when it finished, writes the manifest ``run.json`` beside it (what ``--resume`` compares).
- :func:`run`, :func:`sweep` and :func:`run_all` run notebooks in supervised worker processes (what the
  ``companion`` command uses): :func:`run` one notebook, :func:`sweep` one notebook at several seeds,
  :func:`run_all` every implemented notebook (at one seed or several), ``jobs`` at a time, one torch
  thread each.

Layout on disk. A plain run writes ``<out>/<slug>/`` (``claims.json``, ``run.json``, ``<slug>.ipynb``, the
PNGs). A seed sweep writes each seed's run to ``<out>/<slug>/seed-<N>/`` and, beside them,
``<out>/<slug>/stability.json``: :func:`companion.claims.stability` of the seeds' claims plus
``"runs": {"<N>": "seed-<N>", ...}`` (run folders relative to it) and ``"failed": {"<N>": "<error>"}``.
A seed whose run failed counts as ``missing`` in every claim's verdicts.

Signals. While workers run, SIGINT (also when a terminal sends it to the whole process group), SIGTERM and
SIGHUP are caught by this process alone (workers ignore SIGINT): it stops starting notebooks, terminates
each running worker together with its Jupyter kernel and everything the kernel started (SIGTERM, then
SIGKILL after a grace period), removes the kernels' connection files, keeps what finished and raises
:class:`Interrupted`. Workers also die with this process (``PR_SET_PDEATHSIG`` on Linux), and a kernel
exits on its own when its worker is gone (ipykernel's parent poller).

Resume. ``run.json`` holds the slug, profile, seed, every resolved parameter, and SHA-256 digests of the
notebook file and of the ``companion`` package's sources. With ``resume=True`` a run whose ``run.json``
matches and whose ``claims.json`` reads is reused instead of run again; anything else runs.

GPUs. With several workers and several visible GPUs, worker slot ``i`` gets
``CUDA_VISIBLE_DEVICES=<gpu[i % n]>`` (:func:`gpu_for_slot`), so ``jobs`` = number of GPUs puts one
notebook on each.

The HTML report is :mod:`companion.report`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing.connection import wait as _wait
from pathlib import Path
from typing import Any

from . import catalog, claims, params, runtime

VERDICTS = claims.VERDICTS
MANIFEST = "run.json"
MANIFEST_VERSION = 1
STABILITY = "stability.json"
GRACE_S = 3.0  # how long an interrupted worker and its kernel get to exit after SIGTERM, before SIGKILL
# The kernel's own log: errors only (not ipykernel's "running over TCP without encryption" at every start).
KERNEL_ARGS = ("--IPKernelApp.log_level=ERROR",)
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@dataclass
class RunResult:
    """What one notebook run produced. ``error`` is a one-line message when ``ok`` is false; ``reused`` says
    the run was not executed again because its ``run.json`` matched (``--resume``)."""

    slug: str
    ok: bool
    out_dir: Path
    notebook: Path
    claims: dict | None = None
    seconds: float = 0.0
    error: str = ""
    figures: list[Path] = field(default_factory=list)
    seed: int | None = None
    reused: bool = False

    @property
    def claims_path(self) -> Path:
        return self.out_dir / "claims.json"

    @property
    def label(self) -> str:
        """``slug``, or ``slug seed N`` for one seed of a sweep."""
        return f"{self.slug} seed {self.seed}" if self.out_dir.name == seed_dir(self.seed) else self.slug

    def verdict_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(VERDICTS, 0)
        for c in (self.claims or {}).get("claims", []):
            counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
        return counts


class Interrupted(Exception):
    """A signal stopped the runs; ``finished`` are the runs that completed before it (their results are kept)."""

    def __init__(self, signum: int, finished: list[RunResult], total: int, seconds: float = 0.0):
        self.signum, self.finished, self.total, self.seconds = signum, finished, total, seconds
        self.by_task: dict[int, RunResult] = {}
        super().__init__(f"interrupted by {self.signal_name}; {len(finished)} of {total} runs finished")

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"


def default_out_dir(slug: str) -> Path:
    return catalog.project_root() / "runs" / slug


def seed_dir(seed: int) -> str:
    """The folder of one seed's run inside a sweep's paper folder."""
    return f"seed-{seed}"


def prepare(slug: str, profile: str = "ci", seed: int | None = None, overrides: dict | None = None,
            out_dir=None) -> tuple[catalog.Paper, dict[str, Any], Path]:
    """Check a run without side effects: the paper, its validated parameters and the absolute out dir.

    Raises :class:`~companion.catalog.CatalogError` or :class:`~companion.params.ParamError` (one line).
    """
    paper = catalog.get(slug)
    overrides = dict(overrides or {})
    profile = overrides.pop("profile", profile)
    values = params.profile_values(slug, profile)
    values.update(overrides)
    if seed is not None:
        values["seed"] = seed
    values = params.validate(slug, values)
    params.check_data(values)
    if not paper.notebook.is_file():
        raise catalog.CatalogError(f"{slug} has no notebook yet ({paper.notebook} is missing; status: {paper.status})")
    out = Path(out_dir or values.get("out_dir") or default_out_dir(slug)).expanduser().resolve()
    values["out_dir"] = str(out)
    return paper, values, out


def _one_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _error_line(exc: BaseException) -> str:
    ename = getattr(exc, "ename", None)
    if ename is not None:  # papermill.exceptions.PapermillExecutionError
        where = f" (cell [{exc.exec_count}])" if getattr(exc, "exec_count", None) is not None else ""
        return _one_line(f"{ename}: {_one_line(exc.evalue)}{where}")
    return _one_line(f"{type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------------------------------
# the manifest (run.json) and --resume


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 over the ``companion`` package's Python sources (relative paths and bytes), computed once."""
    pkg = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(pkg.rglob("*.py")):
        h.update(path.relative_to(pkg).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def manifest(paper: catalog.Paper, values: dict[str, Any]) -> dict[str, Any]:
    """What identifies a run's results: slug, profile, seed, resolved parameters and the source digests."""
    parameters = json.loads(json.dumps({k: v for k, v in values.items() if k != "out_dir"}, default=str))
    return {"manifest_version": MANIFEST_VERSION, "slug": paper.slug, "profile": values.get("profile"),
            "seed": values.get("seed"), "parameters": parameters, "notebook_sha256": _sha256(paper.notebook),
            "companion_sha256": source_digest()}


def _figures(out: Path, since: float | None = None) -> list[Path]:
    return sorted(p for p in out.glob("*.png") if since is None or p.stat().st_mtime >= since - 1)


def reuse(paper: catalog.Paper, values: dict[str, Any], out: Path) -> RunResult | None:
    """The finished run in ``out`` when its ``run.json`` matches these parameters, seed and sources; else None."""
    try:
        seen = json.loads((out / MANIFEST).read_text())
        doc = claims.load(out / "claims.json")
    except (OSError, ValueError):
        return None
    if not isinstance(seen, dict) or not (out / f"{paper.slug}.ipynb").is_file():
        return None
    want = manifest(paper, values)
    if any(seen.get(k) != v for k, v in want.items()):
        return None
    return RunResult(paper.slug, True, out, out / f"{paper.slug}.ipynb", doc, float(seen.get("seconds", 0.0)),
                     figures=_figures(out), seed=values.get("seed"), reused=True)


# ----------------------------------------------------------------------------------------------------
# one notebook, in this process


class _KernelEnv:
    """Environment for the kernel (inherited from this process): no MPLBACKEND (it would hide figures)."""

    def __init__(self, extra: dict[str, str] | None = None):
        self.extra = {"MPLBACKEND": None, **(extra or {})}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.extra}
        for k, v in self.extra.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_notebook(slug: str, profile: str = "ci", seed: int | None = None, overrides: dict | None = None,
                 out_dir=None, log_output: bool = False, progress_bar: bool = True,
                 timeout: float | None = None, resume: bool = False) -> RunResult:
    """Run the notebook of ``slug`` with papermill in this process; never raises for a failing notebook.

    Bad input (unknown slug or profile, unknown parameter, bad value, missing or damaged dataset, cuda without
    GPU) raises before any file or directory is created. The executed notebook goes to ``<out_dir>/<slug>.ipynb``
    (default out dir ``<project_root>/runs/<slug>``); the notebook writes ``claims.json`` and its figures there,
    and a finished run gets its manifest ``run.json``. ``timeout`` is per cell, in seconds. With ``resume``, a
    finished run whose manifest matches is returned as it is (``reused``) instead of being run again.
    """
    paper, values, out = prepare(slug, profile, seed, overrides, out_dir)
    if resume and (done := reuse(paper, values, out)) is not None:
        return done
    return _execute_notebook(paper, values, out, log_output, progress_bar, timeout)


def _execute_notebook(paper: catalog.Paper, values: dict[str, Any], out: Path, log_output: bool = False,
                      progress_bar: bool = True, timeout: float | None = None) -> RunResult:
    import papermill as pm

    slug = paper.slug
    out.mkdir(parents=True, exist_ok=True)
    claims_file = out / "claims.json"
    for stale in (claims_file, out / MANIFEST):  # never report (or resume) a previous run's results
        stale.unlink(missing_ok=True)
    executed = out / f"{slug}.ipynb"
    if log_output:  # papermill logs the cells' output at INFO on its logger: show it plainly on stderr
        import logging

        log = logging.getLogger("papermill")
        if not log.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
    start, t0 = time.time(), time.perf_counter()
    error = ""
    try:
        # values are final (resolve() must not rescale them); loops print one line each instead of a bar
        with _KernelEnv({params.RESOLVED_ENV: "1", runtime.BATCH_ENV: "1"}):
            pm.execute_notebook(
                str(paper.notebook), str(executed), parameters=values, kernel_name="python3", language="python",
                cwd=str(catalog.notebooks_dir()), start_timeout=180, execution_timeout=timeout,
                log_output=log_output, progress_bar=progress_bar and not log_output,
                extra_arguments=list(KERNEL_ARGS),
            )
    except Exception as exc:  # noqa: BLE001 -- PapermillExecutionError, DeadKernelError, CellTimeoutError, kernel start
        error = _error_line(exc)
    seconds = time.perf_counter() - t0
    doc = None
    if claims_file.is_file():
        try:
            doc = claims.load(claims_file)
        except (ValueError, OSError) as exc:
            error = error or f"unreadable claims.json: {_one_line(str(exc))}"
    elif not error:
        error = f"the notebook finished but wrote no claims.json to {out}"
    if not error:
        record = {**manifest(paper, values), "seconds": round(seconds, 3),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (out / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
    return RunResult(slug, not error, out, executed, doc, seconds, error, _figures(out, start),
                     seed=values.get("seed"))


# ----------------------------------------------------------------------------------------------------
# supervised worker processes


@dataclass
class _Task:
    paper: catalog.Paper
    values: dict[str, Any]
    out: Path

    @property
    def seed(self) -> int | None:
        return self.values.get("seed")

    def failed(self, error: str) -> RunResult:
        return RunResult(self.paper.slug, False, self.out, self.out / f"{self.paper.slug}.ipynb", error=error,
                         seed=self.seed)


def visible_gpus() -> list[str]:
    """The GPUs workers may be given: ``$CUDA_VISIBLE_DEVICES`` if set, else those ``nvidia-smi`` lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and not g.strip().startswith("-")]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


def gpu_for_slot(slot: int, gpus: list[str]) -> str | None:
    """Round robin: the GPU of worker slot ``slot`` (None without GPUs)."""
    return gpus[slot % len(gpus)] if gpus else None


def _ignore(signum, frame) -> None:  # a Python-level handler: reset to the default in exec'd kernels
    pass


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent (the supervisor) dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_stop(signum, frame) -> None:
    """SIGTERM in a worker (from the supervisor, or ``PR_SET_PDEATHSIG`` when the supervisor died): take the
    kernel and whatever it started down too, then exit at once."""
    try:
        import psutil

        terminate_tree([p.pid for p in psutil.Process().children()], grace=1.0)
    finally:
        os._exit(128 + signum)


def _worker_main(task: _Task, env: dict[str, str], options: dict[str, Any], conn, parent: int) -> None:
    signal.signal(signal.SIGTERM, _worker_stop)
    signal.signal(signal.SIGINT, _ignore)  # Ctrl-C reaches the whole process group: the supervisor decides
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _worker_stop)
    _die_with_parent()
    if os.getppid() != parent:  # the supervisor died before prctl
        os._exit(1)
    os.environ.update(env)
    try:
        res = _execute_notebook(task.paper, task.values, task.out, **options)
    except Exception as exc:  # noqa: BLE001 -- reported as this run's error; the others go on
        res = task.failed(_error_line(exc))
    conn.send(res)
    conn.close()


class _Signals:
    """Catch SIGINT/SIGTERM/SIGHUP in this (main) thread while workers run: remember the first one."""

    def __init__(self):
        self.received: int | None = None
        self.saved: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self.saved[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self.saved.items():
            signal.signal(s, h)


@dataclass
class _Worker:
    task: _Task
    index: int
    slot: int
    proc: Any
    conn: Any

    def result(self) -> RunResult | None:
        """The worker's result once it is done (or the error line of a worker that died); None while running."""
        for _ in range(2):
            if self.conn.poll():
                try:
                    res = self.conn.recv()
                except (EOFError, OSError):
                    break
                self.proc.join(10)
                return res
            if self.proc.is_alive():
                return None
        self.proc.join(10)
        return self.task.failed(f"the worker process died (exit code {self.proc.exitcode})")


def _alive(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kernel_connection_file(cmdline: list[str]) -> Path | None:
    """The connection file of an ipykernel command line (``-f FILE``): a ``kernel-*.json`` in Jupyter's runtime
    folder or the ``tmp*.json`` jupyter_client makes in the temp folder (what papermill's kernels use)."""
    import tempfile

    if not any("ipykernel" in part for part in cmdline):
        return None
    for flag, value in zip(cmdline, cmdline[1:]):
        path = Path(value)
        if flag in ("-f", "--f") and path.suffix == ".json" and (
                path.name.startswith("kernel-")
                or (path.name.startswith("tmp") and path.parent == Path(tempfile.gettempdir()))):
            return path
    return None


def terminate_tree(pids: list[int], grace: float = GRACE_S) -> None:
    """Stop the processes ``pids`` and all their descendants (kernels included, though they run in their own
    sessions): SIGTERM, then SIGKILL after ``grace`` seconds; remove the kernels' connection files."""
    import psutil

    procs: dict[int, Any] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                procs[p.pid] = p
        except psutil.Error:
            pass
    files, groups = [], []
    for p in procs.values():
        try:
            files.append(_kernel_connection_file(p.cmdline()))
            if os.getpgid(p.pid) == p.pid and p.pid != os.getpgrp():  # a kernel leads its own process group
                groups.append(p.pid)
        except (psutil.Error, OSError):
            pass
    for p in procs.values():
        try:
            p.terminate()
        except psutil.Error:
            pass
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in procs.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pgid in groups:  # anything a kernel started after the snapshot
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    for p in procs.values():
        if _alive(p):
            try:
                p.kill()
            except psutil.Error:
                pass
    deadline = time.monotonic() + 2.0
    while any(_alive(p) for p in procs.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for f in files:
        if f is not None:
            f.unlink(missing_ok=True)


class _Progress:
    """A bar on a terminal; elsewhere (CI logs, pipes) one line per finished run on stdout."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.bar = total, 0, None
        self.enabled = enabled and total > 0
        if self.enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="notebooks", unit="nb")

    def update(self, res: RunResult) -> None:
        self.done += 1
        if not self.enabled:
            return
        name = res.label
        state = "reused" if res.reused else "ok" if res.ok else "FAILED"
        if self.bar is not None:
            self.bar.set_postfix_str(f"{name}: {state}")
            self.bar.update()
        else:
            print(f"[{self.done}/{self.total}] {name}: {state} ({res.seconds:.1f} s)", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _supervise(tasks: list[_Task], jobs: int, env: dict[str, str], options: dict[str, Any], resume: bool = False,
               progress: bool = False, gpus: list[str] | None = None) -> list[RunResult]:
    """Run ``tasks`` in at most ``jobs`` worker processes; results in task order. Raises :class:`Interrupted`."""
    t0 = time.perf_counter()
    results: dict[int, RunResult] = {}
    pending = deque(range(len(tasks)))
    running: dict[int, _Worker] = {}
    slots = list(range(jobs))
    if gpus is None:
        gpus = visible_gpus() if jobs > 1 else []
    ctx = mp.get_context("fork")
    bar = _Progress(len(tasks), progress)

    def finish(i: int, res: RunResult) -> None:
        results[i] = res
        bar.update(res)

    try:
        with _Signals() as sig:
            while (pending or running) and sig.received is None:
                while pending and slots and sig.received is None:
                    i = pending.popleft()
                    t = tasks[i]
                    if resume and (done := reuse(t.paper, t.values, t.out)) is not None:
                        finish(i, done)
                        continue
                    slot = slots.pop(0)
                    worker_env = dict(env)
                    if jobs > 1 and (gpu := gpu_for_slot(slot, gpus)) is not None:
                        worker_env["CUDA_VISIBLE_DEVICES"] = gpu
                    reader, writer = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=_worker_main, args=(t, worker_env, options, writer, os.getpid()),
                                       name=f"companion-{t.paper.slug}", daemon=False)
                    proc.start()
                    writer.close()
                    running[i] = _Worker(t, i, slot, proc, reader)
                if not running:
                    continue
                _wait([w.conn for w in running.values()] + [w.proc.sentinel for w in running.values()], timeout=0.2)
                for i, w in list(running.items()):
                    res = w.result()
                    if res is not None:
                        del running[i]
                        slots.append(w.slot)
                        slots.sort()
                        finish(i, res)
            if sig.received is not None:
                _stop_workers(running)
                stop = Interrupted(sig.received, [results[i] for i in sorted(results)], len(tasks),
                                   time.perf_counter() - t0)
                stop.by_task = dict(results)
                raise stop
    finally:
        _stop_workers(running)  # only left running when something unexpected raised
        bar.close()
    return [results[i] for i in range(len(tasks))]


def _stop_workers(running: dict[int, _Worker]) -> None:
    if not running:
        return
    terminate_tree([w.proc.pid for w in running.values()])
    for w in running.values():
        w.proc.join(1)
        w.conn.close()
    running.clear()


# ----------------------------------------------------------------------------------------------------
# what the command runs: one notebook, a seed sweep, all notebooks


def _threads_env(threads: int | None) -> dict[str, str]:
    env = {"COMPANION_ROOT": str(catalog.project_root())}
    if threads:
        n = str(threads)
        env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, COMPANION_THREADS=n)
    return env


def _check_jobs(jobs: int | None, threads: int | None = 1) -> None:
    if threads is not None and threads < 1:
        raise params.ParamError(f"threads={threads!r} is out of range; allowed [1, inf]")
    if jobs is not None and jobs < 1:
        raise params.ParamError(f"jobs={jobs!r} is out of range; allowed [1, inf]")


def _sweep_tasks(slug: str, seeds: list[int], profile: str, overrides: dict | None,
                 out_dir) -> tuple[Path, list[_Task]]:
    paper, values, base = prepare(slug, profile, seeds[0], overrides, out_dir)
    tasks = []
    for s in seeds:
        paper, values, out = prepare(slug, profile, s, overrides, base / seed_dir(s))
        tasks.append(_Task(paper, values, out))
    return base, tasks


def write_stability(paper_dir: Path, results: list[RunResult]) -> dict:
    """Write ``<paper_dir>/stability.json`` for the runs of one sweep (seed order); returns the document."""
    paper_dir = Path(paper_dir)
    docs = []
    for r in results:
        if r.ok and r.claims is not None:
            docs.append(r.claims)
        else:  # a failed seed: every claim counts as missing there
            docs.append({"paper": r.slug, "profile": (r.claims or {}).get("profile", ""), "seed": r.seed,
                         "claims": []})
    doc = claims.stability(docs)
    if not doc["profile"]:
        doc["profile"] = next((d["profile"] for d in docs if d.get("profile")), "")
    doc["runs"] = {str(r.seed): r.out_dir.relative_to(paper_dir).as_posix() for r in results}
    doc["failed"] = {str(r.seed): r.error for r in results if not r.ok}
    paper_dir.mkdir(parents=True, exist_ok=True)
    tmp = paper_dir / (STABILITY + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, paper_dir / STABILITY)
    return doc


def _write_sweeps(groups: dict[Path, list[int]], results_by_task: dict[int, RunResult]) -> None:
    """stability.json for every sweep whose seeds all finished."""
    for paper_dir, idx in groups.items():
        if all(i in results_by_task for i in idx):
            write_stability(paper_dir, [results_by_task[i] for i in idx])


def _run_tasks(tasks: list[_Task], groups: dict[Path, list[int]], jobs: int, env: dict[str, str],
               options: dict[str, Any], resume: bool, progress: bool) -> list[RunResult]:
    for paper_dir in groups:  # a sweep's old summary no longer describes its seed folders
        (paper_dir / STABILITY).unlink(missing_ok=True)
    try:
        results = _supervise(tasks, jobs, env, options, resume=resume, progress=progress)
    except Interrupted as stop:
        _write_sweeps(groups, stop.by_task)
        raise
    _write_sweeps(groups, dict(enumerate(results)))
    return results


def run(slug: str, profile: str = "ci", seed: int | None = None, overrides: dict | None = None, out_dir=None,
        log_output: bool = False, progress_bar: bool = True, timeout: float | None = None,
        resume: bool = False) -> RunResult:
    """:func:`run_notebook` in a supervised worker process: a signal stops it (and its kernel) within seconds
    and raises :class:`Interrupted`. Bad input raises before anything is written."""
    paper, values, out = prepare(slug, profile, seed, overrides, out_dir)
    options = dict(log_output=log_output, progress_bar=progress_bar, timeout=timeout)
    return _run_tasks([_Task(paper, values, out)], {}, 1, {}, options, resume, progress=False)[0]


def sweep(slug: str, seeds: list[int], profile: str = "ci", overrides: dict | None = None, out_dir=None,
          jobs: int = 1, log_output: bool = False, progress_bar: bool = True, timeout: float | None = None,
          resume: bool = False) -> tuple[list[RunResult], dict]:
    """Run ``slug`` once per seed into ``<out_dir>/seed-<N>/`` (``jobs`` at a time) and write
    ``<out_dir>/stability.json``; returns the runs (seed order) and the stability document."""
    _check_jobs(jobs)
    base, tasks = _sweep_tasks(slug, list(seeds), profile, overrides, out_dir)
    options = dict(log_output=log_output, progress_bar=progress_bar and jobs == 1 and not log_output,
                   timeout=timeout)
    results = _run_tasks(tasks, {base: list(range(len(tasks)))}, jobs, {}, options, resume, progress=jobs > 1)
    return results, json.loads((base / STABILITY).read_text())


def run_all(profile: str = "ci", jobs: int | None = None, out_root=None, seed: int | None = None,
            threads: int = 1, timeout: float | None = None, progress_bar: bool = True,
            seeds: list[int] | None = None, resume: bool = False) -> list[RunResult]:
    """Run every implemented notebook in parallel worker processes; a failure does not stop the others.

    All parameters are validated first (bad input raises, nothing written). Each kernel gets ``threads``
    torch threads through ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``COMPANION_THREADS``. ``<out_root>/<slug>/``
    holds each run (default ``<project_root>/runs``); with ``seeds``, each notebook runs once per seed into
    ``<out_root>/<slug>/seed-<N>/`` and gets ``stability.json``. Results come back in catalog order (then seed
    order). A signal raises :class:`Interrupted` after stopping the workers and their kernels.
    """
    if seed is not None and seeds:
        raise params.ParamError("give either seed or seeds, not both")
    _check_jobs(jobs, threads)
    papers = catalog.implemented()
    root = Path(out_root).expanduser().resolve() if out_root else catalog.project_root() / "runs"
    tasks: list[_Task] = []
    groups: dict[Path, list[int]] = {}
    for p in papers:
        if seeds:
            base, sweep_tasks = _sweep_tasks(p.slug, list(seeds), profile, None, root / p.slug)
            groups[base] = list(range(len(tasks), len(tasks) + len(sweep_tasks)))
            tasks += sweep_tasks
        else:
            paper, values, out = prepare(p.slug, profile, seed, out_dir=root / p.slug)
            tasks.append(_Task(paper, values, out))
    if not tasks:
        return []
    jobs = jobs or min(len(tasks), os.cpu_count() or 1)
    options = dict(log_output=False, progress_bar=False, timeout=timeout)
    return _run_tasks(tasks, groups, jobs, _threads_env(threads), options, resume, progress=progress_bar)
