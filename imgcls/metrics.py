"""Metrics of a validation pass, one accumulator per task: ``ClassificationMetrics`` (one class
per image), ``MultilabelMetrics`` (any number of labels per image), ``RegressionMetrics`` (a number).
Every ``compute()`` returns float scalars under ``val/...`` names (``val/loss``, the mean per image,
only when ``update`` was given losses); ``details()`` is a JSON-ready breakdown. Each ``update``
keeps its state on the input's device and never waits for it.

Multi-class
-----------

The metric names are fixed project-wide (config ``monitor``, CSV columns, TensorBoard tags, report):
``train/loss``, ``val/loss``, ``val/acc``, ``val/f1_macro``, ``val/precision_macro``,
``val/recall_macro``, ``val/balanced_acc``, ``val/auroc``, ``val/mrr``, ``val/ndcg_at_5``,
``val/top5_acc`` (declared with their directions in ``tasks``, as are the other tasks' names).

Conventions (K = ``num_classes``; tested against scikit-learn with the arguments named here):

* **Macro averages are over all K classes**, present or not, as in sklearn
  ``precision_recall_fscore_support(labels=range(K), zero_division=0, average='macro')``.
  Where a class has no true samples (recall undefined), no predictions (precision undefined)
  or neither (F1 undefined), the undefined value is **0** (``zero_division=0``).
* **val/balanced_acc** is the mean recall over the classes **present in the targets**, as sklearn
  ``balanced_accuracy_score``; so it differs from ``val/recall_macro`` only when a class is absent.
  (torchmetrics' macro accuracy instead counts a predicted-but-absent class as recall 0.)
* **val/auroc** is one-vs-rest AUROC on the softmax probabilities, averaged over the classes
  **present in the targets** (sklearn ``roc_auc_score`` per class on ``y == c``). It is NaN when
  fewer than two classes are present, since no class then has both positives and negatives.
  (torchmetrics' macro AUROC instead counts an absent class as 0.)
* **top5_acc** (also the scalar ``val/top5_acc``) is top-k accuracy with k = min(5, K) (so 1.0 when
  K <= 5), as sklearn ``top_k_accuracy_score``.
* **Rank** of the true class among the K logits: 1 + the number of classes with a strictly greater
  logit (rank 1 = best; ties count in the true class's favour). ``val/mrr`` is the mean of 1/rank
  (sklearn ``label_ranking_average_precision_score`` on one-hot targets, which has one relevant label,
  equals it when there are no ties). ``val/ndcg_at_5`` is the mean of 1/log2(1 + rank) if rank <= 5,
  else 0: NDCG@5 with one relevant item, as the mean of sklearn ``ndcg_score(one_hot, logits, k=5)``
  per image (sklearn averages the gain over tied scores instead; equal without ties).
* **ece** is the expected calibration error of Guo et al. (2017): confidences (max softmax
  probability) fall into 15 equal-width bins (i/15, (i+1)/15]; ECE = sum over bins of
  (bin size / N) * |bin accuracy - bin mean confidence|. (torchmetrics bins [lo, hi) and puts
  confidence exactly 1.0 in a 16th bin of its own, which hides over-confidence of saturated outputs.)
* Predictions are ``argmax`` of the logits (the first class on ties, like torch and numpy).
* ``compute()`` order: acc, f1_macro, precision_macro, recall_macro, balanced_acc, auroc, [loss],
  mrr, ndcg_at_5, top5_acc.

Multi-label (L labels; probabilities are the sigmoid of the logits, targets 0/1, positive >= 0.5)
-----------
* ``compute()`` order: [loss], f1_micro, f1_macro, f1_samples, f1_macro_at_0.5, precision_micro,
  recall_micro, map, lrap, coverage, ndcg, mrr.
* **Decisions**: label j is predicted when its probability is >= its threshold (``set_thresholds``;
  0.5 for every label until set). f1_micro/f1_macro/f1_samples and precision/recall_micro use those
  thresholds, ``val/f1_macro_at_0.5`` always 0.5. All as sklearn ``f1_score`` etc. with
  ``average='micro' | 'macro' | 'samples'`` and ``zero_division=0``: macro is over all L labels, and an
  image with no true and no predicted label has F1 0 in the samples average.
* **val/map**: the mean of sklearn ``average_precision_score`` per label over the labels with at
  least one positive in the targets (the others are left out; NaN if no label has one).
* **val/lrap**: sklearn ``label_ranking_average_precision_score``; an image with no true label (or
  with every label true) scores 1, as sklearn does.
* **val/coverage** (lower is better): as sklearn ``coverage_error``, the number of labels scored >=
  the lowest-scored true label (ties counted against us); an image with no true label counts 0 and
  stays in the mean, as sklearn does. Computed here because sklearn refuses L = 1.
* **val/ndcg**: the mean of sklearn ``ndcg_score(targets, probs)`` over all L (tied scores share
  their gain); an image with no true label scores 0 and stays in the mean, as sklearn does. With
  L = 1 (which sklearn refuses) that is the fraction of images with the label.
* **val/mrr**: mean over the images with at least one true label of 1/rank of the best-ranked true
  label, rank = 1 + the number of labels scored strictly higher; images without one are left out
  (NaN if none has one).
* AP, LRAP and NDCG call scikit-learn itself: exact, with its tie handling.
* ``tune_thresholds``: per label, the distinct probability that maximises the label's F1 when used
  as threshold; ties go to the largest threshold; a label without positives gets 0.5.

Regression (predictions and targets in the target's own unit)
----------
* ``compute()`` order: [loss], mae, mse, rmse, r2, and with bins binned/acc, binned/f1_macro.
* **val/r2** is sklearn ``r2_score`` (default ``force_finite=True``): NaN with fewer than 2 images;
  a constant target (all values equal) gives 1.0 for a perfect prediction, else 0.0.
* **Bins**: increasing boundaries b_0 < ... < b_{m-1} give m + 1 classes; a value v is in bin
  i = the number of boundaries <= v (``bin_values``). val/binned/acc and val/binned/f1_macro
  (macro over all m + 1 bins, ``zero_division=0``) compare the bin of the prediction with the bin of
  the target. Names (``bin_names``, also the classes of ``data.bins``): whole-number boundaries
  [30, 60] -> ``<30``, ``30-59``, ``>=60``; others, ranges [lower, upper): [2.5, 4] -> ``<2.5``,
  ``2.5-<4``, ``>=4``.
"""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import torch
from torch import Tensor

