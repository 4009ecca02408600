"""The ``companion`` command: list the papers, run notebooks with papermill, build the HTML report and the zoo.

    companion list
    companion run SLUG [--profile ci|full] [--seed N | --seeds 0,1,2 [--jobs N]] [-p NAME VALUE ...] [--out DIR]
                       [--log-output] [--timeout S] [--resume]
    companion run-all [--profile ci|full] [--jobs N] [--threads 1] [--seed N | --seeds 0,1,2] [--out DIR]
                      [--timeout S] [--resume]
    companion report [DIR]
    companion zoo list
    companion zoo build [NAME ...]

``--seeds`` runs each seed into ``<out>/<slug>/seed-<N>/`` and writes ``<out>/<slug>/stability.json`` (see
:mod:`companion.runner`); ``--resume`` reuses runs whose ``run.json`` matches the parameters, seed and sources.
Ctrl-C, SIGTERM or SIGHUP stop a run within seconds (workers and kernels included), keep what finished and
print one line.

Exit codes: 0 ok; 1 a notebook failed; 2 bad input (one line on stderr, nothing written);
128 + the signal's number when a signal stopped it (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from . import catalog, claims, params
from .claims import VERDICTS

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


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (or both: ``"0-2,7"``) → distinct seeds in order (ArgumentTypeError otherwise)."""
    seeds: list[int] = []
    for part in (x.strip() for x in str(text).split(",")):
        if not part:
            continue
        lo, sep, hi = part[1:].partition("-") if part.startswith("-") else part.partition("-")
        lo = "-" + lo if part.startswith("-") else lo
        try:
            seeds += list(range(int(lo), int(hi) + 1)) if sep else [int(part)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a list of seeds (e.g. 0,1,2 or 0-4)") from None
        if sep and int(hi) < int(lo):
            raise argparse.ArgumentTypeError(f"{part!r} is an empty range of seeds")
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} names no seed")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a seed")
    return seeds


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
    seed = r.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=_seed, default=None, help="random seed (default: the profile's)")
    seed.add_argument("--seeds", type=parse_seeds, default=None, metavar="LIST",
                      help="a seed sweep, e.g. 0,1,2 or 0-4: each seed in <out>/seed-<N>, then stability.json")
    r.add_argument("--jobs", type=_positive, default=1, help="seeds run in parallel in a sweep (default 1)")
    r.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="set a notebook parameter (repeatable), e.g. -p mask_fraction 0.3")
    r.add_argument("--out", default=None, help="output directory (default runs/<slug>)")
    r.add_argument("--log-output", action="store_true", help="stream the cells' output to the terminal")
    r.add_argument("--timeout", type=_positive, default=None, help="per-cell timeout in seconds")
    r.add_argument("--resume", action="store_true",
                   help="reuse a finished run whose run.json matches (same parameters, seed and sources)")

    a = sub.add_parser("run-all", help="run every implemented notebook in parallel")
    a.add_argument("--profile", choices=params.PROFILES, default="ci", help="ci or full (default ci)")
    a.add_argument("--jobs", type=_positive, default=None,
                   help="parallel notebooks (default: min(#runs, CPUs)); with several GPUs, worker i gets GPU i mod n")
    a.add_argument("--threads", type=_positive, default=1, help="torch threads per notebook (default 1)")
    a_seed = a.add_mutually_exclusive_group()
    a_seed.add_argument("--seed", type=_seed, default=None, help="random seed for every notebook")
    a_seed.add_argument("--seeds", type=parse_seeds, default=None, metavar="LIST",
                        help="a seed sweep of every notebook, e.g. 0,1,2: <out>/<slug>/seed-<N> and stability.json")
    a.add_argument("--out", default=None, help="output root; each run in <out>/<slug> (default runs/)")
    a.add_argument("--timeout", type=_positive, default=None, help="per-cell timeout in seconds")
    a.add_argument("--resume", action="store_true",
                   help="skip notebooks whose run.json matches (same parameters, seed and sources)")

    rep = sub.add_parser("report", help="build index.html from the runs in DIR (default runs/)")
    rep.add_argument("dir", nargs="?", default=None)

    z = sub.add_parser("zoo", help="models several notebooks share, trained once and cached")
    zsub = z.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", parser_class=_Parser)
    zsub.required = True
    zsub.add_parser("list", help="the zoo's models")
    zb = zsub.add_parser("build", help="train (or load) the named models, all by default; one line each")
    zb.add_argument("names", nargs="*", metavar="NAME")
    zb.add_argument("--jobs", type=_positive, default=1, metavar="N",
                    help="train N models at once, each in its own process on one thread (default 1)")
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


