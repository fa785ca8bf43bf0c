"""``imgcls check-data``: what is wrong with a data folder or CSV, per file and for the whole set.

Per file: unreadable or truncated, zero bytes, not an image, smaller than ``min_size`` px,
over PIL's decompression-bomb limit (all from :func:`imgcls.data.decode.check_image`, which
decodes with the loader training uses). For the set: empty class folders, CSV rows whose file
is missing, the same bytes under two classes or on both sides of train/val, and classes too
small to be split. Unusual but valid files (CMYK, palette, RGBA, 16-bit, grayscale, a wrong
extension) are only noted. Files are opened read-only; nothing is ever written.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PIL import Image

from .data.decode import IMAGE_EXTENSIONS, PIL_MAX_PIXELS, ImageLimits, check_image, pil_limit
from .data.sources import SPLIT_NAMES, list_class_folder, read_csv
from .errors import UserError



@dataclass
class Entry:
    path: str
    label: str
    side: str            # 'train' or 'val' (or a split folder's name)
    source: str          # the folder or CSV it was listed in
    from_csv: bool = False


@dataclass
class DataCheck:
    """Result of :func:`check_data`; ``ok`` is False when any file or set problem was found."""
    entries: list[Entry] = field(default_factory=list)
    file_problems: list[tuple[str, str]] = field(default_factory=list)   # (path, what is wrong)
    set_problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)                     # valid but worth knowing

    @property
    def ok(self) -> bool:
        return not (self.file_problems or self.set_problems)

    def lines(self) -> list[str]:
        sides = Counter(e.side for e in self.entries)
        classes = sorted({e.label for e in self.entries})
        out = [f"checked {len(self.entries)} image file(s) in {len(classes)} class(es)"
               + (f" ({', '.join(f'{s} {n}' for s, n in sorted(sides.items()))})" if len(sides) > 1 else "")]
        out += [f"{path}: {why}" for path, why in self.file_problems]
        out += self.set_problems
        out += [f"note: {n}" for n in self.notes]
        n = len(self.file_problems) + len(self.set_problems)
        out.append("no problems found" if n == 0 else f"{n} problem(s) found")
        return out


def check_data(path: str | os.PathLike, min_size: int = 8, val: Optional[str | os.PathLike] = None,
               max_pixels: Optional[int] = PIL_MAX_PIXELS) -> DataCheck:
    """Check a class-folder tree (or one with train/ and val/ split folders) or a CSV, plus an optional ``val``
    source. ``min_size``/``max_pixels`` are training's data.min_image_side/data.max_image_pixels."""
    report = DataCheck()
    _collect(Path(path), "train", report)
    if val is not None:
        _collect(Path(val), "val", report)
    _check_files(report, ImageLimits(min_size, max_pixels))
    _check_set(report, separate_val=len({e.side for e in report.entries}) > 1)
    return report


# ---------------------------------------------------------------- listing the files

def _collect(path: Path, side: str, report: DataCheck) -> None:
    if path.is_file():
        if path.name.lower().endswith(IMAGE_EXTENSIONS):
            raise UserError(f"'{path}' is an image file; pass the folder that holds one subfolder per class "
                            "(or a CSV of path,label).")
        _collect_csv(path, side, report)
    elif path.is_dir():
        subdirs = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
        if "train" in subdirs and set(subdirs) <= set(SPLIT_NAMES):
            for name in subdirs:  # train/, val/, ...: each split folder is a side
                _collect_folder(path / name, "train" if name == "train" else "val", report)
        else:
            _collect_folder(path, side, report)
    else:
        raise UserError(f"'{path}' does not exist; pass a folder with one subfolder per class, or a CSV file.")


def _collect_folder(root: Path, side: str, report: DataCheck) -> None:
    """The folder as training lists it (imgcls.data.sources.list_class_folder), skipped entries named."""
    listing = list_class_folder(root)
    if not listing.paths and not listing.empty_classes:
        report.set_problems.append(f"folder '{root}' has no class subfolders; put each class's images in "
                                   "its own subfolder.")
    for name in listing.empty_classes:
        report.set_problems.append(f"class folder '{root / name}' holds no images; add images or remove the folder.")
    report.entries += [Entry(p, label, side, str(root)) for p, label in zip(listing.paths, listing.labels)]
    if listing.skipped:
        report.notes.append(f"{listing.skipped_summary()}; training skips them too")
    if listing.other_files:
        report.notes.append(f"{len(listing.other_files)} file(s) without an image extension are not used by "
                            f"training, e.g. '{listing.other_files[0]}'")


