"""The project's own consistency: dependencies, committed notebooks, parameter declarations."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

from companion import catalog, params

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_environment_yml_mirrors_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    torch_pin = next(p for p in pip if p.startswith("torch"))
    assert re.fullmatch(r"torch==[\d.]+", torch_pin), "environment.yml must pin the CPU torch first"
    torch_range = next(d for d in project["dependencies"] if d.startswith("torch"))
    from packaging.specifiers import SpecifierSet

    assert torch_pin.split("==")[1] in SpecifierSet(torch_range[len("torch"):]), (torch_pin, torch_range)
    assert "-e .[dev]" in pip
    assert "dev" in project["optional-dependencies"]
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert project["requires-python"] == ">=3.11" and python == "python=3.11"


def test_the_cpu_test_path_does_not_need_torchvision():
    out = subprocess.run([sys.executable, "-c", "import sys, companion.masking, companion.masking.explain, companion.runner,"
                          " companion.models, companion.masking.layer; print('torchvision' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    result = subprocess.run([Path(sys.executable).parent / "nbstripout", "--verify", str(path)], capture_output=True)
    assert result.returncode == 0, f"{path.name} has outputs; run nbstripout {path}"


@pytest.mark.parametrize("paper", catalog.implemented(), ids=lambda p: p.slug)
def test_parameters_cell_matches_the_declared_ci_profile(paper):
    nb = nbformat.read(paper.notebook, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    defaults: dict = {}
    exec(cells[0].source, {}, defaults)
    assert defaults == params.profile_values(paper.slug, "ci")


def test_catalog_lists_39_unique_papers():
    papers = catalog.papers()
    assert len(papers) == 39 and len({p.slug for p in papers}) == 39
    assert [p.number for p in papers] == list(range(1, 40))
    assert all(p.status in ("implemented", "planned") for p in papers)
    assert catalog.get("layer_masking").implemented


def test_readme_paper_table_is_generated_from_the_catalog():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- papers:start")[1].split("<!-- papers:end -->")[0]
    assert block.split("\n", 1)[1].strip() == catalog.markdown_table().strip(), \
        "README table is stale: regenerate it with `companion list --markdown`"


def test_code_passes_ruff():
    result = subprocess.run([Path(sys.executable).parent / "ruff", "check", "companion", "tests", "benchmarks",
                             "data_scripts"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]


@pytest.mark.parametrize("paper", catalog.implemented(), ids=lambda p: p.slug)
def test_papermill_parses_every_parameter(paper):
    """papermill reads the parameters cell line by line; a comment holding '=' makes it warn and drop the name."""
    from papermill.translators import PythonTranslator

    nb = nbformat.read(paper.notebook, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    names = {p.name for p in PythonTranslator.inspect(cell)}
    assert names == set(params.profile_values(paper.slug, "ci"))
