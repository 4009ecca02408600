"""The ``companion`` command: list the papers, run notebooks with papermill, build the HTML report.

    companion list
    companion run SLUG [--profile ci|full] [--seed N] [-p NAME VALUE ...] [--out DIR] [--log-output]
    companion run-all [--profile ci|full] [--jobs N] [--threads 1] [--out DIR]
    companion report [DIR]

Exit codes: 0 ok; 1 a notebook failed; 2 bad input (one line on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from . import catalog, claims, params

_PROG = "companion"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``companion: error: <message>`` and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{_PROG}: error: {message} (see `{self.prog} --help`)\n")


def _fail(message: str) -> int:
    print(f"{_PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return n


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=_PROG, description="Companion notebooks for papers about masking (papermill runner).")
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    ls = sub.add_parser("list", help="the papers, their notebooks' status and links")
    ls.add_argument("--markdown", action="store_true", help="print the README's paper table")

    r = sub.add_parser("run", help="run one paper's notebook with papermill")
    r.add_argument("slug", help="paper slug (see `companion list`)")
    r.add_argument("--profile", choices=params.PROFILES, default="ci",
                   help="ci: CPU, about a minute; full: GPU, real data (default ci)")
    r.add_argument("--seed", type=_seed, default=None, help="random seed (default: the profile's)")
    r.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="set a notebook parameter (repeatable), e.g. -p mask_fraction 0.3")
    r.add_argument("--out", default=None, help="output directory (default runs/<slug>)")
    r.add_argument("--log-output", action="store_true", help="stream the cells' output to the terminal")
    r.add_argument("--timeout", type=_positive, default=None, help="per-cell timeout in seconds")

    a = sub.add_parser("run-all", help="run every implemented notebook in parallel")
    a.add_argument("--profile", choices=params.PROFILES, default="ci", help="ci or full (default ci)")
    a.add_argument("--jobs", type=_positive, default=None, help="parallel notebooks (default: min(#notebooks, CPUs))")
    a.add_argument("--threads", type=_positive, default=1, help="torch threads per notebook (default 1)")
    a.add_argument("--seed", type=_seed, default=None, help="random seed for every notebook")
    a.add_argument("--out", default=None, help="output root; each run in <out>/<slug> (default runs/)")
    a.add_argument("--timeout", type=_positive, default=None, help="per-cell timeout in seconds")

    rep = sub.add_parser("report", help="build index.html from the runs in DIR (default runs/)")
    rep.add_argument("dir", nargs="?", default=None)
    return ap


def _version() -> str:
    from . import __version__

    return __version__


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def cmd_list(args) -> int:
    if getattr(args, "markdown", False):
        print(catalog.markdown_table())
        return 0
    papers = catalog.papers()
    width = shutil.get_terminal_size((120, 24)).columns
    sw = max(len(p.slug) for p in papers) if papers else 4
    stw = max([len(p.status) for p in papers] + [6])
    head = f"{'#':>3}  {'slug':<{sw}}  year  {'status':<{stw}}  title"
    tw = max(width - len(head) + len("title"), 30)
    print(head)
    print("-" * min(width, len(head) - len("title") + tw))
    for p in papers:
        print(f"{p.number:>3}  {p.slug:<{sw}}  {p.year:>4}  {p.status:<{stw}}  {_truncate(p.title, tw)}")
        links = "   ".join(f"{k}: {u}" for k, u in (("paper", p.paper_url), ("code", p.code_url)) if u)
        if links:
            print(f"{'':>5}{links}")
    n = sum(p.implemented for p in papers)
    print(f"\n{len(papers)} papers, {n} with a runnable notebook (companion run SLUG).")
    return 0


def _print_result(res) -> None:
    print(f"executed notebook: {res.notebook}")
    if res.claims is not None:
        print(f"claims:            {res.claims_path}")
    for i, f in enumerate(res.figures):
        print(f"{'figures:' if i == 0 else '':<19}{f}")
    if res.claims is not None:
        print()
        print(claims.format_markdown(res.claims))


def cmd_run(args) -> int:
    from . import runner

    overrides = dict(args.param)
    res = runner.run_notebook(args.slug, args.profile, args.seed, overrides, args.out,
                              log_output=args.log_output, timeout=args.timeout)
    print(f"{res.slug}: {'ok' if res.ok else 'FAILED'} in {res.seconds:.1f} s")
    _print_result(res)
    if not res.ok:
        print(f"{_PROG}: {res.slug} failed: {res.error}", file=sys.stderr)
        return 1
    return 0


def cmd_run_all(args) -> int:
    from . import runner

    results = runner.run_all(args.profile, jobs=args.jobs, out_root=args.out, seed=args.seed,
                             threads=args.threads, timeout=args.timeout)
    if not results:
        print(f"{_PROG}: no implemented notebooks in {catalog.notebooks_dir()}", file=sys.stderr)
        return 1
    sw = max(len(r.slug) for r in results)
    short = {"supported": "supp", "not_supported": "not_supp", "inconclusive": "inconcl", "not_testable": "not_test"}
    head = f"{'slug':<{sw}}  {'ok':<6}  {'seconds':>7}  " + "  ".join(f"{s:>8}" for s in short.values())
    print(head)
    print("-" * len(head))
    for r in results:
        c = r.verdict_counts()
        print(f"{r.slug:<{sw}}  {'ok' if r.ok else 'FAILED':<6}  {r.seconds:>7.1f}  "
              + "  ".join(f"{c.get(v, 0):>8}" for v in short))
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"{r.slug}: {r.error}  (see {r.notebook})", file=sys.stderr)
    root = results[0].out_dir.parent
    print(f"\n{len(results) - len(failed)}/{len(results)} notebooks ok; runs in {root}; "
          f"`companion report {root}` builds the HTML report.")
    return 1 if failed else 0


def cmd_report(args) -> int:
    from . import report

    try:
        print(report.build_report(Path(args.dir) if args.dir else None))
    except FileNotFoundError as exc:
        return _fail(str(exc))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"list": cmd_list, "run": cmd_run, "run-all": cmd_run_all, "report": cmd_report}[args.command]
    try:
        return handler(args)
    except (catalog.CatalogError, params.ParamError) as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    raise SystemExit(main())
