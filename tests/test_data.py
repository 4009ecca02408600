import os
from pathlib import Path

import numpy as np
import pytest
import torch

from companion import data


def test_shapes_are_deterministic_and_shaped():
    a = data.make_shapes(50, 24, "varied", seed=1)
    b = data.make_shapes(50, 24, "varied", seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (50, 3, 24, 24) and a.masks.shape == (50, 1, 24, 24) and a.masks.dtype == torch.bool
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert not torch.equal(a.images, data.make_shapes(50, 24, "varied", seed=2).images)


def test_object_masks_mark_the_object_pixels():
    s = data.make_shapes(200, 32, "varied", seed=0)
    area = s.masks.float().mean(dim=(1, 2, 3))
    assert (area > 0.03).all() and (area < 0.5).all()
    # pixels on the object differ from the background by the guaranteed brightness gap
    for i in range(20):
        img, m = s.images[i].mean(0), s.masks[i, 0]
        assert abs(img[m].mean() - img[~m].mean()) > 0.15


def test_every_class_has_its_own_silhouette():
    s = data.make_shapes(400, 32, "varied", seed=0)
    assert set(s.labels.tolist()) == {0, 1, 2, 3}
    # squares fill their bounding box more than crosses do
    def fill_ratio(k):
        ms = s.masks[s.labels == k, 0]
        ratios = []
        for m in ms:
            ys, xs = m.nonzero(as_tuple=True)
            ratios.append(m.sum().item() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)).item())
        return np.mean(ratios)
    assert fill_ratio(data.SHAPE_CLASSES.index("square")) > 0.9 > 0.6 > fill_ratio(data.SHAPE_CLASSES.index("cross"))


def test_background_regimes():
    varied = data.make_shapes(300, 24, "varied", seed=0)
    dark = data.make_shapes(300, 24, "dark", seed=0)
    bg_varied = torch.stack([varied.images[i][:, ~varied.masks[i, 0]].mean() for i in range(300)])
    bg_dark = torch.stack([dark.images[i][:, ~dark.masks[i, 0]].mean() for i in range(300)])
    assert bg_dark.max() < 0.15
    assert bg_varied.std() > 0.15 and bg_varied.min() < 0.25 and bg_varied.max() > 0.65
    with pytest.raises(ValueError, match="background"):
        data.make_shapes(2, 16, "neon")


def _write_idx(folder, n=3):
    """Tiny Fashion-MNIST-like train files in ``folder``; returns {stem: md5 of its decompressed content}."""
    import gzip
    import hashlib

    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 10:20, 10:20] = 200
    labels = np.arange(1, n + 1, dtype=np.uint8)
    raw = {"train-images-idx3-ubyte": b"\x00\x00\x08\x03" + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
           + images.tobytes(),
           "train-labels-idx1-ubyte": b"\x00\x00\x08\x01" + n.to_bytes(4, "big") + labels.tobytes()}
    for stem, content in raw.items():
        with gzip.open(folder / f"{stem}.gz", "wb") as f:
            f.write(content)
    return {stem: hashlib.md5(content).hexdigest() for stem, content in raw.items()}


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    """Tiny train files whose checksums the loader accepts; stamps go to a fresh $COMPANION_DATA."""
    from companion.data import files

    folder = tmp_path / "fm"
    folder.mkdir()
    digests = _write_idx(folder)
    table = {stem: ("0" * 32, digests.get(stem, "f" * 32)) for stem in files.FASHION_MNIST_MD5}
    monkeypatch.setattr(files, "FASHION_MNIST_MD5", table)
    monkeypatch.setenv("COMPANION_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(files, "_verified", set())
    return folder


def test_fashion_mnist_reads_idx_files(fake_fashion):
    ds = data.load_fashion_mnist("train", data_dir=str(fake_fashion))
    assert ds.images.shape == (3, 1, 28, 28) and ds.labels.tolist() == [1, 2, 3]
    assert ds.masks[0, 0, 15, 15] and not ds.masks[0, 0, 0, 0]
    assert data.available("fashion_mnist", str(fake_fashion))


def test_truncated_file_is_one_line_naming_it_and_the_command(fake_fashion):
    path = fake_fashion / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])  # a download cut short
    with pytest.raises(data.DataError) as info:
        data.load_fashion_mnist("train", data_dir=str(fake_fashion))
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "truncated" in msg
    assert msg.endswith(f"python data_scripts/fashion_mnist.py --dest {fake_fashion}")


def test_wrong_content_fails_its_checksum(fake_fashion):
    import gzip

    path = fake_fashion / "train-labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:  # a valid gzip file with other bytes
        f.write(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([9, 9, 9]))
    with pytest.raises(data.DataError, match="does not match its published MD5 checksum") as info:
        data.load_fashion_mnist("train", data_dir=str(fake_fashion))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_params_turn_a_damaged_file_into_the_one_line_parameter_error(fake_fashion):
    from companion import params

    path = fake_fashion / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(params.ParamError, match="is damaged or truncated") as info:
        params.check_data({"dataset": "fashion_mnist", "data_dir": str(fake_fashion)})
    assert str(path) in str(info.value) and "data_scripts/fashion_mnist.py" in str(info.value)


def test_a_verified_file_is_stamped_and_not_hashed_again(fake_fashion, monkeypatch):
    from companion.data import files

    calls = []
    real = files.md5_of
    monkeypatch.setattr(files, "md5_of", lambda p: calls.append(p) or real(p))
    data.load_fashion_mnist("train", data_dir=str(fake_fashion))
    assert len(calls) == 2  # images and labels, verified on first load
    assert len(list((files.data_root() / ".verified").glob("*.json"))) == 2
    files._verified.clear()  # a new process: only the stamps remain
    data.load_fashion_mnist("train", data_dir=str(fake_fashion))
    assert len(calls) == 2
    path = fake_fashion / "train-labels-idx1-ubyte.gz"  # a changed file (new mtime) is checked again
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    data.load_fashion_mnist("train", data_dir=str(fake_fashion))
    assert calls[2:] == [path]


def test_missing_split_file_names_the_command(fake_fashion):
    with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte.gz is missing; prepare it again"):
        data.require("fashion_mnist", str(fake_fashion))


def test_debian_files_match_the_published_checksums(tmp_path, monkeypatch):
    """Debian recompresses the .gz files: their content, not their bytes, matches the published MD5s."""
    from companion.data import files

    folder = Path(files.FASHION_MNIST_DIRS[0])
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    monkeypatch.setenv("COMPANION_DATA", str(tmp_path))
    monkeypatch.setattr(files, "_verified", set())
    files.verify_fashion_mnist(folder)
    assert len(list((tmp_path / ".verified").glob("*.json"))) == 4


def test_prepare_script_keeps_verified_files_without_importing_torch(tmp_path):
    """data_scripts/fashion_mnist.py checks what is there (with companion/data/files.py, loaded by path) and
    downloads nothing when the files verify; it runs with a bare Python (no torch)."""
    import shutil
    import subprocess
    import sys

    from companion.data import files

    folder = Path(files.FASHION_MNIST_DIRS[0])
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    dest = tmp_path / "fm"
    shutil.copytree(folder, dest)
    script = Path(__file__).resolve().parent.parent / "data_scripts" / "fashion_mnist.py"
    env = {**os.environ, "COMPANION_DATA": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-S", str(script), "--dest", str(dest)], capture_output=True, text=True,
                         env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("ok  ") == 4 and "downloading" not in out.stdout
