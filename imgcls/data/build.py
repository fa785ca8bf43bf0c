"""From data config values to the two sides of the split (files, labels, groups, class names)."""
from __future__ import annotations

import csv
import difflib
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

from ..errors import UserError
from ..io import write_csv
from .pathlabels import PathLabels, read_path_labels
from .pattern import unmatched_message
from .sources import read_csv, resolve_classes, scan_folder
from .splits import split_indices


@dataclass
class Side:
    paths: list[str]
    labels: list                      # the task's targets: class codes (multi-label: tuples of codes; regression: numbers)
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
    task: object = None                      # the Task whose targets Side.labels hold (None: multiclass)

    def counts(self, side: str) -> list[int]:
        """Training images per class (per label for multi-label; all images for regression)."""
        return (self.task or _multiclass()).counts(getattr(self, side).labels, self.classes)

    def label_text(self, target) -> str:
        return (self.task or _multiclass()).label_text(target, self.classes)


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


@dataclass(frozen=True)
class DataSources:
    """Where the samples and their labels come from: the data.* keys that say it, in one record."""
    root: Optional[str] = None
    csv: Optional[str] = None
    val_root: Optional[str] = None
    val_csv: Optional[str] = None
    path_column: str = "path"
    label_column: str = "label"
    label_columns: Optional[tuple[str, ...]] = None  # multi-label: one 0/1 column per label
    label_separator: str = "|"
    group_column: Optional[str] = "auto"
    classes: Optional[tuple[str, ...]] = None
    path_labels: Optional[PathLabels] = None
    empty_labels: bool = False              # multi-label: an empty label cell is an image with no label
    head_columns: Optional[tuple[str, ...]] = None  # multi-head: each head's column (or path group)
    target_key: bool = False                # label_column is a regression's task.target (named in errors)
    relabel: Optional[str] = None           # data.relabel / data.exclude: imgcls.data.fixes
    exclude: Optional[str] = None

    @classmethod
    def from_config(cls, cfg, root=None, csv=None, val_root=None, val_csv=None) -> "DataSources":
        """From a Config (data paths given separately when the engine substitutes the demo's)."""
        d, t = cfg.data, cfg.task
        label = t.target if t.type == "regression" else t.label
        heads = tuple(str((spec or {}).get("label") or name) for name, spec in (t.heads or {}).items()) or None
        path_labels = None if d.path_pattern is None else PathLabels(d.path_pattern, label, d.label_maps, d.bins,
                                                                      d.on_bad_image, heads)
        src = cls(root, csv, val_root, val_csv, d.path_column,
                   t.target if (t.type == "regression" and t.target and d.path_pattern is None) else d.label_column,
                   tuple(d.label_columns) if d.label_columns else None, d.label_separator, d.group_column,
                   tuple(str(c) for c in d.classes) if d.classes else None, path_labels, t.type == "multilabel",
                   heads, relabel=d.relabel, exclude=d.exclude)
        target = t.type == "regression" and bool(t.target) and d.path_pattern is None
        return replace(src, target_key=target)


_TRUE_CELLS, _FALSE_CELLS = {"1", "1.0", "true", "yes", "y"}, {"0", "0.0", "false", "no", "n", ""}


def _labels_from_columns(others: dict, first: list[str], src: DataSources, csv_path: str) -> list[str]:
    """Multi-label 0/1 columns -> the labels joined by the separator (the one-cell form)."""
    cols = {src.label_columns[0]: first, **{c: others.pop(c, None) for c in src.label_columns[1:]}}
    missing = [c for c, v in cols.items() if v is None]
    if missing:
        raise UserError(f"CSV file '{csv_path}' has no column '{missing[0]}' of data.label_columns; fix the list.")
    out = []
    for i in range(len(first)):
        on = []
        for c, values in cols.items():
            cell = values[i].strip().lower()
            if cell not in _TRUE_CELLS | _FALSE_CELLS:
                raise UserError(f"column '{c}' of '{csv_path}' holds '{values[i]}' on row {i + 2}; a label column "
                                "holds 0 or 1.")
            if cell in _TRUE_CELLS:
                on.append(c)
        out.append(src.label_separator.join(on))
    return out


def _read(src: DataSources, side: str):
    """``_read_side`` with data.relabel / data.exclude applied; the fixes' entries it matched are in
    others['__fixed__'] (warned about here unless a validation side may match the rest)."""
    from .fixes import apply_fixes, read_fixes, warn_unmatched
    paths, labels, groups, column, others = _read_side(src, side)
    fixes = read_fixes(src.relabel, src.exclude)
    if fixes is None:
        return paths, labels, groups, column, {**others, "__fixed__": set()}
    roots = [r for r in (src.root, src.val_root) if r] + [str(Path(c).parent) for c in (src.csv, src.val_csv) if c]
    names = [k for k in others if not k.startswith("__")]
    paths, labels, cols, matched = apply_fixes(fixes, roots, paths, labels, [groups] + [others[k] for k in names])
    if side == "training" and not (src.val_root or src.val_csv):
        warn_unmatched(fixes, matched)
    return paths, labels, cols[0], column, {**others, **dict(zip(names, cols[1:])), "__fixed__": matched}


