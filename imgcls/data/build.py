"""From data config values to the two sides of the split (files, labels, groups, class names)."""
from __future__ import annotations

import csv
import difflib
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..errors import UserError
from .pathlabels import PathLabels, read_path_labels
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
    grouping: str = "not grouped"            # how the split was made, for the log's data: line
    label_record: dict = field(default_factory=dict)  # labels from paths: the rule, for model.json

    def counts(self, side: str) -> list[int]:
        labels = getattr(self, side).labels
        return [labels.count(k) for k in range(len(self.classes))]


ID_NAMES = {"id", "person", "person_id", "subject", "patient", "participant", "user", "case"}


def looks_like_identifier(name: str, values: Sequence[str]) -> bool:
    """A column that names who/what a sample belongs to (a person, a patient): by its name (id,
    person, subject, patient, participant, user, case, also with an _id suffix), or by its values (at
    least 10 distinct, most of them on 2-50 rows). Attributes with a handful of values are not."""
    low = name.strip().lower()
    if low in ID_NAMES or (low.endswith("_id") and low[:-3] in ID_NAMES):
        return True
    counts = Counter(values)
    if len(counts) < 10:
        return False
    return sum(1 for c in counts.values() if 2 <= c <= 50) > len(counts) / 2


def resolve_group_column(header: Sequence[str], setting: Optional[str]) -> Optional[str]:
    """data.group_column: 'auto' -> a column named 'group' (any case) if there is one; None -> no
    grouping; a name -> that column (checked by the CSV reader)."""
    if setting is None:
        return None
    if setting == "auto":
        return next((h for h in header if h.strip().lower() == "group"), None)
    return setting


def _read(root: Optional[str], csv_path: Optional[str], path_column: str, label_column: str,
          group_column: Optional[str], what: str, path_labels: Optional[PathLabels] = None):
    """(paths, labels, groups or None, the group column used, the CSV's other columns)."""
    if root and path_labels is not None:
        got = read_path_labels(root, path_labels)
        if got.unmatched:
            warnings.warn(f"{len(got.unmatched)} image(s) under '{root}' do not match data.path_pattern and are "
                          f"skipped, e.g. '{got.unmatched[0]}'.", stacklevel=3)
        groups = got.groups if group_column == "auto" else None
        return got.paths, got.labels, groups, ("group" if groups is not None else None), {"__labelled__": got}
    if csv_path:
        explicit = None if group_column in (None, "auto") else group_column
        paths, labels, groups, others = read_csv(csv_path, path_column, label_column, explicit, with_columns=True)
        column = explicit
        if group_column == "auto":  # one read of the file: the 'group' column is among the others
            column = resolve_group_column(list(others), "auto")
            groups = others.pop(column) if column else None
            if groups is not None and not all(groups):
                raise UserError(f"CSV file '{csv_path}' has empty '{column}' cells; fill them, or set "
                                "data.group_column=none to split without groups.")
        return paths, labels, groups, column, others
    if root:
        paths, labels = scan_folder(root)
        if group_column not in (None, "auto"):
            raise UserError(f"data.group_column needs CSV labels (data.csv), but {what} is a folder; "
                            "use a CSV with a group column, or set data.group_column=none.")
        return paths, labels, None, None, {}
    raise UserError(f"no {what} data configured; set data.root (class folders) or data.csv.")


def _warn_identifiers(others: dict, csv_path: str) -> None:
    for name, values in others.items():
        if looks_like_identifier(name, values):
            warnings.warn(f"the split is not grouped, but column '{name}' of '{csv_path}' looks like an identifier "
                          f"(the same {name} on several rows would land on both sides); set "
                          f"data.group_column={name} to keep each {name} on one side.", stacklevel=3)
            return


