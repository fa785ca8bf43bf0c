"""The HTML run report, compare, findings and the gallery, checked against the run folder's own files,
scikit-learn and hand-computed cases. The browser test is in test_report_browser.py."""
from __future__ import annotations

import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from imgcls.cli import main
from imgcls.config import Config, to_yaml
from imgcls.errors import UserError
from imgcls.metrics import ClassificationMetrics
from imgcls.report import all_findings, compare_runs, findings, load_run, write_report
from imgcls.report.gallery import cam_target_layer, confident_mistakes, fit_thumb, hardest_correct
from imgcls.report.classreport import SECTIONS
from imgcls.report.plots import reliability_bins
from imgcls.report.rundata import Predictions

ALWAYS = [id_ for id_, _ in SECTIONS if id_ != "evaluations"]


# ---------------------------------------------------------------- run folders for the tests

def write_predictions(run_dir: Path, paths, labels, probs, classes, epoch: int = 1) -> None:
    """val_predictions.csv and val_metrics.json as training writes them: metrics from imgcls.metrics on
    log-probabilities (softmax(log p) = p), probabilities rounded to 6 significant digits in the CSV."""
    probs = np.asarray(probs, dtype=np.float64)
    logits = torch.tensor(np.log(np.clip(probs, 1e-12, None)), dtype=torch.float32)
    target = torch.tensor(labels)
    m = ClassificationMetrics(len(classes), list(classes))
    m.update(logits, target, loss_sum=float(torch.nn.functional.cross_entropy(logits, target, reduction="sum")))
    pred = logits.argmax(1).tolist()
    with open(run_dir / "val_predictions.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "pred", *[f"prob_{c}" for c in classes]])
        for i, p in enumerate(paths):
            w.writerow([p, classes[labels[i]], classes[pred[i]], *[f"{x:.6g}" for x in probs[i]]])
    (run_dir / "val_metrics.json").write_text(json.dumps(
        {"epoch": epoch, "monitor": "val/f1_macro", **m.compute(), "train/loss": 0.5, **m.details()}, indent=2))


def noisy_copy(small_run_dir: Path, dest: Path, seed: int = 0) -> Path:
    """The small run with its predictions replaced by noisy ones, so that it has mistakes to show
    (the tiny data is too easy: the real run is always right). Images and weights stay real."""
    shutil.copytree(small_run_dir, dest)
    with open(dest / "val_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = json.loads((dest / "model.json").read_text())["classes"]
    labels = [classes.index(r["label"]) for r in rows]
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.2, (len(rows), len(classes)))
    logits[np.arange(len(rows)), labels] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    write_predictions(dest, [r["path"] for r in rows], labels, probs, classes)
    return dest


def synthetic_run(run_dir: Path, classes, train_counts, recall, n_val: int = 20, seed: int = 0,
                  val_loss=(1.0, 0.8, 0.7, 0.65, 0.6), train_loss=(1.2, 0.9, 0.7, 0.6, 0.5),
                  lr=(1e-3, 8e-4, 5e-4, 2e-4, 0.0)) -> Path:
    """A run folder written from scratch (no images, no weights): class ``k`` is right with
    probability ``recall[k]``, wrong ones go to the next class."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    (run_dir / "split").mkdir()
    k = len(classes)
    cfg = Config().replace(**{"data.root": "nowhere", "run.dir": str(run_dir), "train.epochs": len(val_loss)})
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    with open(run_dir / "split" / "train.csv", "w") as f:
        f.write("path,label,group\n" + "".join(f"nowhere/{c}/{i}.png,{c},\n" for c, n in zip(classes, train_counts)
                                               for i in range(n)))
    labels, paths = [], []
    for c in range(k):
        labels += [c] * n_val
        paths += [f"nowhere/{classes[c]}/v{i}.png" for i in range(n_val)]
    with open(run_dir / "split" / "val.csv", "w") as f:
        f.write("path,label,group\n" + "".join(f"{p},{classes[y]},\n" for p, y in zip(paths, labels)))
    probs = np.full((len(labels), k), 0.1 / max(k - 2, 1))
    for i, y in enumerate(labels):
        right = rng.random() < recall[y]
        top = y if right else (y + 1) % k
        probs[i] = rng.uniform(0.0, 0.05, k)
        probs[i, top] = rng.uniform(0.5, 0.99)
        probs[i] /= probs[i].sum()
    write_predictions(run_dir, paths, labels, probs, list(classes), epoch=len(val_loss))
    vm = json.loads((run_dir / "val_metrics.json").read_text())
    with open(run_dir / "metrics.csv", "w") as f:
        f.write("epoch,lr,train/loss,val/loss,val/acc,val/f1_macro,seconds\n")
        for e, (tl, vl, r) in enumerate(zip(train_loss, val_loss, lr)):
            f.write(f"{e + 1},{r},{tl},{vl},{vm['val/acc']},{vm['val/f1_macro'] - 0.01 * (len(lr) - e - 1)},1.5\n")
    (run_dir / "model.json").write_text(json.dumps({
        "format": 1, "architecture": "small_cnn", "classes": list(classes), "channels": 1, "image_size": 28,
        "resize": 28, "crop_pct": 1.0, "mean": [0.5], "std": [0.5], "augment": "digits", "allows_flip": False,
        "epoch": len(val_loss), "monitor": {"name": "val/f1_macro", "value": vm["val/f1_macro"]},
        "train_counts": list(train_counts), "imgcls": "0.1.0"}))
    return run_dir


class Cells(HTMLParser):
    """Every element as a dict: its attributes, its text, and ``inside``: the ids of its ancestors."""

    def __init__(self):
        super().__init__()
        self.elements: list[dict] = []
        self._open: list[dict] = []

    def handle_starttag(self, tag, attrs):
        inside = {e["id"] for e in self._open if e.get("id")}
        el = {"tag": tag, **{k: v for k, v in attrs}, "text": "", "inside": inside}
        self.elements.append(el)
        if tag not in ("img", "br", "meta", "link"):
            self._open.append(el)

    def handle_endtag(self, tag):
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i]["tag"] == tag:
                del self._open[i:]
                break

    def handle_data(self, data):
        for el in self._open:
            el["text"] += data

    def find(self, tag: str, inside: str | None = None, attr: str | None = None) -> list[dict]:
        return [el for el in self.elements if el["tag"] == tag and (inside is None or inside in el["inside"])
                and (attr is None or attr in el)]


def parse(html_path: Path) -> Cells:
    p = Cells()
    p.feed(html_path.read_text())
    return p


@pytest.fixture(scope="module")
def noisy_report(small_run, tmp_path_factory):
    run = noisy_copy(small_run.run_dir, tmp_path_factory.mktemp("report") / "noisy")
    return write_report(run)


# ---------------------------------------------------------------- the page

def test_report_is_self_contained_with_every_section_and_plot(noisy_report):
    html = noisy_report.read_text()
    cells = parse(noisy_report)
    ids = {el.get("id") for el in cells.elements}
    assert set(ALWAYS) <= ids
    assert "evaluations" not in ids  # no eval-* folder in this run
    assert "<script" not in html.lower() and "@import" not in html and "url(" not in html
    for el in cells.elements:
        for attr in ("src", "href"):
            if attr in el and el["tag"] != "a":
                assert el[attr].startswith("data:"), el
            if el["tag"] == "a":
                assert el["href"].startswith("#")
    imgs = [el for el in cells.elements if el["tag"] == "img"]
    assert len(imgs) >= 5
    plots = noisy_report.parent / "plots"
    for name in ("curves", "per_class", "confusion_matrix", "roc", "reliability"):
        with Image.open(plots / f"{name}.png") as im:
            assert im.format == "PNG" and min(im.size) > 100


def test_per_class_table_matches_val_metrics(noisy_report):
    vm = json.loads((noisy_report.parent / "val_metrics.json").read_text())
    cells = parse(noisy_report)
    rows = cells.find("tr", "per-class-table", "data-class")
    metric_cells = cells.find("td", "per-class-table", "data-metric")
    assert len(rows) == len(vm["per_class"]) and len(metric_cells) == 4 * len(rows)
    by_class = {r["class"]: r for r in vm["per_class"]}
    for n, row in enumerate(rows):
        truth = by_class[row["data-class"]]
        shown = {el["data-metric"]: el for el in metric_cells[4 * n:4 * n + 4]}
        for m in ("precision", "recall", "f1"):
            assert float(shown[m]["data-value"]) == truth[m]
            assert shown[m]["text"].strip() == f"{truth[m]:.3f}"
        assert int(shown["support"]["text"]) == truth["support"]
    f1 = [by_class[row["data-class"]]["f1"] for row in rows]
    assert f1 == sorted(f1)  # worst first
    assert any(0 < v < 1 for v in f1)  # the noisy run really has mistakes to show


def test_confusion_matrix_cells_match_val_metrics(noisy_report):
    vm = json.loads((noisy_report.parent / "val_metrics.json").read_text())
    classes, cm = vm["classes"], np.array(vm["confusion_matrix"])
    cells = parse(noisy_report)
    tds = cells.find("td", "confusion-table", "data-pred")
    assert len(tds) == cm.size
    for el in tds:
        i, j = classes.index(el["data-true"]), classes.index(el["data-pred"])
        assert int(el["data-count"]) == cm[i, j]
        assert float(el["data-frac"]) == pytest.approx(cm[i, j] / cm[i].sum())
        # shown: the count, then (if not 0) the row share in percent
        assert el["text"].strip() == (f"{cm[i, j]}{cm[i, j] / cm[i].sum():.0%}" if cm[i, j] else "0")
    # the most confused pairs: off-diagonal counts, largest first
    pairs = cells.find("li", "confused-pairs", "data-pred")
    off = cm - np.diag(np.diag(cm))
    expected = sorted((off[i, j] for i in range(len(classes)) for j in range(len(classes)) if off[i, j]), reverse=True)
    assert [int(el["data-count"]) for el in pairs] == expected[:10]
    for el in pairs:
        assert off[classes.index(el["data-true"]), classes.index(el["data-pred"])] == int(el["data-count"])


def test_roc_aucs_match_sklearn_and_ece_matches_training_metrics(noisy_report):
    run = load_run(noisy_report.parent)
    p = run.predictions
    cells = parse(noisy_report)
    names = [el["data-class"] for el in cells.find("tr", "auc-table", "data-class")]
    values = [float(el["data-value"]) for el in cells.find("td", "auc-table", "data-value")]
    assert sorted(names) == sorted(run.classes) and values == sorted(values)  # lowest AUC first
    for name, auc in zip(names, values):
        k = run.classes.index(name)
        assert auc == pytest.approx(roc_auc_score(p.labels == k, p.probs[:, k]))
    ece = [el for el in cells.elements if el.get("id") == "ece"][0]
    # val_metrics.json's ece comes from imgcls.metrics on float32 softmax; the report recomputes it from
    # the CSV's 6-digit probabilities: they agree to rounding.
    assert float(ece["data-value"]) == pytest.approx(run.val_metrics["ece"], abs=1e-5)


def test_reliability_bins_by_hand():
    conf = np.array([0.95, 0.95, 0.55, 0.55, 1.0, 0.2])
    correct = np.array([1, 0, 1, 1, 1, 0])
    b = reliability_bins(conf, correct, n_bins=10)
    # bins (0.9, 1.0]: conf 0.95, 0.95, 1.0, acc 2/3; (0.5, 0.6]: 0.55 x2, acc 1; (0.1, 0.2]: 0.2, acc 0
    assert b["count"][9] == 3 and b["count"][5] == 2 and b["count"][1] == 1
    expected = (3 * abs(2 / 3 - (0.95 + 0.95 + 1.0) / 3) + 2 * abs(1 - 0.55) + 1 * abs(0 - 0.2)) / 6
    assert b["ece"] == pytest.approx(expected)


def test_gallery_has_confident_mistakes_with_gradcam(noisy_report):
    run = load_run(noisy_report.parent)
    p = run.predictions
    figures = parse(noisy_report).find("figure", "mistakes")
    mistakes_rows = confident_mistakes(p, 16)
    assert mistakes_rows, "the noisy run must have mistakes"
    html = noisy_report.read_text()
    section = html[html.index('<section id="mistakes"'):html.index('<section id="hardest"')]
    assert section.count('alt="Grad-CAM for') == len(mistakes_rows)  # small_cnn is convolutional
    assert [int(el["data-row"]) for el in figures] == mistakes_rows


def test_confident_mistakes_and_hardest_correct_by_hand():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.55, 0.45], [0.3, 0.7]])
    labels = np.array([0, 0, 0, 1, 0, 1])
    p = Predictions([str(i) for i in range(6)], labels, probs.argmax(1), probs)
    assert confident_mistakes(p) == [1, 3, 2]     # wrong with p(pred) 0.8, 0.7, 0.6
    assert hardest_correct(p, 2) == {0: [4, 0], 1: [5]}


def test_thumbnails_keep_digits_sharp_and_shrink_photos():
    assert fit_thumb(Image.new("L", (28, 28))).size == (112, 112)   # 4x, nearest
    assert fit_thumb(Image.new("RGB", (16, 16))).size == (112, 112)  # 7x
    assert fit_thumb(Image.new("RGB", (500, 300))).size == (112, 67)


def test_gradcam_target_layers():
    from imgcls.models import create_model

    cnn = create_model("small_cnn", 3, 1)
    assert cam_target_layer(cnn) is [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    resnet = create_model("resnet18", 3, 3)
    assert cam_target_layer(resnet) is resnet.layer4


@pytest.mark.parametrize("arch, size, has_cam", [("resnet18", 64, True), ("vit_tiny_patch16_224", 224, False)])
def test_gradcam_for_timm_conv_models_only(arch, size, has_cam, small_run, tmp_path):
    """A resnet gets overlays from its last stage; a ViT (tokens, not a feature map) gets none."""
    from imgcls.models.modelinfo import save_weights
    from imgcls.models import create_model
    from imgcls.report.gallery import build_gallery

    run = noisy_copy(small_run.run_dir, tmp_path / arch)
    meta = json.loads((run / "model.json").read_text())
    meta.update(architecture=arch, image_size=size, resize=size)
    (run / "model.json").write_text(json.dumps(meta))
    torch.manual_seed(0)
    save_weights(run / "best.safetensors", create_model(arch, len(meta["classes"]), 3))
    mistakes, _, note = build_gallery(load_run(run), n_mistakes=3)
    assert len(mistakes) == 3
    if has_cam:
        assert note is None and all(ex.cam.startswith("data:image/") for ex in mistakes)
    else:
        assert "No Grad-CAM" in note and not any(ex.cam for ex in mistakes)


# ---------------------------------------------------------------- findings

def test_findings_imbalance():
    f = findings.imbalance(["a", "b", "c", "d"], [400, 390, 5, 9])
    assert f and "'c' (5)" in f.text and "'d' (9)" in f.text and "'a'" not in f.text
    assert findings.imbalance(["a", "b", "c"], [100, 90, 40]) is None   # 2.5:1 is not flagged
    assert findings.imbalance(["a", "b"], [100, 0]) is not None


def test_findings_weak_recall_names_the_classes_and_their_confusion():
    per_class = [{"class": c, "recall": r, "support": s, "precision": 0.9, "f1": 0.9}
                 for c, r, s in [("a", 0.95, 50), ("b", 0.40, 50), ("c", 0.85, 50), ("d", 0.0, 0)]]
    cm = [[48, 2, 0, 0], [5, 20, 25, 0], [4, 4, 42, 0], [0, 0, 0, 0]]
    f = findings.weak_recall(["a", "b", "c", "d"], per_class, 0.9, cm, [400, 8, 400, 400])
    assert f is not None
    assert "'b' 0.40 (mostly taken for 'c')" in f.text
    assert "'c'" not in f.text.split("mostly taken for 'c'")[1]  # c (0.85) is within 0.10 of accuracy
    assert "'d'" not in f.text                                      # no validation images: not a failure
    assert "'b' is rare in training" in f.text and "try loss.class_weights=balanced or data.sampler" in f.text
    tried = findings.weak_recall(["a", "b", "c", "d"], per_class, 0.9, cm, [400, 8, 400, 400],
                                 findings.remedies_in_use({"loss": {"name": "focal"}, "data": {"sampler": "balanced"}}))
    assert "try loss.class_weights=balanced." in tried.text and "focal" not in tried.text.split("try")[1]
    assert findings.weak_recall(["a", "b"], per_class[:1] * 2, 0.9, [[1, 0], [0, 1]]) is None


@pytest.mark.parametrize("train, val, expected", [
    ([1.0, 0.8, 0.6, 0.4, 0.3], [1.0, 0.7, 0.6, 0.7, 0.8], True),     # val up 33% for 2 epochs, train down
    ([1.0, 0.8, 0.6, 0.4, 0.3], [1.0, 0.8, 0.7, 0.65, 0.6], False),   # both falling
    ([1.0, 0.8, 0.6, 0.7, 0.8], [1.0, 0.7, 0.6, 0.7, 0.8], False),    # train rising too: not overfitting
    ([1.0, 0.8, 0.6, 0.4, 0.3], [1.0, 0.7, 0.6, 0.62, 0.63], False),  # rise of 5% is noise
    ([1.0, 0.8, 0.6, 0.4, 0.3], [1.0, 0.7, 0.6, 0.5, 0.8], False),    # only one epoch after the minimum
])
def test_findings_overfitting(train, val, expected):
    assert (findings.overfitting(train, val) is not None) == expected


def test_findings_lr_still_improving_and_calibration():
    assert findings.lr_ending_high([1e-3] * 5) is not None
    assert findings.lr_ending_high([1e-3, 7e-4, 3e-4, 5e-5, 0.0]) is None
    assert findings.still_improving([0.5, 0.6, 0.7], True, "val/acc") is not None
    assert findings.still_improving([0.5, 0.7, 0.6], True, "val/acc") is None
    assert findings.still_improving([0.5, 0.4, 0.3], False, "val/loss") is not None
    f = findings.calibration(0.12, 0.95, 0.83)
    assert f is not None and "over-confident" in f.text
    assert findings.calibration(0.02, 0.9, 0.88) is None


def test_imbalanced_run_findings_and_report_name_the_weak_classes(tmp_path):
    classes = [str(d) for d in range(10)]
    counts = [400] * 10
    recall = [0.97] * 10
    for weak in (3, 5, 8):
        counts[weak], recall[weak] = 7, 0.3
    run = synthetic_run(tmp_path / "imb", classes, counts, recall, val_loss=(1.0, 0.6, 0.5, 0.6, 0.7),
                        train_loss=(1.2, 0.8, 0.6, 0.4, 0.3), lr=(3e-3,) * 5)
    kinds = {f.kind: f.text for f in all_findings(load_run(run))}
    assert {"imbalance", "weak_recall", "overfitting", "lr_high"} <= set(kinds)
    for weak in ("'3'", "'5'", "'8'"):
        assert weak in kinds["imbalance"] and weak in kinds["weak_recall"]
    html = write_report(run, gradcam=False).read_text()
    assert "Recall trails accuracy" in html and "imbalanced" in html
    assert html.count('class=weak') == 3  # the three rows highlighted in the per-class table
    assert "image not found" in html     # the images are not on this machine: no broken <img>


def test_balanced_run_says_no_problems(small_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(small_run.run_dir, run)
    found = all_findings(load_run(run))
    assert [f.kind for f in found if f.severity == "warn"] == []
    assert found[0].kind == "ok"


# ---------------------------------------------------------------- many classes, partial runs, evaluations

@pytest.mark.parametrize("k", [2, 36])
def test_confusion_section_from_two_to_many_classes(k, tmp_path):
    """Up to 30 classes an open table; above, a heatmap image with the table folded away and 20 pairs."""
    classes = [f"class_{i:03d}" for i in range(k)]
    run = synthetic_run(tmp_path / "many", classes, [30] * k, [0.7] * k, n_val=4 if k > 2 else 30)
    out = write_report(run, gradcam=False)
    html = out.read_text()
    cells = parse(out)
    folded = f'<details><summary>the full {k} x {k} table</summary>' in html
    assert folded == (k > 30) and ("confusion matrix heatmap" in html) == (k > 30)
    assert len(cells.find("td", "confusion-table", "data-pred")) == k * k
    cm = np.array(json.loads((run / "val_metrics.json").read_text())["confusion_matrix"])
    n_wrong_cells = int(((cm - np.diag(np.diag(cm))) > 0).sum())
    assert len(cells.find("li", "confused-pairs", "data-pred")) == min(n_wrong_cells, 20 if k > 30 else 10)
    assert len(cells.find("tr", "per-class-table", "data-class")) == k


def test_partial_run_without_predictions_shows_its_evaluations(small_run, tmp_path):
    run = tmp_path / "partial"
    shutil.copytree(small_run.run_dir, run)
    (run / "val_predictions.csv").unlink()
    (run / "eval-test").mkdir()
    (run / "eval-test" / "metrics.json").write_text(json.dumps({"val/acc": 0.8125, "num_samples": 32, "name": "x"}))
    out = write_report(run)
    html = out.read_text()
    assert html.count("val_predictions.csv is missing") == 4  # roc, calibration, mistakes, hardest
    cells = parse(out)
    assert any(el.get("id") == "evaluations" for el in cells.elements)
    assert [el["text"] for el in cells.find("th", "evaluations")] == ["folder", "val/acc", "num_samples"]
    assert [el["text"] for el in cells.find("td", "evaluations")] == ["eval-test", "0.8125", "32"]


def test_not_a_run_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="val_metrics.json"):
        write_report(tmp_path / "empty")


# ---------------------------------------------------------------- CLI: report and compare

def test_cli_report_and_compare(small_run, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(small_run.run_dir, a)
    shutil.copytree(small_run.run_dir, b)
    cfg = (b / "config.yaml").read_text().replace("name: auto", "name: focal")
    (b / "config.yaml").write_text(cfg)
    assert main(["report", str(a), "--no-gradcam"]) == 0
    assert (a / "report.html").is_file() and str(a / "report.html") in capsys.readouterr().out

    out = tmp_path / "cmp" / "compare.html"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    line = [ln for ln in printed.splitlines() if ln.strip().startswith("loss.name")][0]
    assert line.split()[1:] == ["auto", "focal"]
    assert "data.root" not in printed  # same in both runs: not a difference
    acc = json.loads((a / "val_metrics.json").read_text())["val/acc"]
    assert f"{acc:.4f}" in [ln for ln in printed.splitlines() if ln.strip().startswith("val/acc")][0]
    html = out.read_text()
    assert "<script" not in html and 'src="data:image/png;base64,' in html
    assert compare_runs([a, b]).config_diff == [("loss.name", ["auto", "focal"])]

    assert main(["compare", str(a), str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
