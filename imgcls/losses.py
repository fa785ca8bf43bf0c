"""Losses by name: cross-entropy, focal, label smoothing, soft macro-F1; `create_loss`, `list_losses`.

Every loss is an `nn.Module` called as `loss(logits, target)` with logits [N, K] and a target that is
either int64 class indices [N] or float class probabilities [N, K] (soft targets from MixUp/CutMix).
It returns a scalar.

Reduction (cross_entropy, focal, label_smoothing): the batch loss is sum_i l_i / sum_i v_i, where
v_i = sum_k w_k q_ik is the class weight of sample i's (unsmoothed) target q_i. Without class weights
v_i = 1, so this is the plain mean over the batch. On index targets it is exactly torch's weighted mean
sum(w_y * l) / sum(w_y). On soft targets it deliberately differs from torch's weighted
probability-target mean (which divides by N): this way a one-hot soft target gives the same loss as its
class index, and switching MixUp on does not rescale a class-weighted loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgcls.errors import UserError, unknown_name
from imgcls.registry import Param, reject_unknown, with_defaults

__all__ = [
    "create_loss",
    "list_losses",
    "loss_info",
    "LossInfo",
    "LOSS_PARAMS",
    "class_weights_from_counts",
    "soft_f1_per_class",
    "CrossEntropyLoss",
    "FocalLoss",
    "SoftF1Loss",
    "BCELoss",
    "BinaryFocalLoss",
    "RegressionLoss",
    "F1_EPS",
]

# Added to each F1 denominator (units: samples, i.e. probability mass summed over the batch). It keeps
# 0/0 finite and changes a present class's F1 by a relative amount below eps / (P_k + Y_k) <= 1e-7.
F1_EPS = 1e-7


# ---------------------------------------------------------------- shared helpers


def _compute_dtype(logits: Tensor) -> Tensor:
    # Softmax/log in fp16/bf16 loses the small probabilities the losses depend on; fp64 stays fp64.
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _is_index_target(logits: Tensor, target: Tensor) -> bool:
    """True for class indices [N], False for probabilities [N, K]; any other shape is a bug upstream."""
    n, k = logits.shape
    if target.is_floating_point():
        if target.shape != (n, k):
            raise ValueError(f"probability target must have shape {(n, k)}, got {tuple(target.shape)}")
        return False
    if target.shape != (n,):
        raise ValueError(f"index target must have shape {(n,)}, got {tuple(target.shape)}")
    return True


def _check_logits(logits: Tensor, num_classes: int) -> None:
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"logits must have shape [N, {num_classes}], got {tuple(logits.shape)}")


class _ClassLoss(nn.Module):
    """Holds K and the optional class weights (a buffer, so `.to(device)` moves them)."""

    class_weights: Tensor | None

    def __init__(self, num_classes: int, class_weights: Tensor | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("class_weights", class_weights)

    def _weights(self, like: Tensor) -> Tensor | None:
        return None if self.class_weights is None else self.class_weights.to(like.dtype)

    def _reduce(self, per_sample: Tensor, target: Tensor, index: bool, w: Tensor | None) -> Tensor:
        """sum_i l_i / sum_i v_i with v_i the class weight of sample i's target (see module docstring)."""
        if w is None:
            return per_sample.mean()
        v = w[target] if index else target.to(w.dtype) @ w
        # Only a batch made entirely of weight-0 classes has v.sum() == 0; its loss sum is 0 too (except
        # for label smoothing), and 0 beats torch's NaN for e.g. a validation batch of an unseen class.
        return per_sample.sum() / v.sum().clamp_min(torch.finfo(v.dtype).tiny)

    def extra_repr(self) -> str:
        weighted = self.class_weights is not None
        return f"num_classes={self.num_classes}, class_weights={'yes' if weighted else 'no'}"


# ---------------------------------------------------------------- the losses


class CrossEntropyLoss(_ClassLoss):
    """Cross-entropy via `F.cross_entropy`, optionally class-weighted and label-smoothed.

    Label smoothing follows torch's convention: eps is spread over ALL K classes, so the target becomes
    (1 - eps) * q + eps / K (the true class keeps 1 - eps + eps/K), and with class weights the result
    equals `F.cross_entropy(..., weight=w, label_smoothing=eps)` on index targets.
    """

    def __init__(self, num_classes: int, class_weights: Tensor | None = None, smoothing: float = 0.0) -> None:
        super().__init__(num_classes, class_weights)
        self.smoothing = smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_logits(logits, self.num_classes)
        index = _is_index_target(logits, target)
        x = _compute_dtype(logits)
        target = target.long() if index else target.to(x.dtype)
        w = self._weights(x)
        per_sample = F.cross_entropy(x, target, weight=w, reduction="none", label_smoothing=self.smoothing)
        return self._reduce(per_sample, target, index, w)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, smoothing={self.smoothing}"