def build_split(root: Optional[str], csv_path: Optional[str], val_root: Optional[str],
                val_csv: Optional[str], val_fraction: float, seed: int,
                path_column: str = "path", label_column: str = "label",
                group_column: Optional[str] = "auto", classes: Optional[list] = None,
                path_labels: Optional[PathLabels] = None, fold: Optional[tuple[str, int]] = None) -> DataSplit:
    paths, labels, groups, column, others = _read(root, csv_path, path_column, label_column, group_column,
                                                  "training", path_labels)
    labelled = others.pop("__labelled__", None)
    explicit = [str(c) for c in classes] if classes else (labelled.classes if labelled else None)
    if val_root or val_csv:
        vpaths, vlabels, vgroups, vcolumn, _ = _read(val_root, val_csv, path_column, label_column,
                                                     group_column if (val_csv or path_labels) else None,
                                                     "validation", path_labels)
        _check_same_classes(set(labels), set(vlabels), explicit)
        names = resolve_classes(labels + vlabels, explicit)
        code = {c: i for i, c in enumerate(names)}
        train = Side(paths, [code[l] for l in labels], groups)
        val = Side(vpaths, [code[l] for l in vlabels], vgroups)
        grouping = f"validation from {'data.val_csv' if val_csv else 'data.val_root'}"
        if groups is not None and vgroups is not None:
            shared = set(groups) & set(vgroups)
            if shared:
                warnings.warn(f"{len(shared)} group(s) of column '{column}' appear in both the training and the "
                              f"validation data (e.g. {sorted(shared)[0]!r}); validation then sees people it trained "
                              "on.", stacklevel=2)
    else:
        names = resolve_classes(labels, explicit)
        code = {c: i for i, c in enumerate(names)}
        full = Side(paths, [code[l] for l in labels], groups)
        try:
            tr, va = (fold_indices(paths, *fold) if fold else
                      split_indices(full.labels, groups, val_fraction, seed, names))
        except UserError as e:
            if groups is None:
                raise
            raise UserError(f"{str(e).rstrip('.')} (grouped by data.group_column '{column}'); or set "
                            "data.group_column=none to split without groups.") from None
        train, val = full.subset(tr), full.subset(va)
        if fold:
            grouping = f"fold {fold[1]} of '{fold[0]}' validates"
        elif groups is not None:
            grouping = f"grouped by '{column}': {len(set(train.groups))} / {len(set(val.groups))} groups"
        else:
            grouping = "not grouped" if csv_path else "not grouped (class folders have no group column)"
    if groups is None and csv_path:
        _warn_identifiers({k: v for k, v in others.items()}, csv_path)
    present = sorted(set(train.labels))
    if len(present) < 2:
        raise UserError(f"the training data has {len(present)} class(es); a classifier needs at least 2 "
                        "class folders (or label values).")
    return DataSplit(train, val, names, grouping=grouping, label_record=labelled.record if labelled else {})


def read_samples(root: Optional[str], csv_path: Optional[str], path_column: str = "path",
                 label_column: str = "label", group_column: Optional[str] = "auto", classes: Optional[list] = None,
                 path_labels: Optional[PathLabels] = None) -> tuple[Side, list[str], Optional[str]]:
    """Every sample of the training data, unsplit (what cross-validation folds): (samples with
    integer labels, class names, the group column used or None)."""
    paths, labels, groups, column, others = _read(root, csv_path, path_column, label_column, group_column,
                                                  "training", path_labels)
    labelled = others.pop("__labelled__", None)
    names = resolve_classes(labels, [str(c) for c in classes] if classes else (labelled.classes if labelled else None))
    code = {c: i for i, c in enumerate(names)}
    return Side(paths, [code[l] for l in labels], groups), names, column


def fold_indices(paths: Sequence[str], folds_csv: str, fold: int) -> tuple[list[int], list[int]]:
    """(train, val) indices: val is every file of ``fold`` in ``folds_csv`` (path,fold), train the rest.
    The file must list exactly the files read (a cross-validation's folds belong to its data)."""
    from .folds import read_folds_csv
    listed_paths, listed_folds = read_folds_csv(folds_csv)
    of = dict(zip(listed_paths, (int(f) for f in listed_folds)))
    missing = [p for p in paths if p not in of]
    if missing or len(of) != len(paths):
        raise UserError(f"'{folds_csv}' lists other files than the data ({len(missing)} file(s) not in it, e.g. "
                        f"'{(missing or [''])[0]}'); make the folds again with 'imgcls cv'.")
    if fold not in set(of.values()):
        raise UserError(f"data.fold={fold} is not a fold of '{folds_csv}' (folds: "
                        f"{', '.join(map(str, sorted(set(of.values()))))}); pick one of them.")
    val = [i for i, p in enumerate(paths) if of[p] == fold]
    return [i for i, p in enumerate(paths) if of[p] != fold], val


def _check_same_classes(train: set, val: set, explicit: Optional[list]) -> None:
    """A class on one side only is a mistake (a folder spelled 'Cat' beside 'cat'), unless data.classes
    lists it explicitly."""
    if explicit is not None:
        return
    for only, other, side in ((val - train, train, "validation"), (train - val, val, "training")):
        if not only:
            continue
        c = sorted(only)[0]
        close = [o for o in other if o.casefold() == c.casefold()] or difflib.get_close_matches(c, list(other), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"class '{c}' is in the {side} data only{hint}; rename it to match the other side, or list "
                        "every class in data.classes to keep it.")


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
