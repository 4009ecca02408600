"""companion.data.foreground (the photographs with object masks of layer_masking's `full` profile) and
data_scripts/foreground.py, on fake folders and fake archives (nothing is downloaded)."""

import hashlib
import importlib.util
import io
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from companion.data import DataError, foreground
from companion.data import files as data_files
from companion.models import load_torchvision_weights, resnet50

SCRIPT = Path(__file__).resolve().parent.parent / "data_scripts" / "foreground.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("_foreground_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    foreground.write_fake(root, n=5, size=48)
    return root


def test_write_fake_then_load(fake_root):
    images, masks, labels = foreground.load(fake_root, size=48)
    assert images.shape == (5, 3, 48, 48) and images.dtype == torch.float32
    assert masks.shape == (5, 48, 48) and masks.dtype == torch.bool
    assert labels.shape == (5,) and labels.dtype == torch.int64
    assert 0 <= images.min() and images.max() <= 1
    rows = (fake_root / "foreground" / "index.tsv").read_text().splitlines()
    assert rows[0] == "image\tlabel\tclass"
    assert labels.tolist() == [int(r.split("\t")[1]) for r in rows[1:]]
    for img, m in zip(images, masks):  # the mask marks the (brighter) object, not the background
        assert 0 < m.float().mean() < 0.6
        assert img[:, m].mean() > img[:, ~m].mean() + 0.2
    first = foreground.load(fake_root, n=2, size=32)
    assert first[0].shape == (2, 3, 32, 32) and first[2].tolist() == labels[:2].tolist()
    again = foreground.load(fake_root, size=48)
    assert all(torch.equal(a, b) for a, b in zip(again, (images, masks, labels)))


def test_fake_weights_load_into_the_model(fake_root):
    path = data_files.resnet50_weights_file(fake_root)
    assert path == fake_root / "torchvision" / "resnet50-0676ba61.pth"
    model = load_torchvision_weights(resnet50(), path).eval()
    images, _, _ = foreground.load(fake_root, n=2, size=64)
    with torch.no_grad():
        assert torch.isfinite(model(foreground.normalize(images))).all()


def test_resize_then_centre_crop():
    """Shorter side to `size`, longer side truncated, central square (torchvision's Resize + CenterCrop)."""
    cols = np.tile(np.arange(90, dtype=np.uint8), (60, 1))  # 90 wide, 60 high; value = column
    out = np.asarray(foreground._resize_crop(Image.fromarray(cols), 40, Image.NEAREST))
    assert out.shape == (40, 40)  # resized to 60 x 40, columns 10..49 kept
    assert (out == out[:1]).all() and out[0, 0] + out[0, -1] == pytest.approx(89, abs=2)
    tall = foreground._resize_crop(Image.new("RGB", (30, 100)), 20, Image.BICUBIC)
    assert tall.size == (20, 20)


def test_a_missing_set_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"not prepared .* run: python data_scripts/foreground\.py$"):
        foreground.load()
    with pytest.raises(DataError, match=f"run: python data_scripts/foreground.py --dest {tmp_path / 'x'}$"):
        foreground.load(tmp_path / "x")


def test_normalize():
    mean, std = torch.tensor(foreground.IMAGENET_MEAN), torch.tensor(foreground.IMAGENET_STD)
    x = mean[:, None, None].expand(2, 3, 4, 5)
    assert torch.allclose(foreground.normalize(x), torch.zeros(2, 3, 4, 5), atol=1e-7)
    ones = foreground.normalize(torch.ones(3, 2, 2))
    assert torch.allclose(ones[:, 0, 0], (1 - mean) / std)
    assert ones[0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229)


# ---- data_scripts/foreground.py ---------------------------------------------------------------------------

PETS = {"trainval": ["pug_1", "Abyssinian_2", "beagle_3", "pug_4"], "test": ["shiba_inu_5", "Siamese_6", "pug_7"]}