def _collect_csv(csv_path: Path, side: str, report: DataCheck) -> None:
    paths, labels, _ = read_csv(csv_path)
    seen: dict[str, str] = {}
    for p, label in zip(paths, labels):
        if p in seen and seen[p] != label:
            report.set_problems.append(f"'{p}' is listed twice in '{csv_path}' with different labels "
                                       f"('{seen[p]}' and '{label}'); keep one row.")
            continue
        if p not in seen:
            seen[p] = label
            report.entries.append(Entry(p, label, side, str(csv_path), from_csv=True))


# ---------------------------------------------------------------- per file

def _check_files(report: DataCheck, limits: ImageLimits) -> None:
    unusual: dict[str, list[str]] = defaultdict(list)
    for e in report.entries:
        if e.from_csv and not os.path.lexists(e.path):
            report.file_problems.append((e.path, f"listed in '{e.source}' but the file does not exist"))
            continue
        why = check_image(e.path, limits)
        if why:
            report.file_problems.append((e.path, why))
            continue
        with pil_limit(limits):  # the file passed our size check; PIL's own guard must not refuse it now
            kinds = _unusual(e.path)
        for kind in kinds:
            unusual[kind].append(e.path)
    for kind, paths in sorted(unusual.items()):
        report.notes.append(f"{len(paths)} valid file(s) {kind}, e.g. '{paths[0]}' (decoded normally)")


def _unusual(path: str) -> list[str]:
    with Image.open(path) as im:
        mode, fmt, info = im.mode, im.format, im.info
    kinds = []
    if mode == "CMYK":
        kinds.append("are CMYK")
    if mode in ("P", "PA"):
        kinds.append("use a palette")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in info:
        kinds.append("have transparency (composited on white)")
    if mode.startswith("I;16") or mode == "I":
        kinds.append("have 16-bit samples (scaled to 8 bits)")
    if mode in ("1", "L", "LA", "I") or mode.startswith("I;16"):
        kinds.append("are grayscale")
    ext = Path(path).suffix.lower()
    expected = {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",), "BMP": (".bmp",), "GIF": (".gif",),
                "WEBP": (".webp",), "TIFF": (".tif", ".tiff")}.get(fmt or "")
    if expected is not None and ext not in expected:
        kinds.append("have an extension that does not match their format")
    return kinds


# ---------------------------------------------------------------- the set

def _check_set(report: DataCheck, separate_val: bool) -> None:
    bad = {p for p, _ in report.file_problems}
    good = [e for e in report.entries if e.path not in bad]
    by_hash: dict[str, list[Entry]] = defaultdict(list)
    for e in good:
        by_hash[_sha256(e.path)].append(e)
    within = 0
    for group in by_hash.values():
        if len(group) < 2:
            continue
        names = ", ".join(f"'{e.path}'" for e in group[:4]) + (", ..." if len(group) > 4 else "")
        labels = sorted({e.label for e in group})
        sides = sorted({e.side for e in group})
        if len(labels) > 1:
            report.set_problems.append(f"the same file is in classes {', '.join(repr(c) for c in labels)}: {names}; "
                                       "keep it under its true class only.")
        if len(sides) > 1:
            report.set_problems.append(f"the same file is in both {' and '.join(sides)}: {names}; "
                                       "remove it from one side, or validation measures memory.")
        if len(labels) == 1 and len(sides) == 1:
            within += len(group) - 1
    if within:
        report.notes.append(f"{within} file(s) are exact copies of another file of the same class")

    train_counts = Counter(e.label for e in good if e.side == "train")
    all_classes = sorted({e.label for e in report.entries})
    if len(all_classes) == 1:
        report.set_problems.append(f"only one class ('{all_classes[0]}') was found; a classifier needs at least 2.")
    if separate_val:
        for c in sorted({e.label for e in good if e.side == "val"} - set(train_counts)):
            report.set_problems.append(f"class '{c}' has validation images but no usable training images.")
    else:
        for c in all_classes:
            if train_counts[c] < 2:
                report.set_problems.append(
                    f"class '{c}' has {train_counts[c]} usable image(s), too few to split into training and "
                    "validation; add images or provide a separate validation set.")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
