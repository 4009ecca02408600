"""Real datasets on disk: where they live, whether they are prepared, and the command that prepares them.

Datasets are prepared by ``data_scripts/`` (never downloaded at run time) and looked up under
``$COMPANION_DATA`` (default ``~/.cache/companion``) and the system folders of Debian's dataset packages.
A missing or damaged dataset is a :class:`DataError` whose one-line message names the file and the command
that prepares it; ``companion.params`` turns it into the one-line parameter error a user sees.
"""

from __future__ import annotations

import os
from pathlib import Path


class DataError(ValueError):
    """A dataset is missing or damaged; the message is one line naming the command that prepares it."""


def data_root() -> Path:
    return Path(os.environ.get("COMPANION_DATA", Path.home() / ".cache" / "companion"))


FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian's dataset-fashion-mnist
PREPARE = {
    "fashion_mnist": "python data_scripts/fashion_mnist.py  (or: apt-get install dataset-fashion-mnist)",
}


def _fashion_dir(data_dir: str = "") -> Path | None:
    for d in ([data_dir] if data_dir else []) + [str(data_root() / "fashion_mnist"), *FASHION_MNIST_DIRS]:
        p = Path(d)
        if (p / "train-images-idx3-ubyte.gz").is_file() or (p / "train-images-idx3-ubyte").is_file():
            return p
    return None


def available(name: str, data_dir: str = "") -> bool:
    """Whether dataset ``name`` can be loaded without downloading anything."""
    if name == "shapes":
        return True
    if name == "fashion_mnist":
        return _fashion_dir(data_dir) is not None
    raise ValueError(f"unknown dataset {name!r}")


def require(name: str, data_dir: str = "") -> None:
    """Raise a one-line :class:`DataError` naming the command that prepares ``name``."""
    if not available(name, data_dir):
        raise DataError(f"dataset {name!r} is not prepared; run: {PREPARE[name]}")


