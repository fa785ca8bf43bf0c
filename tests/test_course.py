"""The course's data set as it comes (labels in folder and file names, 7 photos per person) trains with
configs/course-18.yaml, grouped by person, and its 18 classes are the competition's codes."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgcls
from imgcls.config import load_config

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
MASK = {"mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2}


def make_course(root: Path, people: int = 30, size: int = 16, age_signal: float = 0.0) -> dict:
    """root/<id>_<gender>_Asian_<age>/<photo>.jpg with learnable 16 px photos (colour = mask, stripes =
    gender, and with ``age_signal`` the bottom half brighter by that much per age group), macOS resource-fork
    files beside them; returns {path: (person, code)}."""
    rng = np.random.default_rng(0)
    truth = {}
    for i in range(people):
        pid, gender, age = f"{i + 1:06d}", ("male", "female")[i % 2], (22, 45, 65)[i % 3]
        folder = root / f"{pid}_{gender}_Asian_{age}"
        folder.mkdir(parents=True)
        for photo in PHOTOS:
            img = rng.integers(0, 50, (size, size, 3)).astype(np.int32)
            img[..., MASK[photo]] += 150
            if gender == "female":
                img[:, ::4] += 80
            if age_signal:
                img[size // 2:] += int(age_signal * (i % 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{photo}.jpg", quality=95)
            code = MASK[photo] * 6 + (i % 2) * 3 + (i % 3)
            truth[str((folder / f"{photo}.jpg").resolve())] = (pid, code)
        (folder / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / ".DS_Store").write_bytes(b"Bud1")
    return truth


@pytest.mark.slow
def test_course_config_trains_the_18_classes_grouped_by_person(tmp_path):
    truth = make_course(tmp_path / "train" / "images")
    cfg = load_config(REPO / "configs" / "course-18.yaml", [
        f"data.root={tmp_path / 'train' / 'images'}", "data.image_size=16", "model.name=small_cnn",
        "data.num_workers=0", "train.epochs=2", "train.batch_size=32", "train.progress=false", "run.report=false",
        f"run.dir={tmp_path / 'run'}", "data.augment=light"])
    res = imgcls.train(cfg, log=lambda *a: None)
    info = json.loads((res.run_dir / "model.json").read_text())
    assert info["classes"] == [str(k) for k in range(18)]
    table = info["task"]["combine"]["table"]
    assert table[1 * 6 + 1 * 3 + 2] == {"mask": 1, "gender": 1, "age": 2}  # incorrect, female, >=60
    assert info["task"]["groups"]["mask"] == ["wear", "incorrect", "not_wear"]
    sides = {}
    for side in ("train", "val"):
        with open(res.run_dir / "split" / f"{side}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert all(int(r["label"]) == truth[r["path"]][1] for r in rows)  # the rule applied to each path
        sides[side] = {r["group"] for r in rows}
        assert all(r["group"] == truth[r["path"]][0] for r in rows)
    assert not sides["train"] & sides["val"] and len(sides["train"] | sides["val"]) == 30  # no person leaks
    assert sum(1 for _ in (res.run_dir / "split" / "train.csv").open()) - 1 + \
        sum(1 for _ in (res.run_dir / "split" / "val.csv").open()) - 1 == 30 * 7  # resource forks skipped


def test_the_age_boundary_is_one_override(tmp_path):
    make_course(tmp_path / "images", people=6)
    from imgcls.data.build import DataSources, read_samples
    for bins, want in (([30, 60], {0: 2, 1: 2, 2: 2}), ([30, 44], {0: 2, 1: 0, 2: 4})):
        cfg = load_config(REPO / "configs" / "course-18.yaml", [f"data.root={tmp_path / 'images'}",
                                                                f"data.bins.age={bins}"])
        side, classes, _ = read_samples(DataSources.from_config(cfg, cfg.data.root))
        ages = [int(classes[y]) % 3 for y in side.labels]
        assert {a: ages.count(a) // 7 for a in range(3)} == want


@pytest.mark.slow
def test_course_config_three_heads_and_the_combined_class(tmp_path, capsys):
    from imgcls.cli import main
    truth = make_course(tmp_path / "train" / "images")
    cfg = load_config(REPO / "configs" / "course.yaml", [
        f"data.root={tmp_path / 'train' / 'images'}", "data.image_size=16", "model.name=small_cnn",
        "data.num_workers=0", "train.epochs=2", "train.batch_size=32", "train.progress=false", "run.report=false",
        f"run.dir={tmp_path / 'run'}", "data.augment=light", "optim.lr=0.01"])
    res = imgcls.train(cfg, log=lambda *a: None)
    info = json.loads((res.run_dir / "model.json").read_text())
    assert [h["name"] for h in info["task"]["heads"]] == ["mask", "gender", "age"]
    assert len(info["task"]["combine"]["table"]) == 18
    metrics = list(csv.DictReader((res.run_dir / "metrics.csv").open()))
    assert {"val/mask/f1_macro", "val/gender/acc", "val/age/f1_macro", "val/combined/f1_macro"} <= set(metrics[0])
    with open(res.run_dir / "val_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    codes = {"mask": {"wear": 0, "incorrect": 1, "not_wear": 2}, "gender": {"male": 0, "female": 1},
             "age": {"<30": 0, "30-59": 1, ">=60": 2}}
    for r in rows:  # the combined class is the rule applied to the heads' predicted codes
        want = codes["mask"][r["mask"]] * 6 + codes["gender"][r["gender"]] * 3 + codes["age"][r["age"]]
        assert int(r["combined"]) == want
        mask, gender, age = r["label"].split("|")
        assert codes["mask"][mask] * 6 + codes["gender"][gender] * 3 + codes["age"][age] == truth[r["path"]][1]
    # predict reproduces val_predictions.csv, and --submission writes the combined code
    (tmp_path / "in.csv").write_text("path\n" + "\n".join(r["path"] for r in rows) + "\n")
    assert main(["predict", str(res.run_dir), str(tmp_path / "in.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    got = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [(g["combined"], g["mask"], g["age"]) for g in got] == [(r["combined"], r["mask"], r["age"]) for r in rows]
    assert main(["predict", str(res.run_dir), str(tmp_path / "in.csv"), "--submission", "--out",
                 str(tmp_path / "s.csv")]) == 0
    sub = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [s["label"] for s in sub] == [r["combined"] for r in rows]