class FocalLoss(_ClassLoss):
    """Softmax focal loss (Lin et al. 2017): FL = -alpha * w_y * (1 - p_y)^gamma * log p_y.

    Soft targets q: sum_k q_k * alpha * w_k * (1 - p_k)^gamma * (-log p_k). With gamma=0 and alpha=None
    this is cross-entropy exactly, class weights and weighted mean included. In the multi-class softmax
    form there is no "negative" class, so a scalar alpha scales the loss uniformly; per-class balancing
    is what `class_weights` are for.
    """

    def __init__(
        self,
        num_classes: int,
        class_weights: Tensor | None = None,
        gamma: float = 2.0,
        alpha: float | None = None,
    ) -> None:
        super().__init__(num_classes, class_weights)
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_logits(logits, self.num_classes)
        index = _is_index_target(logits, target)
        x = _compute_dtype(logits)
        log_p = F.log_softmax(x, dim=1)
        per_class = -log_p  # [N, K]
        if self.gamma != 0:
            # 1 - p = -expm1(log p) is accurate near p = 1; the clamp keeps the gradient of x^gamma finite
            # for gamma < 1 when p rounds to exactly 1 (the loss term is 0 there anyway).
            one_minus_p = (-torch.expm1(log_p)).clamp_min(torch.finfo(x.dtype).tiny)
            per_class = one_minus_p.pow(self.gamma) * per_class
        w = self._weights(x)
        if w is not None:
            per_class = per_class * w
        if index:
            target = target.long()
            per_sample = per_class.gather(1, target[:, None]).squeeze(1)
        else:
            per_sample = (target.to(x.dtype) * per_class).sum(1)
        if self.alpha is not None:
            per_sample = self.alpha * per_sample
        return self._reduce(per_sample, target, index, w)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}, alpha={self.alpha}"


def soft_f1_per_class(probs: Tensor, target_probs: Tensor, eps: float = F1_EPS) -> Tensor:
    """Soft F1 per class [K] from predicted and true class probabilities [N, K], summed over the batch.

    F1_k = 2 tp_k / (2 tp_k + fp_k + fn_k + eps). A class absent from the targets and given no predicted
    mass gets F1 = 0, as scikit-learn's f1_score(labels=range(K), zero_division=0); on one-hot inputs
    this matches that function to within eps.
    """
    tp = (probs * target_probs).sum(0)
    fp = (probs * (1 - target_probs)).sum(0)
    fn = ((1 - probs) * target_probs).sum(0)
    return 2 * tp / (2 * tp + fp + fn + eps)


class SoftF1Loss(_ClassLoss):
    """Soft macro-F1 loss: 1 - mean_k F1_k, with F1_k from softmax probabilities (`soft_f1_per_class`).

    A batch-level loss: it is not a mean of per-sample terms, so it depends on the batch composition.
    Classes absent from the batch (and, with softmax, always given some mass) score F1_k = 0 and carry no
    gradient, so the loss cannot reach 0 on a batch that misses a class; with class weights the mean
    over classes becomes sum_k w_k F1_k / sum_k w_k.
    """

    def __init__(self, num_classes: int, class_weights: Tensor | None = None, eps: float = F1_EPS) -> None:
        super().__init__(num_classes, class_weights)
        self.eps = eps

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_logits(logits, self.num_classes)
        x = _compute_dtype(logits)
        if _is_index_target(logits, target):
            target_probs = F.one_hot(target.long(), self.num_classes).to(x.dtype)
        else:
            target_probs = target.to(x.dtype)
        f1 = soft_f1_per_class(torch.softmax(x, dim=1), target_probs, self.eps)
        w = self._weights(x)
        mean_f1 = f1.mean() if w is None else (w * f1).sum() / w.sum()
        return 1 - mean_f1


# ---------------------------------------------------------------- registry and factory


def _validated_weights(class_weights: Tensor | Sequence[float] | None, num_classes: int) -> Tensor | None:
    if class_weights is None:
        return None
    w = torch.as_tensor(class_weights, dtype=torch.float32).detach().clone()
    if w.shape != (num_classes,):
        raise UserError(
            f"class_weights has shape {tuple(w.shape)} but there are {num_classes} classes; "
            f"give one weight per class."
        )
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not bool((w > 0).any()):
        raise UserError(
            "class_weights must be finite and non-negative with at least one positive; fix the weights."
        )
    return w


def _check_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (math.isfinite(gamma) and gamma >= 0):
        raise UserError(f"loss.gamma (focal) is {gamma!r}; use a number >= 0 (2.0 is the usual choice, 0 is cross-entropy).")
    return float(gamma)


