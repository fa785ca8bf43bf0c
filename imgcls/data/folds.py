"""K folds for cross-validation: every sample gets one fold 0..K-1, stratified by its target and,
given groups, grouped (all samples of a group, e.g. a person, share one fold).

The targets are one of: class codes (``labels``), a 0/1 matrix (``multilabel``) or numbers
(``values``, stratified by bin). The splitters are scikit-learn's StratifiedKFold and
StratifiedGroupKFold and iterative-stratification's MultilabelStratifiedKFold, always with
``shuffle=True, random_state=seed``, so a fold assignment equals the library's own on the same data
and seed. A class with fewer samples (or groups) than folds is not an error: it is named in a
warning and simply misses some folds.

The folds file is a CSV ``path,fold[,group]`` that ``imgcls cv`` writes and ``data.folds_csv`` reads.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from imgcls.errors import UserError
from imgcls.io import read_csv_rows, write_csv

QUANTILE_BINS = 5  # regression targets without bins: this many quantile bins, fewer on small data


def make_folds(
    n_folds: int,
    seed: int,
    *,
    labels: Sequence[int] | None = None,
    groups: Sequence[str] | None = None,
    multilabel: np.ndarray | None = None,
    values: Sequence[float] | None = None,
    bins: Sequence[float] | None = None,
) -> np.ndarray:
    """The fold (int64, 0..n_folds-1) of each sample; the same for the same inputs and seed.

    Exactly one of ``labels`` (int class codes), ``multilabel`` ([N, L] of 0/1) or ``values``
    (floats) gives the targets. ``values`` are stratified by bin: bin i holds the values v with i
    boundaries of ``bins`` <= v; without ``bins`` the boundaries are the value quantiles
    (QUANTILE_BINS of them, fewer when N / n_folds is smaller). Multi-label with ``groups`` folds the
    groups instead of the samples: each group's label vector is the max (any) over its samples.
    """
    given = [name for name, t in (("labels", labels), ("multilabel", multilabel), ("values", values)) if t is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of labels, multilabel, values (got {given or 'none'})")
    if bins is not None and values is None:
        raise ValueError("bins apply to values only")
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise UserError(f"the number of folds must be an integer of 2 or more, got {n_folds!r}.")
    targets = {"labels": labels, "multilabel": multilabel, "values": values}[given[0]]
    n = len(targets)
    if groups is not None and len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} samples")
    if n < n_folds:
        raise UserError(f"{n_folds} folds need at least {n_folds} samples, but there are {n}; use fewer folds.")
    if groups is not None:
        n_groups = len(set(groups))
        if n_groups < n_folds:
            raise UserError(f"{n_folds} grouped folds need at least {n_folds} groups (data.group_column), but there "
                            f"are {n_groups}; use fewer folds or a finer group column.")
    if multilabel is not None:
        return _multilabel_folds(np.asarray(multilabel), groups, n_folds, seed)
    if values is not None:
        codes, what = _value_bins(np.asarray(values, dtype=np.float64), bins, n_folds)
    else:
        codes, what = np.asarray(labels, dtype=np.int64), "class"
    return _label_folds(codes, groups, n_folds, seed, what)


def _label_folds(codes: np.ndarray, groups, n_folds: int, seed: int, what: str) -> np.ndarray:
    classes, counts = np.unique(codes, return_counts=True)
    if counts.max() < n_folds:  # StratifiedKFold refuses this case
        raise UserError(f"{n_folds} stratified folds need a {what} with at least {n_folds} samples, but the largest "
                        f"has {counts.max()}; use fewer folds.")
    _warn_small(codes, groups, n_folds, what)
    if groups is None:
        splitter, args = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed), (codes,)
    else:
        # The raw group ids, not codes of ours: sklearn orders groups by np.unique, and so must we to match it.
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        args = (codes, np.asarray(groups))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)  # named above
        return _fold_of(splitter.split(np.zeros((len(codes), 1)), *args), len(codes))


def _warn_small(codes: np.ndarray, groups, n_folds: int, what: str) -> None:
    """One warning naming every class with fewer samples (with groups: fewer groups) than folds."""
    unit = "sample" if groups is None else "group"
    ids = np.arange(len(codes)) if groups is None else np.asarray(groups)
    small = [(c, n) for c in np.unique(codes) if (n := len(np.unique(ids[codes == c]))) < n_folds]
    if small:
        listed = ", ".join(f"{c} ({n} {unit}{'s' if n > 1 else ''})" for c, n in small)
        warnings.warn(f"{what} {listed} {'has' if len(small) == 1 else 'have'} fewer {unit}s than the {n_folds} "
                      f"folds, so some folds have none of {'it' if len(small) == 1 else 'them'}.", stacklevel=4)


def _multilabel_folds(matrix: np.ndarray, groups, n_folds: int, seed: int) -> np.ndarray:
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    if matrix.ndim != 2 or not np.isin(matrix, (0, 1)).all():
        raise ValueError(f"multilabel must be an [N, L] array of 0/1, got shape {matrix.shape}")
    if matrix.shape[1] < 2:
        raise UserError("multi-label folds need at least 2 label columns; with one, stratify by it as a class label.")
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    if groups is None:
        return _fold_of(splitter.split(np.zeros((len(matrix), 1)), matrix), len(matrix))
    ids, group_of = np.unique(np.asarray(groups), return_inverse=True)
    per_group = np.zeros((len(ids), matrix.shape[1]), dtype=matrix.dtype)
    np.maximum.at(per_group, group_of, matrix)  # a group has a label if any of its samples has it
    return _fold_of(splitter.split(np.zeros((len(ids), 1)), per_group), len(ids))[group_of]


def _value_bins(values: np.ndarray, bins, n_folds: int) -> tuple[np.ndarray, str]:
    if not np.isfinite(values).all():
        raise UserError("regression targets for folds must be finite numbers; fix or remove the NaN/inf values.")
    if bins is None:
        n_bins = max(1, min(QUANTILE_BINS, len(values) // n_folds))  # about n_folds samples per bin at least
        bins = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))
    bins = np.asarray(bins, dtype=np.float64)
    if np.any(np.diff(bins) <= 0):
        raise UserError(f"value bins must be increasing boundaries such as [30, 60], got {bins.tolist()}.")
    return np.searchsorted(bins, values, side="right").astype(np.int64), "value bin"


def _fold_of(splits, n: int) -> np.ndarray:
    folds = np.full(n, -1, dtype=np.int64)
    for k, (_, test) in enumerate(splits):
        folds[test] = k
    assert (folds >= 0).all(), "a sample was in no test fold"
    return folds


def write_folds_csv(path: str | os.PathLike, paths: Sequence[str], folds: Sequence[int],
                    groups: Sequence[str] | None = None) -> None:
    """Write ``path,fold[,group]`` rows (UTF-8, header first), one per sample, atomically."""
    if len(paths) != len(folds) or (groups is not None and len(groups) != len(paths)):
        raise ValueError("paths, folds and groups must have one entry per sample")
    header = ["path", "fold"] + (["group"] if groups is not None else [])
    rows = [[p, int(f)] + ([groups[i]] if groups is not None else []) for i, (p, f) in enumerate(zip(paths, folds))]
    write_csv(Path(path), header, rows)


def read_folds_csv(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """(paths as written, int64 folds) of a folds CSV; anything malformed is one sentence naming the line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"folds file '{path}' does not exist; make it with 'imgcls cv' or fix data.folds_csv.")
    header, rows = read_csv_rows(path, "folds file")
    if header[:2] != ["path", "fold"]:
        raise UserError(f"folds file '{path}' must start with the header 'path,fold'; make it with 'imgcls cv'.")
    paths, folds = [], []
    for line_no, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        fold = row[1].strip() if len(row) > 1 else ""
        if not fold.isdigit() or not row[0].strip():
            raise UserError(f"folds file '{path}' line {line_no} needs a path and a fold number 0 or more; fix the line.")
        paths.append(row[0].strip())
        folds.append(int(fold))
    return paths, np.asarray(folds, dtype=np.int64)
