"""Real datasets on disk: where they live, whether they are prepared and intact, and the command that prepares them.

Datasets are prepared by ``data_scripts/`` (never downloaded at run time) and looked up under
``$COMPANION_DATA`` (default ``~/.cache/companion``) and the system folders of Debian's dataset packages.
A missing or damaged dataset is a :class:`DataError` whose one-line message names the file and the command
that prepares it again; ``companion.params`` turns it into the one-line parameter error a user sees.

Files are checked against the MD5 checksums published with the dataset the first time they are used (a
truncated download or a damaged disk fails here, not halfway through a notebook). A verified file gets a
stamp under ``$COMPANION_DATA/.verified/`` keyed by its path, size and modification time, so later loads
only ``stat`` it. This module needs nothing but the standard library: ``data_scripts/`` loads it by path.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from pathlib import Path


class DataError(ValueError):
    """A dataset is missing or damaged; the message is one line naming the command that prepares it."""


def data_root() -> Path:
    return Path(os.environ.get("COMPANION_DATA", Path.home() / ".cache" / "companion"))


FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian's dataset-fashion-mnist
FASHION_MNIST_SCRIPT = "python data_scripts/fashion_mnist.py"
FOREGROUND_SCRIPT = "python data_scripts/foreground.py"
FSDD_SCRIPT = "python data_scripts/fsdd.py"
PREPARE = {
    "fashion_mnist": f"{FASHION_MNIST_SCRIPT}  (or: apt-get install dataset-fashion-mnist)",
    "fsdd": FSDD_SCRIPT,
    "foreground": FOREGROUND_SCRIPT,
    "resnet50_torchvision": FOREGROUND_SCRIPT,
}
# layer_masking's `full` profile (data_scripts/foreground.py): the ResNet-50 ImageNet weights torchvision
# publishes (IMAGENET1K_V1, the file the paper's code loads; its name carries the first hex digits of the
# file's SHA-256, which torch.hub checks) and the Oxford-IIIT Pet archives with the MD5s torchvision's
# OxfordIIITPet dataset publishes. Prepared files go under data_root() / these folder names.
RESNET50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
RESNET50_DIR = "torchvision"
FOREGROUND_DIR = "foreground"
OXFORD_PET_MD5 = {
    "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz": "5c4f3ee8e5d25df40f4fd59a7f44e54c",
    "https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz": "95a8c909bbe2e81eed6a22bccdf3f68f",
}


def resnet50_weights_file(root: Path | str | None = None) -> Path:
    """Where the torchvision ResNet-50 state dict lives under a data root (default :func:`data_root`)."""
    return Path(root if root is not None else data_root()) / RESNET50_DIR / RESNET50_URL.rsplit("/", 1)[1]


def foreground_prepare_command(root: Path | str | None = None) -> str:
    """The command that prepares the foreground set and the ResNet-50 weights under ``root``."""
    if root is None or Path(root).resolve() == data_root().resolve():
        return FOREGROUND_SCRIPT
    return f"{FOREGROUND_SCRIPT} --dest {root}"


# The MD5s published with Fashion-MNIST: of each .gz file as Zalando serves it, and of its decompressed idx
# content. Debian's package recompresses the files (other .gz bytes, the same content), so a .gz file is
# accepted when either its own MD5 or that of its content matches; an uncompressed idx file by its content.
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
    "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
    "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
}

# The Free Spoken Digit Dataset (Jackson et al.; CC BY-SA 4.0): 3,000 recordings, 6 speakers × 10 digits × 50,
# 8 kHz, from the public repository at a pinned commit. Its files are checked by their git blob SHA-1s: the
# SHA-256 of the sorted "<file> <blob sha1>" lines of recordings/ must equal FSDD_DIGEST.
FSDD_DIR = "fsdd"
FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
FSDD_URL = f"https://codeload.github.com/Jakobovski/free-spoken-digit-dataset/tar.gz/{FSDD_COMMIT}"
FSDD_DIGEST = "ffdfffa578e96ff40058001e39a248aec5c50b68584ef782f9a9545182cb13c3"
FSDD_MANIFEST = "MANIFEST"  # written last by data_scripts/fsdd.py: the listing whose digest is FSDD_DIGEST


def git_blob_sha1(data: bytes) -> str:
    """The SHA-1 git gives a file's content (``git hash-object``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fsdd_listing(files: dict[str, bytes]) -> str:
    """The sorted ``"<file> <blob sha1>\n"`` lines of the recordings ``{file name: content}``."""
    return "".join(f"{name} {git_blob_sha1(data)}\n" for name, data in sorted(files.items()))


def fsdd_dir(data_dir: str = "") -> Path:
    return (Path(data_dir) if data_dir else data_root()) / FSDD_DIR


_verified: set[tuple] = set()  # (path, size, mtime_ns, digests) verified by this process


def _fashion_dir(data_dir: str = "") -> Path | None:
    for d in ([data_dir] if data_dir else []) + [str(data_root() / "fashion_mnist"), *FASHION_MNIST_DIRS]:
        p = Path(d)
        if (p / "train-images-idx3-ubyte.gz").is_file() or (p / "train-images-idx3-ubyte").is_file():
            return p
    return None


