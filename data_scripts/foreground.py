"""Prepare layer_masking's `full` profile: `python data_scripts/foreground.py [--dest DIR] [--only weights|images]`.

Two things land under the data root DIR (default $COMPANION_DATA, else ~/.cache/companion):

1. `torchvision/resnet50-0676ba61.pth`: torchvision's ImageNet ResNet-50 weights (IMAGENET1K_V1, the file
   the paper's code loads), from download.pytorch.org. Like `torch.hub` does, the script checks that the
   file's SHA-256 starts with the hex digits in its name (0676ba61).
2. `foreground/`: real photographs with object masks and ImageNet-1k labels. The paper used ImageNet training
   images with Salient ImageNet and "Pixel ImageNet" masks, which need the ImageNet images (an account);
   the closest public set is the Oxford-IIIT Pet dataset (Parkhi et al. 2012; CC BY-SA 4.0): photographs
   of 37 cat and dog breeds, each with a hand-drawn trimap. The two archives (about 790 MB and 19 MB) are
   checked against the MD5s torchvision's `OxfordIIITPet` dataset publishes. Only the 24 breeds that are an
   ImageNet-1k class are kept (`PET_TO_IMAGENET` below; the 13 others - Abyssinian, Bengal, Birman, Bombay,
   British Shorthair, Maine Coon, Ragdoll, Russian Blue, Sphynx, American bulldog, American pit bull
   terrier, Havanese, Shiba Inu - have no ImageNet-1k synset of their own), from both of the dataset's
   splits (the network was never trained on them). The rows of `foreground/index.tsv` interleave the breeds
   (the k-th image of each breed in `PET_TO_IMAGENET`'s order, then the (k+1)-th; a breed's images in the
   order of trainval.txt, then test.txt), so the first n images cover the breeds evenly.

Downloads go to `DIR/downloads/` under a temporary name and are renamed once their checksum matches; a
verified file already there is reused, so an interrupted run can simply be repeated (the archives can be
deleted afterwards). `foreground/index.tsv` is written last, so a half-prepared folder reads as unprepared.
This script needs only the standard library (the images are decoded later, by companion.data.foreground).
"""

import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

# Oxford-IIIT Pet breed (as in its file names) -> (ImageNet-1k class index, WordNet id, ImageNet class name).
PET_TO_IMAGENET = {
    "Egyptian_Mau": (285, "n02124075", "Egyptian cat"),
    "Persian": (283, "n02123394", "Persian cat"),
    "Siamese": (284, "n02123597", "Siamese cat"),
    "basset_hound": (161, "n02088238", "basset"),
    "beagle": (162, "n02088364", "beagle"),
    "boxer": (242, "n02108089", "boxer"),
    "chihuahua": (151, "n02085620", "Chihuahua"),
    "english_cocker_spaniel": (219, "n02102318", "cocker spaniel"),
    "english_setter": (212, "n02100735", "English setter"),
    "german_shorthaired": (210, "n02100236", "German short-haired pointer"),
    "great_pyrenees": (257, "n02111500", "Great Pyrenees"),
    "japanese_chin": (152, "n02085782", "Japanese spaniel"),
    "keeshond": (261, "n02112350", "keeshond"),
    "leonberger": (255, "n02111129", "Leonberg"),
    "miniature_pinscher": (237, "n02107312", "miniature pinscher"),
    "newfoundland": (256, "n02111277", "Newfoundland"),
    "pomeranian": (259, "n02112018", "Pomeranian"),
    "pug": (254, "n02110958", "pug"),
    "saint_bernard": (247, "n02109525", "Saint Bernard"),
    "samoyed": (258, "n02111889", "Samoyed"),
    "scottish_terrier": (199, "n02097298", "Scotch terrier"),
    "staffordshire_bull_terrier": (179, "n02093256", "Staffordshire bullterrier"),
    "wheaten_terrier": (202, "n02098105", "soft-coated wheaten terrier"),
    "yorkshire_terrier": (187, "n02094433", "Yorkshire terrier"),
}
SPLITS = ("trainval", "test")  # annotations/<split>.txt: "<image> <class id> <species> <breed id>" per line


