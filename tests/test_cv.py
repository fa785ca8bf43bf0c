"""imgcls cv: folds stratified and grouped, one ordinary run per fold, out-of-fold predictions that cover
every image once, mean ± std over folds, resume without retraining, and the fold ensemble in predict."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedGroupKFold

import imgcls
from conftest import make_image_folder, small_config
from imgcls.cli import main
from imgcls.errors import UserError


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def grouped_csv(tmp_path_factory) -> Path:
    """36 images of 3 classes, 2 photos per person: a CSV with a group column."""
    root = make_image_folder(tmp_path_factory.mktemp("cvdata") / "images", per_class=12)
    lines = ["path,label,group"]
    for k, p in enumerate(sorted(root.rglob("*.png"))):
        lines.append(f"{p.relative_to(root.parent)},{p.parent.name},person{k // 2}")
    (root.parent / "labels.csv").write_text("\n".join(lines) + "\n")
    return root.parent / "labels.csv"


def cv_config(data_csv: Path, cv_dir: Path, **extra):
    return small_config(Path("."), cv_dir, **{"data.root": None, "data.csv": str(data_csv), **extra})


@pytest.fixture(scope="module")
def finished_cv(grouped_csv, tmp_path_factory):
    cv_dir = tmp_path_factory.mktemp("cv") / "cv"
    return imgcls.cross_validate(cv_config(grouped_csv, cv_dir), folds=3, log=lambda *a: None)


def test_folds_are_stratified_group_kfold_and_each_fold_is_an_ordinary_run(finished_cv, grouped_csv):
    cv_dir = finished_cv.cv_dir
    folds = rows(cv_dir / "folds.csv")
    data = rows(grouped_csv)
    root = grouped_csv.parent
    by_path = {str((root / r["path"]).resolve()): r for r in data}
    assert sorted(r["path"] for r in folds) == sorted(by_path)
    labels = [by_path[r["path"]]["label"] for r in folds]
    groups = [by_path[r["path"]]["group"] for r in folds]
    want = np.zeros(len(folds), int)
    codes = {c: i for i, c in enumerate(sorted(set(labels)))}
    for k, (_, va) in enumerate(StratifiedGroupKFold(3, shuffle=True, random_state=0).split(
            np.zeros(len(folds)), [codes[l] for l in labels], groups)):
        want[va] = k
    assert [int(r["fold"]) for r in folds] == want.tolist()  # the same folds scikit-learn makes
    for k in range(3):
        run = cv_dir / f"fold-{k}"
        val = {r["path"] for r in rows(run / "split" / "val.csv")}
        train = {r["path"] for r in rows(run / "split" / "train.csv")}
        assert val == {r["path"] for r in folds if int(r["fold"]) == k} and not val & train
        assert not {by_path[p]["group"] for p in val} & {by_path[p]["group"] for p in train}  # no person leaks
        assert (run / "best.safetensors").is_file() and (run / "model.json").is_file()


def test_out_of_fold_predictions_cover_every_image_once_and_the_summary_adds_up(finished_cv):
    cv_dir = finished_cv.cv_dir
    oof = rows(cv_dir / "oof_predictions.csv")
    folds = {r["path"]: r["fold"] for r in rows(cv_dir / "folds.csv")}
    assert Counter(r["path"] for r in oof) == Counter(list(folds))  # each image exactly once
    assert all(r["fold"] == folds[r["path"]] for r in oof)    # predicted by the fold that held it out
    header = list(oof[0])
    assert header == list(rows(cv_dir / "fold-0" / "val_predictions.csv")[0]) + ["fold"]
    summary = json.loads((cv_dir / "cv_summary.json").read_text())
    per_fold = [json.loads((cv_dir / f"fold-{k}" / "val_metrics.json").read_text()) for k in range(3)]
    for key in ("val/acc", "val/f1_macro", "val/loss"):
        values = [m[key] for m in per_fold]
        assert summary["mean"][key] == pytest.approx(np.mean(values))
        assert summary["std"][key] == pytest.approx(np.std(values))
    y, p = [r["label"] for r in oof], [r["pred"] for r in oof]
    assert summary["oof"]["val/f1_macro"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    assert summary["oof"]["val/acc"] == pytest.approx(np.mean(np.array(y) == np.array(p)))


def test_predict_on_a_cv_folder_averages_the_fold_models(finished_cv, grouped_csv):
    images = sorted(str(p) for p in (grouped_csv.parent / "images").rglob("*.png"))[:5]
    ensemble = imgcls.load(finished_cv.cv_dir).predict(images).probs
    each = [imgcls.load(d).predict(images).probs for d in finished_cv.fold_dirs]
    assert len(each) == 3 and np.allclose(ensemble.numpy(), np.mean([e.numpy() for e in each], axis=0), atol=1e-6)


def test_export_of_a_cv_folder_names_a_fold(finished_cv, capsys):
    assert main(["export", str(finished_cv.cv_dir)]) == 2
    assert "export one fold, e.g. 'imgcls export" in capsys.readouterr().err


@pytest.mark.slow
def test_only_then_resume_trains_the_other_folds_and_a_stopped_fold_continues(grouped_csv, tmp_path, capsys):
    cv_dir = tmp_path / "cv"
    rc = main(["cv", "--folds", "3", "--only", "0", f"data.csv={grouped_csv}", "model.name=small_cnn",
               "data.image_size=16", "data.num_workers=0", "train.epochs=2", "train.progress=false",
               "run.report=false", "data.val_fraction=0.25", f"run.dir={cv_dir}"])
    out = capsys.readouterr().out
    assert rc == 0 and (cv_dir / "fold-0" / "best.safetensors").is_file() and not (cv_dir / "fold-1").exists()
    assert not (cv_dir / "oof_predictions.csv").exists()  # not every fold has run: no OOF file yet
    kept = (cv_dir / "fold-0" / "best.safetensors").stat().st_mtime_ns
    # fold 1 stopped after its first epoch (as a kill would leave it: config.yaml and last.pt)
    from imgcls.config import load_config
    from imgcls.engine.cv import fold_config
    imgcls.train(fold_config(load_config(cv_dir / "config.yaml"), cv_dir, 1), log=lambda *a: None,
                 on_epoch=lambda epoch, row: True)
    assert len(rows(cv_dir / "fold-1" / "metrics.csv")) == 1
    assert main(["cv", "--resume", str(cv_dir)]) == 0
    out = capsys.readouterr().out
    assert "fold 0: finished before, kept" in out and "resuming" in out
    assert (cv_dir / "fold-0" / "best.safetensors").stat().st_mtime_ns == kept
    assert [r["epoch"] for r in rows(cv_dir / "fold-1" / "metrics.csv")] == ["1", "2"]
    assert len(rows(cv_dir / "oof_predictions.csv")) == len(rows(grouped_csv))
    assert "out-of-fold" in out and "±" in out


@pytest.mark.parametrize("overrides, words", [
    (["--folds", "1"], "--folds must be a whole number of at least 2"),
    (["--folds", "3", "--only", "5"], "folds are numbered 0 to 2"),
    (["--folds", "3", "data.val_root=/x"], "makes its own validation folds"),
    ([], "needs --folds K"),
])
def test_cv_mistakes_are_one_sentence(grouped_csv, tmp_path, capsys, overrides, words):
    rc = main(["cv", f"data.csv={grouped_csv}", f"run.dir={tmp_path / 'cv'}", *overrides])
    assert rc == 2 and words in capsys.readouterr().err and not (tmp_path / "cv").exists()


@pytest.mark.slow
def test_multilabel_cv_scores_out_of_fold_and_predict_uses_thresholds_tuned_on_them(tmp_path):
    from sklearn.metrics import average_precision_score, label_ranking_average_precision_score
    from test_tasks_e2e import TAGS, make_multilabel
    data = make_multilabel(tmp_path / "ml", n=60)
    res = imgcls.cross_validate(cv_config(data, tmp_path / "cv", **{"task.type": "multilabel", "train.epochs": 2,
                                                                     "data.augment": "none"}),
                                folds=3, log=lambda *a: None)
    oof = rows(res.cv_dir / "oof_predictions.csv")
    labels = sorted(TAGS)
    y = np.array([[t in r["label"].split("|") for t in labels] for r in oof], dtype=int)
    p = np.array([[float(r[f"prob_{t}"]) for t in labels] for r in oof])
    summary = json.loads((res.cv_dir / "cv_summary.json").read_text())["oof"]
    has = y.sum(0) > 0
    assert summary["val/map"] == pytest.approx(np.mean([average_precision_score(y[:, j], p[:, j])
                                                        for j in range(3) if has[j]]), abs=1e-6)
    assert summary["val/lrap"] == pytest.approx(label_ranking_average_precision_score(y, p), abs=1e-6)
    thresholds = summary["thresholds"]
    assert len(thresholds) == 3
    images = [r["path"] for r in oof[:12]]
    got = imgcls.load(res.cv_dir).predict(images)
    decided = got.probs.numpy() >= np.array(thresholds)
    assert got.labels == ["|".join(t for t, on in zip(labels, row) if on) for row in decided]


@pytest.mark.slow
def test_regression_cv_scores_out_of_fold_in_the_target_unit(tmp_path):
    from sklearn.metrics import mean_absolute_error, r2_score
    from test_tasks_e2e import make_regression
    data = make_regression(tmp_path / "rg", n=60)
    res = imgcls.cross_validate(cv_config(data, tmp_path / "cv", **{"task.type": "regression", "task.target": "age",
                                                                     "train.epochs": 2, "data.augment": "none"}),
                                folds=3, log=lambda *a: None)
    oof = rows(res.cv_dir / "oof_predictions.csv")
    y, v = [float(r["label"]) for r in oof], [float(r["value"]) for r in oof]
    summary = json.loads((res.cv_dir / "cv_summary.json").read_text())["oof"]
    assert summary["val/mae"] == pytest.approx(mean_absolute_error(y, v), rel=1e-5)
    assert summary["val/r2"] == pytest.approx(r2_score(y, v), rel=1e-4, abs=1e-5)


@pytest.mark.slow
def test_a_killed_cv_resumes_without_retraining_finished_folds(grouped_csv, tmp_path):
    """SIGKILL in the middle of fold 1 (fold 0 finished); --resume keeps fold 0 and continues fold 1."""
    import os
    import signal
    import subprocess
    import sys
    import time
    cv_dir = tmp_path / "cv"
    args = ["--folds", "2", f"data.csv={grouped_csv}", "model.name=small_cnn", "data.image_size=16",
            "data.num_workers=0", "train.epochs=6", "train.progress=false", "run.report=false", f"run.dir={cv_dir}"]
    env = {**os.environ, "PYTHONPATH": str(Path(imgcls.__file__).parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "imgcls", "cv", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = cv_dir / "fold-1" / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(rows(metrics)) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the cv ended before fold 1 had started; the test could not kill it mid-fold"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (cv_dir / "fold-0" / "best.safetensors").is_file() and not (cv_dir / "oof_predictions.csv").exists()
    kept = (cv_dir / "fold-0" / "best.safetensors").stat().st_mtime_ns
    done = len(rows(metrics))
    assert done < 6
    assert main(["cv", "--resume", str(cv_dir)]) == 0
    assert (cv_dir / "fold-0" / "best.safetensors").stat().st_mtime_ns == kept
    epochs = [int(r["epoch"]) for r in rows(metrics)]
    assert epochs == list(range(1, 7))
    assert len(rows(cv_dir / "oof_predictions.csv")) == len(rows(grouped_csv))