from imgcls.device import accumulator_dtype
from imgcls.errors import UserError

ECE_BINS = 15  # equal-width bins over confidence in (0, 1]
TOP_K = 5  # the k of val/top5_acc and val/ndcg_at_5, and the top_k column of prediction CSVs (tasks import it)


class ClassificationMetrics:
    """Accumulates logits and targets over a whole validation pass, then summarises them.

    State stays on the logits' device and ``update`` never waits for it: the confusion matrix,
    top-k counts and ECE bins are small tensors, while AUROC keeps every probability row
    (N x K float32, exact thresholds), as torchmetrics does.
    """

    def __init__(self, num_classes: int, class_names: list[str]) -> None:
        if num_classes < 2:
            raise UserError(f"classification needs at least 2 classes, got {num_classes}; add images of another class.")
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = [str(c) for c in class_names]
        # Imported here, not at the top: tasks import this module for TOP_K while a config is checked,
        # and torchmetrics takes seconds to import.
        from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

        # validate_args=False: torchmetrics' argument checks read tensor values, a host sync per batch.
        self._topk = MulticlassAccuracy(
            num_classes, top_k=min(TOP_K, num_classes), average="micro", validate_args=False
        )
        self._auroc = MulticlassAUROC(num_classes, average=None, thresholds=None, validate_args=False)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far (call before each validation pass)."""
        for metric in (self._topk, self._auroc):
            metric.reset()
        # rows = true, cols = predicted. Kept by hand, not torchmetrics' MulticlassConfusionMatrix:
        # its torch.bincount waits for the GPU on every batch (it reads the max to size the output).
        self._confmat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self._ece_count = torch.zeros(ECE_BINS, dtype=torch.float64)
        self._ece_conf = torch.zeros(ECE_BINS, dtype=torch.float64)
        self._ece_correct = torch.zeros(ECE_BINS, dtype=torch.float64)
        self._rr_sum = torch.zeros((), dtype=torch.float64)    # sum of 1/rank over images
        self._ndcg_sum = torch.zeros((), dtype=torch.float64)  # sum of 1/log2(1 + rank), rank <= 5
        self._loss_sum: Tensor | float = 0.0
        self._loss_samples = 0
        self._num_samples = 0
        self._cache: tuple[dict, dict] | None = None

    def _to(self, device: torch.device) -> None:
        for metric in (self._topk, self._auroc):
            metric.to(device)
        self._confmat = self._confmat.to(device)
        acc = accumulator_dtype(device)
        self._ece_count = self._ece_count.to(device, acc)
        self._ece_conf = self._ece_conf.to(device, acc)
        self._ece_correct = self._ece_correct.to(device, acc)
        self._rr_sum = self._rr_sum.to(device, acc)
        self._ndcg_sum = self._ndcg_sum.to(device, acc)

    def update(self, logits: Tensor, target: Tensor, loss_sum: float | Tensor | None = None) -> None:
        """Add a batch: ``logits`` [N, K], integer ``target`` [N] in [0, K), and optionally the
        batch's summed (not mean) loss, as a float or a 0-d tensor (kept lazy, no sync)."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be [N, {self.num_classes}], got {tuple(logits.shape)}")
        if target.shape != logits.shape[:1] or target.is_floating_point():
            raise ValueError(f"target must be integer [N={logits.shape[0]}], got {target.dtype} {tuple(target.shape)}")
        n = logits.shape[0]
        if n == 0:
            return
        if self._ece_count.device != logits.device:
            self._to(logits.device)
        self._cache = None
        target = target.to(device=logits.device, dtype=torch.long)
        # float32 even under autocast: fp16 softmax saturates confidences and creates AUROC ties.
        logits = logits.detach().float()
        probs = logits.softmax(dim=1)
        # Argmax and top-k on logits, not probabilities: probabilities that underflow to 0 tie.
        predicted = logits.argmax(dim=1)
        self._confmat.index_put_((target, predicted), torch.ones_like(target), accumulate=True)
        self._topk.update(logits, target)
        # Probabilities, not logits: torchmetrics would take a batch of logits that all lie in [0, 1]
        # for probabilities and skip the softmax.
        self._auroc.update(probs, target)

        confidence = probs.max(dim=1).values
        correct = (predicted == target).to(self._ece_correct.dtype)
        bins = ece_bin_index(confidence)
        self._ece_count.index_put_((bins,), torch.ones_like(correct), accumulate=True)
        self._ece_conf.index_put_((bins,), confidence.to(self._ece_conf.dtype), accumulate=True)
        self._ece_correct.index_put_((bins,), correct, accumulate=True)

        rank = _true_class_rank(logits, target).to(self._rr_sum.dtype)
        self._rr_sum += rank.reciprocal().sum()
        self._ndcg_sum += torch.where(rank <= TOP_K, 1.0 / torch.log2(1.0 + rank), 0.0).sum()

        self._num_samples += n
        if loss_sum is not None:
            self._loss_sum = self._loss_sum + (loss_sum.detach() if isinstance(loss_sum, Tensor) else loss_sum)
            self._loss_samples += n

    def _summary(self) -> tuple[dict, dict]:
        if self._cache is not None:
            return self._cache
        if self._num_samples == 0:
            raise RuntimeError("ClassificationMetrics.compute() called before any update()")
        cm = self._confmat.cpu().to(torch.float64)
        tp = cm.diagonal()
        precision, recall, f1, support = _per_class_prf(cm)
        present = support > 0

        scalars = {
            "val/acc": (tp.sum() / cm.sum()).item(),
            "val/f1_macro": f1.mean().item(),
            "val/precision_macro": precision.mean().item(),
            "val/recall_macro": recall.mean().item(),
            "val/balanced_acc": recall[present].mean().item(),
            "val/auroc": self._macro_auroc(present),
        }
        if self._loss_samples:
            scalars["val/loss"] = float(self._loss_sum) / self._loss_samples
        top5 = self._topk.compute().item()
        scalars["val/mrr"] = self._rr_sum.item() / self._num_samples
        scalars["val/ndcg_at_5"] = self._ndcg_sum.item() / self._num_samples
        scalars["val/top5_acc"] = top5

        count = self._ece_count.cpu().double()
        gaps = (self._ece_correct.cpu() - self._ece_conf.cpu()).abs()  # per bin: |sum correct - sum conf|
        details = {
            "classes": list(self.class_names),
            "per_class": [
                {
                    "class": name,
                    "precision": precision[i].item(),
                    "recall": recall[i].item(),
                    "f1": f1[i].item(),
                    "support": int(support[i].item()),
                }
                for i, name in enumerate(self.class_names)
            ],
            "confusion_matrix": cm.to(torch.int64).tolist(),
            "top5_acc": top5,
            # sum_b (n_b / N) |acc_b - conf_b| = sum_b |correct_b - conf_sum_b| / N
            "ece": (gaps.sum() / count.sum()).item(),
            "num_samples": self._num_samples,
        }
        self._cache = (scalars, details)
        return self._cache

    def _macro_auroc(self, present: Tensor) -> float:
        if int(present.sum()) < 2:
            return math.nan
        with warnings.catch_warnings():
            # Absent classes are dropped below; their "no positive samples" warning is expected.
            warnings.filterwarnings("ignore", message="No positive samples in targets")
            per_class = self._auroc.compute().cpu().double()
        return per_class[present].mean().item()

    def compute(self) -> dict[str, float]:
        """Scalars under the ``val/...`` names; ``val/loss`` (mean per sample) only if losses were given."""
        return dict(self._summary()[0])

    def details(self) -> dict:
        """JSON-ready breakdown: classes, per_class table, confusion_matrix (rows = true),
        top5_acc, ece, num_samples."""
        return copy.deepcopy(self._summary()[1])


