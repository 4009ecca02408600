"""Prepare Fashion-MNIST for the notebooks: `python data_scripts/fashion_mnist.py [--dest DIR]`.

On Debian/Ubuntu the simplest route is `apt-get install dataset-fashion-mnist` (files land in
/usr/share/datasets/fashion-mnist, where `companion.data` also looks). Otherwise this script downloads
the four idx files from Zalando's public mirror into $COMPANION_DATA/fashion_mnist (default
~/.cache/companion/fashion_mnist) and verifies their MD5 checksums (those published with the dataset, kept
in companion/data/files.py). A file already there is kept when it verifies and downloaded again when it does
not (truncated or damaged); a download goes to a temporary name first, so an interrupted one leaves nothing.
"""

import argparse
import importlib.util
import os
import sys
import urllib.request
from pathlib import Path

MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


def _files_module():
    """``companion/data/files.py`` loaded by path: it needs only the standard library (no torch)."""
    path = Path(__file__).resolve().parent.parent / "companion" / "data" / "files.py"
    spec = importlib.util.spec_from_file_location("_companion_data_files", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    files = _files_module()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=files.data_root() / "fashion_mnist")
    dest = ap.parse_args().dest
    dest.mkdir(parents=True, exist_ok=True)
    for stem, digests in files.FASHION_MNIST_MD5.items():
        path = dest / f"{stem}.gz"
        try:
            files.verify_file(path, digests, "")
            print(f"ok  {path}")
            continue
        except files.DataError:
            pass
        print(f"downloading {path.name} ...", flush=True)
        tmp = path.with_name(path.name + ".part")
        try:
            urllib.request.urlretrieve(MIRROR + path.name, tmp)
            if files.md5_of(tmp)[0] not in digests:
                raise ValueError("MD5 checksum mismatch")
        except (OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            sys.exit(f"{path.name}: download failed ({exc}); try again")
        os.replace(tmp, path)
        print(f"ok  {path}")


if __name__ == "__main__":
    main()