def _read_side(src: DataSources, side: str):
    """(paths, labels, groups or None, the group column used, the CSV's other columns) of one side."""
    root, csv_path = (src.root, src.csv) if side == "training" else (src.val_root, src.val_csv)
    group_column = src.group_column if (side == "training" or csv_path or src.path_labels) else None
    if root and src.path_labels is not None:
        got = read_path_labels(root, src.path_labels)
        if got.unmatched:
            warnings.warn(unmatched_message(got.unmatched, got.found, root, skipped=True), stacklevel=3)
        groups = got.groups if group_column == "auto" else None
        return got.paths, got.labels, groups, ("group" if groups is not None else None), {"__labelled__": got}
    if csv_path:
        explicit = None if group_column in (None, "auto") else group_column
        label_column = (src.label_columns[0] if src.label_columns else
                        src.head_columns[0] if src.head_columns else src.label_column)
        paths, labels, groups, others = read_csv(csv_path, src.path_column, label_column, explicit, with_columns=True,
                                                 empty_labels=src.empty_labels, label_key=label_key(src))
        column = explicit
        if group_column == "auto":  # one read of the file: the 'group' column is among the others
            column = resolve_group_column(list(others), "auto")
            groups = others.pop(column) if column else None
            if groups is not None and not all(groups):
                raise UserError(f"CSV file '{csv_path}' has empty '{column}' cells; fill them, or set "
                                "data.group_column=none to split without groups.")
        if src.label_columns:
            labels = _labels_from_columns(others, labels, src, csv_path)
        if src.head_columns:  # a tuple of each head's cell per image
            cols = [labels if c == label_column else others.pop(c, None) for c in src.head_columns]
            missing = [c for c, v in zip(src.head_columns, cols) if v is None]
            if missing:
                raise UserError(f"CSV file '{csv_path}' has no column '{missing[0]}' for a head; set "
                                "task.heads.<name>.label to one of its columns.")
            labels = list(zip(*cols))
        return paths, labels, groups, column, others
    if root:
        paths, labels = scan_folder(root)
        if group_column not in (None, "auto"):
            raise UserError(f"data.group_column needs CSV labels (data.csv), but {side} is a folder; "
                            "use a CSV with a group column, or set data.group_column=none.")
        return paths, labels, None, None, {}
    raise UserError(f"no {side} data configured; set data.root (class folders) or data.csv.")


def _warn_identifiers(others: dict, csv_path: str) -> None:
    for name, values in others.items():
        if looks_like_identifier(name, values):
            warnings.warn(f"the split is not grouped, but column '{name}' of '{csv_path}' looks like an identifier "
                          f"(the same {name} on several rows would land on both sides); set "
                          f"data.group_column={name} to keep each {name} on one side.", stacklevel=3)
            return


def build_split(src: DataSources, val_fraction: float, seed: int, task=None,
                fold: Optional[tuple[str, int]] = None) -> DataSplit:
    """The two sides: a separate validation source, fold ``fold`` of a folds file, or a
    ``val_fraction`` split stratified by the task's targets and grouped when a group exists."""
    task = task or _multiclass()
    paths, labels, groups, column, others = _read(src, "training")
    labelled = others.pop("__labelled__", None)
    fixed = others.pop("__fixed__")
    explicit = list(src.classes) if src.classes else (labelled.classes if labelled else None)
    if src.val_root or src.val_csv:
        vpaths, vlabels, vgroups, vcolumn, vothers = _read(src, "validation")
        from .fixes import read_fixes, warn_unmatched
        warn_unmatched(read_fixes(src.relabel, src.exclude), fixed | vothers["__fixed__"])
        if task.name == "multiclass":
            _check_same_classes(set(labels), set(vlabels), explicit)
        names = task.classes_from(labels + vlabels, explicit)
        train = Side(paths, encode(task, labels, names, paths, src.csv or src.root), groups)
        val = Side(vpaths, encode(task, vlabels, names, vpaths, src.val_csv or src.val_root), vgroups)
        grouping = f"validation from {'data.val_csv' if src.val_csv else 'data.val_root'}"
        if groups is not None and vgroups is not None:
            shared = set(groups) & set(vgroups)
            if shared:
                warnings.warn(f"{len(shared)} group(s) of column '{column}' appear in both the training and the "
                              f"validation data (e.g. {sorted(shared)[0]!r}); validation then sees people it trained "
                              "on.", stacklevel=2)
    else:
        names = task.classes_from(labels, explicit)
        full = Side(paths, encode(task, labels, names, paths, src.csv or src.root), groups)
        try:
            tr, va = (fold_indices(paths, *fold) if fold else _split_sides(task, full, val_fraction, seed, names))
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
            grouping = "not grouped" if src.csv else "not grouped (class folders have no group column)"
    if groups is None and src.csv:
        _warn_identifiers({k: v for k, v in others.items()}, src.csv)
    present = sorted(set(train.labels)) if task.name == "multiclass" else [0, 1]
    if len(present) < 2:
        raise UserError(f"the training data has {len(present)} class(es); a classifier needs at least 2 "
                        "class folders (or label values).")
    return DataSplit(train, val, names, grouping=grouping, label_record=labelled.record if labelled else {},
                     task=task)


