"""From data config values to the two sides of the split (files, labels, groups, class names)."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..errors import UserError
from .sources import read_csv, resolve_classes, scan_folder
from .splits import split_indices


@dataclass
class Side:
    paths: list[str]
    labels: list[int]                 # integer codes into classes
    groups: Optional[list[str]] = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: Sequence[int]) -> "Side":
        return Side([self.paths[i] for i in keep], [self.labels[i] for i in keep],
                    None if self.groups is None else [self.groups[i] for i in keep])


@dataclass
class DataSplit:
    train: Side
    val: Side
    classes: list[str]
    bad: list = field(default_factory=list)  # (path, problem) left out by data.on_bad_image=skip

    def counts(self, side: str) -> list[int]:
        labels = getattr(self, side).labels
        return [labels.count(k) for k in range(len(self.classes))]


def _read(root: Optional[str], csv_path: Optional[str], path_column: str, label_column: str,
          group_column: Optional[str], what: str):
    if csv_path:
        return read_csv(csv_path, path_column, label_column, group_column)
    if root:
        paths, labels = scan_folder(root)
        if group_column:
            raise UserError(f"data.group_column needs CSV labels (data.csv), but {what} is a folder; "
                            "use a CSV with a group column.")
        return paths, labels, None
    raise UserError(f"no {what} data configured; set data.root (class folders) or data.csv.")


def build_split(root: Optional[str], csv_path: Optional[str], val_root: Optional[str],
                val_csv: Optional[str], val_fraction: float, seed: int,
                path_column: str = "path", label_column: str = "label",
                group_column: Optional[str] = None, classes: Optional[list] = None) -> DataSplit:
    paths, labels, groups = _read(root, csv_path, path_column, label_column, group_column, "training")
    if val_root or val_csv:
        vpaths, vlabels, vgroups = _read(val_root, val_csv, path_column, label_column,
                                         group_column if val_csv else None, "validation")
        names = resolve_classes(labels + vlabels, [str(c) for c in classes] if classes else None)
        code = {c: i for i, c in enumerate(names)}
        train = Side(paths, [code[l] for l in labels], groups)
        val = Side(vpaths, [code[l] for l in vlabels], vgroups)
    else:
        names = resolve_classes(labels, [str(c) for c in classes] if classes else None)
        code = {c: i for i, c in enumerate(names)}
        full = Side(paths, [code[l] for l in labels], groups)
        tr, va = split_indices(full.labels, groups, val_fraction, seed, names)
        train, val = full.subset(tr), full.subset(va)
    present = sorted(set(train.labels))
    if len(present) < 2:
        raise UserError(f"the training data has {len(present)} class(es); a classifier needs at least 2 "
                        "class folders (or label values).")
    return DataSplit(train, val, names)


def check_same_split(split: DataSplit, folder: Path) -> None:
    """On resume: the files and labels must be those the run started with (``folder/train.csv``,
    ``folder/val.csv``), or the batches, and so the result, silently differ from the original run."""
    for side in ("train", "val"):
        path = Path(folder) / f"{side}.csv"
        if not path.is_file():
            continue  # killed before the split was written: nothing to compare with
        with open(path, newline="") as f:
            recorded = [(r["path"], r["label"]) for r in csv.DictReader(f)]
        s = getattr(split, side)
        now = [(p, split.classes[y]) for p, y in zip(s.paths, s.labels)]
        if now != recorded:
            changed = len(set(now) ^ set(recorded))
            raise UserError(f"the {side} data differs from the run's {path} ({changed} file(s) added, removed or "
                            "relabelled, or their order changed); restore the original files to resume, or start "
                            "a new run.")


def write_split_csv(side: Side, classes: list[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group"])
        for i, (p, y) in enumerate(zip(side.paths, side.labels)):
            w.writerow([p, classes[y], "" if side.groups is None else side.groups[i]])