def _per_class_prf(cm: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Precision, recall, F1 and support per class from a float confusion matrix (rows = true).
    An undefined ratio (0/0) is 0, as sklearn with ``zero_division=0``."""
    tp = cm.diagonal()
    support = cm.sum(dim=1)
    predicted = cm.sum(dim=0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, tp / support.clamp(min=1), 0.0)
    f1_den = predicted + support  # 2TP + FP + FN
    f1 = torch.where(f1_den > 0, 2 * tp / f1_den.clamp(min=1), 0.0)
    return precision, recall, f1, support


def _true_class_rank(scores: Tensor, target: Tensor) -> Tensor:
    """Rank of each row's true class: 1 + the number of classes scored strictly higher (long, [N])."""
    true_score = scores.gather(1, target[:, None])
    return 1 + (scores > true_score).sum(dim=1)


def ece_bin_index(confidence: Tensor, n_bins: int = ECE_BINS) -> Tensor:
    """The ECE bin of each confidence: bins (i/n, (i+1)/n]; a confidence of exactly 0 joins bin 0.
    The one binning of validation's ECE and the report's reliability diagram."""
    # bucketize(right=False) gives i with edge[i] < c <= edge[i+1], i.e. bins (lo, hi].
    edges = torch.linspace(0, 1, n_bins + 1, device=confidence.device, dtype=confidence.dtype)[1:]
    return torch.bucketize(confidence, edges).clamp_(max=n_bins - 1)


RECALL_GAP = 0.2  # a class whose recall is this far (absolute) below accuracy is called out, in the log and the report


def recall_warnings(scalars: dict, details: dict, gap: float = RECALL_GAP) -> list[str]:
    """Sentences for classes whose recall is more than ``gap`` below overall accuracy, worst first.

    Classes absent from the targets are skipped: their recall of 0 is a convention, not a failure.
    """
    acc = scalars["val/acc"]
    weak = [
        row for row in details["per_class"] if row["support"] > 0 and row["recall"] < acc - gap
    ]
    weak.sort(key=lambda row: row["recall"])
    return [f"accuracy {acc:.2f}, but class '{row['class']}' recall {row['recall']:.2f}" for row in weak]


# ---------------------------------------------------------------------------------------------
# Multi-label: L independent yes/no decisions per image


class MultilabelMetrics:
    """Keeps every sigmoid probability and 0/1 target of a validation pass (two N x L float32
    tensors on the logits' device, no host sync in ``update``; validation sets are small), then
    summarises them on the CPU in float64. Conventions: see the module docstring."""

    def __init__(self, label_names: list[str], inputs: str = "logits") -> None:
        """``inputs``: what ``update`` is given, 'logits' (pre-sigmoid) or 'probabilities' (averaged
        over TTA views or ensemble members, compared with the thresholds as they are)."""
        if len(label_names) < 1:
            raise UserError("multi-label metrics need at least one label; give the images some labels.")
        if inputs not in ("logits", "probabilities"):
            raise ValueError(f"inputs must be 'logits' or 'probabilities', got {inputs!r}")
        self.inputs = inputs
        self.label_names = [str(n) for n in label_names]
        self.set_thresholds(None)
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far (the thresholds are kept)."""
        self._probs: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._loss_sum: Tensor | float = 0.0
        self._loss_samples = 0
        self._num_samples = 0

    def set_thresholds(self, thresholds: Tensor | list[float] | None) -> None:
        """Per-label decision thresholds [L] (positive when prob >= threshold); None: 0.5 for all."""
        n = len(self.label_names)
        if thresholds is None:
            thresholds = [0.5] * n
        t = torch.as_tensor(thresholds).detach().cpu().to(torch.float64).reshape(-1)
        if t.numel() != n:
            raise ValueError(f"{t.numel()} thresholds for {n} labels")
        self.thresholds = t

    def update(self, logits: Tensor, target: Tensor, loss_sum: float | Tensor | None = None) -> None:
        """Add a batch: pre-sigmoid ``logits`` [N, L], 0/1 ``target`` [N, L], optionally the batch's
        summed (not mean) loss, as a float or a 0-d tensor (kept lazy, no sync)."""
        n_labels = len(self.label_names)
        if logits.ndim != 2 or logits.shape[1] != n_labels:
            raise ValueError(f"logits must be [N, {n_labels}], got {tuple(logits.shape)}")
        if target.shape != logits.shape:
            raise ValueError(f"target must be [N, {n_labels}] like the logits, got {tuple(target.shape)}")
        if logits.shape[0] == 0:
            return
        # float32 even under autocast: fp16 sigmoid saturates and creates ties in every ranking.
        p = logits.detach().float()
        self._probs.append(p if self.inputs == "probabilities" else p.sigmoid())
        self._targets.append(target.detach().to(device=logits.device, dtype=torch.float32))
        self._num_samples += logits.shape[0]
        if loss_sum is not None:
            self._loss_sum = self._loss_sum + (loss_sum.detach() if isinstance(loss_sum, Tensor) else loss_sum)
            self._loss_samples += logits.shape[0]

    def probs_and_targets(self) -> tuple[Tensor, Tensor]:
        """Everything since ``reset()``, on the CPU: probabilities [N, L] and targets [N, L], float32."""
        if self._num_samples == 0:
            raise RuntimeError("MultilabelMetrics used before any update()")
        return torch.cat(self._probs).cpu(), torch.cat(self._targets).cpu()

    def _arrays(self):
        probs, targets = self.probs_and_targets()
        p = probs.double().numpy()
        return p, targets.numpy() >= 0.5, p >= self.thresholds.numpy()

    def compute(self) -> dict[str, float]:
        """Scalars under the ``val/...`` names, in the order of the module docstring; ``val/loss``
        (mean per image) only if losses were given."""
        p, y, decided = self._arrays()
        at = _decision_scores(y, decided)
        scalars = {"val/loss": float(self._loss_sum) / self._loss_samples} if self._loss_samples else {}
        scalars.update({
            "val/f1_micro": at["f1_micro"],
            "val/f1_macro": float(at["f1"].mean()),
            "val/f1_samples": at["f1_samples"],
            "val/f1_macro_at_0.5": float(_decision_scores(y, p >= 0.5)["f1"].mean()),
            "val/precision_micro": at["precision_micro"],
            "val/recall_micro": at["recall_micro"],
        })
        scalars.update(_ranking_scores(p, y))
        return scalars

    def details(self) -> dict:
        """JSON-ready: labels, per_label rows {label, precision, recall, f1, support, ap (None for
        a label without positives), threshold} at the current thresholds, and num_samples."""
        p, y, decided = self._arrays()
        at = _decision_scores(y, decided)
        ap = _average_precisions(p, y)
        rows = [
            {
                "label": name,
                "precision": float(at["precision"][j]),
                "recall": float(at["recall"][j]),
                "f1": float(at["f1"][j]),
                "support": int(y[:, j].sum()),
                "ap": None if math.isnan(ap[j]) else float(ap[j]),
                "threshold": float(self.thresholds[j]),
            }
            for j, name in enumerate(self.label_names)
        ]
        return {"labels": list(self.label_names), "per_label": rows, "num_samples": self._num_samples}


def _ratio(num, den):
    """num / den where den > 0, else 0 (sklearn's ``zero_division=0``)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def _decision_scores(y: np.ndarray, decided: np.ndarray) -> dict:
    """Per-label precision/recall/F1 arrays and the micro and per-image (samples) averages of
    boolean decisions [N, L] against boolean truth [N, L]."""
    tp = (y & decided).sum(axis=0)
    n_true, n_decided = y.sum(axis=0), decided.sum(axis=0)
    tp_image = (y & decided).sum(axis=1)
    return {
        "precision": _ratio(tp, n_decided),
        "recall": _ratio(tp, n_true),
        "f1": _ratio(2 * tp, n_true + n_decided),  # 2TP / (2TP + FP + FN)
        "precision_micro": float(_ratio(tp.sum(), n_decided.sum())),
        "recall_micro": float(_ratio(tp.sum(), n_true.sum())),
        "f1_micro": float(_ratio(2 * tp.sum(), n_true.sum() + n_decided.sum())),
        "f1_samples": float(_ratio(2 * tp_image, y.sum(axis=1) + decided.sum(axis=1)).mean()),
    }


def _average_precisions(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sklearn ``average_precision_score`` per label; NaN for a label without positives."""
    from sklearn.metrics import average_precision_score

    return np.array([average_precision_score(y[:, j], p[:, j]) if y[:, j].any() else math.nan
                     for j in range(y.shape[1])])


def _ranking_scores(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The threshold-free scalars: map, lrap, coverage, ndcg, mrr (conventions: module docstring)."""
    from sklearn.metrics import label_ranking_average_precision_score, ndcg_score

    ap = _average_precisions(p, y)
    has_label = y.any(axis=1)
    # Coverage by hand: sklearn's coverage_error refuses a single label (L = 1).
    lowest_true = np.where(y, p, np.inf).min(axis=1, keepdims=True)
    coverage = (p >= lowest_true).sum(axis=1)  # 0 for an image with no true label (lowest is inf)
    best_true = np.where(y, p, -np.inf).max(axis=1, keepdims=True)
    first_rank = 1 + (p > best_true).sum(axis=1)
    # sklearn's ndcg_score refuses L = 1; there an image scores 1 with its label, 0 without.
    ndcg = ndcg_score(y, p) if y.shape[1] > 1 else has_label.mean()
    return {
        "val/map": float(np.nanmean(ap)) if not np.isnan(ap).all() else math.nan,
        "val/lrap": float(label_ranking_average_precision_score(y, p)),
        "val/coverage": float(coverage.mean()),
        "val/ndcg": float(ndcg),
        "val/mrr": float((1.0 / first_rank[has_label]).mean()) if has_label.any() else math.nan,
    }


def tune_thresholds(probs: Tensor, targets: Tensor) -> Tensor:
    """Per label, the threshold among the distinct probabilities that maximises that label's F1
    (positive when prob >= threshold); ties go to the largest such threshold, and a label without
    positives gets 0.5. Returns float64 [L] (the chosen probabilities exactly)."""
    p = probs.detach().cpu().double().numpy()
    y = targets.detach().cpu().numpy() >= 0.5
    if p.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"probs and targets must both be [N, L], got {p.shape} and {y.shape}")
    best = [_best_f1_threshold(p[:, j], y[:, j]) if y[:, j].any() else 0.5 for j in range(p.shape[1])]
    return torch.tensor(best, dtype=torch.float64)


def _best_f1_threshold(p: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    last = np.append(p[1:] != p[:-1], True)  # the last image of each run of equal probabilities
    tp = np.cumsum(y)[last]
    n_decided = np.arange(1, len(p) + 1)[last]
    f1 = 2 * tp / (n_decided + y.sum())  # exact ties: equal ratios of integers give equal floats
    return float(p[last][np.argmax(f1)])  # argmax takes the first maximum: the largest threshold


# ---------------------------------------------------------------------------------------------
# Regression: one number per image, optionally binned into classes


class RegressionMetrics:
    """Keeps every prediction and target of a validation pass (two N-vectors on the input's
    device, no host sync in ``update``), then summarises them on the CPU in float64.
    With ``bins`` (increasing boundaries) also the accuracy and macro F1 of the binned values."""

    def __init__(self, bins: list[float] | None = None, bin_names: list[str] | None = None) -> None:
        self.bins = None if bins is None else _check_bins(bins)
        self.bin_names: list[str] | None = None
        if self.bins is None and bin_names is not None:
            raise ValueError("bin_names given without bins")
        if self.bins is not None:
            self.bin_names = _default_bin_names(self.bins) if bin_names is None else [str(n) for n in bin_names]
            if len(self.bin_names) != len(self.bins) + 1:
                raise ValueError(f"{len(self.bin_names)} bin names for {len(self.bins) + 1} bins")
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far (call before each validation pass)."""
        self._preds: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._loss_sum: Tensor | float = 0.0
        self._loss_samples = 0
        self._num_samples = 0

    def update(self, pred: Tensor, target: Tensor, loss_sum: float | Tensor | None = None) -> None:
        """Add a batch: ``pred`` [N] and ``target`` [N] in the target's own unit, optionally the
        batch's summed (not mean) loss, as a float or a 0-d tensor (kept lazy, no sync)."""
        if pred.ndim != 1 or target.shape != pred.shape:
            raise ValueError(f"pred and target must both be [N], got {tuple(pred.shape)} and {tuple(target.shape)}")
        if pred.shape[0] == 0:
            return
        # At least float32: a half-precision copy would add its own rounding error to the MAE.
        dtype = torch.promote_types(pred.dtype, torch.float32)
        self._preds.append(pred.detach().to(dtype))
        self._targets.append(target.detach().to(device=pred.device, dtype=torch.promote_types(target.dtype, dtype)))
        self._num_samples += pred.shape[0]
        if loss_sum is not None:
            self._loss_sum = self._loss_sum + (loss_sum.detach() if isinstance(loss_sum, Tensor) else loss_sum)
            self._loss_samples += pred.shape[0]

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._num_samples == 0:
            raise RuntimeError("RegressionMetrics used before any update()")
        return (torch.cat(self._preds).cpu().double().numpy(), torch.cat(self._targets).cpu().double().numpy())

    def _binned_confmat(self, pred: np.ndarray, target: np.ndarray) -> Tensor:
        k = len(self.bins) + 1
        true_bin = bin_values(torch.from_numpy(target), self.bins)
        pred_bin = bin_values(torch.from_numpy(pred), self.bins)
        return torch.bincount(true_bin * k + pred_bin, minlength=k * k).reshape(k, k)  # rows = true

    def compute(self) -> dict[str, float]:
        """``val/loss`` (if losses were given), mae, mse, rmse, r2, and with bins binned/acc and
        binned/f1_macro."""
        pred, target = self._arrays()
        err = pred - target
        mse = float(np.mean(err**2))
        scalars = {"val/loss": float(self._loss_sum) / self._loss_samples} if self._loss_samples else {}
        scalars.update({"val/mae": float(np.mean(np.abs(err))), "val/mse": mse, "val/rmse": math.sqrt(mse),
                        "val/r2": _r2(pred, target)})
        if self.bins is not None:
            cm = self._binned_confmat(pred, target).double()
            scalars["val/binned/acc"] = (cm.diagonal().sum() / cm.sum()).item()
            scalars["val/binned/f1_macro"] = _per_class_prf(cm)[2].mean().item()
        return scalars

    def details(self) -> dict:
        """JSON-ready: num_samples; with bins also bins, bin_names, binned_confusion_matrix (rows = true)."""
        pred, target = self._arrays()
        out: dict = {"num_samples": self._num_samples}
        if self.bins is not None:
            out.update(bins=list(self.bins), bin_names=list(self.bin_names),
                       binned_confusion_matrix=self._binned_confmat(pred, target).tolist())
        return out


def _r2(pred: np.ndarray, target: np.ndarray) -> float:
    """sklearn ``r2_score`` (force_finite=True): NaN below 2 samples; a constant target gives 1.0
    for a perfect prediction, else 0.0."""
    if len(target) < 2:
        return math.nan
    ss_res = float(np.sum((target - pred) ** 2))
    # Constant means all equal, not "sum of squares about the mean is 0": rounding in the mean
    # (e.g. three 0.1s) would leave a tiny denominator and sklearn then returns about -1e31.
    if np.all(target == target[0]):
        return 1.0 if ss_res == 0 else 0.0
    return 1.0 - ss_res / float(np.sum((target - target.mean()) ** 2))


def _check_bins(bins) -> list[float]:
    edges = [float(b) for b in bins]
    if not edges or not all(math.isfinite(b) for b in edges) or any(a >= b for a, b in zip(edges, edges[1:])):
        raise UserError(f"bins must be one or more increasing finite boundaries, got {list(bins)}; "
                        "list them in increasing order, e.g. [30, 60].")
    return edges


def bin_values(values: Tensor, bins: list[float]) -> Tensor:
    """Bin index (long) of each value: the number of boundaries <= v. Bins [30, 60] give
    0 for v < 30, 1 for 30 <= v < 60 and 2 for v >= 60."""
    values = torch.as_tensor(values)
    dtype = accumulator_dtype(values.device)
    edges = torch.tensor(_check_bins(bins), dtype=dtype, device=values.device)
    # right=True: index i with edges[i-1] <= v < edges[i], i.e. the count of edges <= v.
    return torch.bucketize(values.to(dtype), edges, right=True)


def bin_names(bins: list[float]) -> list[str]:
    """Names of the len(bins) + 1 bins: the one spelling of ``data.bins`` classes and of a regression's
    ``task.bins``. Whole-number boundaries name inclusive whole-number ranges: [30, 60] -> '<30',
    '30-59', '>=60' (a one-value bin is just the value: [10, 11] -> '<10', '10', '>=11'); otherwise a
    middle bin is [lower, upper), written so: [1.5, 3] -> '<1.5', '1.5-<3', '>=3'."""
    edges = _check_bins(bins)

    def num(b: float) -> str:  # 30.0 -> '30': boundaries read from YAML print as written
        return str(int(b)) if b.is_integer() else repr(b)

    if all(b.is_integer() for b in edges):
        middle = [num(lo) if hi - 1 == lo else f"{num(lo)}-{num(hi - 1)}" for lo, hi in zip(edges, edges[1:])]
    else:
        # '-<': '1.5-3' would read as including 3, which is in the next bin.
        middle = [f"{num(lo)}-<{num(hi)}" for lo, hi in zip(edges, edges[1:])]
    return [f"<{num(edges[0])}", *middle, f">={num(edges[-1])}"]


_default_bin_names = bin_names  # RegressionMetrics' argument of the same name hides the function
