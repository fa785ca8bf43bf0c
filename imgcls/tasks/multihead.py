"""Multi-head tasks: one backbone, one output head per entry of ``task.heads`` (multiclass or
regression), trained on the weighted sum of the heads' losses, with an optional combine rule
(``task.combine``, e.g. ``mask * 6 + gender * 3 + age``) that derives one combined class from the
heads' predicted codes.

The model's outputs are the heads' outputs side by side, in ``task.heads`` order: K_h logits for a
multiclass head, one standardised value for a regression head. ``model.json``'s ``classes`` name
them (``head/class`` for a multiclass head, ``head`` for a regression head); the task record holds
each head's layout, its regression mean/std, and the combine rule with the head codes each combined
code stands for.

The combined class's probability is the product of the heads' probabilities of the codes it stands
for (the heads are scored independently), so its argmax is the rule applied to each head's argmax.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError, unknown_name
from .base import TOP_K, MetricInfo, Task
from .multiclass import MulticlassTask
from .regression import RegressionTask

_HEAD_NAME = re.compile(r"^[A-Za-z0-9_\-. ]+$")
_RESERVED = ("combined", "binned")
_HEAD_KEYS = ("type", "label", "classes", "loss", "weight", "gamma", "alpha", "smoothing", "delta")
_KINDS = {"multiclass": MulticlassTask(), "regression": RegressionTask()}


@dataclass(frozen=True)
class Head:
    name: str
    type: str = "multiclass"                 # multiclass | regression
    label: str = ""                          # the CSV column or path group (default: the head's name)
    classes: Optional[tuple[str, ...]] = None  # multiclass: the class order (required for task.combine)
    loss: str = "auto"
    params: tuple = ()                       # (name, value) of the loss's own options
    weight: float = 1.0                      # its share of the training loss
    mean: float = 0.0                        # regression: training target mean/std (standardisation)
    std: float = 1.0

    @property
    def size(self) -> int:
        return 1 if self.type == "regression" else len(self.classes or ())

    def outputs(self) -> list[str]:
        return [self.name] if self.type == "regression" else [f"{self.name}/{c}" for c in self.classes]

    def to_json(self) -> dict:
        return {"name": self.name, "type": self.type, "label": self.label, "classes": list(self.classes or []),
                "loss": self.loss, "params": dict(self.params), "weight": self.weight, "mean": self.mean,
                "std": self.std}


def _number(key: str, value, lo: float = 0.0) -> float:
    try:
        v = float(str(value).strip()) if not isinstance(value, (int, float)) or isinstance(value, bool) else float(value)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v <= lo:
        raise UserError(f"config key '{key}' must be a number above {lo:g}, got {value!r}.")
    return v


def parse_heads(heads: dict, combine: Optional[str]) -> tuple[list[Head], Optional[Any]]:
    """``task.heads`` and ``task.combine`` checked into Head records and a CombineRule (or None)."""
    from ..losses import check_loss_params, loss_info
    if not heads:
        raise UserError("task.type=multihead needs task.heads, e.g. task.heads.age={type: multiclass, label: age}.")
    out = []
    for name, spec in heads.items():
        key = f"task.heads.{name}"
        if not _HEAD_NAME.match(name) or name in _RESERVED:
            raise UserError(f"head name '{name}' may use only letters, digits, _ - . and spaces and may not be "
                            f"{' or '.join(_RESERVED)}; rename it.")
        spec = dict(spec or {})
        unknown = [k for k in spec if k not in _HEAD_KEYS]
        if unknown:
            raise unknown_name(f"key of {key}", unknown[0], _HEAD_KEYS)
        kind = str(spec.get("type", "multiclass"))
        if kind not in _KINDS:
            raise unknown_name(f"{key}.type", kind, list(_KINDS))
        loss = str(spec.get("loss", "auto"))
        if loss != "auto" and loss not in _KINDS[kind].losses:
            valid = [n for n in _KINDS[kind].losses if n != "auto"]
            raise UserError(f"{key}.loss is '{loss}', which a {kind} head cannot use; set {key}.loss to one of "
                            f"{', '.join(valid)}, or auto ({_KINDS[kind].default_loss}).")
        loss = _KINDS[kind].resolve_loss(loss)
        params = {p: spec[p] for p in ("gamma", "alpha", "smoothing", "delta") if p in spec}
        taken = loss_info(loss).params
        extra = [p for p in params if p not in taken]
        if extra:
            raise UserError(f"{key}.{extra[0]} is not a parameter of the {loss} loss (it takes: "
                            f"{', '.join(taken) or 'none'}); remove it.")
        params = {p: (None if str(v).lower() in ("null", "none") else _number(f"{key}.{p}", v, -1e-300 if p != "alpha" else 0))
                  for p, v in params.items()}
        checked = check_loss_params(loss, params)
        classes = spec.get("classes")
        if classes is not None and (not isinstance(classes, (list, tuple)) or len(classes) < 2):
            raise UserError(f"config key '{key}.classes' must list at least 2 class names, got {classes!r}.")
        if kind == "regression" and classes is not None:
            raise UserError(f"{key} is a regression head; remove its classes.")
        if classes is not None:
            from ..data.sources import check_class_list
            classes = check_class_list(classes, f"{key}.classes")
        out.append(Head(name, kind, str(spec.get("label") or name), tuple(map(str, classes)) if classes else None,
                        loss, tuple(sorted(checked.items())), _number(f"{key}.weight", spec.get("weight", 1.0))))
    rule = None
    if combine:
        from .combine import parse_combine
        used = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", str(combine)))
        numeric = [h.name for h in out if h.type == "regression" and h.name in used]
        if numeric:
            raise UserError(f"task.combine uses '{numeric[0]}', a regression head: a combine rule combines the class "
                            f"codes of multiclass heads; remove it from task.combine or make it a multiclass head "
                            f"(task.heads.{numeric[0]}.type=multiclass with its classes).")
        sizes = {h.name: (len(h.classes) if h.classes else None) for h in out if h.type == "multiclass"}
        rule = parse_combine(str(combine), sizes, key="task.combine")
    return out, rule


class MultiheadTask(Task):
    """Several heads on one backbone; see the module docstring."""
    name = "multihead"
    losses = ("auto",)
    default_loss = "auto"
    min_classes = 1
    per_class_sampling = False
    report_sections = ("curves",)

    def __init__(self, heads: Sequence[Head] = (), rule=None):
        self.heads, self.rule = list(heads), rule

    @property
    def mixes(self) -> bool:
        """MixUp/CutMix mix each head's classes; a regression head has no mixed target."""
        return all(h.type == "multiclass" for h in self.heads)

    def soft_targets(self, target: Tensor) -> Tensor:
        """[N, H] class codes -> [N, sum of head sizes]: each head's one-hot side by side (the layout
        of the outputs), which MultiHeadLoss reads as each head's class probabilities."""
        return torch.cat([F.one_hot(target[:, j].long(), h.size).float() for j, h in enumerate(self.heads)], dim=1)

    # -- configuration
    def from_config(self, cfg) -> "Task":
        heads, rule = parse_heads(cfg.task.heads or {}, cfg.task.combine)
        return MultiheadTask(heads, rule)

    def configure(self, record: Optional[dict] = None) -> "Task":
        record = record or {}
        if "heads" not in record:
            return self
        from .combine import CombineRule
        heads = [Head(h["name"], h["type"], h["label"], tuple(h["classes"]) or None, h["loss"],
                      tuple(sorted(h["params"].items())), h["weight"], h.get("mean", 0.0), h.get("std", 1.0))
                 for h in record["heads"]]
        rule = CombineRule.from_json(record["combine"]) if record.get("combine") else None
        return MultiheadTask(heads, rule)

    def classes_text(self, classes: Sequence[str]) -> str:
        """'18 combined classes (mask 3 x gender 2 x age 3)', or each head's size without a combine rule."""
        sizes = ", ".join(f"{h.name} {h.size if h.type == 'multiclass' else 'regression'}" for h in self.heads)
        if self.rule is None:
            return f"{len(self.heads)} heads ({sizes})"
        return f"{self.rule.size} combined classes ({sizes}; task.combine {self.rule.expr})"

    def record(self, classes: Sequence[str]) -> dict:
        return {"type": self.name, "heads": [h.to_json() for h in self.heads],
                **({"combine": self.rule.to_json()} if self.rule else {})}

    def fit(self, targets: Sequence, classes: Sequence[str]) -> dict:
        heads = []
        for j, h in enumerate(self.heads):
            if h.type == "regression":
                t = torch.tensor([float(row[j]) for row in targets], dtype=torch.float64)
                std = float(t.std(unbiased=False)) if len(t) > 1 else 0.0
                h = replace(h, mean=float(t.mean()), std=std if std > 0 else 1.0)
            heads.append(h)
        self.heads = heads
        return self.record(classes)

    resolve_loss = Task.resolve_loss

    # -- names
    @property
    def metrics(self) -> tuple[MetricInfo, ...]:
        out = [MetricInfo("train/loss", "min", "mean training loss (the weighted sum over heads)"),
               MetricInfo("val/loss", "min", "mean validation loss (the weighted sum over heads)")]
        for h in self.heads:
            for m in _KINDS[h.type].metrics:
                if m.name.startswith("val/") and m.name != "val/loss":
                    out.append(MetricInfo(f"val/{h.name}/{m.name[4:]}", m.direction, f"{h.name}: {m.description}"))
        if self.rule is not None:
            for m in MulticlassTask.metrics:
                if m.name.startswith("val/") and m.name != "val/loss":
                    out.append(MetricInfo(f"val/combined/{m.name[4:]}", m.direction,
                                          f"the combined class ({self.rule.expr}): {m.description}"))
        return tuple(out)

    @property
    def default_monitor(self) -> str:
        if self.rule is not None:
            return "val/combined/f1_macro"
        h = next((h for h in self.heads if h.type == "multiclass"), self.heads[0] if self.heads else None)
        return "val/loss" if h is None else f"val/{h.name}/{'f1_macro' if h.type == 'multiclass' else 'mae'}"

    @property
    def log_metrics(self) -> tuple[str, ...]:
        return ("val/loss", self.default_monitor)

    def resolve_monitor(self, name: str) -> str:
        return self.default_monitor if name == "auto" else self.check_monitor(name)

    # -- labels and targets
    def classes_from(self, labels: Sequence, explicit: Optional[Sequence[str]]) -> list[str]:
        """Each multiclass head's classes (listed, else its distinct values sorted) -> the output names."""
        from ..data.sources import resolve_classes
        heads = []
        for j, h in enumerate(self.heads):
            if h.type == "multiclass":
                seen = sorted({row[j] for row in labels})
                if h.classes is None:
                    h = replace(h, classes=tuple(resolve_classes(seen, None)))
                unknown = [v for v in seen if v not in h.classes]
                if unknown:
                    raise UserError(f"head '{h.name}' has label '{unknown[0]}', which is not among its classes "
                                    f"({', '.join(h.classes)}); fix the data or task.heads.{h.name}.classes.")
                if len(h.classes) < 2:
                    raise UserError(f"head '{h.name}' has {len(h.classes)} class in the data; a head needs at least 2.")
            heads.append(h)
        self.heads = heads
        return [o for h in self.heads for o in h.outputs()]

    def encode(self, labels: Sequence, classes: Sequence[str]) -> list[tuple]:
        from .base import LabelError
        codes = [{c: i for i, c in enumerate(h.classes)} if h.type == "multiclass" else None for h in self.heads]
        out = []
        for i, row in enumerate(labels):
            values = []
            for h, code, raw in zip(self.heads, codes, row):
                if code is None:
                    try:
                        values.extend(RegressionTask().encode([raw], ["value"]))
                    except LabelError as e:
                        raise LabelError(f"head '{h.name}': {e.what}", f"fix its label '{h.label}'", i) from None
                else:
                    values.append(code[raw])
            out.append(tuple(values))
        return out

    def labels_from_text(self, texts: Sequence[str]) -> list[tuple]:
        """The 'label' cells of a prediction CSV ('r|plain|34.5') -> one raw value per head."""
        return [tuple(str(t).split("|")) for t in texts]

    def label_text(self, target, classes: Sequence[str]) -> str:
        return "|".join(f"{float(v):.6g}" if h.type == "regression" else h.classes[int(v)]
                        for h, v in zip(self.heads, target))

    def counts(self, targets: Sequence, classes: Sequence[str]) -> list[int]:
        out = []
        for j, h in enumerate(self.heads):
            column = [row[j] for row in targets]
            out += [len(column)] if h.type == "regression" else [column.count(k) for k in range(h.size)]
        return out

    def target_tensor(self, targets: Sequence, classes: Sequence[str]) -> Tensor:
        """[N, H]: class codes (as floats) and standardised regression targets, one column per head."""
        t = torch.tensor([list(row) for row in targets], dtype=torch.float64).reshape(len(targets), len(self.heads))
        for j, h in enumerate(self.heads):
            if h.type == "regression":
                t[:, j] = (t[:, j] - h.mean) / h.std
        return t.float()

    def sampling_classes(self, targets: Sequence, classes: Sequence[str]) -> tuple[list[int], int]:
        """data.sampler=balanced draws the combined classes of task.combine equally often."""
        return self.fold_targets(targets)["labels"], self.rule.size

    def fold_targets(self, targets: Sequence) -> dict:
        """Stratified by the combined class, else by the first multiclass head, else by the first value."""
        if self.rule is not None:
            idx = {h.name: j for j, h in enumerate(self.heads)}
            return {"labels": [int(self.rule.apply({n: int(row[idx[n]]) for n in self.rule.names})) for row in targets]}
        j = next((j for j, h in enumerate(self.heads) if h.type == "multiclass"), None)
        if j is None:
            return {"values": [float(row[0]) for row in targets]}
        return {"labels": [int(row[j]) for row in targets]}

    # -- the model's outputs
    def head_size(self, classes: Sequence[str]) -> int:
        return sum(h.size for h in self.heads)

    def slices(self) -> list[slice]:
        out, start = [], 0
        for h in self.heads:
            out.append(slice(start, start + h.size))
            start += h.size
        return out

    def criterion(self, kwargs: dict) -> nn.Module:
        from ..losses import create_loss
        losses = [create_loss(h.loss, max(h.size, 2) if h.type == "multiclass" else 1, **dict(h.params))
                  for h in self.heads]
        return MultiHeadLoss(self.slices(), [h.type for h in self.heads], losses, [h.weight for h in self.heads])

    def decode_outputs(self, logits: Tensor) -> Tensor:
        """Per head, side by side: softmax probabilities, or the value in the target's unit."""
        parts = []
        for h, s in zip(self.heads, self.slices()):
            x = logits.float()[:, s]
            parts.append(x * h.std + h.mean if h.type == "regression" else x.softmax(dim=1))
        return torch.cat(parts, dim=1)

    def raw_outputs(self, probs: Tensor) -> Tensor:
        parts = []
        for h, s in zip(self.heads, self.slices()):
            p = probs.float()[:, s]
            parts.append((p - h.mean) / h.std if h.type == "regression"
                         else p.clamp_min(torch.finfo(torch.float32).tiny).log())
        return torch.cat(parts, dim=1)

    def decoded_from_csv(self, header: Sequence[str], rows: Sequence[Sequence[str]],
                               classes: Sequence[str]) -> Tensor:
        """Per head, side by side: its ``prob_<head>/<class>`` columns, or its value column."""
        from .base import float_columns
        names = [o if h.type == "regression" else f"prob_{o}" for h in self.heads for o in h.outputs()]
        return float_columns(header, rows, names)

    def outputs_text(self) -> str:
        parts = [f"{h.name}: {h.size} logit(s), softmax gives its class probabilities" if h.type == "multiclass"
                 else f"{h.name}: 1 standardised value (value = output * std + mean of task_record.heads)"
                 for h in self.heads]
        rule = (f"; the combined class is task_record.combine applied to the heads' argmax codes"
                if self.rule is not None else "")
        return f"[N, {self.head_size(())}], the heads side by side in this order: " + "; ".join(parts) + rule

    def combined_log_probs(self, probs: Tensor) -> Tensor:
        """[N, N_combined] log-probabilities of the combined classes from the heads' probabilities."""
        idx = {h.name: (h, s) for h, s in zip(self.heads, self.slices())}
        table = self.rule.table()
        out = torch.zeros(len(probs), len(table))
        for n in self.rule.names:
            h, s = idx[n]
            logp = probs[:, s].clamp_min(torch.finfo(torch.float32).tiny).log()
            out += logp[:, [row[n] for row in table]]
        return out

    def create_metrics(self, classes: Sequence[str]):
        return MultiheadMetrics(self)

    # -- predictions as CSV columns
    def prediction_header(self, classes: Sequence[str], labelled: bool) -> list[str]:
        cols = ["path", *(["label"] if labelled else [])]
        for h in self.heads:
            cols += [h.name] + ([f"{h.name}_prob"] if h.type == "multiclass" else [])
        if self.rule is not None:
            cols += ["combined", "combined_prob"]
        return cols + [f"prob_{o}" for h in self.heads if h.type == "multiclass" for o in h.outputs()]

    def prediction_rows(self, paths: Sequence[str], probs: Tensor, classes: Sequence[str],
                        labels: Optional[Sequence[str]] = None, top_k: int = TOP_K) -> list[list[str]]:
        """path, [label,] per head its prediction (class, and its probability; or the value), the
        combined code and its probability, then every multiclass head's class probabilities."""
        cells = [[] for _ in range(len(probs))]
        for h, s in zip(self.heads, self.slices()):
            p = probs[:, s]
            if h.type == "regression":
                for i, v in enumerate(p[:, 0].tolist()):
                    cells[i].append(f"{v:.6g}")
                continue
            best, k = p.max(dim=1)
            for i, (b, j) in enumerate(zip(best.tolist(), k.tolist())):
                cells[i] += [h.classes[j], f"{b:.6g}"]
        if self.rule is not None:
            best, k = self.combined_log_probs(probs).max(dim=1)
            for i, (b, j) in enumerate(zip(best.exp().tolist(), k.tolist())):
                cells[i] += [str(j), f"{b:.6g}"]
        cls_probs = torch.cat([probs[:, s] for h, s in zip(self.heads, self.slices()) if h.type == "multiclass"]
                              or [torch.zeros(len(probs), 0)], dim=1)
        return [[paths[i], *([labels[i]] if labels is not None else []), *cells[i], *[f"{v:.6g}" for v in row]]
                for i, row in enumerate(cls_probs.tolist())]

    def predicted(self, probs: Tensor, classes: Sequence[str]) -> list[str]:
        """The combined code with a combine rule, else the heads' predictions joined by '|'."""
        rows = self.prediction_rows([""] * len(probs), probs, classes)
        if self.rule is not None:
            at = self.prediction_header(classes, False).index("combined")
            return [r[at] for r in rows]
        at = [self.prediction_header(classes, False).index(h.name) for h in self.heads]
        return ["|".join(r[a] for a in at) for r in rows]


