"""make_folds against its oracles (StratifiedKFold, StratifiedGroupKFold, MultilabelStratifiedKFold), and the folds CSV."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import StratifiedGroupKFold

from conftest import assert_facts
from imgcls.data.folds import make_folds, read_folds_csv, write_folds_csv
from imgcls.errors import UserError

K = 5


def oracle_folds(splitter, n, *args):
    folds = np.full(n, -1)
    for k, (_, test) in enumerate(splitter.split(np.zeros((n, 1)), *args)):
        folds[test] = k
    return folds


def grouped_data(seed=0):
    """60 people of 7 samples each; the class is a property of the person (like gender)."""
    rng = np.random.default_rng(seed)
    person_class = rng.integers(0, 3, 60)
    groups = [f"{p:06d}" for p in rng.permutation(60) for _ in range(7)]
    labels = np.array([person_class[int(g)] for g in groups])
    return labels, groups


def test_stratified_folds_balance_every_class():
    labels = np.repeat([0, 1, 2, 3], [103, 57, 24, 11])
    np.random.default_rng(0).shuffle(labels)
    folds = make_folds(K, seed=3, labels=labels)
    assert folds.dtype == np.int64 and set(folds) == set(range(K))
    for c in range(4):
        per_fold = np.bincount(folds[labels == c], minlength=K)
        assert per_fold.max() - per_fold.min() <= 1, (c, per_fold)


def test_grouped_folds_equal_stratified_group_kfold_and_keep_groups_whole():
    labels, groups = grouped_data()
    folds = make_folds(K, seed=7, labels=labels, groups=groups)
    expected = oracle_folds(StratifiedGroupKFold(n_splits=K, shuffle=True, random_state=7), len(labels), labels, groups)
    np.testing.assert_array_equal(folds, expected)
    for g in set(groups):
        assert len(set(folds[np.array(groups) == g])) == 1, g


def test_multilabel_folds_equal_multilabel_stratified_kfold():
    matrix = (np.random.default_rng(1).random((200, 4)) < [0.5, 0.2, 0.1, 0.05]).astype(int)
    folds = make_folds(K, seed=11, multilabel=matrix)
    expected = oracle_folds(MultilabelStratifiedKFold(n_splits=K, shuffle=True, random_state=11), len(matrix), matrix)
    np.testing.assert_array_equal(folds, expected)


def test_grouped_multilabel_folds_fold_groups_by_their_any_label():
    rng = np.random.default_rng(2)
    person_labels = (rng.random((40, 3)) < 0.4).astype(int)
    groups = [f"p{p:02d}" for p in range(40) for _ in range(3)]
    matrix = np.repeat(person_labels, 3, axis=0)
    matrix[::3] = 0  # the max over a group still gives the person's labels
    folds = make_folds(4, seed=5, multilabel=matrix, groups=groups)
    group_folds = oracle_folds(MultilabelStratifiedKFold(n_splits=4, shuffle=True, random_state=5), 40, person_labels)
    np.testing.assert_array_equal(folds, np.repeat(group_folds, 3))


def test_regression_folds_are_balanced_by_bin():
    values = np.random.default_rng(4).uniform(0, 90, 300)
    folds = make_folds(K, seed=0, values=values, bins=[30, 60])
    bin_of = np.searchsorted([30, 60], values, side="right")
    for b in range(3):
        per_fold = np.bincount(folds[bin_of == b], minlength=K)
        assert per_fold.max() - per_fold.min() <= 1, (b, per_fold)


def test_regression_folds_without_bins_use_quantiles():
    values = np.random.default_rng(5).exponential(10, 250)
    folds = make_folds(K, seed=0, values=values)
    quintile = np.searchsorted(np.quantile(values, [0.2, 0.4, 0.6, 0.8]), values, side="right")
    for b in range(5):
        per_fold = np.bincount(folds[quintile == b], minlength=K)
        assert per_fold.max() - per_fold.min() <= 1, (b, per_fold)


def test_regression_folds_with_groups_keep_groups_whole():
    rng = np.random.default_rng(6)
    groups = [f"g{i // 4}" for i in range(120)]
    values = np.repeat(rng.uniform(0, 90, 30), 4)
    folds = make_folds(3, seed=1, values=values, groups=groups, bins=[30, 60])
    for g in set(groups):
        assert len(set(folds[np.array(groups) == g])) == 1


@pytest.mark.parametrize("kind", ["labels", "groups", "multilabel", "values"])
def test_same_seed_same_folds_other_seed_other_folds(kind):
    labels, groups = grouped_data()
    kwargs = {"labels": {"labels": labels}, "groups": {"labels": labels, "groups": groups},
              "multilabel": {"multilabel": np.stack([labels == 0, labels == 1], 1).astype(int)},
              "values": {"values": labels * 10.0 + np.arange(len(labels)) % 7}}[kind]
    a, b, c = (make_folds(K, seed, **kwargs) for seed in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("n_folds", [1, 0, -3, 2.5])
def test_fewer_than_two_folds_is_refused(n_folds):
    with pytest.raises(UserError, match="number of folds"):
        make_folds(n_folds, 0, labels=[0, 1] * 10)


def test_more_folds_than_samples_is_refused():
    with pytest.raises(UserError, match="at least 5 samples"):
        make_folds(5, 0, labels=[0, 1, 0, 1])


def test_more_folds_than_groups_is_refused_naming_the_group_column():
    with pytest.raises(UserError, match=r"data\.group_column"):
        make_folds(5, 0, labels=[0, 1] * 10, groups=["a", "b", "c", "d"] * 5)


def test_no_class_as_large_as_the_fold_count_is_refused():
    with pytest.raises(UserError, match="fewer folds"):
        make_folds(5, 0, labels=list(range(10)))


def test_small_class_is_a_warning_naming_its_code():
    labels = [0] * 20 + [1] * 20 + [2] * 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folds = make_folds(5, 0, labels=labels)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert_facts(messages[0], "class 2 (3 samples) has fewer samples than the 5 folds, so some folds have none of it.")
    assert len(set(folds[40:])) == 3


def test_grouped_small_classes_are_one_warning_counting_groups():
    labels = [0] * 40 + [1] * 6 + [2] * 4
    groups = [f"p{i // 2}" for i in range(40)] + ["q1"] * 6 + ["r1", "r1", "r2", "r2"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_folds(5, 0, labels=labels, groups=groups)
    assert len(caught) == 1
    assert_facts(str(caught[0].message),
                 "class 1 (1 group), 2 (2 groups) have fewer groups than the 5 folds, so some folds have none of them.")
    assert caught[0].filename == __file__  # points at the caller


def test_folds_csv_round_trip(tmp_path):
    paths = ["train/a b.jpg", "train/c,d.jpg", "x.png"]
    write_folds_csv(tmp_path / "folds.csv", paths, np.array([2, 0, 1]), groups=["p1", "p2", "p1"])
    assert (tmp_path / "folds.csv").read_text().splitlines()[0] == "path,fold,group"
    got_paths, got_folds = read_folds_csv(tmp_path / "folds.csv")
    assert got_paths == paths and got_folds.tolist() == [2, 0, 1]


def test_folds_csv_errors_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_folds_csv(tmp_path / "none.csv")
    (tmp_path / "bad.csv").write_text("file,split\na.jpg,0\n")
    with pytest.raises(UserError, match="header 'path,fold'"):
        read_folds_csv(tmp_path / "bad.csv")
    (tmp_path / "bad.csv").write_text("path,fold\na.jpg,zero\n")
    with pytest.raises(UserError, match="line 2"):
        read_folds_csv(tmp_path / "bad.csv")