def encode(task, labels: list, names, paths: Sequence[str], source) -> list:
    """``task.encode`` of one side; a label it cannot encode is named with its image and its source."""
    from ..tasks.base import LabelError
    try:
        return task.encode(labels, names)
    except LabelError as e:
        raise UserError(f"{e.what} for '{paths[e.index]}' in '{source}'; {e.fix}.") from None


def label_key(src: DataSources) -> str:
    """The config key that names the CSV's label column, for a message that asks to change it."""
    if src.label_columns:
        return "data.label_columns"
    if src.head_columns:
        return "task.heads.<name>.label"
    return "task.target" if src.target_key else "data.label_column"


def _multiclass():
    from ..tasks import get_task
    return get_task("multiclass")


def _split_sides(task, full: Side, val_fraction: float, seed: int, names) -> tuple[list[int], list[int]]:
    """Multiclass: ``split_indices`` (stratified, grouped, tiny classes kept in training). Other tasks:
    the first of round(1 / val_fraction) folds, stratified as cross-validation stratifies them."""
    if task.name == "multiclass":
        return split_indices(full.labels, full.groups, val_fraction, seed, names)
    from .folds import make_folds
    k = max(2, round(1 / val_fraction))
    fold_of = make_folds(k, seed, groups=full.groups, **task.fold_targets(full.labels))
    return [i for i, f in enumerate(fold_of) if f != 0], [i for i, f in enumerate(fold_of) if f == 0]


def read_samples(src: DataSources, task=None) -> tuple[Side, list[str], Optional[str]]:
    """Every sample of the training data, unsplit (what cross-validation folds): (samples with the
    task's targets, class names, the group column used or None)."""
    task = task or _multiclass()
    paths, labels, groups, column, others = _read(src, "training")
    labelled = others.pop("__labelled__", None)
    names = task.classes_from(labels, list(src.classes) if src.classes else (labelled.classes if labelled else None))
    return Side(paths, encode(task, labels, names, paths, src.csv or src.root), groups), names, column


def read_labelled(src: DataSources) -> tuple[list[str], list]:
    """(paths, raw labels) of ``src``'s training side, read exactly as training reads them (labels
    as written: class names, joined labels, numbers, or a tuple per head); evaluation encodes them
    with the model's classes."""
    paths, labels, _, _, _ = _read(src, "training")
    return paths, labels


@dataclass
class Listing:
    """One side of the data as training reads it (``read_listing``)."""
    paths: list[str]
    labels: list                     # as written: class names, joined labels, numbers, or a tuple per head
    groups: Optional[list[str]]
    group_column: Optional[str]
    unmatched: list[str]             # files under the root that data.path_pattern did not match
    classes: Optional[list[str]]     # the class order the path labels fix (label_maps, bins, a combine rule)
    found: int = 0                   # path labels: image files under the root, matched or not
    problems: list[str] = field(default_factory=list)  # path labels read with on_bad="collect": training's errors


def read_listing(src: DataSources, side: str = "training") -> Listing:
    """What training reads from one side (``"training"`` or ``"validation"``), for ``imgcls check-data``."""
    with warnings.catch_warnings():  # the unmatched files are returned instead
        warnings.simplefilter("ignore")
        paths, labels, groups, column, others = _read(src, side)
    got = others.get("__labelled__")
    if got is None:
        return Listing(paths, labels, groups, column, [], None)
    return Listing(paths, labels, groups, column, list(got.unmatched), got.classes, got.found, list(got.problems))


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
        now = [(p, split.label_text(y)) for p, y in zip(s.paths, s.labels)]
        if now != recorded:
            changed = len(set(now) ^ set(recorded))
            raise UserError(f"the {side} data differs from the run's {path} ({changed} file(s) added, removed or "
                            "relabelled, or their order changed); restore the original files to resume, or start "
                            "a new run.")


def write_split_csv(side: Side, split: DataSplit, path: Path) -> None:
    """split/<side>.csv: path, the label as written in the data (joined labels, the number), group."""
    rows = [[p, split.label_text(y), "" if side.groups is None else side.groups[i]]
            for i, (p, y) in enumerate(zip(side.paths, side.labels))]
    write_csv(path, ["path", "label", "group"], rows)  # atomically: no torn split file to resume against