class MultiHeadLoss(nn.Module):
    """The weighted sum of each head's loss on its slice of the outputs (targets [N, H])."""

    def __init__(self, slices, kinds, losses, weights):
        super().__init__()
        self.slices, self.kinds, self.weights = slices, kinds, weights
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """``target``: [N, H] (a class code or standardised value per head), or after MixUp/CutMix
        [N, outputs] (each head's class probabilities in its slice; no regression head then)."""
        soft = target.shape[1] != len(self.slices)
        total = 0.0
        for j, (s, kind, loss, w) in enumerate(zip(self.slices, self.kinds, self.losses, self.weights)):
            y = target[:, s] if soft else target[:, j]
            total = total + w * loss(logits[:, s], y if (soft or kind == "regression") else y.long())
        return total


class MultiheadMetrics:
    """Each head's own metrics under val/<head>/..., the combined class's under val/combined/...,
    and val/loss (the weighted sum the model trains on)."""

    def __init__(self, task: MultiheadTask):
        from ..metrics import ClassificationMetrics, RegressionMetrics
        from .regression import Destandardised
        self.task = task
        self.parts = []
        for h in task.heads:
            if h.type == "multiclass":
                self.parts.append(ClassificationMetrics(h.size, list(h.classes)))
            else:
                self.parts.append(Destandardised(RegressionMetrics(), h.mean, h.std))
        self.combined = (ClassificationMetrics(task.rule.size, [str(i) for i in range(task.rule.size)])
                         if task.rule is not None else None)
        self.reset()

    def reset(self) -> None:
        for m in self.parts:
            m.reset()
        if self.combined is not None:
            self.combined.reset()
        self.loss_sum, self.n = 0.0, 0

    def update(self, logits: Tensor, target: Tensor, loss_sum=None) -> None:
        for j, (m, s, h) in enumerate(zip(self.parts, self.task.slices(), self.task.heads)):
            y = target[:, j]
            m.update(logits[:, s], y if h.type == "regression" else y.long(), None)
        if self.combined is not None:
            idx = {h.name: j for j, h in enumerate(self.task.heads)}
            codes = {n: target[:, idx[n]].long() for n in self.task.rule.names}
            y = self.task.rule.apply(codes)
            logp = self.task.combined_log_probs(self.task.decode_outputs(logits).cpu())
            self.combined.update(logp.to(logits.device), y, None)
        if loss_sum is not None:
            self.loss_sum = self.loss_sum + loss_sum
        self.n += len(target)

    def compute(self) -> dict:
        out = {"val/loss": float(self.loss_sum) / self.n if self.n else math.nan}
        for h, m in zip(self.task.heads, self.parts):
            out.update({f"val/{h.name}/{k[4:]}": v for k, v in m.compute().items() if k != "val/loss"})
        if self.combined is not None:
            out.update({f"val/combined/{k[4:]}": v for k, v in self.combined.compute().items() if k != "val/loss"})
        return out

    def details(self) -> dict:
        d = {"heads": {h.name: m.details() for h, m in zip(self.task.heads, self.parts)}}
        if self.combined is not None:
            d["combined"] = self.combined.details()
        return d
