"""The report of multi-head runs (imgcls.report.headreport) and of cross-validation folders
(imgcls.report.cvreport), checked against the folders' own files, scikit-learn and numpy. One tiny real
multi-head run and one tiny real cv (16 px images, small_cnn, 2 epochs) are shared by the module."""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, mean_absolute_error, r2_score

import imgcls
from imgcls.cli import main
from imgcls.models.modelinfo import ModelInfo
from imgcls.report import write_report
from imgcls.report.headreport import run_results
from imgcls.report.headsections import head_findings
from imgcls.report.rundata import load_run
from test_report import parse
from test_report_tasks import assert_self_contained, findings
from test_tasks_e2e import make_multihead, task_config

HEADS = {"colour": {"classes": ["r", "g", "b"]}, "stripes": {"classes": ["plain", "striped"], "weight": 0.5},
         "age": {"type": "regression", "loss": "huber", "delta": 2.0}}
RULE = "colour * 2 + stripes"


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def class_rows(cells, table_id: str) -> dict[str, dict[str, float]]:
    """A per-class table's data-value cells: {class: {metric: value}}."""
    got: dict[str, dict[str, float]] = {}
    for el in cells.elements:
        if table_id not in el["inside"]:
            continue
        if el["tag"] == "tr" and "data-class" in el:
            current = got.setdefault(el["data-class"], {})
        elif el["tag"] == "td" and "data-metric" in el:
            current[el["data-metric"]] = float(el["data-value"])
    return got


@pytest.fixture(scope="module")
def mh_report(tmp_path_factory):
    csv_path = make_multihead(tmp_path_factory.mktemp("mhdata"))
    cfg = task_config(csv_path, tmp_path_factory.mktemp("mhrun") / "run",
                      **{"task.type": "multihead", "task.heads": HEADS, "task.combine": RULE, "train.epochs": 2})
    return write_report(imgcls.train(cfg, log=lambda *a: None).run_dir)


# ---------------------------------------------------------------- multi-head

def test_multihead_report_has_a_section_per_head_and_the_combined_class(mh_report):
    assert_self_contained(mh_report)
    cells = parse(mh_report)
    ids = {el.get("id") for el in cells.elements}
    assert {"findings", "summary", "curves", "heads", "head-colour", "head-stripes", "head-age", "combined"} <= ids
    assert {"head-colour-confusion-table", "head-stripes-confusion-table", "combined-confusion-table",
            "head-age-error-table"} <= ids
    assert "head-age-confusion-table" not in ids  # a regression head has errors, not classes
    links = {el["href"] for el in cells.find("a", "heads")}
    assert links == {"#head-colour", "#head-stripes", "#head-age", "#combined"}
    for name in ("curves", "confusion_head-colour", "confusion_combined", "scatter_head-age"):
        assert (mh_report.parent / "plots" / f"{name}.png").is_file()


def test_head_numbers_equal_val_metrics(mh_report):
    vm = json.loads((mh_report.parent / "val_metrics.json").read_text())
    cells = parse(mh_report)
    glance = {el["data-metric"]: float(el["data-value"]) for el in cells.find("td", "heads", "data-metric")}
    assert glance and all(v == vm[k] for k, v in glance.items())
    assert {"val/colour/f1_macro", "val/combined/acc", "val/age/mae", "val/age/r2"} <= set(glance)
    for head, id_ in (("colour", "head-colour"), ("stripes", "head-stripes")):
        want = {r["class"]: r for r in vm["heads"][head]["per_class"]}
        assert class_rows(cells, f"{id_}-per-class-table") == {
            c: {m: float(r[m]) for m in ("precision", "recall", "f1", "support")} for c, r in want.items()}
        cm = np.zeros((len(want), len(want)), int)
        classes = vm["heads"][head]["classes"]
        for td in cells.find("td", f"{id_}-confusion-table", "data-count"):
            cm[classes.index(td["data-true"]), classes.index(td["data-pred"])] = int(td["data-count"])
        assert cm.tolist() == vm["heads"][head]["confusion_matrix"]


def test_regression_head_errors_equal_sklearn_on_the_csv(mh_report):
    vm = json.loads((mh_report.parent / "val_metrics.json").read_text())
    val = rows(mh_report.parent / "val_predictions.csv")
    true = [float(r["label"].split("|")[2]) for r in val]
    pred = [float(r["age"]) for r in val]
    shown = {el["data-metric"]: float(el["data-value"])
             for el in parse(mh_report).find("td", "head-age-error-table", "data-value")}
    assert shown["mae"] == pytest.approx(mean_absolute_error(true, pred), rel=1e-12)
    assert shown["r2"] == pytest.approx(r2_score(true, pred), rel=1e-12)
    assert shown["mae"] == pytest.approx(vm["val/age/mae"], rel=1e-4)  # the CSV's 6 digits against training


def test_combined_confusion_equals_sklearn_on_val_predictions(mh_report):
    vm = json.loads((mh_report.parent / "val_metrics.json").read_text())
    val = rows(mh_report.parent / "val_predictions.csv")
    colour, stripes = ["r", "g", "b"], ["plain", "striped"]
    truth = [colour.index(r["label"].split("|")[0]) * 2 + stripes.index(r["label"].split("|")[1]) for r in val]
    want = confusion_matrix(truth, [int(r["combined"]) for r in val], labels=range(6))
    cells = parse(mh_report)
    got = np.zeros((6, 6), int)
    for td in cells.find("td", "combined-confusion-table", "data-count"):
        got[int(td["data-true"]), int(td["data-pred"])] = int(td["data-count"])
    assert got.tolist() == want.tolist() == vm["combined"]["confusion_matrix"]
    meaning = {tr["data-class"]: tr["text"] for tr in cells.find("tr", "combined-per-class-table", "data-class")}
    for code in range(6):  # each code's row says which head classes it stands for
        assert f"{colour[code // 2]} / {stripes[code % 2]}" in meaning[str(code)]
    shown = class_rows(cells, "combined-per-class-table")
    assert {int(c): r["support"] for c, r in shown.items()} == dict(enumerate(np.bincount(truth, minlength=6)))
    assert shown == {r["class"]: {m: float(r[m]) for m in ("precision", "recall", "f1", "support")}
                     for r in vm["combined"]["per_class"]}


def test_head_findings_name_a_lagging_head(mh_report):
    res = run_results(load_run(mh_report.parent))
    lagging = {**res.scalars, "val/colour/f1_macro": 0.95, "val/stripes/f1_macro": 0.40}
    found = {f.kind: f.text for f in head_findings(replace(res, scalars=lagging)) if f is not None}
    assert "weak_head" in found and "Head 'stripes' lags" in found["weak_head"] and "0.40" in found["weak_head"]
    close = {**res.scalars, "val/colour/f1_macro": 0.90, "val/stripes/f1_macro": 0.85}
    found = {f.kind: f.text for f in head_findings(replace(res, scalars=close)) if f is not None}
    assert "weak_head" not in found and "'stripes'" in found["weakest_head"]


def test_multihead_findings_and_cli(mh_report, capsys):
    kinds = findings(parse(mh_report))
    assert kinds and ("weak_head" in kinds or "weakest_head" in kinds)
    assert {"baseline", "r2_negative"} & set(kinds)  # the regression head is measured against its training mean
    assert main(["report", str(mh_report.parent), "--no-gradcam"]) == 0
    assert str(mh_report) in capsys.readouterr().out
