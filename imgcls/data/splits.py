"""Train/validation split of one labelled set: stratified by class and, given groups, grouped.

Grouped means every sample of a group (a patient, a camera, a video) lands on the same side, so
validation measures generalisation to unseen groups instead of near-duplicates of training images.

Classes too small to be on both sides (one sample, or with groups all samples in one group) are
kept entirely in training, with a warning: the model can still learn them, and a validation
score from a single example would be noise anyway.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from imgcls.errors import UserError


def split_indices(
    labels: Sequence[int],
    groups: Sequence | None,
    val_fraction: float,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted int64 index arrays (train, val); the same for the same inputs and seed.

    Without groups the validation side has ceil(val_fraction * n) samples (StratifiedShuffleSplit).
    With groups it is one fold of StratifiedGroupKFold(n_splits=round(1 / val_fraction)), so its size
    is about 1 / n_splits of the data (0.3 gives a third) and class proportions hold approximately.
    `class_names[label]` names classes in messages.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"data.val_fraction must be between 0 and 1 (exclusive), got {val_fraction}.")
    if groups is not None and len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups for {len(labels)} labels")
    name = (lambda c: repr(class_names[c])) if class_names is not None else (lambda c: str(c))
    if groups is None:
        train, val = _stratified(labels, val_fraction, seed, name)
    else:
        train, val = _grouped(labels, _group_codes(groups), val_fraction, seed, name)
    return np.sort(train).astype(np.int64), np.sort(val).astype(np.int64)


def _stratified(labels: np.ndarray, val_fraction: float, seed: int, name) -> tuple[np.ndarray, np.ndarray]:
    classes, counts = np.unique(labels, return_counts=True)
    too_small = classes[counts < 2]
    for c in too_small:
        warnings.warn(f"class {name(c)} has 1 sample; it goes to training only and is not validated.", stacklevel=3)
    forced = np.isin(labels, too_small)
    rest = np.flatnonzero(~forced)
    n_classes = len(classes) - len(too_small)
    n_val = math.ceil(val_fraction * len(rest))  # how StratifiedShuffleSplit sizes a float test_size
    if n_classes == 0:
        raise UserError("every class has a single sample, so nothing can be validated; add images or provide a validation set.")
    if n_val < n_classes or len(rest) - n_val < n_classes:
        raise UserError(
            f"a validation fraction of {val_fraction} of {len(rest)} samples gives {n_val} validation and "
            f"{len(rest) - n_val} training samples, too few for one per class of {n_classes}; "
            f"change data.val_fraction or provide a validation set."
        )
    from sklearn.model_selection import StratifiedShuffleSplit  # here: importing sklearn costs 1.6 s of start-up
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train, val = next(splitter.split(np.zeros(len(rest)), labels[rest]))
    return np.concatenate([np.flatnonzero(forced), rest[train]]), rest[val]


def _grouped(labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int, name) -> tuple[np.ndarray, np.ndarray]:
    n_splits = round(1 / val_fraction)
    if n_splits < 2:
        raise UserError(f"data.val_fraction {val_fraction} is too large for a grouped split (one fold of round(1/fraction)); use 0.66 or less.")
    # A class present in a single group cannot be on both sides; that whole group goes to training.
    forced_groups = set()
    for c in np.unique(labels):
        class_groups = np.unique(groups[labels == c])
        if len(class_groups) == 1:
            count = int(np.sum(labels == c))
            warnings.warn(
                f"class {name(c)} has all its {count} samples in one group; that group goes to training only "
                f"and the class is not validated.",
                stacklevel=3,
            )
            forced_groups.add(int(class_groups[0]))
    forced = np.isin(groups, list(forced_groups))
    rest = np.flatnonzero(~forced)
    n_groups = len(np.unique(groups[rest]))
    if n_groups < n_splits:
        raise UserError(
            f"a grouped split with data.val_fraction {val_fraction} needs at least {n_splits} groups that can go to "
            f"validation, but there are {n_groups}; lower data.val_fraction or provide a validation set."
        )
    largest = int(np.bincount(labels[rest]).max())
    if largest < n_splits:  # StratifiedGroupKFold refuses this case
        raise UserError(
            f"a grouped split with data.val_fraction {val_fraction} makes {n_splits} folds, but no class has more than "
            f"{largest} samples; lower data.val_fraction or provide a validation set."
        )
    from sklearn.model_selection import StratifiedGroupKFold
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # sklearn warns when a class has fewer groups than folds; the class then just misses some folds.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        train, val = next(splitter.split(np.zeros(len(rest)), labels[rest], groups[rest]))
    train, val = rest[train], rest[val]
    # The fold search is greedy: a class with few groups can land wholly in validation. Never leave
    # a class untrained; move its validation groups to training instead.
    unseen = np.setdiff1d(labels[val], labels[train])
    if len(unseen):
        warnings.warn(
            f"class {', '.join(name(c) for c in unseen)} fell entirely into validation; its groups go to training instead.",
            stacklevel=3,
        )
        move = np.isin(groups[val], groups[val][np.isin(labels[val], unseen)])
        train, val = np.concatenate([train, val[move]]), val[~move]
    return np.concatenate([np.flatnonzero(forced), train]), val


def _group_codes(groups: Sequence) -> np.ndarray:
    """Integer code per sample, in order of first appearance (works for any hashable group ids)."""
    codes: dict = {}
    return np.array([codes.setdefault(g, len(codes)) for g in groups], dtype=np.int64)
