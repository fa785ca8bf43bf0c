"""`imgcls check-data --config`: the data read as that config's training reads it (path patterns with
label maps and bins, every task type, groups), problems training would stop at reported as problems."""
from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.data.checkdata import check_configured
from imgcls.cli import main
from imgcls.config import load_config
from test_checkdata import _digest
from test_course import make_course

REPO = Path(__file__).resolve().parents[1]
COURSE = REPO / "configs" / "course.yaml"


def _run(capsys, *args):
    rc = main(["check-data", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out.splitlines()


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("course") / "images"
    truth = make_course(root, people=10)
    return root, truth


def test_course_tree_is_read_as_training_reads_it(course, capsys):
    root, truth = course
    before = _digest(root.parent)
    rc, out = _run(capsys, root, "--config", COURSE)
    assert rc == 0, out
    codes = [code for _, code in truth.values()]  # code = mask * 6 + gender * 3 + age
    mask = Counter(c // 6 for c in codes)
    gender = Counter(c // 3 % 2 for c in codes)
    age = Counter(c % 3 for c in codes)
    assert out[0] == (f"checked {len(truth)} image file(s) with 3 heads (mask: wear {mask[0]}, incorrect {mask[1]}, "
                      f"not_wear {mask[2]}; gender: male {gender[0]}, female {gender[1]}; age: <30 {age[0]}, "
                      f"30-59 {age[1]}, >=60 {age[2]})")
    people = len({pid for pid, _ in truth.values()})
    assert f"note: {people} groups ('group', 7 to 7 images each): the train/validation split and cv folds keep each " \
           "group on one side" in out
    split = next(line for line in out if line.startswith("note: training's split"))
    assert "grouped by 'group'" in split
    n_train, n_val = (int(w) for w in split.split(": ", 2)[2].split(" validation")[0].replace(" training /", "").split())
    assert n_train + n_val == len(truth) and n_val % 7 == 0  # whole people on each side
    assert out[-1] == "no problems found"
    assert _digest(root.parent) == before  # nothing written


def test_the_python_api_equals_the_cli(course):
    root, truth = course
    cfg = load_config(COURSE, [f"data.root={root}"])
    report = check_configured(cfg)
    assert report.ok and len(report.entries) == len(truth)
    assert {e.path for e in report.entries} == set(truth)
    e = next(e for e in report.entries if e.path.endswith("incorrect_mask.jpg"))
    assert e.label.startswith("mask=incorrect / gender=")


def test_problems_training_would_stop_at(course, tmp_path, capsys):
    root = tmp_path / "images"
    shutil.copytree(course[0], root)
    (root / "notes").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "notes" / "readme.png")  # matches no pattern
    rc, out = _run(capsys, root, "--config", COURSE)
    assert rc == 1
    assert any("1 image file(s) under" in line and "'notes/readme.png'" in line and "data.on_bad_image=skip" in line
               for line in out), out
    # skipping them is training's choice, so then it is a note
    rc, out = _run(capsys, root, "--config", COURSE, "data.on_bad_image=skip")
    assert rc == 0 and any(line.startswith("note: 1 of 71 image file(s) under") and "are skipped" in line
                           for line in out), out

    # a photo name data.label_maps does not map: training stops, check-data says which and how to fix it
    shutil.copy(next(root.glob("*_male_*/normal.jpg")), next(root.glob("*_male_*")) / "mask6.jpg")
    rc, out = _run(capsys, root, "--config", COURSE, "data.on_bad_image=skip")
    assert rc == 1 and any("'mask6'" in line and "data.label_maps.mask" in line for line in out), out


def test_same_photo_under_two_people_is_a_leak(course, tmp_path, capsys):
    root = tmp_path / "images"
    shutil.copytree(course[0], root)
    a, b = sorted(p for p in root.iterdir() if p.is_dir())[:2]
    shutil.copy(a / "mask1.jpg", b / "mask1.jpg")  # person b's photo is person a's
    rc, out = _run(capsys, root, "--config", COURSE)
    assert rc == 1
    leak = [line for line in out if line.startswith("the same file is under groups")]
    assert len(leak) == 1 and repr(a.name.split("_")[0]) in leak[0] and repr(b.name.split("_")[0]) in leak[0]


def test_one_head_over_the_combined_codes_runs_trainings_split(course, capsys):
    root, _ = course
    rc, out = _run(capsys, root, "--config", COURSE.parent / "course-18.yaml")
    assert out[0].endswith("in 18 class(es)")
    # 10 people cannot cover 18 classes: some classes sit in one person and are not validated (training warns)
    assert any(line.startswith("note: class '") and "not validated" in line for line in out)
    assert rc == 0


def test_other_task_types_from_a_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(p)
        rows.append((p.name, "cat|outdoor" if i % 3 == 0 else ("cat" if i % 3 == 1 else ""), 20 + i, f"p{i // 2}"))
    with open(tmp_path / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "age", "group"])
        w.writerows(rows)
    cfg = tmp_path / "ml.yaml"
    cfg.write_text("task: {type: multilabel}\n")
    rc, out = _run(capsys, tmp_path / "data.csv", "--config", cfg)
    assert rc == 0, out
    assert out[0] == "checked 24 image file(s) with 2 label(s) (cat 16, outdoor 8; 8 image(s) with no label)"
    assert "note: 12 groups ('group', 2 to 2 images each): the train/validation split and cv folds keep each group " \
           "on one side" in out

    cfg.write_text("task: {type: regression, target: age}\n")
    rc, out = _run(capsys, tmp_path / "data.csv", "--config", cfg)
    assert rc == 0, out
    assert out[0] == "checked 24 image file(s) with a regression target (24 values from 20 to 43, mean 31.5)"

    rows[5] = (rows[5][0], rows[5][1], "unknown", rows[5][3])  # not a number: training refuses it
    with open(tmp_path / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "age", "group"])
        w.writerows(rows)
    rc, out = _run(capsys, tmp_path / "data.csv", "--config", cfg)
    assert rc == 1 and any("unknown" in line for line in out), out


def test_overrides_need_a_config(tmp_path, capsys):
    assert main(["check-data", str(tmp_path), "data.image_size=16"]) == 2
    assert "only with --config" in capsys.readouterr().err
