"""Test-suite wiring: each notebook's tests run on one pytest-xdist worker (`make test` uses --dist loadgroup), so
the notebook is executed once per test session, not once per worker."""

import pytest


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        slug = getattr(getattr(item, "callspec", None), "params", {}).get("run")
        if slug is not None and item.module.__name__.endswith("test_notebooks"):
            item.add_marker(pytest.mark.xdist_group(slug))
