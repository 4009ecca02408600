"""The static HTML report: ``index.html`` (papers × claims × verdicts) and each executed notebook as HTML.

:func:`build_report` reads the runs under ``runs/`` (one folder per paper, as ``companion run``/``run-all``
write them) and renders each executed notebook to ``<slug>/<slug>.html`` without the
``injected-parameters`` cell.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

from . import catalog, claims

VERDICTS = claims.VERDICTS

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
