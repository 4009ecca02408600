"""Prepare the Free Spoken Digit Dataset (speech notebooks' `full` data): `python data_scripts/fsdd.py [--dest DIR]`.

FSDD (Jackson et al.; CC BY-SA 4.0): 3,000 recordings of the digits 0–9, 6 speakers × 50 each, 8 kHz mono WAV.
The script downloads the public repository's archive at a pinned commit (companion/data/files.py: FSDD_COMMIT),
extracts `recordings/*.wav` into DIR/fsdd/recordings (DIR: $COMPANION_DATA, default ~/.cache/companion), and checks
every file by its git blob SHA-1: the SHA-256 of the sorted "<file> <sha1>" lines must equal FSDD_DIGEST. The
listing is written last (DIR/fsdd/MANIFEST), so a half-prepared folder reads as unprepared; re-running resumes.
"""

import argparse
import hashlib
import sys
import tarfile
from pathlib import Path

from foreground import _files_module, download  # the sibling script: checked downloads, companion's files.py


def prepare(archive: Path, dest: Path, files) -> int:
    """Extract and verify the recordings of ``archive`` into ``dest``; returns their number."""
    (dest / files.FSDD_MANIFEST).unlink(missing_ok=True)
    recordings = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[1] == "recordings" and parts[2].endswith(".wav"):
                recordings[parts[2]] = tar.extractfile(member).read()
    listing = files.fsdd_listing(recordings)
    if hashlib.sha256(listing.encode()).hexdigest() != files.FSDD_DIGEST:
        raise ValueError(f"{archive.name}: the recordings do not match FSDD_DIGEST; delete it and run the script again")
    out = dest / "recordings"
    out.mkdir(parents=True, exist_ok=True)
    for name, data in recordings.items():
        (out / name).write_bytes(data)
    (dest / files.FSDD_MANIFEST).write_text(listing)
    return len(recordings)


def main() -> None:
    files = _files_module()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=files.data_root())
    root = ap.parse_args().dest
    dest = root / files.FSDD_DIR
    archive = root / "downloads" / f"fsdd-{files.FSDD_COMMIT[:12]}.tar.gz"
    try:
        download(files.FSDD_URL, archive, tarfile.is_tarfile)
        n = prepare(archive, dest, files)
    except (OSError, ValueError, tarfile.TarError) as exc:
        sys.exit(f"fsdd: {exc}")
    print(f"ok  {n} recordings in {dest / 'recordings'}")


if __name__ == "__main__":
    main()