def _png(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jpg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_fake_archives(folder: Path, drop=(), prefix=""):
    """images.tar.gz and annotations.tar.gz laid out as the Oxford-IIIT Pet archives (tiny images); member
    names start with ``prefix`` (some tar tools write "./")."""
    trimap = np.full((30, 40), 2)
    trimap[8:22, 10:30] = 3
    trimap[10:20, 12:28] = 1
    ids = [i for split in PETS.values() for i in split]
    with tarfile.open(folder / "annotations.tar.gz", "w:gz") as tar:
        for split, images in PETS.items():
            lines = "".join(f"{i} 1 1 1\n" for i in images)
            _add(tar, f"{prefix}annotations/{split}.txt", lines.encode())
        for i in ids:
            if i not in drop:
                _add(tar, f"{prefix}annotations/trimaps/{i}.png", _png(trimap))
                _add(tar, f"annotations/trimaps/._{i}.png", b"resource fork")
    with tarfile.open(folder / "images.tar.gz", "w:gz") as tar:
        for k, i in enumerate(ids):
            _add(tar, f"{prefix}images/{i}.jpg", _jpg(np.full((30, 40, 3), 20 * k)))
    return folder / "images.tar.gz", folder / "annotations.tar.gz"


@pytest.mark.parametrize("prefix", ["", "./"])
def test_prepare_pets_keeps_the_imagenet_breeds_interleaved(script, tmp_path, prefix):
    images_tar, annotations_tar = write_fake_archives(tmp_path, prefix=prefix)
    dest = tmp_path / "root" / "foreground"
    assert script.prepare_pets(images_tar, annotations_tar, dest) == 5
    rows = [r.split("\t") for r in (dest / "index.tsv").read_text().splitlines()]
    # breeds in PET_TO_IMAGENET order (Siamese, beagle, pug), one image of each in turn
    assert rows == [["image", "label", "class"], ["Siamese_6", "284", "Siamese"], ["beagle_3", "162", "beagle"],
                    ["pug_1", "254", "pug"], ["pug_4", "254", "pug"], ["pug_7", "254", "pug"]]
    assert sorted(p.name for p in (dest / "images").iterdir()) == sorted(f"{r[0]}.jpg" for r in rows[1:])
    assert not (dest / "masks" / "Abyssinian_2.png").exists()
    images, masks, labels = foreground.load(tmp_path / "root", size=30)
    assert labels.tolist() == [284, 162, 254, 254, 254]
    # the trimap's object (1) and outline (3) are object, its 2 background: rows 8..21 of the 30-pixel-high map
    assert masks[0, 8:22, 15].all() and not masks[0, :8].any() and not masks[0, 22:].any()


def test_prepare_pets_refuses_incomplete_archives(script, tmp_path):
    images_tar, annotations_tar = write_fake_archives(tmp_path, drop=("beagle_3",))
    with pytest.raises(ValueError, match="1 expected files are missing .*beagle_3.png"):
        script.prepare_pets(images_tar, annotations_tar, tmp_path / "foreground")
    assert not (tmp_path / "foreground" / "index.tsv").exists()


def test_the_mapping_is_one_to_one(script):
    table = script.PET_TO_IMAGENET
    labels = [label for label, _, _ in table.values()]
    assert len(labels) == len(set(labels)) == 24 and all(0 <= v < 1000 for v in labels)
    assert all(wnid.startswith("n0") and len(wnid) == 9 for _, wnid, _ in table.values())


def test_download_verifies_before_renaming(script, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    dest = tmp_path / "dl" / "file.bin"
    with pytest.raises(ValueError, match="file.bin: download failed .*checksum mismatch"):
        script.download(src.as_uri(), dest, lambda p: False)
    assert not dest.exists() and not dest.with_name("file.bin.part").exists()
    assert script.download(src.as_uri(), dest, lambda p: p.read_bytes() == b"payload") == dest
    assert dest.read_bytes() == b"payload"
    # a verified file is kept: no download (the URL does not exist)
    assert script.download((tmp_path / "gone").as_uri(), dest, lambda p: True) == dest


def test_sha256_prefix_as_torch_hub_checks(script, tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert script.sha256_prefix_ok(f, f"https://x/models/resnet50-{digest[:8]}.pth")
    assert not script.sha256_prefix_ok(f, "https://x/models/resnet50-0676ba61.pth")
    assert data_files.RESNET50_URL.endswith("/resnet50-0676ba61.pth")


def test_main_prepares_from_local_archives(script, tmp_path, monkeypatch):
    """The whole script on file:// URLs standing in for the two archives (weights skipped)."""
    archives = write_fake_archives(tmp_path)
    md5 = {a.as_uri(): hashlib.md5(a.read_bytes()).hexdigest() for a in archives}
    real = script._files_module()
    fake = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
    fake.OXFORD_PET_MD5 = md5
    monkeypatch.setattr(script, "_files_module", lambda: fake)
    script.main(["--dest", str(tmp_path / "root"), "--only", "images"])
    assert (tmp_path / "root" / "downloads" / "images.tar.gz").is_file()
    assert foreground.load(tmp_path / "root", size=16)[2].tolist() == [284, 162, 254, 254, 254]
    fake.OXFORD_PET_MD5 = {url: "0" * 32 for url in md5}
    (tmp_path / "root" / "downloads" / "images.tar.gz").unlink()
    with pytest.raises(SystemExit, match="images.tar.gz: download failed"):
        script.main(["--dest", str(tmp_path / "root"), "--only", "images"])