def fashion_mnist_file(directory: Path, stem: str) -> Path:
    """The idx file ``stem`` in ``directory``: uncompressed if present, else the ``.gz``."""
    p = Path(directory) / stem
    return p if p.is_file() else p.with_name(stem + ".gz")


def prepare_command(name: str, path: Path | None = None) -> str:
    """The command that prepares dataset ``name`` (again), for a file at ``path``."""
    if name != "fashion_mnist" or path is None:
        return PREPARE[name]
    folder = Path(path).parent
    if str(folder) in FASHION_MNIST_DIRS:
        return f"{FASHION_MNIST_SCRIPT}  (or: apt-get install --reinstall dataset-fashion-mnist)"
    if folder.resolve() == (data_root() / "fashion_mnist").resolve():
        return FASHION_MNIST_SCRIPT
    return f"{FASHION_MNIST_SCRIPT} --dest {folder}"


def md5_of(path: Path) -> tuple[str, str | None]:
    """MD5 of the file's bytes and, for a ``.gz`` file, of its decompressed content (raises on a damaged .gz)."""
    raw = Path(path).read_bytes()
    content = None
    if Path(path).suffix == ".gz":
        content = hashlib.md5(gzip.decompress(raw)).hexdigest()
    return hashlib.md5(raw).hexdigest(), content


def _stamp_path(path: Path) -> Path:
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:24]
    return data_root() / ".verified" / f"{key}.json"


def _stamp(path: Path, st: os.stat_result) -> dict:
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def verify_file(path: Path, digests, prepare: str) -> None:
    """Raise a one-line :class:`DataError` unless ``path`` (or its decompressed content) has an MD5 in ``digests``.

    A verified file is remembered (in this process and as a stamp file keyed by path, size and mtime), so that
    the next check only ``stat``\\ s it. ``prepare`` is the command named in the error.
    """
    path = Path(path)
    digests = frozenset(digests)
    try:
        st = path.stat()
    except OSError:
        raise DataError(f"dataset file {path} is missing; prepare it again: {prepare}") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, digests)
    if key in _verified:
        return
    stamp = _stamp_path(path)
    try:
        seen = json.loads(stamp.read_text())
        if seen.get("md5") in digests and {k: seen.get(k) for k in ("path", "size", "mtime_ns")} == _stamp(path, st):
            _verified.add(key)
            return
    except (OSError, ValueError, AttributeError):
        pass
    try:
        file_md5, content_md5 = md5_of(path)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"dataset file {path} is damaged or truncated ({reason}); prepare it again: {prepare}") \
            from None
    except OSError as exc:
        raise DataError(f"dataset file {path} cannot be read ({exc.strerror or exc}); prepare it again: {prepare}") \
            from None
    match = next((d for d in (file_md5, content_md5) if d in digests), None)
    if match is None:
        raise DataError(f"dataset file {path} does not match its published MD5 checksum (damaged or another "
                        f"file); prepare it again: {prepare}")
    _verified.add(key)
    try:  # best effort: a read-only cache only costs a re-check next time
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**_stamp(path, st), "md5": match}))
        os.replace(tmp, stamp)
    except OSError:
        pass


def verify_fashion_mnist(directory: Path, stems=None) -> None:
    """Check the Fashion-MNIST idx files ``stems`` (default all four) in ``directory`` against their checksums."""
    for stem in stems or FASHION_MNIST_MD5:
        path = fashion_mnist_file(directory, stem)
        verify_file(path, FASHION_MNIST_MD5[stem], prepare_command("fashion_mnist", path))


def available(name: str, data_dir: str = "") -> bool:
    """Whether dataset ``name`` is on disk (not whether it is intact: :func:`require` checks that)."""
    if name == "shapes":
        return True
    if name == "fashion_mnist":
        return _fashion_dir(data_dir) is not None
    if name == "fsdd":
        return (fsdd_dir(data_dir) / FSDD_MANIFEST).is_file()
    if name == "imagenet_fg":  # layer_masking's full profile: the foreground set and the ResNet-50 weights
        root = Path(data_dir) if data_dir else data_root()
        return (root / FOREGROUND_DIR / "index.tsv").is_file() and resnet50_weights_file(root).is_file()
    raise ValueError(f"unknown dataset {name!r}")


def require(name: str, data_dir: str = "") -> None:
    """Raise a one-line :class:`DataError` naming the command that prepares ``name`` when it is missing or damaged."""
    if not available(name, data_dir):
        prepare = foreground_prepare_command(data_dir or None) if name == "imagenet_fg" else PREPARE[name]
        raise DataError(f"dataset {name!r} is not prepared; run: {prepare}")
    if name == "fashion_mnist":
        verify_fashion_mnist(_fashion_dir(data_dir))
    if name == "fsdd":
        listing = (fsdd_dir(data_dir) / FSDD_MANIFEST).read_text()
        if hashlib.sha256(listing.encode()).hexdigest() != FSDD_DIGEST:
            raise DataError(f"dataset 'fsdd' in {fsdd_dir(data_dir)} does not match its checksum; run: {FSDD_SCRIPT}")
