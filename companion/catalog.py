"""The reading list: ``notebooks/papers.toml`` and where the notebooks live."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


class CatalogError(LookupError):
    """An unknown paper slug or a missing catalog; the message is one line."""


def project_root() -> Path:
    """The directory holding ``notebooks/papers.toml``.

    ``$COMPANION_ROOT`` wins; otherwise the current directory or one of its parents; otherwise the
    checkout this package was imported from (an editable install).
    """
    if os.environ.get("COMPANION_ROOT"):
        return Path(os.environ["COMPANION_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "notebooks" / "papers.toml").is_file():
            return d
    return Path(__file__).resolve().parent.parent


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


@dataclass(frozen=True)
class Paper:
    number: int
    slug: str
    title: str
    year: int
    venue: str
    paper_url: str
    code_url: str
    topic: str
    status: str
    no_method_module: str = ""  # why the paper needs no companion/methods/<topic>/<slug>.py, if it needs none
    key_figure: str = ""  # the PNG stem (``viz.save(fig, out_dir, "<stem>")``) the report shows as thumbnail
    needs: tuple[str, ...] = ()  # programs the notebook needs on PATH beyond Python (e.g. "espeak-ng")

    @property
    def notebook(self) -> Path:
        return notebooks_dir() / f"{self.slug}.ipynb"

    @property
    def method_module(self) -> Path:
        """``companion/methods/<topic>/<slug>.py``: what only this paper needs (topic with ``-`` as ``_``)."""
        return Path(__file__).resolve().parent / "methods" / self.topic.replace("-", "_") / f"{self.slug}.py"

    @property
    def implemented(self) -> bool:
        return self.status == "implemented" and self.notebook.is_file()


@lru_cache(maxsize=4)
def _load(path: Path) -> tuple[Paper, ...]:
    if not path.is_file():
        raise CatalogError(f"catalog not found: {path} (run from the companion checkout or set COMPANION_ROOT)")
    with open(path, "rb") as f:
        rows = tomllib.load(f)["papers"]
    fields = Paper.__dataclass_fields__
    return tuple(Paper(**{k: tuple(v) if isinstance(v, list) else v for k, v in row.items() if k in fields})
                 for row in rows)


def papers() -> tuple[Paper, ...]:
    """All papers of the reading list, in catalog order."""
    return _load(notebooks_dir() / "papers.toml")


def get(slug: str) -> Paper:
    """The paper with this slug, or a one-line error listing close matches."""
    by_slug = {p.slug: p for p in papers()}
    if slug not in by_slug:
        import difflib

        close = difflib.get_close_matches(slug, by_slug, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `companion list` shows all slugs"
        raise CatalogError(f"unknown paper slug {slug!r}{hint}")
    return by_slug[slug]


def implemented() -> list[Paper]:
    return [p for p in papers() if p.implemented]


def markdown_table() -> str:
    """The README's paper table (``companion list --markdown`` prints it; a test keeps README in sync)."""
    rows = ["| # | paper | year | notebook | code |", "|---|---|---|---|---|"]
    for p in papers():
        title = f"[{p.title}]({p.paper_url})" if p.paper_url else p.title
        nb = f"[`{p.slug}`](notebooks/{p.slug}.ipynb) ✅" if p.status == "implemented" else f"`{p.slug}` (planned)"
        code = f"[code]({p.code_url})" if p.code_url else ""
        rows.append(f"| {p.number} | {title} | {p.year or ''} | {nb} | {code} |")
    return "\n".join(rows)
