"""Ranking views of ClassificationMetrics, MultilabelMetrics, tune_thresholds, RegressionMetrics
and the bin helpers, against scikit-learn (the oracle) and hand-computed cases."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    coverage_error,
    f1_score,
    label_ranking_average_precision_score,
    mean_absolute_error,
    mean_squared_error,
    ndcg_score,
    precision_recall_fscore_support,
    precision_score,
    r2_score,
    recall_score,
    top_k_accuracy_score,
)

from imgcls.errors import UserError
from imgcls.metrics import (
    ClassificationMetrics,
    MultilabelMetrics,
    RegressionMetrics,
    bin_names,
    bin_values,
    tune_thresholds,
)
from imgcls.tasks import get_task

OLD_KEYS = ["val/acc", "val/f1_macro", "val/precision_macro", "val/recall_macro", "val/balanced_acc",
            "val/auroc", "val/loss"]
MULTILABEL_KEYS = ["val/loss", "val/f1_micro", "val/f1_macro", "val/f1_samples", "val/f1_macro_at_0.5",
                   "val/precision_micro", "val/recall_micro", "val/map", "val/lrap", "val/coverage",
                   "val/ndcg", "val/mrr"]


# -- multi-class ranking views ---------------------------------------------------------------


def multiclass(logits, target, k, chunks=1):
    m = ClassificationMetrics(k, [f"c{i}" for i in range(k)])
    for lg, t in zip(logits.tensor_split(chunks), target.tensor_split(chunks)):
        m.update(lg, t, loss_sum=F.cross_entropy(lg.float(), t, reduction="sum").item())
    return m


@pytest.mark.parametrize("seed,k", [(0, 3), (1, 5), (2, 7), (3, 12), (4, 20)])
def test_ranking_views_match_sklearn(seed, k):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (400,), generator=g)
    logits = torch.randn(400, k, generator=g) + 0.8 * F.one_hot(target, k)
    scalars = multiclass(logits, target, k, chunks=3).compute()
    one_hot, scores = F.one_hot(target, k).numpy(), logits.numpy()

    assert list(scalars) == OLD_KEYS + ["val/mrr", "val/ndcg_at_5", "val/top5_acc"]
    assert set(scalars) == set(get_task("multiclass").metric_names()) - {"train/loss"}
    # One relevant label and no ties: LRAP is exactly the mean reciprocal rank.
    assert scalars["val/mrr"] == pytest.approx(label_ranking_average_precision_score(one_hot, scores), abs=1e-9)
    assert scalars["val/ndcg_at_5"] == pytest.approx(ndcg_score(one_hot, scores, k=5), abs=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k >= n_classes warning for K <= 5
        top5 = top_k_accuracy_score(target.numpy(), scores, k=min(5, k), labels=list(range(k)))
    assert scalars["val/top5_acc"] == pytest.approx(top5, abs=1e-6)  # torchmetrics' float32 count
    if k <= 5:
        assert scalars["val/top5_acc"] == 1.0


def test_ranking_views_hand_case():
    # True-class ranks 1, 3 (two classes strictly above it), 1 (a tie counts in its favour),
    # 6 (beyond the top 5): MRR = (1 + 1/3 + 1 + 1/6) / 4; NDCG@5 = (1 + 1/log2(4) + 1 + 0) / 4.
    logits = torch.tensor([
        [5.0, 1, 0, 0, 0, 0],
        [0.0, 3, 2, 1, 0, 0],
        [2.0, 2, 0, 0, 0, 0],
        [0.0, 6, 5, 4, 3, 2],
    ])
    target = torch.tensor([0, 3, 1, 0])
    m = ClassificationMetrics(6, list("abcdef"))
    m.update(logits, target)
    scalars = m.compute()
    assert scalars["val/mrr"] == pytest.approx((1 + 1 / 3 + 1 + 1 / 6) / 4)
    assert scalars["val/ndcg_at_5"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert scalars["val/top5_acc"] == m.details()["top5_acc"]


def test_ranking_views_reset_and_accumulate():
    g = torch.Generator().manual_seed(9)
    target = torch.randint(0, 8, (97,), generator=g)
    logits = torch.randn(97, 8, generator=g)
    one = multiclass(logits, target, 8).compute()
    many = multiclass(logits, target, 8, chunks=6).compute()
    assert many == pytest.approx(one, abs=1e-6)  # val/loss: float32 sums per chunk
    m = multiclass(torch.randn(30, 8), torch.randint(0, 8, (30,)), 8)
    m.compute()
    m.reset()
    m.update(logits, target)
    assert m.compute()["val/mrr"] == pytest.approx(one["val/mrr"], abs=1e-12)


# -- multi-label -----------------------------------------------------------------------------


def multilabel_case(seed: int, n: int = 300, n_labels: int = 6):
    """Targets with a signal; label 2 never positive, every 10th image without any label."""
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, n_labels, generator=g) < 0.3).float()
    target[:, 2] = 0
    target[::10] = 0
    logits = torch.randn(n, n_labels, generator=g) + 1.5 * (2 * target - 1)
    return logits, target


def multilabel(logits, target, thresholds=None, chunks=1):
    m = MultilabelMetrics([f"l{j}" for j in range(logits.shape[1])])
    m.set_thresholds(thresholds)
    for lg, t in zip(logits.tensor_split(chunks), target.tensor_split(chunks)):
        m.update(lg, t, loss_sum=F.binary_cross_entropy_with_logits(lg, t, reduction="sum").item() / lg.shape[1])
    return m


def multilabel_reference(logits, target, thresholds) -> dict:
    probs = logits.float().sigmoid().double().numpy()
    y = target.numpy().astype(int)
    pred = probs >= np.asarray(thresholds)
    kw = {"zero_division": 0}
    has = y.any(axis=1)
    best_true = np.where(y == 1, probs, -np.inf).max(axis=1, keepdims=True)
    first_rank = 1 + (probs > best_true).sum(axis=1)
    return {
        "val/loss": F.binary_cross_entropy_with_logits(logits, target).item(),
        "val/f1_micro": f1_score(y, pred, average="micro", **kw),
        "val/f1_macro": f1_score(y, pred, average="macro", **kw),
        "val/f1_samples": f1_score(y, pred, average="samples", **kw),
        "val/f1_macro_at_0.5": f1_score(y, probs >= 0.5, average="macro", **kw),
        "val/precision_micro": precision_score(y, pred, average="micro", **kw),
        "val/recall_micro": recall_score(y, pred, average="micro", **kw),
        "val/map": np.mean([average_precision_score(y[:, j], probs[:, j]) for j in range(y.shape[1])
                            if y[:, j].any()]),
        "val/lrap": label_ranking_average_precision_score(y, probs),
        "val/coverage": coverage_error(y, probs),
        "val/ndcg": ndcg_score(y, probs),
        "val/mrr": np.mean(1.0 / first_rank[has]),
    }


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("tuned", [False, True])
def test_multilabel_matches_sklearn(seed, tuned):
    logits, target = multilabel_case(seed)
    thresholds = torch.rand(6, generator=torch.Generator().manual_seed(100 + seed)) * 0.8 + 0.1 if tuned else None
    m = multilabel(logits, target, thresholds, chunks=4)
    scalars = m.compute()
    ref = multilabel_reference(logits, target, [0.5] * 6 if thresholds is None else thresholds.double().numpy())
    assert list(scalars) == MULTILABEL_KEYS
    for name, value in ref.items():
        assert scalars[name] == pytest.approx(value, abs=1e-6 if name == "val/loss" else 1e-9), name

    details = m.details()
    probs, y = logits.sigmoid().double().numpy(), target.numpy().astype(int)
    t = np.full(6, 0.5) if thresholds is None else thresholds.double().numpy()
    p, r, f, s = precision_recall_fscore_support(y, probs >= t, average=None, zero_division=0)
    assert details["num_samples"] == len(target)
    assert [row["label"] for row in details["per_label"]] == [f"l{j}" for j in range(6)]
    for j, row in enumerate(details["per_label"]):
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[j], r[j], f[j]), abs=1e-12)
        assert row["support"] == s[j]
        assert row["threshold"] == pytest.approx(t[j], abs=1e-12)
        if j == 2:
            assert row["ap"] is None  # no positive: AP undefined, left out of val/map
        else:
            assert row["ap"] == pytest.approx(average_precision_score(y[:, j], probs[:, j]), abs=1e-12)
    if tuned:  # thresholds move the thresholded F1s but not the one at 0.5
        assert scalars["val/f1_macro_at_0.5"] == pytest.approx(multilabel(logits, target).compute()["val/f1_macro"])


def test_multilabel_hand_case():
    # Probabilities (already in (0, 1); logit = log(p / (1 - p))) and targets:
    #   image 0: [0.9, 0.2, 0.3] true {0, 2}: LRAP (1/1 + 2/2) / 2 = 1, coverage 2, first true rank 1
    #   image 1: [0.5, 0.4, 0.1] true {}:     LRAP 1 (sklearn), coverage 0, left out of MRR
    #   image 2: [0.3, 0.2, 0.1] true {1}:    LRAP 1/2, coverage 2, first true rank 2
    probs = torch.tensor([[0.9, 0.2, 0.3], [0.5, 0.4, 0.1], [0.3, 0.2, 0.1]], dtype=torch.float64)
    target = torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 0]])
    m = MultilabelMetrics(["a", "b", "c"])
    m.update(torch.logit(probs).float(), target)
    s = m.compute()
    assert "val/loss" not in s  # no losses given
    assert s["val/lrap"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert s["val/coverage"] == pytest.approx((2 + 0 + 2) / 3)
    assert s["val/mrr"] == pytest.approx((1 + 1 / 2) / 2)
    # NDCG: image 0 is ideal (1), image 1 has no gain (0, kept in the mean), image 2 1/log2(3).
    assert s["val/ndcg"] == pytest.approx((1 + 0 + 1 / math.log2(3)) / 3)
    # At 0.5 only image 0 label 0 and image 1 label 0 are predicted: TP 1, FP 1, FN 2.
    assert s["val/precision_micro"] == pytest.approx(0.5)
    assert s["val/recall_micro"] == pytest.approx(1 / 3)
    assert s["val/f1_micro"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))


def test_multilabel_mrr_ties_and_first_true_label():
    # Image 0: true labels scored 0.6 and 0.2, one label (0.8) above the best: rank 2.
    # Image 1: the true label ties with another at the top: rank 1 (a tie counts in its favour).
    probs = torch.tensor([[0.8, 0.6, 0.2, 0.1], [0.7, 0.7, 0.1, 0.1]], dtype=torch.float64)
    target = torch.tensor([[0.0, 1, 1, 0], [0, 1, 0, 0]])
    m = MultilabelMetrics(list("abcd"))
    m.update(torch.logit(probs).float(), target)
    s = m.compute()
    assert s["val/mrr"] == pytest.approx((1 / 2 + 1) / 2)
    # Coverage counts a tie against us: image 1 needs both 0.7s, image 0 the top three.
    assert s["val/coverage"] == pytest.approx((3 + 2) / 2) == coverage_error(target, probs)
    assert s["val/lrap"] == pytest.approx(label_ranking_average_precision_score(target, probs))
    assert s["val/ndcg"] == pytest.approx(ndcg_score(target, probs))  # tied scores share the gain


def test_multilabel_nothing_positive_gives_nan_map_and_mrr():
    m = MultilabelMetrics(["a", "b"])
    m.update(torch.randn(5, 2), torch.zeros(5, 2))
    s = m.compute()
    assert math.isnan(s["val/map"]) and math.isnan(s["val/mrr"])
    assert s["val/lrap"] == 1.0 and s["val/coverage"] == 0.0 and s["val/ndcg"] == 0.0
    assert s["val/recall_micro"] == 0.0 and s["val/f1_samples"] == 0.0
    assert [row["ap"] for row in m.details()["per_label"]] == [None, None]


def test_multilabel_single_label():
    # sklearn's coverage_error and ndcg_score refuse L = 1; the formulas still hold.
    target = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    m = MultilabelMetrics(["only"])
    m.update(torch.tensor([[2.0], [1.0], [-1.0], [-2.0]]), target)
    s = m.compute()
    assert s["val/coverage"] == pytest.approx(0.5)  # 1 per image with the label, 0 without
    assert s["val/ndcg"] == pytest.approx(0.5)
    assert s["val/lrap"] == 1.0 and s["val/mrr"] == 1.0
    assert s["val/map"] == pytest.approx(average_precision_score([1, 0, 1, 0], [2, 1, -1, -2]))


def test_multilabel_reset_shapes_and_thresholds():
    m = MultilabelMetrics(["a", "b", "c"])
    with pytest.raises(RuntimeError):
        m.compute()
    with pytest.raises(ValueError):
        m.update(torch.randn(4, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError):
        m.update(torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(ValueError):
        m.set_thresholds([0.5, 0.5])
    with pytest.raises(UserError):
        MultilabelMetrics([])
    m.update(torch.randn(4, 3), torch.ones(4, 3), loss_sum=1e6)
    m.reset()
    logits, target = multilabel_case(5, n=40, n_labels=3)
    m.update(logits, target)
    assert m.details()["num_samples"] == 40
    assert "val/loss" not in m.compute()
    probs, targets = m.probs_and_targets()
    assert torch.equal(probs, logits.sigmoid()) and torch.equal(targets, target)


# -- tune_thresholds -------------------------------------------------------------------------


def brute_force_thresholds(probs: np.ndarray, y: np.ndarray) -> list[float]:
    out = []
    for j in range(probs.shape[1]):
        if not y[:, j].any():
            out.append(0.5)
            continue
        best_t, best_f1 = None, -1.0
        for t in sorted(set(probs[:, j].tolist())):  # ascending: ">=" keeps the largest on ties
            f1 = f1_score(y[:, j], probs[:, j] >= t, zero_division=0)
            if f1 >= best_f1:
                best_t, best_f1 = t, f1
        out.append(best_t)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_tune_thresholds_brute_force_and_beats_half(seed):
    logits, target = multilabel_case(seed, n=120)
    probs = logits.sigmoid()
    if seed % 2:  # coarse probabilities: many ties, among images and among F1 values
        probs = (probs * 8).round() / 8
    tuned = tune_thresholds(probs, target)
    p, y = probs.double().numpy(), target.numpy().astype(int)
    assert tuned.shape == (6,) and tuned.dtype == torch.float64
    assert tuned.tolist() == brute_force_thresholds(p, y)
    assert tuned[2] == 0.5  # no positives
    for j in range(6):
        f1_tuned = f1_score(y[:, j], p[:, j] >= tuned[j].item(), zero_division=0)
        assert f1_tuned >= f1_score(y[:, j], p[:, j] >= 0.5, zero_division=0)
    # Fed back, the thresholded F1 macro is the mean of the tuned per-label F1s.
    m = multilabel(logits if seed % 2 == 0 else torch.logit(probs.double()).float(), target, tuned)
    expected = f1_score(y, p >= tuned.numpy(), average="macro", zero_division=0)
    assert m.compute()["val/f1_macro"] == pytest.approx(expected, abs=1e-12)


def test_tune_thresholds_ties_take_the_largest():
    # probs 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.2 (neg): threshold 0.9 -> F1 2/3; 0.8 -> 1/2;
    # 0.7 -> 4/5; 0.2 -> 2/3. Best is 0.7.
    # Second label, probs 0.9 (pos), 0.8, 0.7 (neg), 0.6 (pos), 0.3, 0.1 (neg): thresholds
    # 0.9 -> 2/3 and 0.6 -> 4/6 tie the maximum; the largest, 0.9, wins.
    probs = torch.tensor([[0.9, 0.9], [0.8, 0.8], [0.7, 0.7], [0.2, 0.6], [0.05, 0.3], [0.01, 0.1]])
    target = torch.tensor([[1.0, 1], [0, 0], [1, 0], [0, 1], [0, 0], [0, 0]])
    f1_second = [f1_score(target[:, 1], probs[:, 1] >= t) for t in probs[:, 1].tolist()]
    assert f1_second[0] == f1_second[3] == max(f1_second) == pytest.approx(2 / 3)
    tuned = tune_thresholds(probs, target)
    assert tuned.tolist() == [probs[2, 0].item(), probs[0, 1].item()]


# -- regression and bins ---------------------------------------------------------------------


def regression(pred, target, bins=None, chunks=1):
    m = RegressionMetrics(bins)
    for p, t in zip(pred.tensor_split(chunks), target.tensor_split(chunks)):
        m.update(p, t, loss_sum=F.mse_loss(p, t, reduction="sum").item())
    return m


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bins", [None, [30, 60], [2.5, 20.0, 40.5, 41.0]])
def test_regression_matches_sklearn(seed, bins):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(250, generator=g, dtype=torch.float64) * 90
    pred = target + torch.randn(250, generator=g, dtype=torch.float64) * 12
    m = regression(pred, target, bins, chunks=3)
    s, details = m.compute(), m.details()
    y, p = target.numpy(), pred.numpy()
    assert list(s)[:5] == ["val/loss", "val/mae", "val/mse", "val/rmse", "val/r2"]
    assert s["val/loss"] == pytest.approx(mean_squared_error(y, p), rel=1e-12)
    assert s["val/mae"] == pytest.approx(mean_absolute_error(y, p), rel=1e-12)
    assert s["val/mse"] == pytest.approx(mean_squared_error(y, p), rel=1e-12)
    assert s["val/rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, p)), rel=1e-12)
    assert s["val/r2"] == pytest.approx(r2_score(y, p), rel=1e-12)
    assert details["num_samples"] == 250
    if bins is None:
        assert len(s) == 5 and set(details) == {"num_samples"}
        return
    true_bin, pred_bin = np.digitize(y, bins), np.digitize(p, bins)  # right=False: count of bins <= v
    labels = list(range(len(bins) + 1))
    assert list(s)[5:] == ["val/binned/acc", "val/binned/f1_macro"]
    assert s["val/binned/acc"] == pytest.approx(accuracy_score(true_bin, pred_bin), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f1 = f1_score(true_bin, pred_bin, labels=labels, average="macro", zero_division=0)
    assert s["val/binned/f1_macro"] == pytest.approx(f1, abs=1e-12)
    assert details["binned_confusion_matrix"] == confusion_matrix(true_bin, pred_bin, labels=labels).tolist()
    assert details["bin_names"] == bin_names(bins) and details["bins"] == [float(b) for b in bins]


def test_regression_constant_target_follows_sklearn():
    target = torch.full((4,), 5.0)
    assert regression(target.clone(), target).compute()["val/r2"] == 1.0 == r2_score([5.0] * 4, [5.0] * 4)
    off = torch.tensor([5.0, 6.0, 5.0, 4.0])
    assert regression(off, target).compute()["val/r2"] == 0.0 == r2_score([5.0] * 4, off.numpy())
    # Three 0.1s: numpy's mean is not exactly 0.1, and sklearn then divides by ~1e-34 (about -1e31).
    # The target is still constant, so ours stays 0.0.
    tenths = torch.full((3,), 0.1, dtype=torch.float64)
    assert regression(tenths + torch.tensor([0.0, 0.0, 0.1], dtype=torch.float64), tenths).compute()["val/r2"] == 0.0
    assert regression(tenths.clone(), tenths).compute()["val/r2"] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(r2_score([1.0], [2.0]))
    assert math.isnan(regression(torch.tensor([2.0]), torch.tensor([1.0])).compute()["val/r2"])


def test_regression_hand_case_and_half_inputs():
    pred, target = torch.tensor([1.0, 2.0, 7.0, 35.0]), torch.tensor([1.0, 4.0, 4.0, 29.0])
    m = RegressionMetrics([30, 60])
    m.update(pred.half(), target)
    s = m.compute()
    assert s["val/mae"] == pytest.approx((0 + 2 + 3 + 6) / 4)
    assert s["val/mse"] == pytest.approx((0 + 4 + 9 + 36) / 4)
    assert s["val/rmse"] == pytest.approx(math.sqrt(49 / 4))
    # Bins: true 0, 0, 0, 0; predicted 0, 0, 0, 1 -> acc 3/4; F1 of bin 0 = 6/7, bins 1 and 2 zero.
    assert s["val/binned/acc"] == pytest.approx(0.75)
    assert s["val/binned/f1_macro"] == pytest.approx((6 / 7) / 3)
    assert m.details()["binned_confusion_matrix"] == [[3, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert m.details()["bin_names"] == ["<30", "30-59", ">=60"]


def test_regression_errors_and_reset():
    with pytest.raises(RuntimeError):
        RegressionMetrics().compute()
    with pytest.raises(ValueError):
        RegressionMetrics().update(torch.zeros(3, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError):
        RegressionMetrics([30, 60], ["young", "old"])
    with pytest.raises(ValueError):
        RegressionMetrics(None, ["young"])
    assert RegressionMetrics([30], ["young", "old"]).bin_names == ["young", "old"]
    m = regression(torch.ones(5) * 100, torch.zeros(5))
    m.reset()
    m.update(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 3.0]))
    assert m.compute() == {"val/mae": 0.5, "val/mse": 0.5, "val/rmse": math.sqrt(0.5), "val/r2": -1.0}


def test_bin_values_at_the_boundaries():
    values = torch.tensor([0, 29, 29.999, 30, 59, 59.5, 60, 61, 1000])
    assert bin_values(values, [30, 60]).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert bin_values(values, [30, 60]).dtype == torch.long
    assert bin_values(torch.tensor([18, 30, 60]), [30, 60]).tolist() == [0, 1, 2]  # integer ages
    assert bin_values([2.4, 2.5, 4.0], [2.5, 4]).tolist() == [0, 1, 2]


@pytest.mark.parametrize("bad", [[], [60, 30], [30, 30], [float("nan")], [1, float("inf")]])
def test_bad_bins_are_one_sentence(bad):
    with pytest.raises(UserError, match="increasing"):
        bin_names(bad)
    with pytest.raises(UserError, match="increasing"):
        RegressionMetrics(bad)


# -- GPU: same values, no host sync in update ------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.filterwarnings("ignore:Synchronization debug mode is a prototype")
def test_cuda_updates_without_syncs():
    logits, target = multilabel_case(7, n=200)
    mc_target = torch.randint(0, 6, (200,), generator=torch.Generator().manual_seed(1))
    pred, value = logits[:, 0] * 10 + 40, target[:, 0] * 50 + 10
    cpu = [multilabel(logits, target).compute(), multiclass(logits, mc_target, 6).compute(),
           regression(pred, value, [30, 60]).compute()]
    metrics = [MultilabelMetrics([f"l{j}" for j in range(6)]), ClassificationMetrics(6, list("abcdef")),
               RegressionMetrics([30, 60])]
    inputs = [(logits, target), (logits, mc_target), (pred, value)]
    for m, (x, t) in zip(metrics, inputs):
        m.update(x[:8].cuda(), t[:8].cuda())  # the first batch moves ClassificationMetrics' state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device sync inside update() raises
    try:
        for m, (x, t) in zip(metrics, inputs):
            x, t = x.cuda(), t.cuda()
            m.update(x[8:], t[8:], loss_sum=torch.zeros((), device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for m, ref in zip(metrics, cpu):
        got = {k: v for k, v in m.compute().items() if k != "val/loss"}
        assert got == pytest.approx({k: v for k, v in ref.items() if k != "val/loss"}, abs=1e-5, nan_ok=True)
