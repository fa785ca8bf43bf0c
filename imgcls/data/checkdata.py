"""``imgcls check-data``: what is wrong with a data folder or CSV, per file and for the whole set.

Per file: unreadable or truncated, zero bytes, not an image, smaller than ``min_size`` px,
over PIL's decompression-bomb limit (all from :func:`imgcls.data.decode.check_image`, which
decodes with the loader training uses). For the set: empty class folders, CSV rows whose file
is missing, the same bytes under two classes or on both sides of train/val, and classes too
small to be split. Unusual but valid files (CMYK, palette, RGBA, 16-bit, grayscale, a wrong
extension) are only noted. Files are opened read-only; nothing is ever written.

With a training config (``imgcls check-data [PATH] --config CONFIG [key=value ...]``) the data is
listed exactly as that config's training reads it: ``data.path_pattern`` with ``data.label_maps``
and ``data.bins`` (files the pattern does not match are named), CSV label columns, every task type
(multi-label, regression targets, one label per head), and the groups the split keeps together
(the same file under two groups is a leak a group split cannot prevent). Labels training would
refuse (a value missing from ``data.label_maps``, a head label outside its classes, a target that is
not a number) are reported as problems instead of stopping the check.
"""
from __future__ import annotations

import functools
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PIL import Image

from .decode import IMAGE_EXTENSIONS, PIL_MAX_PIXELS, ImageLimits, check_image, pil_limit
from .pattern import unmatched_message
from .sources import SPLIT_NAMES, list_class_folder, read_csv
from ..errors import UserError
from ..io import file_sha256



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
    what: Optional[str] = None   # with a config: what the labels are ("3 heads: ..."), instead of the class count

    @property
    def ok(self) -> bool:
        return not (self.file_problems or self.set_problems)

    def lines(self) -> list[str]:
        sides = Counter(e.side for e in self.entries)
        classes = sorted({e.label for e in self.entries})
        out = [f"checked {len(self.entries)} image file(s) "
               + (self.what if self.what is not None else f"in {len(classes)} class(es)")
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
    _sha256.cache_clear()
    report = DataCheck()
    _collect(Path(path), "train", report)
    if val is not None:
        _collect(Path(val), "val", report)
    _check_files(report, ImageLimits(min_size, max_pixels))
    _check_set(report, separate_val=len({e.side for e in report.entries}) > 1)
    _check_near(report)
    return report


def check_configured(cfg, path: Optional[str | os.PathLike] = None, val: Optional[str | os.PathLike] = None
                     ) -> DataCheck:
    """Check the data as the training config ``cfg`` (an imgcls Config) reads it. ``path``/``val``
    (a folder or a CSV) replace the config's data.root or data.csv / data.val_root or data.val_csv;
    the image limits are the config's data.min_image_side and data.max_image_pixels."""
    from dataclasses import replace

    from .build import DataSources, read_listing
    from ..tasks import get_task

    d = cfg.data

    def where(given, root, csv_path):
        if given is None:
            return root, csv_path
        given = Path(given)
        if not given.exists():
            raise UserError(f"'{given}' does not exist; pass the data folder (or CSV) the config's training reads.")
        return (None, str(given)) if given.is_file() else (str(given), None)

    root, csv_path = where(path, d.root, d.csv)
    val_root, val_csv = where(val, d.val_root, d.val_csv)
    if root is None and csv_path is None:
        raise UserError("no data to check: pass the data folder or CSV, or set data.root or data.csv in the config.")
    src = DataSources.from_config(cfg, root=root, csv=csv_path, val_root=val_root, val_csv=val_csv)
    if src.path_labels is not None:  # training's checks of each file, collected instead of stopping at the first
        src = replace(src, path_labels=replace(src.path_labels, on_bad="collect"))
    _sha256.cache_clear()
    report = DataCheck()
    task = get_task(cfg.task.type).from_config(cfg)
    sides = [("training", "train", root or csv_path)]
    if val_root or val_csv:
        sides.append(("validation", "val", val_root or val_csv))
    listed = {}
    for side, short, source in sides:
        try:
            got = read_listing(src, side)
        except UserError as e:
            report.set_problems.append(str(e))
            continue
        if got.unmatched:  # in training's words: its error, or with data.on_bad_image=skip its warning
            skips = d.on_bad_image == "skip" and len(got.unmatched) < got.found  # else training stops at them
            text = unmatched_message(got.unmatched, got.found, source, skipped=skips)
            if skips:
                report.notes.append(text.rstrip("."))
            else:
                report.set_problems.append(text)
        report.set_problems += got.problems  # each file training would stop at, in its words
        if not got.paths:
            continue
        report.entries += [Entry(p, _label_text(task, v), short, str(source), from_csv=(csv_path if short == "train" else val_csv) is not None)
                           for p, v in zip(got.paths, got.labels)]
        listed[short] = got
    _check_files(report, ImageLimits(d.min_image_side, d.max_image_pixels))
    if "train" in listed:
        _check_labels(report, cfg, task, src, listed)
        if not report.set_problems:
            _check_split(report, cfg, src)
    _check_set(report, separate_val="val" in listed, classes=False)  # the split itself checked the classes
    _check_groups(report, listed)
    _check_near(report)
    return report


def _check_split(report: DataCheck, cfg, src) -> None:
    """Training's own split (``build_split``, same seed): what it refuses is a problem, what it warns
    about a note, and the sizes of the two sides."""
    import warnings

    from .build import build_split
    from ..tasks import get_task

    d = cfg.data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            split = build_split(src, d.val_fraction, cfg.train.seed, get_task(cfg.task.type).from_config(cfg),
                                (d.folds_csv, d.fold) if d.folds_csv else None)
        except UserError as e:
            report.set_problems.append(f"training's split: {e}")
            split = None
    for w in caught:
        text = str(w.message)
        if "data.path_pattern" not in text and "appear in both" not in text:  # each is reported once, above/below
            report.notes.append(text.rstrip("."))
    if split is not None:
        report.notes.append(f"training's split (train.seed {cfg.train.seed}): {len(split.train)} training / "
                            f"{len(split.val)} validation images, {split.grouping}")


def _label_text(task, value) -> str:
    if isinstance(value, tuple):  # one label per head
        return " / ".join(f"{h.name}={v}" for h, v in zip(task.heads, value))
    return str(value)


def _check_labels(report: DataCheck, cfg, task, src, listed: dict) -> None:
    """The labels as the task encodes them: what they are, and the ones training would refuse."""
    from .build import encode
    train = listed["train"]
    labels, groups, column = train.labels, train.groups, train.group_column
    explicit = list(src.classes) if src.classes else train.classes  # or the classes a combine rule fixes
    try:
        names = task.classes_from(labels, explicit)
        encode(task, labels, names, train.paths, src.csv or src.root)  # training's own call, and its words
        if "val" in listed:
            encode(task, listed["val"].labels, names, listed["val"].paths, src.val_csv or src.val_root)
    except UserError as e:
        report.set_problems.append(str(e))
        report.what = f"for a {cfg.task.type} task"
        return
    except (KeyError, ValueError) as e:
        report.set_problems.append(f"a label ({e}) is not among the classes the training data gives; fix the data "
                                   "or data.classes.")
        report.what = f"for a {cfg.task.type} task"
        return
    kind = cfg.task.type
    if kind == "multihead":
        parts = []
        for j, h in enumerate(task.heads):
            counts = Counter(row[j] for row in labels)
            if h.type == "multiclass":
                parts.append(f"{h.name}: " + ", ".join(f"{c} {counts.get(c, 0)}" for c in h.classes))
            else:
                parts.append(f"{h.name}: numbers")
        report.what = f"with {len(task.heads)} heads ({'; '.join(parts)})"
        if cfg.task.combine:
            report.notes.append(f"combined class = {cfg.task.combine} (task.combine); per-class metrics of the "
                                "combined codes come with the heads'")
    elif kind == "multilabel":
        counts = Counter(label for row in labels for label in (row.split(src.label_separator) if row else []))
        empty = sum(1 for row in labels if not row)
        report.what = (f"with {len(names)} label(s) ({', '.join(f'{c} {counts.get(c, 0)}' for c in names)}"
                       + (f"; {empty} image(s) with no label" if empty else "") + ")")
        for c in names:
            if counts.get(c, 0) == 0:
                report.notes.append(f"label '{c}' has no training image; its metrics and threshold are undefined.")
    elif kind == "regression":
        values = [float(v) for v in task.encode(labels, names)]
        report.what = (f"with a regression target ({len(values)} values from {min(values):g} to {max(values):g}, "
                       f"mean {sum(values) / len(values):.4g})")
    else:
        counts = Counter(labels)
        absent = [c for c in names if counts.get(c, 0) == 0]
        report.what = f"in {len(names)} class(es)"
        if absent:
            report.notes.append(f"{len(absent)} of {len(names)} classes have no training image "
                                f"({', '.join(absent[:10])}{', ...' if len(absent) > 10 else ''}); the model still "
                                "has an output for each, and per-class metrics leave them out")
    if groups is not None:
        sizes = Counter(groups)
        report.notes.append(f"{len(sizes)} groups ('{column}', {min(sizes.values())} to {max(sizes.values())} images "
                            "each): the train/validation split and cv folds keep each group on one side")
    elif kind != "regression" and cfg.data.group_column == "auto" and src.path_labels is not None:
        report.notes.append("data.path_pattern has no group named 'group', so the split is by image; name the "
                            "person (or source) part (?P<group>...) if several images share one.")


def _check_groups(report: DataCheck, listed: dict) -> None:
    """The same file under two groups, and a group on both sides of a separate validation set."""
    group_of = {}
    for short, got in listed.items():
        if got.groups is not None:
            group_of.update({p: (g, short) for p, g in zip(got.paths, got.groups)})
    if not group_of:
        return
    bad = {p for p, _ in report.file_problems}
    by_hash: dict[str, set] = defaultdict(set)
    example: dict[str, list[str]] = defaultdict(list)
    for p, (g, _) in group_of.items():
        if p not in bad:
            h = _sha256(p)
            by_hash[h].add(g)
            example[h].append(p)
    for h, gs in by_hash.items():
        if len(gs) > 1:
            report.set_problems.append(
                f"the same file is under groups {', '.join(repr(g) for g in sorted(gs))}: "
                + ", ".join(f"'{p}'" for p in example[h][:3])
                + "; one source under two group ids can land on both sides of a group split: give it one group.")
    if "val" in listed and listed["val"].groups is not None and "train" in listed and listed["train"].groups:
        both = sorted(set(listed["train"].groups) & set(listed["val"].groups))
        if both:
            report.set_problems.append(f"{len(both)} group(s) are in both training and validation, e.g. "
                                       f"'{both[0]}'; validation then measures memory: keep each group on one side.")


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

def _check_set(report: DataCheck, separate_val: bool, classes: bool = True) -> None:
    """Duplicate files across classes and sides; with ``classes`` (one class per image), the classes
    too small to split."""
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

    if not classes:
        return
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


def _check_near(report: DataCheck) -> None:
    """pHash near-duplicates (imagehash, the 'audit' extra), as notes: a re-encoded or resized copy has other
    bytes than its original, so the exact checks above miss it. Never a problem: two different photos can
    hash alike, so a person looks at the pairs (imgcls audit writes them all to duplicates.csv)."""
    from .dedup import PHASH_MAX_DISTANCE, Image, find_duplicates
    bad = {p for p, _ in report.file_problems}
    good = [e for e in report.entries if e.path not in bad]
    try:
        import imagehash  # noqa: F401
    except ImportError:
        report.notes.append("near-duplicates were not searched: pip install 'imgcls[audit]' (imagehash) for them")
        return
    pairs = [p for p in find_duplicates([Image(e.path, e.label, e.side) for e in good]) if p.method == "phash"]
    if not pairs:
        return
    leaks = [p for p in pairs if p.across_splits]
    differ = [p for p in pairs if p.labels_differ]
    first = pairs[0]
    report.notes.append(f"{len(pairs)} near-duplicate pair(s) (pHash within {PHASH_MAX_DISTANCE} bits of 64), "
                        f"{len(leaks)} across training and validation, {len(differ)} with different labels, "
                        f"e.g. '{first.a.path}' ~ '{first.b.path}'; imgcls audit lists them all")


@functools.lru_cache(maxsize=None)  # the set checks and the group checks hash the same files
def _sha256(path: str) -> str:
    return file_sha256(path)