SHORT = {"supported": "supp", "not_supported": "not_supp", "inconclusive": "inconcl", "not_testable": "not_test",
         "missing": "missing"}


def format_stability(doc: dict) -> str:
    """A compact agreement table of one ``stability.json``: per claim, the verdict at each seed and the agreement."""
    seeds = [str(s) for s in doc.get("seeds", [])]
    order = ("premise", "paper", "sanity")
    rows = sorted(doc.get("claims", []), key=lambda r: order.index(r["kind"]) if r.get("kind") in order else 1)
    unanimous = sum(bool(r.get("unanimous")) for r in rows)
    lines = [f"{doc.get('paper', '?')}: seeds {', '.join(seeds)}; "
             f"every seed agrees on {unanimous} of {len(rows)} claims"]
    failed = doc.get("failed") or {}
    if failed:
        lines.append("  failed: " + "; ".join(f"seed {s}: {e}" for s, e in failed.items()))
    if rows:
        nw = min(max(len(r["name"]) for r in rows), 44)
        lines.append(f"  {'kind':<7}  {'claim':<{nw}}  " + "  ".join(f"{s:>8}" for s in seeds) + "  agree")
        for r in rows:
            agree = sum(v == r.get("majority") for v in r.get("verdicts", {}).values())
            cells = "  ".join(f"{SHORT.get(r['verdicts'].get(s, 'missing'), r['verdicts'].get(s, '?')):>8}"
                              for s in seeds)
            mark = "" if r.get("unanimous") else "  <- differs"
            lines.append(f"  {r.get('kind', 'paper'):<7}  {_truncate(r['name'], nw):<{nw}}  {cells}  "
                         f"{agree}/{len(seeds)}{mark}")
    return "\n".join(lines)


def _interrupted(stop, where, resume: str, after_bar: bool = False) -> int:
    """One line on stderr saying what finished (on a line of its own after a progress bar); 128 + signal number."""
    names = [r.label + ("" if r.ok else " FAILED") for r in stop.finished]
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    what = f" ({shown})" if names else ""
    hint = f"; `{resume} --resume` skips them" if stop.finished else ""
    lead = "\n" if after_bar else ""
    print(f"{lead}{_PROG}: interrupted by {stop.signal_name} after {stop.seconds:.1f} s: {len(stop.finished)} of "
          f"{stop.total} run{'s' if stop.total != 1 else ''} finished{what}; results kept in {where}{hint}",
          file=sys.stderr)
    return 128 + stop.signum


def cmd_run(args) -> int:
    from . import runner

    overrides = dict(args.param)
    if args.seeds:
        return _run_sweep(args, overrides)
    try:
        res = runner.run(args.slug, args.profile, args.seed, overrides, args.out, log_output=args.log_output,
                         timeout=args.timeout, resume=args.resume)
    except runner.Interrupted as stop:
        _, _, out = runner.prepare(args.slug, args.profile, args.seed, overrides, args.out)
        return _interrupted(stop, out, f"companion run {args.slug}", after_bar=not args.log_output)
    state = "ok (reused: run.json matches)" if res.reused else "ok" if res.ok else "FAILED"
    print(f"{res.slug}: {state} in {res.seconds:.1f} s")
    _print_result(res)
    if not res.ok:
        print(f"{_PROG}: {res.slug} failed: {res.error}", file=sys.stderr)
        return 2 if res.error.startswith("DataError") else 1  # missing data or program: a set-up problem
    return 0