def _check_alpha(alpha: float | None) -> float | None:
    if alpha is None:
        return None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
        raise UserError(f"loss.alpha (focal) is {alpha!r}; use a positive number (e.g. 0.25) or null.")
    return float(alpha)


def _check_smoothing(smoothing: float) -> float:
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
        raise UserError(f"loss.smoothing is {smoothing!r}; use a number in [0, 1) such as 0.1.")
    return float(smoothing)


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (math.isfinite(delta) and delta > 0):
        raise UserError(f"loss.delta (huber) is {delta!r}; use a positive number (1.0 is torch's default), in "
                        "units of the standardised target.")
    return float(delta)


def _check_pos_weight(w):
    if w is None or w == "balanced" or w == "none":
        return None if w == "none" else w
    if isinstance(w, (list, tuple)) and w and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in w):
        return [float(v) for v in w]
    raise UserError(f"loss.pos_weight is {w!r}; use balanced, null, or one positive number per label.")


# ---------------------------------------------------------------- multi-label and regression losses

class BCELoss(nn.Module):
    """Multi-label: binary cross-entropy on logits [N, L] against 0/1 (or soft) targets [N, L], the mean
    over all N*L entries (torch's BCEWithLogitsLoss); ``pos_weight`` [L] scales each label's positives."""

    def __init__(self, pos_weight: Tensor | None = None):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=self.pos_weight)


class BinaryFocalLoss(nn.Module):
    """Multi-label focal loss (Lin et al.): per entry -alpha_t (1 - p_t)^gamma log p_t on sigmoid
    probabilities, mean over N*L; with alpha None every entry weighs 1, so gamma=0 is plain BCE.
    (torchvision.ops.sigmoid_focal_loss with alpha<0 and reduction='mean' is the same.)"""

    def __init__(self, gamma: float = 2.0, alpha: float | None = None):
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        x, y = logits.float(), target.float()
        ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        p_t = torch.exp(-ce)  # the probability given to the true side of each entry
        loss = (1 - p_t).pow(self.gamma) * ce
        if self.alpha is not None:
            loss = (self.alpha * y + (1 - self.alpha) * (1 - y)) * loss
        return loss.mean()


class RegressionLoss(nn.Module):
    """Regression on one output per image (logits [N, 1] or [N]) against standardised targets [N]:
    mse, l1 or huber (delta in standardised units), the mean over the batch, as torch's losses."""

    def __init__(self, kind: str, delta: float = 1.0):
        super().__init__()
        self.kind, self.delta = kind, delta

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        x, y = output.float().reshape(-1), target.float().reshape(-1)
        if self.kind == "mse":
            return F.mse_loss(x, y)
        if self.kind == "l1":
            return F.l1_loss(x, y)
        return F.huber_loss(x, y, delta=self.delta)


# Every parameter a loss may take: its default (the config's too), its check. Config key: loss.<name>.
LOSS_PARAMS: dict[str, Param] = {
    "delta": Param(1.0, _check_delta, "huber: where the loss turns from squared to linear (standardised units)"),
    "pos_weight": Param(None, _check_pos_weight, "bce: weight of each label's positives; balanced = negatives/positives"),
    "gamma": Param(2.0, _check_gamma, "focusing exponent; 0 is cross-entropy"),
    "alpha": Param(None, _check_alpha, "uniform scale of the loss; null = 1"),
    "smoothing": Param(0.1, _check_smoothing, "eps spread over all K classes, as in torch"),
}


@dataclass(frozen=True)
class LossInfo:
    name: str
    description: str
    params: tuple[str, ...]          # keyword parameters besides class_weights (which every loss takes)
    build: Callable[..., nn.Module]  # (num_classes, class_weights, **params) -> the loss module
    kind: str = "class"              # class (softmax over K >= 2), binary (per label), regression


