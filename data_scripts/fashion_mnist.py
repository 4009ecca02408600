"""Prepare Fashion-MNIST for the notebooks: `python data_scripts/fashion_mnist.py [--dest DIR]`.

On Debian/Ubuntu the simplest route is `apt-get install dataset-fashion-mnist` (files land in
/usr/share/datasets/fashion-mnist, where `companion.data` looks first). Otherwise this script downloads
the four idx files from Zalando's public mirror into $COMPANION_DATA/fashion_mnist (default
~/.cache/companion/fashion_mnist) and verifies their MD5 checksums (those published with the dataset).
"""

import argparse
import hashlib
import os
import urllib.request
from pathlib import Path

MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def main() -> None:
    default = Path(os.environ.get("COMPANION_DATA", Path.home() / ".cache" / "companion")) / "fashion_mnist"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=default)
    dest = ap.parse_args().dest
    dest.mkdir(parents=True, exist_ok=True)
    for name, digest in FILES.items():
        path = dest / name
        if not (path.is_file() and md5(path) == digest):
            print(f"downloading {name} ...")
            urllib.request.urlretrieve(MIRROR + name, path)
        if md5(path) != digest:
            path.unlink()
            raise SystemExit(f"checksum mismatch for {name}; the download was removed, try again")
        print(f"ok  {path}")


if __name__ == "__main__":
    main()
