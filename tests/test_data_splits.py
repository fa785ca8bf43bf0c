"""split_indices: stratified and grouped train/validation splits."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from imgcls.data.splits import split_indices
from imgcls.errors import UserError


def check_partition(train, val, n):
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # sorted, no repeats
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n))


def test_stratified_split_keeps_class_proportions():
    labels = np.repeat([0, 1, 2, 3], [500, 200, 50, 10])
    np.random.default_rng(0).shuffle(labels)
    train, val = split_indices(labels, None, 0.2, seed=1)
    check_partition(train, val, len(labels))
    assert len(val) == int(np.ceil(0.2 * len(labels)))
    for c, count in zip(range(4), [500, 200, 50, 10]):
        assert abs(np.sum(labels[val] == c) - 0.2 * count) <= 1, c


def test_split_is_deterministic_per_seed():
    labels = np.random.default_rng(0).integers(0, 5, 300)
    groups = np.random.default_rng(1).integers(0, 40, 300)
    for g in (None, groups):
        a = split_indices(labels, g, 0.25, seed=7)
        b = split_indices(list(labels), None if g is None else list(g), 0.25, seed=7)
        c = split_indices(labels, g, 0.25, seed=8)
        np.testing.assert_array_equal(a[1], b[1])
        assert not np.array_equal(a[1], c[1])


def test_single_sample_class_goes_to_train_with_warning():
    labels = np.array([0] * 10 + [1] * 10 + [2])
    with pytest.warns(UserWarning, match="class 'rare' has 1 sample"):
        train, val = split_indices(labels, None, 0.3, seed=0, class_names=["a", "b", "rare"])
    check_partition(train, val, len(labels))
    assert 20 in train
    assert np.sum(labels[val] == 0) == 3 and np.sum(labels[val] == 1) == 3


def test_stratified_split_errors():
    with pytest.raises(UserError, match="val_fraction must be between 0 and 1"):
        split_indices([0, 1] * 5, None, 1.0, seed=0)
    with pytest.raises(UserError, match="too few for one per class of 10"):
        split_indices(np.repeat(np.arange(10), 2), None, 0.2, seed=0)
    with pytest.raises(UserError, match="single sample"), pytest.warns(UserWarning):
        split_indices([0, 1, 2], None, 0.2, seed=0)


def test_grouped_split_separates_groups_and_keeps_proportions():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"patient{i}" for i in range(200)], rng.integers(2, 9, 200))
    labels = rng.choice(3, size=len(groups), p=[0.6, 0.3, 0.1])
    train, val = split_indices(labels, groups, 0.2, seed=3)
    check_partition(train, val, len(labels))
    assert not set(groups[train]) & set(groups[val])
    assert abs(len(val) / len(labels) - 0.2) < 0.03
    for c in range(3):
        assert abs(np.mean(labels[val] == c) - np.mean(labels == c)) < 0.03, c


def test_grouped_split_fold_size_follows_round_of_inverse_fraction():
    rng = np.random.default_rng(1)
    groups = np.arange(600) // 2
    labels = rng.integers(0, 2, 600)
    _, val = split_indices(labels, groups, 0.3, seed=0)  # round(1/0.3) = 3 folds: a third
    assert abs(len(val) / 600 - 1 / 3) < 0.02


def test_grouped_split_invariants_on_many_small_problems():
    # Small, lumpy problems are where a greedy fold search can leave a class without training data.
    rng = np.random.default_rng(2)
    checked = 0
    for seed in range(300):
        n = int(rng.integers(10, 40))
        labels = rng.integers(0, int(rng.integers(2, 6)), n)
        groups = rng.integers(0, int(rng.integers(3, 10)), n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                train, val = split_indices(labels, groups, 0.5, seed=seed)
            except UserError:
                continue  # too few groups for 2 folds
        checked += 1
        check_partition(train, val, n)
        assert not set(groups[train]) & set(groups[val])
        assert set(labels[val]) <= set(labels[train])
    assert checked > 200


def test_class_in_one_group_goes_to_train_with_warning():
    labels = np.array([0, 1] * 20 + [2, 2, 2])
    groups = np.concatenate([np.arange(40) // 2, [7, 7, 7]])  # class 2 only in group 7
    with pytest.warns(UserWarning, match="class 2 has all its 3 samples in one group"):
        train, val = split_indices(labels, groups, 0.25, seed=0)
    check_partition(train, val, len(labels))
    assert set(np.flatnonzero(groups == 7)) <= set(train)


def test_grouped_split_errors():
    labels = np.array([0, 1] * 10)
    with pytest.raises(UserError, match="too large for a grouped split"):
        split_indices(labels, np.arange(20), 0.8, seed=0)
    with pytest.raises(UserError, match="needs at least 5 groups.*there are 3"):
        split_indices(labels, np.arange(20) % 3, 0.2, seed=0)
    with pytest.raises(UserError, match="no class has more than 3 samples"):
        split_indices(np.arange(24) % 8, np.arange(24), 0.2, seed=0)
