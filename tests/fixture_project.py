"""A throw-away fixture project for the harness tests (runner, cli, sweeps, resume, signals): tiny notebooks with
the contract's parameters cell, a catalog and parameter specs, and ``call`` to run the ``companion`` command."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import nbformat

from companion import cli

PARAMS_CELL = """profile = "ci"
seed = 0
device = "auto"
out_dir = ""
mask_fraction = 0.5
dataset = "shapes"
data_dir = ""
"""

GOOD_BODY = """import os
import matplotlib.pyplot as plt
from companion import claims, params
cfg = params.resolve("good", globals())
fig, ax = plt.subplots(figsize=(2, 2))
ax.plot([0, 1], [0, cfg.mask_fraction])
fig.savefig(os.path.join(cfg.out_dir, "curve.png"))
plt.show()
t = claims.ClaimTable("good", cfg.profile, cfg.seed)
t.add("bigger is better", "score", "base", 1.0, "masked", 2.0, "higher", interval=(0.9, 1.1))
t.add("fraction helps", "score", "base", 1.0, "masked", cfg.mask_fraction, "higher",
      interval=(cfg.mask_fraction - 1.1, cfg.mask_fraction - 0.9),
      note=f"threads={os.environ.get('COMPANION_THREADS')} launcher={os.getppid()}")
t.add("within noise", "loss", "base", 1.0, "masked", 0.99, "lower", interval=(-0.2, 0.1))
t.add("needs a GPU", "accuracy", "base", None, "masked", None, "higher", testable=False)
t.write(cfg.out_dir)
t
"""

BROKEN_BODY = """from companion import params
cfg = params.resolve("broken", globals())
raise ValueError("boom from the broken notebook")
"""

PAPERS = [("good", "implemented", GOOD_BODY), ("broken", "implemented", BROKEN_BODY), ("idea", "planned", None)]

# Bodies for the sweep, resume and signal tests (tests/test_sweep.py, test_resume.py, test_signals.py).
QUICK_BODY = """import os
from companion import claims, params
cfg = params.resolve("{slug}", globals())
even = cfg.seed % 2 == 0
t = claims.ClaimTable("{slug}", cfg.profile, cfg.seed)
t.add("always", "score", "base", 1.0, "masked", 2.0, "higher", kind="premise", interval=(0.9, 1.1))
t.add("even seeds", "score", "base", 1.0, "masked", 2.0 if even else 0.0, "higher",
      interval=(0.5, 1.0) if even else (-1.0, -0.5), note=f"gpu={{os.environ.get('CUDA_VISIBLE_DEVICES', '-')}}")
t.write(cfg.out_dir)
"""

FLAKY_BODY = """from companion import claims, params
cfg = params.resolve("{slug}", globals())
if cfg.seed % 2:
    raise RuntimeError(f"flaky at seed {{cfg.seed}}")
t = claims.ClaimTable("{slug}", cfg.profile, cfg.seed)
t.add("holds", "score", "base", 1.0, "masked", 2.0, "higher", interval=(0.9, 1.1))
t.write(cfg.out_dir)
"""

# Starts a grandchild (as a DataLoader would), says so in <out>/started, then sleeps: something to interrupt.
SLOW_BODY = """import pathlib, subprocess, sys, time
from companion import params
cfg = params.resolve("{slug}", globals())
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
pathlib.Path(cfg.out_dir, "started").write_text(str(child.pid))
time.sleep(600)
"""


def paper(slug: str, body: str, status: str = "implemented") -> tuple[str, str, str]:
    """A fixture paper whose notebook runs ``body`` (``{slug}`` filled in)."""
    return slug, status, body.format(slug=slug)


def make_project(root: Path, papers=PAPERS) -> Path:
    """A project with ``papers`` (slug, status, body of the notebook's last cell or None for no notebook); by
    default three: ``good`` (writes 4 claims, one per verdict, and a PNG), ``broken`` (raises in its second
    cell) and ``idea`` (planned, no notebook). Every notebook has the parameters of ``PARAMS_CELL``."""
    nbdir = root / "notebooks"
    (nbdir / "params").mkdir(parents=True)
    toml = ""
    for i, (slug, status, body) in enumerate(papers, 1):
        toml += (f'[[papers]]\nnumber = {i}\nslug = "{slug}"\ntitle = "The {slug} paper on masking"\nyear = 2024\n'
                 f'venue = "X"\npaper_url = "https://example.org/{slug}"\ncode_url = "https://example.org/{slug}/code"\n'
                 f'topic = "test"\nstatus = "{status}"\n\n')
        (nbdir / "params" / f"{slug}.toml").write_text(
            '[mask_fraction]\nhelp = "share of masked pixels"\nci = 0.5\nfull = 0.5\nmin = 0.0\nmax = 1.0\n\n'
            '[dataset]\nci = "shapes"\nfull = "fashion_mnist"\nchoices = ["shapes", "fashion_mnist"]\n\n'
            '[data_dir]\nci = ""\nfull = ""\n')
        if body is not None:
            nb = nbformat.v4.new_notebook()
            nb.cells = [nbformat.v4.new_markdown_cell(f"# {slug}"),
                        nbformat.v4.new_code_cell(PARAMS_CELL, metadata={"tags": ["parameters"]}),
                        nbformat.v4.new_code_cell(body)]
            nbformat.write(nb, str(nbdir / f"{slug}.ipynb"))
    (nbdir / "papers.toml").write_text(toml)
    return root


def call(*argv) -> tuple[int, str, str]:
    """Run ``companion *argv`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main([str(a) for a in argv])
        except SystemExit as exc:  # argparse errors
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()
