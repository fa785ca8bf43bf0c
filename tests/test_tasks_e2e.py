"""Multi-label and regression runs train end to end on small generated data, write their run folder,
and predict reproduces val_predictions.csv."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
from conftest import small_config
from imgcls.cli import main
from imgcls.config import load_config
from imgcls.errors import UserError
from imgcls.inference.evaluate import evaluate as evaluate_run
from imgcls.inference.export import export as export_run

TAGS = ("red", "green", "blue")


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def make_multilabel(root: Path, n: int = 96, size: int = 16, seed: int = 0) -> Path:
    """Each tag lights its colour channel; an image has any subset of tags (none included)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    lines = ["path,label"]
    for i in range(n):
        on = [t for t in TAGS if rng.random() < 0.45]
        img = rng.integers(0, 60, (size, size, 3))
        for t in on:
            img[..., TAGS.index(t)] += 170
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "img" / f"{i:03d}.png")
        lines.append(f"img/{i:03d}.png,{'|'.join(on)}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def make_regression(root: Path, n: int = 96, size: int = 16, seed: int = 0) -> Path:
    """The target (an 'age' 10..80) is the image's brightness."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    lines = ["path,age"]
    for i in range(n):
        age = float(rng.uniform(10, 80))
        img = rng.integers(0, 30, (size, size, 3)) + int(age * 2.5)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "img" / f"{i:03d}.png")
        lines.append(f"img/{i:03d}.png,{age:.2f}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def task_config(csv_path: Path, run_dir: Path, **extra):
    return small_config(Path("."), run_dir, **{"data.root": None, "data.csv": str(csv_path), "data.augment": "none",
                                               "train.epochs": 4, "optim.lr": 0.01, **extra})


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory):
    csv_path = make_multilabel(tmp_path_factory.mktemp("ml"))
    return imgcls.train(task_config(csv_path, tmp_path_factory.mktemp("mlrun") / "run",
                                    **{"task.type": "multilabel"}), log=lambda *a: None)


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    csv_path = make_regression(tmp_path_factory.mktemp("rg"))
    return imgcls.train(task_config(csv_path, tmp_path_factory.mktemp("rgrun") / "run",
                                    **{"task.type": "regression", "task.target": "age", "task.bins": [30, 60],
                                       "train.epochs": 6}), log=lambda *a: None)


def test_multilabel_run_folder_records_thresholds_and_learns(multilabel_run):
    run = multilabel_run.run_dir
    info = json.loads((run / "model.json").read_text())
    assert info["task"]["type"] == "multilabel" and info["classes"] == sorted(TAGS)
    assert len(info["task"]["thresholds"]) == 3 and all(0 <= t <= 1 for t in info["task"]["thresholds"])
    header = list(rows(run / "val_predictions.csv")[0])
    assert header == ["path", "label", "pred", "prob_blue", "prob_green", "prob_red"]
    metrics = rows(run / "metrics.csv")
    assert {"val/map", "val/f1_macro", "val/lrap", "val/coverage"} <= set(metrics[0])
    assert multilabel_run.best_metrics["val/map"] > 0.9  # the colours are easy to see
    vm = json.loads((run / "val_metrics.json").read_text())
    assert vm["monitor"] == "val/map"


def test_regression_run_standardises_and_predicts_in_the_original_unit(regression_run):
    run = regression_run.run_dir
    info = json.loads((run / "model.json").read_text())
    train_ages = [float(r["label"]) for r in rows(run / "split" / "train.csv")]
    assert info["task"]["mean"] == pytest.approx(np.mean(train_ages))
    assert info["task"]["std"] == pytest.approx(np.std(train_ages))
    preds = rows(run / "val_predictions.csv")
    assert list(preds[0]) == ["path", "label", "value", "bin"]
    err = np.mean([abs(float(r["value"]) - float(r["label"])) for r in preds])
    assert err == pytest.approx(regression_run.best_metrics["val/mae"], rel=1e-3)
    assert regression_run.best_metrics["val/mae"] < 15  # well below the 17.5 of always predicting the mean
    assert "val/binned/f1_macro" in regression_run.best_metrics


@pytest.mark.parametrize("which", ["multilabel_run", "regression_run", "multihead_run"])
def test_predict_reproduces_val_predictions(which, request, tmp_path, capsys):
    run = request.getfixturevalue(which).run_dir
    val = rows(run / "val_predictions.csv")
    (tmp_path / "in.csv").write_text("path\n" + "\n".join(r["path"] for r in val) + "\n")
    assert main(["predict", str(run), str(tmp_path / "in.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    got = rows(tmp_path / "p.csv")
    assert [r["path"] for r in got] == [r["path"] for r in val]
    for a, b in zip(got, val):
        for k in a:
            if k == "path":
                continue
            if k.startswith("prob_") or k in ("value", "age") or k.endswith("_prob"):
                assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-4, abs=1e-5)
            else:
                assert a[k] == b[k]


@pytest.mark.parametrize("overrides, words", [
    ({"task.type": "regression", "data.mixup": 0.2}, "no mixing rule here: task.type=regression"),
    ({"task.type": "multihead", "data.cutmix": 1.0, "task.heads": {"a": {"classes": ["x", "y"]},
                                                                   "age": {"type": "regression"}}},
     "head 'age' is a regression head"),
    ({"task.type": "multilabel", "data.sampler": "balanced"}, "use data.sampler=random"),
    ({"task.type": "multiclass", "task.bins": [1.0]}, "task.bins"),
])
def test_task_options_that_do_not_apply_are_refused(tmp_path, overrides, words):
    with pytest.raises(UserError, match=words):
        task_config(tmp_path / "x.csv", tmp_path / "run", **overrides)


def make_multihead(root: Path, n: int = 96, size: int = 16, seed: int = 0) -> Path:
    """colour (3 classes) lights a channel, stripes (2) adds stripes, brightness is an 'age'."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    lines = ["path,colour,stripes,age"]
    for i in range(n):
        colour, stripes, age = int(rng.integers(3)), int(rng.integers(2)), float(rng.uniform(10, 80))
        img = rng.integers(0, 30, (size, size, 3)) + int(age)
        img[..., colour] += 120
        if stripes:
            img[:, ::4] += 60
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "img" / f"{i:03d}.png")
        lines.append(f"img/{i:03d}.png,{('r', 'g', 'b')[colour]},{('plain', 'striped')[stripes]},{age:.2f}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


@pytest.fixture(scope="module")
def multihead_run(tmp_path_factory):
    csv_path = make_multihead(tmp_path_factory.mktemp("mh"))
    heads = {"colour": {"classes": ["r", "g", "b"]}, "stripes": {"classes": ["plain", "striped"], "weight": 0.5},
             "age": {"type": "regression", "loss": "huber", "delta": 2.0}}
    cfg = task_config(csv_path, tmp_path_factory.mktemp("mhrun") / "run",
                      **{"task.type": "multihead", "task.heads": heads, "task.combine": "colour * 2 + stripes",
                         "train.epochs": 10})
    return imgcls.train(cfg, log=lambda *a: None)


def test_three_heads_with_a_regression_head_and_a_combine_rule(multihead_run, tmp_path, capsys):
    res = multihead_run
    assert res.best_metrics["val/combined/f1_macro"] > 0.7 and res.best_metrics["val/age/mae"] < 10
    info = json.loads((res.run_dir / "model.json").read_text())
    assert info["classes"] == ["colour/r", "colour/g", "colour/b", "stripes/plain", "stripes/striped", "age"]
    assert [h["weight"] for h in info["task"]["heads"]] == [1.0, 0.5, 1.0]
    val = rows(res.run_dir / "val_predictions.csv")
    assert list(val[0])[:8] == ["path", "label", "colour", "colour_prob", "stripes", "stripes_prob", "age", "combined"]
    for r in val:
        assert int(r["combined"]) == ["r", "g", "b"].index(r["colour"]) * 2 + ["plain", "striped"].index(r["stripes"])
    (tmp_path / "in.csv").write_text("path\n" + "\n".join(r["path"] for r in val) + "\n")
    assert main(["predict", str(res.run_dir), str(tmp_path / "in.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    got = rows(tmp_path / "p.csv")
    assert [g["combined"] for g in got] == [r["combined"] for r in val]
    assert all(float(g["age"]) == pytest.approx(float(r["age"]), rel=1e-4) for g, r in zip(got, val))


@pytest.mark.parametrize("heads, combine, words", [
    ({"combined": {"classes": ["a", "b"]}}, None, "may not be combined or binned"),
    ({"a": {"classes": ["x", "y"]}, "b": {}}, "a * 2 + b", "head 'b' must list its classes"),
    ({"a": {"classes": ["x", "y"], "gamma": 2}}, None, "not a parameter of the cross_entropy loss"),
    ({"a": {"classes": ["x", "y"]}, "b": {"classes": ["u", "v"]}}, "a + b", "task.combine"),
])
def test_head_mistakes_are_one_sentence(tmp_path, heads, combine, words):
    with pytest.raises(UserError, match=words):
        task_config(tmp_path / "x.csv", tmp_path / "run", **{"task.type": "multihead", "task.heads": heads,
                                                             "task.combine": combine})


def test_multiclass_runs_log_the_ranking_views(small_run):
    row = rows(small_run.run_dir / "metrics.csv")[-1]
    assert {"val/mrr", "val/ndcg_at_5", "val/top5_acc"} <= set(row)
    assert float(row["val/top5_acc"]) == 1.0  # 3 classes: the true one is always in the top 5
    assert float(row["val/acc"]) <= float(row["val/mrr"]) <= 1.0  # rank 1 scores 1, others less


def _val_rows_csv(run: Path, out: Path) -> Path:
    """The rows of the run's own labels.csv whose images validated it, as a CSV beside those images."""
    cfg = load_config(run / "config.yaml")
    data = Path(cfg.data.csv)
    val = {r["path"] for r in rows(run / "split" / "val.csv")}
    with open(data, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        keep = [r for r in reader if str((data.parent / r[0]).resolve()) in val or r[0] in val]
    assert len(keep) == len(val)
    target = data.parent / out.name
    target.write_text(",".join(header) + "\n" + "\n".join(",".join(r) for r in keep) + "\n")
    return target


@pytest.mark.parametrize("which, names", [
    ("multilabel_run", ["val/map", "val/f1_macro", "val/f1_micro", "val/f1_samples", "val/lrap", "val/coverage"]),
    ("regression_run", ["val/mae", "val/rmse", "val/r2", "val/binned/f1_macro"]),
    ("multihead_run", ["val/colour/f1_macro", "val/stripes/acc", "val/age/mae", "val/combined/f1_macro",
                       "val/combined/acc"]),
])
def test_evaluate_on_the_validation_images_equals_training_validation(which, names, request, tmp_path, capsys):
    """Labels are read as the run read them (joined labels, a target column, one column per head), and
    the model's stored calibration (multi-label thresholds) is used, so evaluating the validation
    images gives the best epoch's validation metrics back."""
    run = request.getfixturevalue(which).run_dir
    data = _val_rows_csv(run, tmp_path / f"val-{which}.csv")
    assert main(["evaluate", str(run), "--data", str(data), "--out", str(tmp_path / "ev")]) == 0
    got = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    best = json.loads((run / "val_metrics.json").read_text())
    for k in names:
        assert got[k] == pytest.approx(best[k], abs=2e-4), k
    preds = rows(tmp_path / "ev" / "predictions.csv")
    assert len(preds) == got["num_samples"] == len(rows(run / "split" / "val.csv"))
    printed = capsys.readouterr().out
    assert names[0] in printed


def test_evaluate_multilabel_tables_match_sklearn(multilabel_run, tmp_path):
    from sklearn.metrics import f1_score
    run = multilabel_run.run_dir
    res = evaluate_run(run, _val_rows_csv(run, tmp_path / "v.csv"), tmp_path / "ev")
    preds = rows(tmp_path / "ev" / "predictions.csv")
    labels = sorted(TAGS)
    y = np.array([[t in r["label"].split("|") for t in labels] for r in preds])
    decided = np.array([[t in r["pred"].split("|") for t in labels] for r in preds])
    per_label = {r["label"]: r for r in rows(tmp_path / "ev" / "per_label.csv")}
    for j, t in enumerate(labels):
        assert float(per_label[t]["f1"]) == pytest.approx(f1_score(y[:, j], decided[:, j], zero_division=0), abs=1e-5)
    assert res.scalars["val/f1_micro"] == pytest.approx(f1_score(y, decided, average="micro"), abs=1e-6)


def test_evaluate_multihead_writes_per_head_and_combined_tables(multihead_run, tmp_path):
    from sklearn.metrics import confusion_matrix
    run = multihead_run.run_dir
    evaluate_run(run, _val_rows_csv(run, tmp_path / "v.csv"), tmp_path / "ev")
    preds = rows(tmp_path / "ev" / "predictions.csv")
    true = [["r", "g", "b"].index(r["label"].split("|")[0]) for r in preds]
    pred = [["r", "g", "b"].index(r["colour"]) for r in preds]
    with open(tmp_path / "ev" / "colour_confusion_matrix.csv", newline="") as f:
        cm = [[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]]
    assert cm == confusion_matrix(true, pred, labels=[0, 1, 2]).tolist()
    assert (tmp_path / "ev" / "combined_per_class.csv").is_file()


@pytest.mark.parametrize("which", ["multilabel_run", "regression_run", "multihead_run"])
def test_every_task_exports_to_onnx_with_its_record(which, request, tmp_path):
    pytest.importorskip("onnxruntime")
    run = request.getfixturevalue(which).run_dir
    res = export_run(run, "onnx", tmp_path / "m.onnx")
    assert res.max_abs_diff <= 1e-4 and res.batch >= 3  # checked on real validation images
    import onnx
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    record = json.loads(props["task_record"])
    model_json = json.loads((run / "model.json").read_text())
    assert record == model_json["task"] and props["task"] == model_json["task"]["type"]
    if which == "multilabel_run":
        assert record["thresholds"] and "threshold" in props["output"]
    if which == "regression_run":
        assert "std" in props["output"]


@pytest.mark.parametrize("op", ["mixup", "cutmix"])
def test_soft_target_mix_weighs_targets_as_torchvision_weighs_classes(op):
    """A one-head multi-head target mixed through its one-hot form equals torchvision's own mixed
    labels for the same images and random state; multi-label rows mix by the same weights."""
    from torchvision.transforms import v2
    from imgcls.data.prep import SoftTargetMix
    from imgcls.tasks.multihead import Head, MultiheadTask
    from imgcls.tasks import get_task
    make = {"mixup": lambda n: v2.MixUp(alpha=0.4, num_classes=n), "cutmix": lambda n: v2.CutMix(alpha=1.0, num_classes=n)}[op]
    x = torch.rand(6, 3, 8, 8)
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    task = MultiheadTask([Head("a", classes=("p", "q", "r"))])
    torch.manual_seed(3)
    got_x, got_y = SoftTargetMix(make, task.soft_targets)(x.clone(), y[:, None].float())
    torch.manual_seed(3)
    want_x, want_y = make(3)(x.clone(), y)
    assert torch.equal(got_x, want_x)
    assert torch.allclose(got_y, want_y, atol=1e-6)
    tags = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.float32)
    torch.manual_seed(3)
    _, mixed = SoftTargetMix(make, get_task("multilabel").soft_targets)(x.clone(), tags)
    lam = float(want_y[0, y[0]]) if y[0] != y[-1] else None  # image 0 is mixed with image 5 (torchvision rolls by 1)
    if lam is not None:
        assert torch.allclose(mixed, lam * tags + (1 - lam) * tags.roll(1, 0), atol=1e-6)


def test_mixup_trains_multilabel_and_multihead_runs(tmp_path):
    ml = make_multilabel(tmp_path / "ml")
    plain = imgcls.train(task_config(ml, tmp_path / "a", **{"task.type": "multilabel", "train.epochs": 2}),
                         log=lambda *a: None)
    mixed = imgcls.train(task_config(ml, tmp_path / "b", **{"task.type": "multilabel", "train.epochs": 2,
                                                            "data.mixup": 0.4, "data.cutmix": 1.0}),
                         log=lambda *a: None)
    loss = [float(rows(r.run_dir / "metrics.csv")[0]["train/loss"]) for r in (plain, mixed)]
    assert loss[0] != loss[1] and all(np.isfinite(loss))  # the mixed targets changed what it trained on
    mh = make_multihead(tmp_path / "mh")
    heads = {"colour": {"classes": ["r", "g", "b"], "loss": "label_smoothing"}, "stripes": {"classes": ["plain", "striped"]}}
    res = imgcls.train(task_config(mh, tmp_path / "c", **{"task.type": "multihead", "task.heads": heads,
                                                         "task.combine": "colour * 2 + stripes", "train.epochs": 2,
                                                         "data.mixup": 0.4}), log=lambda *a: None)
    assert np.isfinite(float(rows(res.run_dir / "metrics.csv")[-1]["train/loss"]))


def test_balanced_sampler_draws_the_combined_classes_of_a_multihead_run_equally(tmp_path):
    from imgcls.engine.build import build_run
    csv_path = make_multihead(tmp_path / "data", n=120)
    heads = {"colour": {"classes": ["r", "g", "b"]}, "stripes": {"classes": ["plain", "striped"]}}
    cfg = task_config(csv_path, tmp_path / "run", **{"task.type": "multihead", "task.heads": heads,
                                                     "task.combine": "colour * 2 + stripes", "data.sampler": "balanced"})
    run = build_run(cfg)
    combined = [int(c) * 2 + int(s) for c, s in run.split.train.labels]  # the rule, applied by hand
    counts = np.bincount(combined, minlength=6)
    drawn = np.bincount(np.asarray(combined)[np.concatenate([run.sampler.order(e).numpy() for e in range(40)])],
                        minlength=6)
    assert counts.std() > 0                      # the data itself is not balanced ...
    share = drawn / drawn.sum()
    assert np.abs(share - 1 / 6).max() < 0.02    # ... but the sampler draws each combined class 1/6 of the time
    with pytest.raises(UserError, match="has no task.combine"):
        task_config(csv_path, tmp_path / "r2", **{"task.type": "multihead", "task.heads": heads,
                                                  "data.sampler": "balanced"})