_LOSSES: dict[str, LossInfo] = {i.name: i for i in (
    LossInfo("cross_entropy", "softmax cross-entropy", (), lambda k, w: CrossEntropyLoss(k, w)),
    LossInfo("focal", "focal loss: (1 - p)^gamma down-weights easy samples", ("gamma", "alpha"),
             lambda k, w, gamma, alpha: FocalLoss(k, w, gamma, alpha)),
    LossInfo("label_smoothing", "cross-entropy on targets smoothed over all classes", ("smoothing",),
             lambda k, w, smoothing: CrossEntropyLoss(k, w, smoothing)),
    LossInfo("f1", "soft macro-F1: 1 - mean F1 of softmax probabilities over the batch", (),
             lambda k, w: SoftF1Loss(k, w)),
    LossInfo("bce", "multi-label binary cross-entropy on sigmoid outputs", ("pos_weight",),
             lambda k, w, pos_weight: BCELoss(None if pos_weight is None else torch.as_tensor(pos_weight)),
             kind="binary"),
    LossInfo("binary_focal", "multi-label focal loss on sigmoid outputs (loss.name=focal with task.type=multilabel)",
             ("gamma", "alpha"), lambda k, w, gamma, alpha: BinaryFocalLoss(gamma, alpha), kind="binary"),
    LossInfo("mse", "regression: mean squared error of the standardised target", (),
             lambda k, w: RegressionLoss("mse"), kind="regression"),
    LossInfo("l1", "regression: mean absolute error of the standardised target", (),
             lambda k, w: RegressionLoss("l1"), kind="regression"),
    LossInfo("huber", "regression: Huber loss (squared below loss.delta, linear above)", ("delta",),
             lambda k, w, delta: RegressionLoss("huber", delta), kind="regression"),
)}


def list_losses(kind: str | None = None) -> list[str]:
    """Names accepted by `create_loss`, sorted; ``kind`` (class, binary, regression) keeps one family."""
    return sorted(n for n, i in _LOSSES.items() if kind is None or i.kind == kind)


def loss_info(name: str) -> LossInfo:
    if name not in _LOSSES:
        raise unknown_name("loss", name, list_losses())
    return _LOSSES[name]


def check_loss_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of loss `name`, checked and with defaults filled in; used by the config too."""
    info = loss_info(name)
    reject_unknown("loss", name, info.params, params, "loss", always=("class_weights",))
    return {p: LOSS_PARAMS[p].check(v) for p, v in with_defaults(LOSS_PARAMS, info.params, params).items()}


def create_loss(
    name: str,
    num_classes: int,
    *,
    class_weights: Tensor | Sequence[float] | None = None,
    **params: Any,
) -> nn.Module:
    """Build loss `name` (`list_losses()`); `params` are the ones its entry takes (focal: gamma, alpha;
    label_smoothing: smoothing), anything else is refused. Every loss takes `class_weights` [K]."""
    checked = check_loss_params(name, params)
    info = _LOSSES[name]
    if info.kind == "class" and num_classes < 2:
        raise UserError(f"num_classes is {num_classes}; a classification loss needs at least 2 classes.")
    if info.kind != "class" and class_weights is not None:
        raise UserError(f"loss '{name}' takes no class weights; remove loss.class_weights"
                        + (" (loss.pos_weight weighs each label's positives)." if info.kind == "binary" else "."))
    if "pos_weight" in checked and isinstance(checked["pos_weight"], list) and len(checked["pos_weight"]) != num_classes:
        raise UserError(f"loss.pos_weight lists {len(checked['pos_weight'])} values for {num_classes} labels; give "
                        "one per label, or balanced.")
    weights = _validated_weights(class_weights, num_classes) if info.kind == "class" else None
    return info.build(num_classes, weights, **checked)


def class_weights_from_counts(counts: Sequence[int], mode: str | Sequence[float] | None) -> Tensor | None:
    """Per-class loss weights [K] from per-class training counts, or None for mode 'none'/None.

    'balanced': w_k proportional to 1 / count_k, scaled to mean 1 over the classes that have samples.
    A class with count 0 gets weight 0: it has no training samples to weigh, and adding empty classes
    does not rescale the others. An explicit list must hold one positive weight per class.
    """
    if mode is None or (isinstance(mode, str) and mode == "none"):
        return None
    counts_t = torch.as_tensor(list(counts), dtype=torch.float64)
    if counts_t.ndim != 1 or bool((counts_t < 0).any()):
        raise ValueError(f"counts must be a flat list of non-negative integers, got {list(counts)}")
    if isinstance(mode, str):
        if mode != "balanced":
            raise unknown_name("class-weight mode", mode, ["balanced", "none"])
        present = counts_t > 0
        if not bool(present.any()):
            raise UserError(
                "class counts are all zero, so balanced class weights are undefined; check the training data."
            )
        inv = torch.where(present, 1.0 / counts_t.clamp_min(1), torch.zeros_like(counts_t))
        return (inv / inv[present].mean()).float()
    try:
        weights = [float(v) for v in mode]
    except (TypeError, ValueError):
        raise UserError(
            f"class_weights {mode!r} must be 'balanced', 'none' or a list of numbers; fix it."
        ) from None
    if len(weights) != len(counts_t):
        raise UserError(
            f"class_weights lists {len(weights)} values but there are {len(counts_t)} classes; "
            f"give one per class."
        )
    if not all(math.isfinite(v) and v > 0 for v in weights):
        raise UserError(f"class_weights {weights} must all be positive numbers; fix the list.")
    return torch.tensor(weights, dtype=torch.float32)
