"""The run report of multi-label and regression runs (imgcls.report.taskreport), checked against the
run folder's own files and scikit-learn. Run folders are written by hand from imgcls.metrics and the
tasks' own CSV writers (as training writes them), plus one real tiny training run of each type."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import (average_precision_score, confusion_matrix, mean_absolute_error, mean_squared_error,
                             r2_score)

import imgcls
from imgcls.cli import main
from imgcls.config import Config, to_yaml
from imgcls.errors import UserError
from imgcls.metrics import RegressionMetrics, bin_names
from imgcls.models.modelinfo import ModelInfo
from imgcls.report import write_report
from imgcls.report.taskreport import MULTILABEL_SECTIONS
from imgcls.tasks import MultilabelTask, RegressionTask, get_task
from test_report import parse

LABELS = ("cat", "dog", "outdoor", "rare")   # 'rare' has no positive in validation


def _write_common(run_dir: Path, task: str, classes, metric_names, best: dict, monitor: str, epochs: int,
                  extra: dict, train_counts, **config) -> None:
    cfg = Config().replace(**{"data.root": None, "data.csv": "nowhere/labels.csv", "task.type": task,
                              "run.dir": str(run_dir), "train.epochs": epochs, **config})
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    ModelInfo(architecture="small_cnn", classes=tuple(classes), channels=3, image_size=16, crop_pct=1.0,
              mean=(0.5,) * 3, std=(0.5,) * 3, task=task, epoch=epochs, monitor=monitor,
              monitor_value=best[monitor], train_counts=tuple(train_counts), imgcls="0.1.0",
              extra=extra).write(run_dir / "model.json")
    names = [m for m in metric_names if m not in ("train/loss",)]
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["epoch", "lr", "train/loss", *names, "seconds"])
        for e in range(1, epochs + 1):
            # earlier epochs a little worse (in each metric's own direction), the last one is the best
            d = get_task(task).configure(extra)
            row = [best[m] + (epochs - e) * 0.01 * (1 if d.direction(m) == "min" else -1) for m in names]
            w.writerow([e, 1e-3 * (epochs - e + 1) / epochs, 1.0 - 0.1 * e, *row, 1.5])


def multilabel_run(run_dir: Path, n: int = 60, seed: int = 0, noise: float = 1.5) -> Path:
    """Validation images with random label subsets (never 'rare'); logits = 2 * (truth - 0.5) + noise."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    truth = rng.random((n, len(LABELS))) < 0.4
    truth[:, LABELS.index("rare")] = False
    truth[0] = False                                   # one image without any label
    logits = torch.tensor(2.0 * (truth - 0.5) + rng.normal(0, noise, truth.shape), dtype=torch.float32)
    target = torch.tensor(truth, dtype=torch.float32)
    metrics = get_task("multilabel").create_metrics(list(LABELS))  # tunes thresholds as training does
    metrics.update(logits, target, loss_sum=float(torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target, reduction="sum")) / len(LABELS))
    scalars, details = metrics.compute(), metrics.details()
    thresholds = [r["threshold"] for r in details["per_label"]]
    task = MultilabelTask(thresholds, "|")
    paths = [f"nowhere/img/{i:03d}.png" for i in range(n)]
    texts = [task.label_text([j for j in range(len(LABELS)) if truth[i, j]], LABELS) for i in range(n)]
    with open(run_dir / "val_predictions.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(task.prediction_header(LABELS, labelled=True))
        w.writerows(task.prediction_rows(paths, logits.sigmoid(), LABELS, texts))
    best = {**scalars, "train/loss": 0.4}
    (run_dir / "val_metrics.json").write_text(json.dumps({"epoch": 3, "monitor": "val/map", **best, **details}))
    _write_common(run_dir, "multilabel", LABELS, task.metric_names(), best, "val/map", 3,
                  {"thresholds": thresholds, "separator": "|"}, [30, 25, 40, 2])
    return run_dir


def regression_run(run_dir: Path, n: int = 60, seed: int = 0, bias: float = 0.0, noise: float = 4.0,
                   slope: float = 1.0, bins=(30.0, 60.0), unrelated: bool = False) -> Path:
    """Targets uniform in 10..80; prediction = slope * (truth - 45) + 45 + bias + noise (or unrelated)."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    true = np.round(rng.uniform(10, 80, n), 2)
    pred = rng.uniform(10, 80, n) if unrelated else slope * (true - 45) + 45 + bias + rng.normal(0, noise, n)
    bins = list(bins) if bins else None
    m = RegressionMetrics(bins, bin_names(bins) if bins else None)
    m.update(torch.tensor(pred), torch.tensor(true))
    scalars, details = m.compute(), m.details()
    task = RegressionTask(45.0, 20.0, bins)
    paths = [f"nowhere/img/{i:03d}.png" for i in range(n)]
    with open(run_dir / "val_predictions.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(task.prediction_header(["value"], labelled=True))
        w.writerows(task.prediction_rows(paths, torch.tensor(pred)[:, None], ["value"],
                                         [task.label_text(v, ["value"]) for v in true]))
    best = {**scalars, "val/loss": scalars["val/mse"] / 400, "train/loss": 0.3}
    (run_dir / "val_metrics.json").write_text(json.dumps({"epoch": 4, "monitor": "val/mae", **best, **details}))
    _write_common(run_dir, "regression", ["value"], task.metric_names(), best, "val/mae", 4,
                  {"mean": 45.0, "std": 20.0, "bins": bins}, [240], **({"task.bins": bins} if bins else {}))
    return run_dir


def predictions(run_dir: Path) -> list[dict]:
    with open(run_dir / "val_predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def findings(cells) -> dict[str, str]:
    return {el["data-kind"]: el["text"] for el in cells.find("li", "findings", "data-kind")}


def assert_self_contained(html_path: Path) -> None:
    html = html_path.read_text()
    assert "http" not in html and "<script" not in html.lower() and "url(" not in html
    for el in parse(html_path).elements:
        if el["tag"] == "a":
            assert el["href"].startswith("#")
        elif "src" in el or "href" in el:
            assert (el.get("src") or el.get("href")).startswith("data:"), el


@pytest.fixture(scope="module")
def ml_report(tmp_path_factory):
    return write_report(multilabel_run(tmp_path_factory.mktemp("ml") / "run"))


@pytest.fixture(scope="module")
def rg_report(tmp_path_factory):
    return write_report(regression_run(tmp_path_factory.mktemp("rg") / "run", bias=3.2, noise=2.0))


# ---------------------------------------------------------------- multi-label

def test_multilabel_report_is_self_contained_with_its_sections(ml_report):
    assert ml_report.name == "report.html"
    assert_self_contained(ml_report)
    ids = {el.get("id") for el in parse(ml_report).elements}
    assert {id_ for id_, _ in MULTILABEL_SECTIONS} <= ids
    assert "confusion" not in ids and "roc" not in ids  # the multiclass sections do not apply
    for name in ("curves", "pr_curves"):
        with Image.open(ml_report.parent / "plots" / f"{name}.png") as im:
            assert im.format == "PNG" and min(im.size) > 100


def test_per_label_table_matches_val_metrics_worst_f1_first(ml_report):
    vm = json.loads((ml_report.parent / "val_metrics.json").read_text())
    cells = parse(ml_report)
    rows = cells.find("tr", "per-label-table", "data-label")
    tds = cells.find("td", "per-label-table", "data-metric")
    keys = ("precision", "recall", "f1", "support", "ap", "threshold")
    assert len(rows) == len(LABELS) and len(tds) == len(keys) * len(rows)
    by_label = {r["label"]: r for r in vm["per_label"]}
    for n, row in enumerate(rows):
        truth = by_label[row["data-label"]]
        shown = {el["data-metric"]: el["data-value"] for el in tds[len(keys) * n:len(keys) * (n + 1)]}
        for k in keys:
            assert (None if shown[k] == "" else float(shown[k])) == truth[k], (row["data-label"], k)
    order = [row["data-label"] for row in rows]
    present = [by_label[name]["f1"] for name in order if by_label[name]["support"] > 0]
    assert present == sorted(present) and order[-1] == "rare"  # worst first, the label without positives last


def test_pr_curve_ap_equals_sklearn_on_the_csv(ml_report):
    rows = predictions(ml_report.parent)
    cells = parse(ml_report)
    names = [el["data-label"] for el in cells.find("tr", "ap-table", "data-label")]
    values = [el["data-value"] for el in cells.find("td", "ap-table", "data-value")][::2]  # AP, threshold pairs
    assert sorted(names) == sorted(LABELS)
    aps = {}
    for name, value in zip(names, values):
        y = np.array([name in r["label"].split("|") for r in rows])
        p = np.array([float(r[f"prob_{name}"]) for r in rows])
        if name == "rare":
            assert not y.any() and value == "nan"
            continue
        aps[name] = average_precision_score(y, p)
        assert float(value) == pytest.approx(aps[name], abs=1e-12)
    mean_ap = [el for el in cells.elements if el.get("id") == "mean-ap"][0]
    assert float(mean_ap["data-value"]) == pytest.approx(np.mean(list(aps.values())))
    vm = json.loads((ml_report.parent / "val_metrics.json").read_text())
    assert float(mean_ap["data-value"]) == pytest.approx(vm["val/map"], abs=1e-4)  # CSV rounding only


def test_multilabel_findings_name_the_empty_label_and_the_tuned_thresholds(ml_report):
    found = findings(parse(ml_report))
    assert "'rare'" in found["no_positive"] and "left out of val/map" in found["no_positive"]
    assert "tuned on this validation set" in found["tuned_thresholds"]
    none = sum(r["label"] == "" for r in predictions(ml_report.parent))
    assert none >= 1 and f"{none} of 60 validation images" in found["unlabelled"]
    assert "thresholds were tuned on this validation set" in ml_report.read_text()


# ---------------------------------------------------------------- regression

def test_regression_report_is_self_contained_with_its_sections(rg_report):
    assert_self_contained(rg_report)
    ids = {el.get("id") for el in parse(rg_report).elements}
    assert {"findings", "summary", "curves", "errors", "scatter", "residuals", "binned"} <= ids
    for name in ("curves", "scatter", "residuals", "binned_confusion"):
        with Image.open(rg_report.parent / "plots" / f"{name}.png") as im:
            assert im.format == "PNG" and min(im.size) > 100


def test_error_table_equals_sklearn_on_the_csv(rg_report):
    rows = predictions(rg_report.parent)
    true = np.array([float(r["label"]) for r in rows])
    pred = np.array([float(r["value"]) for r in rows])
    shown = {el["data-metric"]: float(el["data-value"]) for el in parse(rg_report).find("td", "error-table",
                                                                                          "data-metric")}
    assert shown["mae"] == pytest.approx(mean_absolute_error(true, pred), rel=1e-12)
    assert shown["rmse"] == pytest.approx(np.sqrt(mean_squared_error(true, pred)), rel=1e-12)
    assert shown["r2"] == pytest.approx(r2_score(true, pred), rel=1e-12)
    assert shown["mean_residual"] == pytest.approx(np.mean(pred - true), rel=1e-12)
    vm = json.loads((rg_report.parent / "val_metrics.json").read_text())
    assert shown["mae"] == pytest.approx(vm["val/mae"], rel=1e-5)  # the CSV's 6 digits against training's own


def test_binned_confusion_cells_equal_sklearn_on_binned_values(rg_report):
    rows = predictions(rg_report.parent)
    bins = [30.0, 60.0]
    names = bin_names(bins)
    # bin i = the number of boundaries <= v, by searchsorted rather than the report's bin_values
    true_bin = np.searchsorted(bins, [float(r["label"]) for r in rows], side="right")
    pred_bin = np.searchsorted(bins, [float(r["value"]) for r in rows], side="right")
    cm = confusion_matrix(true_bin, pred_bin, labels=range(len(names)))
    assert [names[b] for b in pred_bin] == [r["bin"] for r in rows]  # the CSV's own bin column agrees
    tds = parse(rg_report).find("td", "binned-confusion-table", "data-pred")
    assert len(tds) == cm.size
    for el in tds:
        assert int(el["data-count"]) == cm[names.index(el["data-true"]), names.index(el["data-pred"])]
    vm = json.loads((rg_report.parent / "val_metrics.json").read_text())
    assert cm.tolist() == vm["binned_confusion_matrix"]
    acc = [el for el in parse(rg_report).elements if el.get("id") == "binned-acc"][0]
    assert float(acc["data-value"]) == pytest.approx(np.trace(cm) / cm.sum())


def test_regression_findings_bias_and_baseline(rg_report):
    found = findings(parse(rg_report))
    rows = predictions(rg_report.parent)
    bias = np.mean([float(r["value"]) - float(r["label"]) for r in rows])
    assert 3 < bias < 3.5 and f"biased by {bias:+.3g} on average" in found["bias"] and "too high" in found["bias"]
    assert "always predicting the training mean 45" in found["baseline"]
    assert "r2_negative" not in found


def test_unbiased_run_has_no_bias_finding_and_no_bins_no_binned_section(tmp_path):
    out = write_report(regression_run(tmp_path / "run", bins=None))
    cells = parse(out)
    ids = {el.get("id") for el in cells.elements}
    assert "binned" not in ids and {"errors", "scatter", "residuals"} <= ids
    found = findings(cells)
    assert "bias" not in found and "r2_negative" not in found and "shrinkage" not in found


def test_useless_model_is_worse_than_the_mean(tmp_path):
    found = findings(parse(write_report(regression_run(tmp_path / "run", unrelated=True))))
    assert "R² is below 0" in found["r2_negative"] and "worse than predicting the mean" in found["r2_negative"]
    assert "no better than that constant" in found["baseline"]


def test_shrunken_predictions_are_called_out(tmp_path):
    found = findings(parse(write_report(regression_run(tmp_path / "run", slope=0.5, noise=1.0))))
    assert "pulled toward the mean" in found["shrinkage"] and "0.5" in found["shrinkage"]


# ---------------------------------------------------------------- errors, CLI, real runs

def test_missing_files_are_user_errors(tmp_path):
    run = regression_run(tmp_path / "run")
    (run / "val_metrics.json").unlink()
    with pytest.raises(UserError, match="val_metrics.json"):
        write_report(run)
    run = multilabel_run(tmp_path / "ml")
    (run / "val_predictions.csv").write_text("path,label,pred\nx.png,cat,cat\n")
    with pytest.raises(UserError, match="prob_cat"):
        write_report(run)


def test_missing_predictions_still_write_summary_and_curves(tmp_path):
    run = multilabel_run(tmp_path / "run")
    (run / "val_predictions.csv").unlink()
    cells = parse(write_report(run))
    assert {"summary", "curves", "per-label", "pr"} <= {el.get("id") for el in cells.elements}
    assert "val_predictions.csv is missing" in (run / "report.html").read_text()


def test_cli_report_on_a_regression_run(tmp_path, capsys):
    run = regression_run(tmp_path / "run")
    assert main(["report", str(run), "--no-gradcam"]) == 0
    assert str(run / "report.html") in capsys.readouterr().out


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_report_of_a_real_tiny_run(task, tmp_path):
    from test_tasks_e2e import make_multilabel, make_regression, task_config

    if task == "multilabel":
        csv_path, extra = make_multilabel(tmp_path / "data"), {"task.type": "multilabel", "train.epochs": 2}
    else:
        csv_path, extra = make_regression(tmp_path / "data"), {"task.type": "regression", "task.target": "age",
                                                               "task.bins": [30, 60], "train.epochs": 2}
    result = imgcls.train(task_config(csv_path, tmp_path / "run", **extra), log=lambda *a: None)
    out = write_report(result.run_dir)
    assert_self_contained(out)
    cells = parse(out)
    ids = {el.get("id") for el in cells.elements}
    vm = json.loads((result.run_dir / "val_metrics.json").read_text())
    if task == "multilabel":
        assert {"per-label", "pr"} <= ids
        mean_ap = [el for el in cells.elements if el.get("id") == "mean-ap"][0]
        assert float(mean_ap["data-value"]) == pytest.approx(vm["val/map"], abs=1e-3)
    else:
        assert {"errors", "scatter", "residuals", "binned"} <= ids
        mae = [el for el in cells.find("td", "error-table", "data-metric") if el["data-metric"] == "mae"][0]
        assert float(mae["data-value"]) == pytest.approx(vm["val/mae"], rel=1e-4)
        counts = sum(int(el["data-count"]) for el in cells.find("td", "binned-confusion-table", "data-count"))
        assert counts == vm["num_samples"]
