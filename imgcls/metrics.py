"""Classification metrics: names, directions and one accumulator for a validation pass.

The metric names are fixed project-wide (config ``monitor``, CSV columns, TensorBoard tags, report):
``train/loss``, ``val/loss``, ``val/acc``, ``val/f1_macro``, ``val/precision_macro``,
``val/recall_macro``, ``val/balanced_acc``, ``val/auroc``.

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
"""
from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

from imgcls.errors import UserError, unknown_name

METRIC_NAMES: tuple[str, ...] = (
    "train/loss",
    "val/loss",
    "val/acc",
    "val/f1_macro",
    "val/precision_macro",
    "val/recall_macro",
    "val/balanced_acc",
    "val/auroc",
    "val/mrr",
    "val/ndcg_at_5",
    "val/top5_acc",
)

ECE_BINS = 15  # equal-width bins over confidence in (0, 1]
TOP_K = 5


def list_metrics() -> list[str]:
    """All metric names, in the project's fixed order."""
    return list(METRIC_NAMES)


def check_monitor(name: str) -> str:
    """Return ``name`` if it is a known metric, else raise a UserError with a did-you-mean."""
    if name not in METRIC_NAMES:
        raise unknown_name("monitor metric", name, list_metrics())
    return name


def metric_direction(name: str) -> str:
    """'min' for losses (lower is better), 'max' for every other metric."""
    check_monitor(name)
    return "min" if name.endswith("loss") else "max"


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


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 for sums over a whole epoch, except on Apple MPS, which has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


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
