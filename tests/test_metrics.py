"""ClassificationMetrics against scikit-learn (the oracle) and hand-computed cases."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from conftest import facts
from imgcls.errors import UserError
from imgcls.metrics import ClassificationMetrics, recall_warnings
from imgcls.tasks import get_task, list_metrics

METRIC_NAMES = get_task("multiclass").metric_names()


def make_case(seed: int, k: int, absent: bool, never_predicted: bool, n: int = 300):
    """Random logits/targets with a signal, so metrics are far from chance; optionally one class
    absent from the targets and/or one class that argmax never picks."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (n,), generator=g)
    if absent:
        target[target == k - 1] = 0
    logits = torch.randn(n, k, generator=g) + 1.5 * F.one_hot(target, k)
    if never_predicted:
        logits[:, 1] -= 20.0
    return logits, target


def sklearn_reference(logits: torch.Tensor, target: torch.Tensor, k: int) -> dict:
    y = target.numpy()
    y_pred = logits.argmax(1).numpy()
    probs = logits.float().softmax(1).numpy()
    labels = list(range(k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about absent classes and k >= n_classes
        p, r, f, _ = precision_recall_fscore_support(y, y_pred, labels=labels, zero_division=0, average="macro")
        pc, rc, fc, sc = precision_recall_fscore_support(y, y_pred, labels=labels, zero_division=0, average=None)
        balanced = balanced_accuracy_score(y, y_pred)
        top5 = top_k_accuracy_score(y, logits.numpy(), k=min(5, k), labels=labels)
    present = np.unique(y)
    auroc = np.mean([roc_auc_score(y == c, probs[:, c]) for c in present]) if len(present) > 1 else math.nan
    return {
        "scalars": {
            "val/acc": accuracy_score(y, y_pred),
            "val/f1_macro": f,
            "val/precision_macro": p,
            "val/recall_macro": r,
            "val/balanced_acc": balanced,
            "val/auroc": auroc,
            "val/loss": F.cross_entropy(logits.float(), target).item(),
        },
        "per_class": [
            {"class": f"c{i}", "precision": pc[i], "recall": rc[i], "f1": fc[i], "support": int(sc[i])}
            for i in range(k)
        ],
        "confusion_matrix": confusion_matrix(y, y_pred, labels=labels).tolist(),
        "top5_acc": top5,
    }


def hand_ece(logits: torch.Tensor, target: torch.Tensor, bins: int = 15) -> float:
    """Guo et al. (2017): bins (i/M, (i+1)/M], ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|."""
    probs = logits.double().softmax(1).numpy()
    conf = probs.max(1)
    correct = probs.argmax(1) == target.numpy()
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = idx == b
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total


def run_metrics(logits, target, k, chunks=1):
    m = ClassificationMetrics(k, [f"c{i}" for i in range(k)])
    for lg, t in zip(logits.tensor_split(chunks), target.tensor_split(chunks)):
        m.update(lg, t, loss_sum=F.cross_entropy(lg.float(), t, reduction="sum").item())
    return m.compute(), m.details()


CASES = [
    # (seed, K, absent class, never-predicted class)
    (0, 3, False, False),
    (1, 4, True, False),
    (2, 5, False, True),
    (3, 6, True, True),
    (4, 7, False, False),
    (5, 8, True, False),
    (6, 9, False, True),
    (7, 10, True, True),
]


@pytest.mark.parametrize("seed,k,absent,never_predicted", CASES)
def test_matches_sklearn(seed, k, absent, never_predicted):
    logits, target = make_case(seed, k, absent, never_predicted)
    scalars, details = run_metrics(logits, target, k)
    ref = sklearn_reference(logits, target, k)

    assert set(scalars) == set(METRIC_NAMES) - {"train/loss"}
    for name, value in ref["scalars"].items():
        assert scalars[name] == pytest.approx(value, abs=1e-6), name
    assert details["confusion_matrix"] == ref["confusion_matrix"]
    assert details["classes"] == [f"c{i}" for i in range(k)]
    for ours, theirs in zip(details["per_class"], ref["per_class"], strict=True):
        assert ours == pytest.approx(theirs, abs=1e-9)
    assert details["top5_acc"] == pytest.approx(ref["top5_acc"], abs=1e-6)
    assert details["ece"] == pytest.approx(hand_ece(logits, target), abs=1e-5)
    assert details["num_samples"] == len(target)
    if absent:  # the convention that separates recall_macro (all K) from balanced_acc (present)
        assert scalars["val/recall_macro"] < scalars["val/balanced_acc"]
        assert details["per_class"][k - 1]["support"] == 0
    if never_predicted:
        assert details["per_class"][1]["precision"] == 0.0


def test_logits_within_unit_interval_are_still_softmaxed():
    """torchmetrics treats inputs in [0, 1] as probabilities; ours always are logits."""
    g = torch.Generator().manual_seed(11)
    logits, target = torch.rand(200, 4, generator=g), torch.randint(0, 4, (200,), generator=g)
    scalars, details = run_metrics(logits, target, 4)
    ref = sklearn_reference(logits, target, 4)
    assert scalars["val/auroc"] == pytest.approx(ref["scalars"]["val/auroc"], abs=1e-6)
    assert details["ece"] == pytest.approx(hand_ece(logits, target), abs=1e-5)


def test_accumulation_equals_single_update():
    logits, target = make_case(21, 6, absent=True, never_predicted=True, n=257)
    one_scalars, one_details = run_metrics(logits, target, 6, chunks=1)
    many_scalars, many_details = run_metrics(logits, target, 6, chunks=7)  # uneven, partial last chunk
    assert many_scalars == pytest.approx(one_scalars, abs=1e-6)
    assert many_details["confusion_matrix"] == one_details["confusion_matrix"]
    assert many_details["num_samples"] == one_details["num_samples"] == 257
    for key in ("top5_acc", "ece"):
        assert many_details[key] == pytest.approx(one_details[key], abs=1e-6)


def test_reset_forgets_previous_pass():
    logits, target = make_case(3, 5, False, False)
    m = ClassificationMetrics(5, list("abcde"))
    m.update(torch.randn(50, 5), torch.randint(0, 5, (50,)), loss_sum=1e6)
    m.compute()
    m.reset()
    m.update(logits, target)
    assert m.details()["num_samples"] == len(target)
    assert "val/loss" not in m.compute()  # no losses given since the reset
    assert m.compute()["val/acc"] == pytest.approx(accuracy_score(target, logits.argmax(1)))


def test_one_present_class_gives_nan_auroc():
    g = torch.Generator().manual_seed(5)
    logits, target = torch.randn(40, 3, generator=g), torch.full((40,), 2)
    scalars, details = run_metrics(logits, target, 3)
    assert math.isnan(scalars["val/auroc"])
    recall_2 = (logits.argmax(1) == 2).float().mean().item()
    assert scalars["val/balanced_acc"] == pytest.approx(recall_2)
    assert scalars["val/recall_macro"] == pytest.approx(recall_2 / 3)


def test_ece_hand_case():
    # Two classes, confidences 0.7 (right), 0.7 (wrong), 0.9 (right), 0.55 (wrong):
    # bins (10/15, 11/15], (13/15, 14/15], (8/15, 9/15] hold {0.7, 0.7}, {0.9}, {0.55}, so
    # ECE = 2/4 * |0.5 - 0.7| + 1/4 * |1 - 0.9| + 1/4 * |0 - 0.55| = 0.1 + 0.025 + 0.1375.
    probs = torch.tensor([[0.7, 0.3], [0.7, 0.3], [0.1, 0.9], [0.55, 0.45]])
    target = torch.tensor([0, 1, 1, 1])
    m = ClassificationMetrics(2, ["a", "b"])
    m.update(probs.log(), target)
    assert m.details()["ece"] == pytest.approx(0.2625, abs=1e-6)


def test_ece_pools_saturated_confidence_with_its_bin():
    # Confidence exactly 1.0 belongs to the last bin (14/15, 1] together with 0.95; torchmetrics
    # would give it a bin of its own. Bin: acc 2/4, mean conf (1 + 1 + 0.95 + 0.95) / 4 = 0.975.
    logits = torch.tensor([[100.0, 0.0], [100.0, 0.0], [0.95, 0.05], [0.95, 0.05]])
    logits[2:] = logits[2:].log()
    target = torch.tensor([0, 1, 0, 1])
    m = ClassificationMetrics(2, ["a", "b"])
    m.update(logits, target)
    assert m.details()["ece"] == pytest.approx(abs(0.5 - 0.975), abs=1e-6)


def test_half_precision_logits():
    logits, target = make_case(8, 5, False, False)
    scalars, _ = run_metrics(logits.half(), target, 5)
    ref = sklearn_reference(logits.half().float(), target, 5)
    assert scalars["val/acc"] == pytest.approx(ref["scalars"]["val/acc"])
    assert scalars["val/auroc"] == pytest.approx(ref["scalars"]["val/auroc"], abs=1e-6)


def test_compute_before_update_raises():
    with pytest.raises(RuntimeError):
        ClassificationMetrics(3, ["a", "b", "c"]).compute()


def test_bad_shapes_raise():
    m = ClassificationMetrics(3, ["a", "b", "c"])
    with pytest.raises(ValueError):
        m.update(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        m.update(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))


def test_recall_warnings_crafted():
    # 10 'cat' all right, 10 'dog' with 5 right, 5 '7' with 1 right, 'empty' absent: accuracy 16/25.
    names = ["cat", "dog", "7", "empty"]
    target = torch.tensor([0] * 10 + [1] * 10 + [2] * 5)
    pred = torch.tensor([0] * 10 + [1] * 5 + [0] * 5 + [2] + [0] * 4)
    m = ClassificationMetrics(4, names)
    m.update(F.one_hot(pred, 4).float() * 5, target)
    scalars, details = m.compute(), m.details()
    assert recall_warnings(scalars, details) == ["accuracy 0.64, but class '7' recall 0.20"]
    assert recall_warnings(scalars, details, gap=0.1) == [
        "accuracy 0.64, but class '7' recall 0.20",
        "accuracy 0.64, but class 'dog' recall 0.50",
    ]
    assert recall_warnings(scalars, details, gap=0.5) == []


def test_names_and_directions():
    task = get_task("multiclass")
    assert list_metrics() == METRIC_NAMES
    assert list_metrics()[:3] == ["train/loss", "val/loss", "val/acc"]
    assert task.direction("train/loss") == task.direction("val/loss") == "min"
    for name in METRIC_NAMES[2:]:
        assert task.direction(name) == "max"
    assert task.check_monitor("val/f1_macro") == "val/f1_macro"


def test_check_monitor_did_you_mean():
    task = get_task("multiclass")
    with pytest.raises(UserError, match=facts("unknown monitor metric 'val/f1_marco' (did you mean 'val/f1_macro'?)")):
        task.check_monitor("val/f1_marco")
    with pytest.raises(UserError, match="val/f1_macro"):
        task.direction("f1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.filterwarnings("ignore:Synchronization debug mode is a prototype")
def test_cuda_matches_cpu_without_syncs_in_update():
    logits, target = make_case(9, 7, True, True, n=500)
    cpu_scalars, cpu_details = run_metrics(logits, target, 7, chunks=4)
    m = ClassificationMetrics(7, [f"c{i}" for i in range(7)])
    batches = list(zip(logits.cuda().tensor_split(4), target.cuda().tensor_split(4)))
    m.update(*batches[0], loss_sum=F.cross_entropy(*batches[0], reduction="sum"))  # moves state to the GPU
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device sync inside update() raises
    try:
        for lg, t in batches[1:]:
            m.update(lg, t, loss_sum=F.cross_entropy(lg, t, reduction="sum"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    gpu_scalars, gpu_details = m.compute(), m.details()
    assert gpu_scalars == pytest.approx(cpu_scalars, abs=1e-5)
    assert gpu_details["confusion_matrix"] == cpu_details["confusion_matrix"]
    assert gpu_details["ece"] == pytest.approx(cpu_details["ece"], abs=1e-5)
    assert gpu_details["top5_acc"] == pytest.approx(cpu_details["top5_acc"])
