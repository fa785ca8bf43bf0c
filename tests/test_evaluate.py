"""imgcls evaluate: its numbers against scikit-learn computed from its own predictions.csv."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from imgcls.cli import main
from imgcls.inference.evaluate import evaluate


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def run_copy(small_run, tmp_path) -> Path:
    """evaluate writes into MODEL/eval-*; never into the shared run."""
    return Path(shutil.copytree(small_run.run_dir, tmp_path / "run",
                                ignore=shutil.ignore_patterns("tb", "last.pt")))


def noisy_labels_csv(tiny_folder: Path, dest: Path) -> Path:
    """Tiny-folder images with every third label moved to the next class, so metrics are not all 1."""
    classes = ["cat", "dog", "fox"]
    with open(dest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        n = 0
        for k, c in enumerate(classes):
            for p in sorted((tiny_folder / c).glob("*.png"))[:10]:
                label = classes[(k + 1) % 3] if n % 3 == 0 else c
                if k == 2 and n % 5 == 0:
                    label = "dog"
                w.writerow([str(p), label])
                n += 1
    return dest


def ece_by_hand(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return total


@pytest.mark.filterwarnings("ignore:'k' .* greater than or equal to 'n_classes'")  # top5 of 3 classes is 1
def test_evaluate_metrics_equal_sklearn_on_its_own_predictions(run_copy, tiny_folder, tmp_path, capsys):
    data = noisy_labels_csv(tiny_folder, tmp_path / "noisy.csv")
    assert main(["evaluate", str(run_copy), "--data", str(data), "--workers", "0"]) == 0
    out = run_copy / "eval-noisy"  # default: MODEL/eval-<CSV stem>
    printed = capsys.readouterr().out
    assert "val/acc" in printed and "worst first" in printed

    m = json.loads((out / "metrics.json").read_text())
    rows = read_rows(out / "predictions.csv")
    classes = json.loads((run_copy / "model.json").read_text())["classes"]
    assert list(rows[0])[:6] == ["path", "label", "pred", "prob", "top_k", f"prob_{classes[0]}"]
    y = np.array([classes.index(r["label"]) for r in rows])
    pred = np.array([classes.index(r["pred"]) for r in rows])
    P = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    K = len(classes)
    assert m["num_samples"] == len(rows) == 30
    assert 0.3 < m["val/acc"] < 0.9  # the noisy labels make the checks below non-trivial

    tol = dict(abs=2e-5)  # predictions.csv keeps 6 significant digits
    assert m["val/acc"] == pytest.approx(skm.accuracy_score(y, pred), **tol)
    for avg_name, i in (("precision", 0), ("recall", 1), ("f1", 2)):
        ref = skm.precision_recall_fscore_support(y, pred, labels=range(K), average="macro", zero_division=0)[i]
        assert m[f"val/{avg_name}_macro"] == pytest.approx(ref, **tol)
    assert m["val/balanced_acc"] == pytest.approx(skm.balanced_accuracy_score(y, pred), **tol)
    # AUROC from the full-precision probabilities (6 significant digits tie near 1.0 on a confident model)
    import imgcls
    full = imgcls.load(run_copy).predict([r["path"] for r in rows]).probs.double().numpy()
    assert np.abs(full - P).max() < 1e-5
    aurocs = [skm.roc_auc_score(y == c, full[:, c]) for c in range(K)]
    assert m["val/auroc"] == pytest.approx(np.mean(aurocs), abs=1e-6)
    # By hand: sklearn's log_loss clips probabilities at 2e-16, and this model is that confident.
    assert m["val/loss"] == pytest.approx(-np.log(P[np.arange(len(y)), y]).mean(), rel=1e-4)
    assert m["top5_acc"] == pytest.approx(skm.top_k_accuracy_score(y, P, k=min(5, K), labels=range(K)), **tol)
    assert m["ece"] == pytest.approx(ece_by_hand(P.max(1), (pred == y).astype(float)), **tol)

    cm = skm.confusion_matrix(y, pred, labels=range(K))
    with open(out / "confusion_matrix.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0][1:] == classes
    assert [r[0] for r in table[1:]] == classes
    assert np.array_equal(np.array([[int(v) for v in r[1:]] for r in table[1:]]), cm)

    per_class = read_rows(out / "per_class.csv")
    prec, rec, f1, support = skm.precision_recall_fscore_support(y, pred, labels=range(K), zero_division=0)
    f1s = [float(r["f1"]) for r in per_class]
    assert f1s == sorted(f1s)  # worst first
    for r in per_class:
        c = classes.index(r["class"])
        assert float(r["precision"]) == pytest.approx(prec[c], abs=1e-5)
        assert float(r["recall"]) == pytest.approx(rec[c], abs=1e-5)
        assert float(r["f1"]) == pytest.approx(f1[c], abs=1e-5)
        assert int(r["support"]) == support[c]


def test_evaluate_output_folder_is_not_overwritten_without_force(run_copy, tiny_folder, capsys):
    assert main(["evaluate", str(run_copy), "--data", str(tiny_folder)]) == 0
    out = run_copy / f"eval-{tiny_folder.name}"
    assert (out / "metrics.json").is_file()
    before = (out / "metrics.json").read_text()
    (out / "metrics.json").write_text("{}")
    capsys.readouterr()
    assert main(["evaluate", str(run_copy), "--data", str(tiny_folder)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == "{}"
    assert main(["evaluate", str(run_copy), "--data", str(tiny_folder), "--force"]) == 0
    assert json.loads((out / "metrics.json").read_text()) == json.loads(before)


def test_unknown_labels_fail_listing_them(small_run, tiny_folder, tmp_path):
    data = tmp_path / "labels.csv"
    paths = sorted((tiny_folder / "cat").glob("*.png"))[:3]
    data.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in zip(paths, ["cat", "wolf", "bear"])))
    from imgcls.errors import UserError
    with pytest.raises(UserError, match="'bear', 'wolf'"):
        evaluate(small_run.run_dir, data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unreadable_images_are_left_out_and_listed(small_run, tiny_folder, tmp_path):
    data = tmp_path / "labels.csv"
    paths = [str(p) for p in sorted((tiny_folder / "fox").glob("*.png"))[:4]]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    data.write_text("path,label\n" + "".join(f"{p},fox\n" for p in paths) + f"{tmp_path / 'bad.png'},cat\n")
    with pytest.warns(UserWarning, match="1 unreadable"):
        r = evaluate(small_run.run_dir, data, tmp_path / "out")
    assert r.details["num_samples"] == 4
    assert [Path(x["path"]).name for x in read_rows(tmp_path / "out" / "errors.csv")] == ["bad.png"]
    assert [x["path"] for x in read_rows(tmp_path / "out" / "predictions.csv")] == paths
