"""The cross-validation report (CV_DIR/report.html): each fold's row equals its val_metrics.json, mean ± std
equal numpy's over the folds, the out-of-fold row equals cv_summary.json, and the out-of-fold per-class
tables agree with scikit-learn on oof_predictions.csv; unfinished folders and every task type report."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score

import imgcls
from imgcls.cli import main
from test_course import make_course
from test_cv import cv_config, grouped_csv, rows  # noqa: F401  (grouped_csv is a fixture)

REPO = Path(__file__).resolve().parents[1]


def _table(html: str, table_id: str) -> str:
    start = html.index(f'id="{table_id}"')
    return html[start:html.index("</table>", start)]


def _rows(table: str, attr: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(rf'<tr {attr}="([^"]+)"[^>]*>(.*?)</tr>', table, re.S)}


def _values(row: str, attr: str = "data-metric") -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(rf'{attr}="([^"]+)" data-value="([^"]+)"', row)}


@pytest.fixture(scope="module")
def reported_cv(grouped_csv, tmp_path_factory):  # noqa: F811
    cv_dir = tmp_path_factory.mktemp("cvr") / "cv"
    return imgcls.cross_validate(cv_config(grouped_csv, cv_dir), folds=3, report=True, log=lambda *a: None)


def test_folds_side_by_side_mean_std_and_out_of_fold(reported_cv):
    cv_dir = reported_cv.cv_dir
    html = (cv_dir / "report.html").read_text()  # written by cross_validate itself
    summary = json.loads((cv_dir / "cv_summary.json").read_text())
    folds = _rows(_table(html, "folds-table"), "data-fold")
    assert list(folds) == ["0", "1", "2", "mean", "oof"]
    per_fold = [json.loads((cv_dir / f"fold-{k}" / "val_metrics.json").read_text()) for k in range(3)]
    for k in range(3):
        got = _values(folds[str(k)])
        assert got["epoch"] == per_fold[k]["epoch"]
        for key in ("val/f1_macro", "val/acc", "val/loss"):
            assert got[key] == pytest.approx(per_fold[k][key], abs=1e-12)
        link = re.search(r'href="([^"]+)"', folds[str(k)]).group(1)
        assert (cv_dir / link).is_file() and link == f"fold-{k}/report.html"
    for m in re.finditer(r'data-metric="([^"]+)" data-mean="([^"]+)" data-std="([^"]+)"', folds["mean"]):
        values = [f[m.group(1)] for f in per_fold]
        assert float(m.group(2)) == pytest.approx(np.mean(values), abs=1e-12)
        assert float(m.group(3)) == pytest.approx(np.std(values), abs=1e-12)  # population std, as cv_summary.json
        assert float(m.group(2)) == pytest.approx(summary["mean"][m.group(1)], abs=1e-12)
    oof_row = _values(folds["oof"])
    assert oof_row["val/f1_macro"] == pytest.approx(summary["oof"]["val/f1_macro"], abs=1e-12)

    # out of fold per class, from oof_predictions.csv, against scikit-learn
    oof = rows(cv_dir / "oof_predictions.csv")
    classes = sorted({r["label"] for r in oof})
    y = [r["label"] for r in oof]
    pred = [max(classes, key=lambda c: float(r[f"prob_{c}"])) for r in oof]
    per_class = _rows(_table(html, "oof-per-class-table"), "data-class")
    f1 = f1_score(y, pred, labels=classes, average=None, zero_division=0)
    for c, want in zip(classes, f1):
        assert _values(per_class[c])["f1"] == pytest.approx(want, abs=1e-9)
    cm = confusion_matrix(y, pred, labels=classes)
    matrix = _table(html, "oof-confusion-table") if 'id="oof-confusion-table"' in html else html[html.index('id="oof"'):]
    for i, c in enumerate(classes):
        row = re.search(rf'<tr data-true="{re.escape(c)}">(.*?)</tr>', matrix, re.S).group(1)
        counts = [int(v) for v in re.findall(r'data-count="(\d+)"', row)]
        assert counts == list(cm[i]), c
    # the findings say how much the split moves the number, and why out-of-fold is optimistic
    assert "(mean ± std)" in html and "slightly optimistic" in html
    # every metric per fold
    every = _rows(_table(html, "all-metrics-table"), "data-metric")
    assert _values(every["val/auroc"], "data-fold")["1"] == pytest.approx(per_fold[1]["val/auroc"], abs=1e-12)


def test_an_unfinished_cv_reports_what_it_has(grouped_csv, tmp_path, capsys):  # noqa: F811
    cv_dir = tmp_path / "cv"
    imgcls.cross_validate(cv_config(grouped_csv, cv_dir), folds=3, only=[1], log=lambda *a: None)
    assert main(["report", str(cv_dir)]) == 0
    assert f"wrote {cv_dir / 'report.html'}" in capsys.readouterr().out
    html = (cv_dir / "report.html").read_text()
    folds = _rows(_table(html, "folds-table"), "data-fold")
    assert "not finished" in folds["0"] and "not finished" in folds["2"] and "oof" not in folds
    assert "Fold(s) 0, 2 of 3 have not finished" in html and "imgcls cv --resume" in html


def test_a_cv_folder_with_no_finished_fold_is_one_sentence(grouped_csv, tmp_path, capsys):  # noqa: F811
    from imgcls.config import load_config
    from imgcls.engine.cv import create_cv_folder
    _, lock, _ = create_cv_folder(cv_config(grouped_csv, tmp_path / "cv"), 3, lambda *a: None)
    lock.release()
    assert main(["report", str(tmp_path / "cv")]) == 2
    assert "has no finished fold yet" in capsys.readouterr().err
    assert not (tmp_path / "cv" / "report.html").exists()
    del load_config


@pytest.mark.slow
def test_multihead_cv_report_has_a_section_per_head_and_the_combined_class(tmp_path):
    make_course(tmp_path / "images", people=9)
    from imgcls.config import load_config
    cfg = load_config(REPO / "configs" / "course.yaml", [
        f"data.root={tmp_path / 'images'}", "data.image_size=16", "model.name=small_cnn", "data.num_workers=0",
        "train.epochs=2", "train.batch_size=16", "train.progress=false", "run.report=false", "data.augment=none",
        f"run.dir={tmp_path / 'cv'}"])
    res = imgcls.cross_validate(cfg, folds=3, report=True, log=lambda *a: None)
    html = (res.cv_dir / "report.html").read_text()
    for part in ("oof-heads", "oof-head-mask", "oof-head-gender", "oof-head-age", "oof-combined"):
        assert f'<section id="{part}"' in html, part
    oof = rows(res.cv_dir / "oof_predictions.csv")
    heads = {"mask": ["wear", "incorrect", "not_wear"], "gender": ["male", "female"], "age": ["<30", "30-59", ">=60"]}
    y = {h: [r["label"].split("|")[j] for r in oof] for j, h in enumerate(heads)}
    pred = {h: [max(cs, key=lambda c: float(r[f"prob_{h}/{c}"])) for r in oof] for h, cs in heads.items()}
    summary = json.loads((res.cv_dir / "cv_summary.json").read_text())["oof"]
    for h, cs in heads.items():
        assert summary[f"val/{h}/f1_macro"] == pytest.approx(f1_score(y[h], pred[h], labels=cs, average="macro",
                                                                       zero_division=0), abs=1e-9)
    code = lambda m, g, a: heads["mask"].index(m) * 6 + heads["gender"].index(g) * 3 + heads["age"].index(a)  # noqa
    ty = [code(*(y[h][i] for h in heads)) for i in range(len(oof))]
    tp = [code(*(pred[h][i] for h in heads)) for i in range(len(oof))]
    folds = _rows(_table(html, "folds-table"), "data-fold")
    present = sorted(set(ty))
    assert _values(folds["oof"])["val/combined/f1_macro"] == pytest.approx(
        f1_score(ty, tp, labels=present, average="macro", zero_division=0), abs=1e-9)


def test_regression_cv_report_lists_the_out_of_fold_errors(tmp_path):
    from test_tasks_e2e import make_regression
    data = make_regression(tmp_path / "rg", n=45)
    res = imgcls.cross_validate(cv_config(data, tmp_path / "cv", **{"task.type": "regression", "task.target": "age",
                                                                     "train.epochs": 2, "data.augment": "none"}),
                                folds=3, log=lambda *a: None)
    assert not (res.cv_dir / "report.html").exists()  # run.report=false in these configs
    assert main(["report", str(res.cv_dir)]) == 0
    html = (res.cv_dir / "report.html").read_text()
    summary = json.loads((res.cv_dir / "cv_summary.json").read_text())
    oof = _rows(_table(html, "oof-table"), "data-metric")
    for key in ("val/mae", "val/rmse", "val/r2"):
        assert _values(oof[key])[key] == pytest.approx(summary["oof"][key], abs=1e-12)
    folds = _rows(_table(html, "folds-table"), "data-fold")
    assert list(_values(folds["0"]))[:2] == ["epoch", "val/mae"]  # the monitor first: lower is better
