"""One spelling of bin names: ``imgcls.metrics.bin_names`` names the classes of ``data.bins`` (labels
from paths) and the bins of a regression's ``task.bins``, so model.json, val_metrics.json, the report
and ``imgcls predict`` agree on them."""
from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import pytest

import imgcls
from imgcls.config import load_config
from imgcls.data.pattern import COURSE_PATTERN
from imgcls.errors import UserError
from imgcls.metrics import bin_names

from test_course import make_course


@pytest.mark.parametrize("bins,names", [
    ([30, 60], ["<30", "30-59", ">=60"]),                 # the course's age classes (configs/course.yaml)
    ([30.0, 60.0], ["<30", "30-59", ">=60"]),             # whole numbers, whatever their type
    ([18], ["<18", ">=18"]),
    ([10, 11, 20], ["<10", "10", "11-19", ">=20"]),       # a one-value bin is just the value
    ([0, 1], ["<0", "0", ">=1"]),
])
def test_integer_boundaries_name_inclusive_ranges(bins, names):
    assert bin_names(bins) == names


@pytest.mark.parametrize("bins,names", [
    ([1.5, 3], ["<1.5", "1.5-<3", ">=3"]),                # one fractional boundary: every range [lo, hi)
    ([2.5, 4], ["<2.5", "2.5-<4", ">=4"]),
    ([2.5], ["<2.5", ">=2.5"]),
    ([0.1, 0.25, 1], ["<0.1", "0.1-<0.25", "0.25-<1", ">=1"]),
    ([30, 45.5], ["<30", "30-<45.5", ">=45.5"]),
])
def test_fractional_boundaries_name_half_open_ranges(bins, names):
    assert bin_names(bins) == names


def test_bad_boundaries_are_one_sentence():
    with pytest.raises(UserError, match="increasing"):
        bin_names([60, 30])


BINS = [30, 45.5]  # the course's ages 22, 45, 65 fall one in each bin
NAMES = ["<30", "30-<45.5", ">=45.5"]


def _train(tmp_path: Path, name: str, task: list[str]) -> Path:
    (tmp_path / f"{name}.yaml").write_text(f"data:\n  path_pattern: '{COURSE_PATTERN}'\n")
    cfg = load_config(tmp_path / f"{name}.yaml", [
        f"data.root={tmp_path / 'images'}", *task, "model.name=small_cnn", "data.image_size=16",
        "train.epochs=1", "train.batch_size=32", "train.progress=false", "data.num_workers=0",
        "run.report=true", f"run.dir={tmp_path / name}"])
    return imgcls.train(cfg, log=lambda *a: None).run_dir


def _predict(tmp_path: Path, run_dir: Path) -> list[dict]:
    from imgcls.cli import main
    images = sorted((tmp_path / "images").rglob("[!.]*.jpg"))
    (tmp_path / "in.csv").write_text("path\n" + "\n".join(str(p) for p in images) + "\n")
    out = tmp_path / f"{run_dir.name}-pred.csv"
    assert main(["predict", str(run_dir), str(tmp_path / "in.csv"), "--out", str(out)]) == 0
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


def _in_report(run_dir: Path, names: list[str]) -> bool:
    page = (run_dir / "report.html").read_text()
    return all(html.escape(n) in page for n in names)


@pytest.mark.slow  # two runs with reports: about 10 s of CPU
@pytest.mark.filterwarnings("ignore:value bin .* have fewer groups than the 5 folds")  # 6 people, 3 ages
def test_path_bins_and_regression_bins_have_the_same_names_everywhere(tmp_path):
    make_course(tmp_path / "images", people=6)

    # data.bins: the bins are the classes
    run = _train(tmp_path, "classes", ["task.label=age", f"data.bins.age={BINS}"])
    assert json.loads((run / "model.json").read_text())["classes"] == NAMES
    details = json.loads((run / "val_metrics.json").read_text())  # the scalars, then the details
    assert details["classes"] == NAMES and [r["class"] for r in details["per_class"]] == NAMES
    assert _in_report(run, NAMES)
    rows = _predict(tmp_path, run)
    assert [c for c in rows[0] if c.startswith("prob_")] == [f"prob_{n}" for n in NAMES]
    assert {r["pred"] for r in rows} <= set(NAMES)

    # task.bins: a regression on the same group, binned at the same boundaries
    run = _train(tmp_path, "values", ["task.type=regression", "task.target=age", f"task.bins={BINS}"])
    assert bin_names(json.loads((run / "model.json").read_text())["task"]["bins"]) == NAMES
    assert json.loads((run / "val_metrics.json").read_text())["bin_names"] == NAMES
    assert _in_report(run, NAMES)
    assert {r["bin"] for r in _predict(tmp_path, run)} <= set(NAMES)