def _run_sweep(args, overrides) -> int:
    from . import runner

    try:
        results, doc = runner.sweep(args.slug, args.seeds, args.profile, overrides, args.out, jobs=args.jobs,
                                    log_output=args.log_output, timeout=args.timeout, resume=args.resume)
    except runner.Interrupted as stop:
        _, _, out = runner.prepare(args.slug, args.profile, args.seeds[0], overrides, args.out)
        return _interrupted(stop, out, f"companion run {args.slug} --seeds {','.join(map(str, args.seeds))}",
                            after_bar=args.jobs == 1 and not args.log_output)
    for r in results:
        state = "reused" if r.reused else "ok" if r.ok else "FAILED"
        print(f"{r.slug} seed {r.seed}: {state} in {r.seconds:.1f} s  {r.out_dir}")
    print()
    print(format_stability(doc))
    print(f"\nstability: {results[0].out_dir.parent / runner.STABILITY}")
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"{_PROG}: {r.slug} seed {r.seed} failed: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def cmd_run_all(args) -> int:
    from . import runner

    try:
        results = runner.run_all(args.profile, jobs=args.jobs, out_root=args.out, seed=args.seed, threads=args.threads,
                                 timeout=args.timeout, seeds=args.seeds, resume=args.resume)
    except runner.Interrupted as stop:
        root = Path(args.out).expanduser().resolve() if args.out else catalog.project_root() / "runs"
        seeds = f" --seeds {','.join(map(str, args.seeds))}" if args.seeds else ""
        return _interrupted(stop, root, f"companion run-all{seeds}")
    if not results:
        print(f"{_PROG}: no implemented notebooks in {catalog.notebooks_dir()}", file=sys.stderr)
        return 1
    swept = bool(args.seeds)
    sw = max(len(r.slug) for r in results)
    seed_col = f"  {'seed':>4}" if swept else ""
    head = f"{'slug':<{sw}}{seed_col}  {'ok':<6}  {'seconds':>7}  " + "  ".join(f"{SHORT[v]:>8}" for v in VERDICTS)
    print(head)
    print("-" * len(head))
    for r in results:
        c = r.verdict_counts()
        seed = f"  {r.seed!s:>4}" if swept else ""
        state = "reused" if r.reused else "ok" if r.ok else "FAILED"
        counts = "  ".join(f"{c.get(v, 0):>8}" for v in VERDICTS)
        print(f"{r.slug:<{sw}}{seed}  {state:<6}  {r.seconds:>7.1f}  {counts}")
    failed = [r for r in results if not r.ok]
    for r in failed:
        where = f" seed {r.seed}" if swept else ""
        print(f"{r.slug}{where}: {r.error}  (see {r.notebook})", file=sys.stderr)
    root = results[0].out_dir.parent.parent if swept else results[0].out_dir.parent
    if swept:
        paths = [root / slug / runner.STABILITY for slug in dict.fromkeys(r.slug for r in results)]
        tables = [format_stability(json.loads(p.read_text())) for p in paths if p.is_file()]
        print("\n" + "\n\n".join(tables))
    reused = sum(r.reused for r in results)
    kind = "runs" if swept else "notebooks"
    note = f" ({reused} reused from earlier runs)" if reused else ""
    print(f"\n{len(results) - len(failed)}/{len(results)} {kind} ok{note}; runs in {root}; "
          f"`companion report {root}` builds the HTML report.")
    return 1 if failed else 0


def cmd_report(args) -> int:
    from . import report

    try:
        print(report.build_report(Path(args.dir) if args.dir else None))
    except FileNotFoundError as exc:
        return _fail(str(exc))
    return 0


def cmd_zoo(args) -> int:
    import time

    from . import zoo

    if args.zoo_command == "list":
        names = zoo.names()
        for name in names:
            print(name)
        if not names:
            print("the zoo has no models yet")
        return 0
    names = list(dict.fromkeys(args.names)) or zoo.names()
    unknown = [n for n in names if n not in zoo.names()]
    try:
        if unknown:
            zoo.build(unknown)  # raises KeyError (one line) before building anything
        if not names:
            print("the zoo has no models yet")
            return 0
        t0 = time.perf_counter()
        if args.jobs > 1 and len(names) > 1:
            zoo.build_parallel(names, args.jobs, report=lambda name, s: print(f"{name}: {s:.1f} s", flush=True))
        else:
            for name in names:
                seconds = zoo.build([name])[name]
                print(f"{name}: {seconds:.1f} s", flush=True)
    except KeyError as exc:
        return _fail(exc.args[0] if exc.args else str(exc))
    print(f"{len(names)} model{'s' if len(names) != 1 else ''} in {time.perf_counter() - t0:.1f} s; "
          f"cache: {zoo.cache_dir()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"list": cmd_list, "run": cmd_run, "run-all": cmd_run_all, "report": cmd_report,
               "zoo": cmd_zoo}[args.command]
    try:
        return handler(args)
    except (catalog.CatalogError, params.ParamError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:  # before or after the workers (while they run, the runner handles signals)
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
