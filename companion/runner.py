"""Run companion notebooks with papermill, one or all of them, and build a static HTML report.

- :func:`run_notebook` validates the parameters of one notebook (before anything is written), runs it
  with papermill into ``<out_dir>/<slug>.ipynb`` and reads the ``claims.json`` it wrote.
- :func:`run_all` runs every implemented notebook in parallel worker processes, one torch thread each.
- :func:`build_report` writes ``index.html`` (papers × claims × verdicts) and renders each executed
  notebook to ``<slug>/<slug>.html`` without the ``injected-parameters`` cell.
"""

from __future__ import annotations

import html
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import catalog, claims, params

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
        with _KernelEnv({params.RESOLVED_ENV: "1"}):  # values are final: resolve() must not rescale them
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


# --------------------------------------------------------------------------------------------- report

_COLOURS = {"supported": "#d4edda", "not_supported": "#f8d7da", "inconclusive": "#fff3cd",
            "not_testable": "#e2e3e5", "failed": "#f5c6cb", "not run": "#ffffff"}

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}
.num{text-align:right}
""" + "".join(f".v-{k.replace(' ', '_')}{{background:{c}}}\n" for k, c in _COLOURS.items())


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


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.4g}"


def _notebook_failed(ipynb: Path) -> bool:
    try:
        meta = json.loads(ipynb.read_text(encoding="utf-8")).get("metadata", {}).get("papermill", {})
    except (ValueError, OSError):
        return True
    return bool(meta.get("exception"))


def build_report(root=None) -> Path:
    """Write ``<root>/index.html`` (default ``<project_root>/runs``) and render the executed notebooks.

    One row per claim of each paper of the catalog, coloured by verdict; papers without a run show
    "not run", runs without claims (or whose notebook raised) show "failed". Returns the index path.
    """
    root = Path(root).expanduser().resolve() if root else catalog.project_root() / "runs"
    if not root.is_dir():
        raise FileNotFoundError(f"no runs directory {root} (run `companion run SLUG` or `companion run-all` first)")
    papers = catalog.papers()
    counts = dict.fromkeys((*VERDICTS, "failed", "not run"), 0)
    rows = []
    for p in papers:
        d = root / p.slug
        ipynb = d / f"{p.slug}.ipynb"
        doc = None
        if (d / "claims.json").is_file():
            try:
                doc = claims.load(d / "claims.json")
            except (ValueError, OSError):
                doc = None
        link = ""
        if ipynb.is_file():
            render_notebook(ipynb, d / f"{p.slug}.html")
            link = f"<a href='{html.escape(p.slug)}/{html.escape(p.slug)}.html'>notebook</a>"
            figs = sorted(d.glob("*.png"))
            link += "".join(f" · <a href='{html.escape(p.slug)}/{html.escape(f.name)}'>{html.escape(f.stem)}</a>"
                            for f in figs)
        title = (f"<b>{p.number}. {html.escape(p.slug)}</b><br><a href='{html.escape(p.paper_url)}'>"
                 f"{html.escape(p.title)}</a> ({p.year})")
        if not ipynb.is_file() and doc is None:
            status = "not run"
        elif doc is None or not doc.get("claims") or _notebook_failed(ipynb):
            status = "failed"
        else:
            status = ""
        if status:
            counts[status] += 1
            cls = status.replace(" ", "_")
            rows.append(f"<tr><td>{title}</td><td>{link}</td>"
                        f"<td class='v-{cls}' colspan='6'>{status}</td></tr>")
            if status == "not run" or doc is None:
                continue
        cl = doc["claims"]
        for i, c in enumerate(cl):
            counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
            lead = (f"<td rowspan='{len(cl)}'>{title}<br><small>profile {html.escape(str(doc.get('profile')))}"
                    f", seed {html.escape(str(doc.get('seed')))}</small></td><td rowspan='{len(cl)}'>{link}</td>"
                    if i == 0 and not status else "<td></td><td></td>" if status else "")
            vals = " → ".join(html.escape(f"{c[k]} = {_fmt(c[k + '_value'])}") for k in ("baseline", "method"))
            rows.append(f"<tr>{lead}<td>{html.escape(c['name'])}</td><td>{html.escape(c['metric'])}</td>"
                        f"<td>{vals}</td><td>{html.escape(c['expected'])}</td>"
                        f"<td class='v-{html.escape(c['verdict'])}'>{html.escape(c['verdict'])}</td>"
                        f"<td>{html.escape(c.get('note', ''))}</td></tr>")
    summary = "".join(f"<tr><td class='v-{k.replace(' ', '_')}'>{k}</td><td class='num'>{v}</td></tr>"
                      for k, v in counts.items())
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>companion: claims report</title><style>{_CSS}</style></head>
<body>
<h1>Masking papers: claims and verdicts</h1>
<p>{len(papers)} papers; runs from <code>{html.escape(str(root))}</code>;
generated {time.strftime('%Y-%m-%d %H:%M')}.</p>
<h2>Summary</h2>
<table><tr><th>verdict</th><th>count</th></tr>{summary}</table>
<h2>Claims</h2>
<table>
<tr><th>paper</th><th>run</th><th>claim</th><th>metric</th><th>baseline → method</th><th>expected</th>
<th>verdict</th><th>note</th></tr>
{chr(10).join(rows)}
</table>
</body></html>
"""
    index = root / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