def _files_module():
    """``companion/data/files.py`` loaded by path: it needs only the standard library (no torch)."""
    path = Path(__file__).resolve().parent.parent / "companion" / "data" / "files.py"
    spec = importlib.util.spec_from_file_location("_companion_data_files", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sha256_prefix_ok(path: Path, url: str) -> bool:
    """Whether the file's SHA-256 starts with the hex digits after the last '-' of the URL's file name
    (the check ``torch.hub.download_url_to_file`` makes for torchvision weights)."""
    prefix = re.search(r"-([a-f0-9]+)\.", url.rsplit("/", 1)[1]).group(1)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest().startswith(prefix)


def md5_ok(path: Path, md5: str) -> bool:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == md5


def download(url: str, path: Path, check) -> Path:
    """``path`` when it exists and ``check(path)`` holds; else download ``url`` to ``path.part``, check it and
    rename it to ``path``. Raises ``ValueError`` (one line) when the download fails or does not verify."""
    if path.is_file() and check(path):
        print(f"ok  {path}")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    print(f"downloading {url} ...", flush=True)
    try:
        urllib.request.urlretrieve(url, tmp, _progress(path.name))
        if not check(tmp):
            raise ValueError("checksum mismatch")
    except (OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{path.name}: download failed ({exc}); run the script again") from None
    os.replace(tmp, path)
    print(f"ok  {path}")
    return path


def _progress(name: str):
    """A ``urlretrieve`` report hook printing every further 10 % of a download of known size."""
    shown = [-10]

    def hook(blocks: int, block_size: int, total: int) -> None:
        pct = min(100, blocks * block_size * 100 // total) // 10 * 10 if total > 0 else -10
        if pct > shown[0]:
            shown[0] = pct
            print(f"  {name}: {pct} %", flush=True)
    return hook


def prepare_pets(images_tar: Path, annotations_tar: Path, dest: Path) -> int:
    """Extract the ImageNet-class breeds of the Oxford-IIIT Pet archives into ``dest`` (the ``foreground``
    folder): ``images/<image>.jpg``, ``masks/<image>.png`` (the trimap, unchanged) and, last, ``index.tsv``
    (breeds interleaved). Returns the number of images."""
    (dest / "index.tsv").unlink(missing_ok=True)  # unprepared until this run completes
    by_breed: dict[str, list[str]] = {b: [] for b in PET_TO_IMAGENET}
    with tarfile.open(annotations_tar) as tar:
        members = {_name(m): m for m in tar.getmembers()}
        for split in SPLITS:
            if f"annotations/{split}.txt" not in members:
                raise ValueError(f"{annotations_tar}: annotations/{split}.txt is missing")
            lines = tar.extractfile(members[f"annotations/{split}.txt"]).read().decode().splitlines()
            for line in lines:
                if line.strip() and not line.startswith("#"):
                    image = line.split()[0]
                    breed = image.rsplit("_", 1)[0]
                    if breed in by_breed and image not in by_breed[breed]:
                        by_breed[breed].append(image)
        wanted = {f"annotations/trimaps/{i}.png": f"{i}.png" for images in by_breed.values() for i in images}
        _extract(tar, wanted, dest / "masks")
    with tarfile.open(images_tar) as tar:
        _extract(tar, {f"images/{i}.jpg": f"{i}.jpg" for images in by_breed.values() for i in images},
                 dest / "images")
    order = []  # the k-th image of every breed, then the (k+1)-th, ...
    for k in range(max(map(len, by_breed.values()))):
        order += [(images[k], breed) for breed, images in by_breed.items() if k < len(images)]
    tmp = dest / "index.tsv.part"
    with open(tmp, "w") as f:
        f.write("image\tlabel\tclass\n")
        f.writelines(f"{image}\t{PET_TO_IMAGENET[breed][0]}\t{breed}\n" for image, breed in order)
    os.replace(tmp, dest / "index.tsv")
    return len(order)


def _name(member: tarfile.TarInfo) -> str:
    return member.name.removeprefix("./")


def _extract(tar: tarfile.TarFile, wanted: dict[str, str], folder: Path) -> None:
    """Copy the members named in ``wanted`` (member name -> file name) into ``folder``, in one pass over the
    archive (a .tar.gz is read as a stream); a missing one raises."""
    folder.mkdir(parents=True, exist_ok=True)
    found = set()
    for member in tar:
        if member.isfile() and _name(member) in wanted:
            with tar.extractfile(member) as src, open(folder / wanted[_name(member)], "wb") as dst:
                shutil.copyfileobj(src, dst)
            found.add(_name(member))
    missing = sorted(set(wanted) - found)
    if missing:
        raise ValueError(f"{tar.name}: {len(missing)} expected files are missing (first: {missing[0]})")


def main(argv=None) -> None:
    files = _files_module()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=files.data_root(), help="data root (default: %(default)s)")
    ap.add_argument("--only", choices=("weights", "images"), help="prepare only the weights or only the images")
    args = ap.parse_args(argv)
    try:
        if args.only != "images":
            download(files.RESNET50_URL, files.resnet50_weights_file(args.dest),
                     lambda p: sha256_prefix_ok(p, files.RESNET50_URL))
        if args.only != "weights":
            archives = [download(url, args.dest / "downloads" / url.rsplit("/", 1)[1], lambda p, m=md5: md5_ok(p, m))
                        for url, md5 in files.OXFORD_PET_MD5.items()]
            n = prepare_pets(*archives, args.dest / files.FOREGROUND_DIR)
            print(f"ok  {args.dest / files.FOREGROUND_DIR}: {n} images of {len(PET_TO_IMAGENET)} ImageNet classes"
                  f" (the archives in {args.dest / 'downloads'} may now be deleted)")
    except (OSError, ValueError, tarfile.TarError, KeyError) as exc:
        sys.exit(" ".join(str(exc).split()))


if __name__ == "__main__":
    main()
