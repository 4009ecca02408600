"""Run companion notebooks with papermill, one or all of them.

- :func:`run_notebook` validates the parameters of one notebook (before anything is written), runs it
  with papermill into ``<out_dir>/<slug>.ipynb`` and reads the ``claims.json`` it wrote.
- :func:`run_all` runs every implemented notebook in parallel worker processes, one torch thread each.

The HTML report is :mod:`companion.report`.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import catalog, claims, params, runtime

VERDICTS = claims.VERDICTS


@dataclass
class RunResult:
    """What one notebook run produced. ``error`` is a one-line message when ``ok`` is false."""

    slug: str
    ok: bool
    out_dir: Path
    notebook: Path
    claims: dict | None = None
    seconds: float = 0.0
    error: str = ""
    figures: list[Path] = field(default_factory=list)

    @property
    def claims_path(self) -> Path:
        return self.out_dir / "claims.json"

    def verdict_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(VERDICTS, 0)
        for c in (self.claims or {}).get("claims", []):
            counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
        return counts


def default_out_dir(slug: str) -> Path:
    return catalog.project_root() / "runs" / slug


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
                 timeout: float | None = None) -> RunResult:
    """Run the notebook of ``slug`` with papermill; never raises for a failing notebook.

    Bad input (unknown slug or profile, unknown parameter, bad value, missing dataset, cuda without GPU)
    raises before any file or directory is created. The executed notebook goes to
    ``<out_dir>/<slug>.ipynb`` (default out dir ``<project_root>/runs/<slug>``); the notebook writes
    ``claims.json`` and its figures there. ``timeout`` is per cell, in seconds.
    """
    paper, values, out = prepare(slug, profile, seed, overrides, out_dir)
    import papermill as pm

    out.mkdir(parents=True, exist_ok=True)
    claims_file = out / "claims.json"
    claims_file.unlink(missing_ok=True)  # never report a previous run's claims
    executed = out / f"{slug}.ipynb"
    start, t0 = time.time(), time.perf_counter()
    error = ""
    try:
        # values are final (resolve() must not rescale them); loops print one line each instead of a bar
        with _KernelEnv({params.RESOLVED_ENV: "1", runtime.BATCH_ENV: "1"}):
            pm.execute_notebook(
                str(paper.notebook), str(executed), parameters=values, kernel_name="python3", language="python",
                cwd=str(catalog.notebooks_dir()), start_timeout=180, execution_timeout=timeout,
                log_output=log_output, progress_bar=progress_bar and not log_output,
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
    figures = sorted(p for p in out.glob("*.png") if p.stat().st_mtime >= start - 1)
    return RunResult(slug, not error, out, executed, doc, seconds, error, figures)


def _worker(slug: str, profile: str, seed: int | None, out_dir: str, env: dict[str, str],
            timeout: float | None) -> RunResult:
    os.environ.update(env)
    try:
        return run_notebook(slug, profile, seed, out_dir=out_dir, progress_bar=False, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 -- a bad input found late must not stop the other notebooks
        out = Path(out_dir)
        return RunResult(slug, False, out, out / f"{slug}.ipynb", error=_error_line(exc))


def run_all(profile: str = "ci", jobs: int | None = None, out_root=None, seed: int | None = None,
            threads: int = 1, timeout: float | None = None, progress_bar: bool = True) -> list[RunResult]:
    """Run every implemented notebook in parallel processes; a failure does not stop the others.

    All parameters are validated first (bad input raises, nothing written). Each kernel gets ``threads``
    torch threads through ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``COMPANION_THREADS``. Results come
    back in catalog order; ``<out_root>/<slug>/`` holds each run (default ``<project_root>/runs``).
    """
    from tqdm.auto import tqdm

    papers = catalog.implemented()
    root = Path(out_root).expanduser().resolve() if out_root else catalog.project_root() / "runs"
    if threads < 1:
        raise params.ParamError(f"threads={threads!r} is out of range; allowed [1, inf]")
    if jobs is not None and jobs < 1:
        raise params.ParamError(f"jobs={jobs!r} is out of range; allowed [1, inf]")
    for p in papers:
        prepare(p.slug, profile, seed, out_dir=root / p.slug)
    if not papers:
        return []
    jobs = jobs or min(len(papers), os.cpu_count() or 1)
    n = str(threads)
    env = {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "COMPANION_THREADS": n,
           "COMPANION_ROOT": str(catalog.project_root())}
    results: dict[str, RunResult] = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool, \
            tqdm(total=len(papers), desc="notebooks", unit="nb", disable=not progress_bar) as bar:
        futures = {pool.submit(_worker, p.slug, profile, seed, str(root / p.slug), env, timeout): p.slug
                   for p in papers}
        for fut in as_completed(futures):
            slug = futures[fut]
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001 -- the worker process died
                out = root / slug
                res = RunResult(slug, False, out, out / f"{slug}.ipynb", error=_error_line(exc))
            results[slug] = res
            bar.set_postfix_str(f"{slug}: {'ok' if res.ok else 'FAILED'}")
            bar.update()
    return [results[p.slug] for p in papers]
