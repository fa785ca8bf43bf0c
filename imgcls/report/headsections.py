"""Sections of multi-head results, shared by the multi-head run report (headreport) and the cv report's
out-of-fold part (cvreport): heads at a glance, one section per head (a multiclass head: its per-class
table and confusion matrix; a regression head: its errors and predicted against true), the combined class
of ``task.combine`` (per-class table with what each code stands for, e.g. "wear / male / <30"), and the
findings about the heads.

Per-class rows and confusion matrices are the ``details`` (``heads`` and ``combined``) as the metrics
computed them; regression errors and the scatter are recomputed from the predictions CSV.
Numbers carry ``data-*`` attributes with their exact values, as in the other reports.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .findings import RECALL_GAP, Finding, weak_recall
from .html import esc, img, num, section, table
from .rundata import ValuePredictions
from .scores import ERROR_ROWS, classification_section, error_scores, scatter_figure
from .sections import Plots
from ..errors import UserError

CLASS_METRICS = (("acc", "accuracy"), ("balanced_acc", "balanced accuracy"), ("f1_macro", "F1 macro"),
                 ("precision_macro", "precision macro"), ("recall_macro", "recall macro"), ("auroc", "AUROC"))
VALUE_METRICS = (("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²"), ("mse", "MSE"))


# ------------------------------------------------------------------ what the sections read

@dataclass
class HeadResults:
    """One multi-head evaluation: a run's validation pass, or a cv folder's out-of-fold predictions."""
    task: object                             # the configured MultiheadTask (model.json's record)
    scalars: dict                            # val/<head>/<metric>, val/combined/<metric>
    details: dict                            # {"heads": {name: details}, "combined": details}
    rows: Optional[list[dict]]               # the predictions CSV's rows, as text (None: no CSV)
    train_counts: Optional[Sequence[int]] = None         # per output, as model.json lists them
    combined_train_counts: Optional[list[int]] = None
    prefix: str = ""                         # element ids start with it ("oof-" in the cv report)
    source: str = "val_predictions.csv"
    label: str = "at training"               # where the scalars come from, as a table heading says it

    def value(self, key: str) -> float:
        v = self.scalars.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def slugs(names: Sequence[str]) -> list[str]:
    """Element-id-safe, distinct slugs of the head names (which may hold spaces and dots)."""
    out: list[str] = []
    for name in names:
        s = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "head"
        out.append(s if s not in out else f"{s}-{len(out)}")
    return out


def combined_meanings(task) -> list[str]:
    """What each combined code stands for: its heads' class names in the rule's order, 'wear / male / <30'."""
    heads = {h.name: h for h in task.heads}
    return [" / ".join(heads[n].classes[code[n]] for n in task.rule.names) for code in task.rule.table()]


def head_codes(task, texts: Sequence[str], where: Path) -> list[tuple]:
    """Label cells ('r|plain|34.5') -> per head its class code (multiclass) or its value (regression)."""
    out = []
    for raw in task.labels_from_text(texts):
        if len(raw) != len(task.heads):
            raise UserError(f"'{where}' has the label '{'|'.join(raw)}' with {len(raw)} part(s) for "
                            f"{len(task.heads)} heads; re-copy the folder.")
        try:
            out.append(tuple(float(v) if h.type == "regression" else h.classes.index(v)
                             for h, v in zip(task.heads, raw)))
        except ValueError:
            raise UserError(f"'{where}' has the label '{'|'.join(raw)}', which the run's heads do not have; "
                            "re-copy the folder.") from None
    return out


def combined_codes(task, codes: Sequence[tuple]) -> np.ndarray:
    """The combined class of each row of head codes, by the run's rule."""
    at = {h.name: j for j, h in enumerate(task.heads)}
    return np.array([int(task.rule.apply({n: int(c[at[n]]) for n in task.rule.names})) for c in codes],
                    dtype=np.int64)


def combined_train_counts(path: Path, task) -> Optional[list[int]]:
    """Training images per combined class, from split/train.csv (None without it)."""
    if task.rule is None or not path.is_file():
        return None
    with open(path, newline="") as f:
        texts = [r["label"] for r in csv.DictReader(f)]
    return np.bincount(combined_codes(task, head_codes(task, texts, path)), minlength=task.rule.size).tolist()


def head_values(res: HeadResults, j: int) -> Optional[ValuePredictions]:
    """Regression head j's truth (from the label cell) and prediction (its own column), in its unit."""
    if res.rows is None:
        return None
    h = res.task.heads[j]
    if res.rows and h.name not in res.rows[0]:
        raise UserError(f"'{res.source}' lacks the column '{h.name}' of head '{h.name}'; re-copy the folder.")
    codes = head_codes(res.task, [r["label"] for r in res.rows], Path(res.source))
    return ValuePredictions([r["path"] for r in res.rows], np.array([c[j] for c in codes], dtype=float),
                            np.array([float(r[h.name]) for r in res.rows], dtype=float))


def _head_counts(res: HeadResults, j: int) -> Optional[list[int]]:
    if not res.train_counts:
        return None
    s = res.task.slices()[j]
    return list(res.train_counts[s])


# ------------------------------------------------------------------ findings

def head_findings(res: HeadResults) -> list[Optional[Finding]]:
    """A head whose macro F1 lags the others', classes whose recall trails their head's accuracy (and the
    combined class's), regression heads no better than their training mean."""
    task, found = res.task, []
    f1 = {h.name: res.value(f"val/{h.name}/f1_macro") for h in task.heads if h.type == "multiclass"}
    f1 = {n: v for n, v in f1.items() if math.isfinite(v)}
    if len(f1) >= 2:
        weakest = min(f1, key=f1.get)
        others = float(np.mean([v for n, v in f1.items() if n != weakest]))
        listed = ", ".join(f"'{n}' {v:.2f}" for n, v in f1.items() if n != weakest)
        if others - f1[weakest] > RECALL_GAP:
            combined = res.value("val/combined/f1_macro")
            found.append(Finding("weak_head", (
                f"Head '{weakest}' lags the others: F1 macro {f1[weakest]:.2f} against {listed}"
                + (f"; its mistakes carry into the combined class (F1 macro {combined:.2f})"
                   if math.isfinite(combined) and weakest in task.rule.names else "")
                + f". More images of its rare classes, a larger task.heads.{weakest}.weight or a loss suited to "
                  "imbalance (loss: focal) are the usual remedies.")))
        else:
            found.append(Finding("weakest_head", (
                f"The weakest head is '{weakest}' (F1 macro {f1[weakest]:.2f}, against {listed}); no head lags "
                f"the others' mean by more than {RECALL_GAP:.2f}."), "info"))
    for h in task.heads:
        d = res.details["heads"].get(h.name, {})
        if h.type == "multiclass" and d.get("per_class"):
            f = weak_recall(list(h.classes), d["per_class"], res.value(f"val/{h.name}/acc"), d["confusion_matrix"])
            if f is not None:
                found.append(Finding("weak_recall", f"Head '{h.name}': {f.text[0].lower()}{f.text[1:]}"))
    d = res.details.get("combined")
    if task.rule is not None and d and d.get("per_class"):
        f = weak_recall(combined_meanings(task), d["per_class"], res.value("val/combined/acc"),
                        d["confusion_matrix"])
        if f is not None:
            found.append(Finding("weak_recall", f"The combined class ({task.rule.expr}): "
                                                f"{f.text[0].lower()}{f.text[1:]}"))
    found += [_value_finding(res, j) for j, h in enumerate(task.heads) if h.type == "regression"]
    return found


def _value_finding(res: HeadResults, j: int) -> Optional[Finding]:
    h, p = res.task.heads[j], head_values(res, j)
    if p is None or len(p.paths) < 2:
        return None
    s = error_scores(p)
    baseline = float(np.mean(np.abs(p.true - h.mean)))
    if math.isfinite(s["r2"]) and s["r2"] < 0:
        return Finding("r2_negative", (
            f"Head '{h.name}' has R² below 0 ({s['r2']:.3f}): worse than predicting the mean of the validation "
            f"targets for every image (MAE {s['mae']:.3g}, against {baseline:.3g} for the training mean "
            f"{h.mean:.3g}). It has not learned its target yet; train longer or raise task.heads.{h.name}.weight."))
    worse = s["mae"] >= baseline
    return Finding("baseline", (
        f"Head '{h.name}': MAE {s['mae']:.3g}, against {baseline:.3g} for always predicting the training mean "
        f"{h.mean:.3g}" + (": no better than that constant." if worse else f" ({1 - s['mae'] / baseline:.0%} lower).")),
        "warn" if worse else "info")


# ------------------------------------------------------------------ sections

def _glance(res: HeadResults, ids: dict[str, str]) -> str:
    """One row per head (and the combined class) with its headline metrics; each row links to its section."""
    task = res.task

    def cells(key: str, metrics) -> str:
        return "".join(f'<td class="num" data-metric="val/{key}/{m}" data-value="{res.value(f"val/{key}/{m}")!r}">'
                       f'{num(res.value(f"val/{key}/{m}"), 4)}</td>' for m, _ in metrics)

    def name(key: str, text: str) -> str:
        return f'<th><a href="#{ids[key]}">{esc(text)}</a></th>'

    cls_rows = [f'<tr data-head="{esc(h.name)}">{name(h.name, h.name)}<td>{h.size} classes, {esc(h.loss)}, weight '
                f'{h.weight:g}</td>{cells(h.name, CLASS_METRICS)}</tr>' for h in task.heads if h.type == "multiclass"]
    if task.rule is not None:
        cls_rows.append(f'<tr data-head="combined">{name("combined", "combined")}<td>{task.rule.size} classes, '
                        f'{esc(task.rule.expr)}</td>{cells("combined", CLASS_METRICS)}</tr>')
    val_rows = [f'<tr data-head="{esc(h.name)}">{name(h.name, h.name)}<td>{esc(h.loss)}, weight {h.weight:g}, '
                f'training mean {h.mean:.4g}, std {h.std:.4g}</td>{cells(h.name, VALUE_METRICS)}</tr>'
                for h in task.heads if h.type == "regression"]
    body = ""
    if cls_rows:
        body += table(["head", "", *[t for _, t in CLASS_METRICS]], cls_rows, id_=f"{res.prefix}class-heads")
    if val_rows:
        body += "<h3>Regression heads</h3>" + table(["head", "", *[t for _, t in VALUE_METRICS]], val_rows,
                                                    id_=f"{res.prefix}value-heads")
    return section(ids["_glance"], "Heads at a glance", body,
                   f"Each head's metrics ({esc(res.label)}; in its own unit for a regression head); the heads share "
                   "one backbone, trained on the weighted sum of their losses.")

def regression_section(id_: str, res: HeadResults, j: int, save: Plots) -> str:
    """A regression head's errors (recomputed from the CSV beside training's numbers) and its scatter."""
    h, p = res.task.heads[j], head_values(res, j)
    s = error_scores(p) if p is not None and len(p.paths) else {}
    rows = []
    for key, name, vm_key, meaning in ERROR_ROWS:
        at_training = num(res.value(f"val/{h.name}/{vm_key[4:]}"), 4) if vm_key else "–"
        mine = s.get(key, math.nan)
        rows.append(f'<tr data-metric="{key}"><td>{esc(name)}</td><td class="num" data-metric="{key}" '
                    f'data-value="{mine!r}">{num(mine, 4)}</td><td class="num">{at_training}</td>'
                    f'<td>{esc(meaning)}</td></tr>')
    where = Path(res.source).name
    errors = table(["error", where, res.label, "meaning"], rows,
                   id_=f"{id_}-error-table")
    body = f"<div>{errors}</div>"
    if s:
        body += img(save(f"scatter_{id_}", scatter_figure(p, None)), f"head {h.name}: predicted against true")
    else:
        body += f'<p class="note">{esc(where)} is missing.</p>'
    intro = (f"Regression head, in the target's unit (training mean {h.mean:.4g}, std {h.std:.4g}). The first "
             f"column is recomputed from {esc(where)} (6 significant digits). On the dashed line the prediction "
             "is exact.")
    return section(id_, f"Head '{h.name}' (regression)", f'<div class="grid">{body}</div>', intro)


def head_sections(res: HeadResults, save: Plots) -> tuple[list[str], list[tuple[str, str]]]:
    """Heads at a glance, one section per head, and the combined class, with their navigation entries."""
    task = res.task
    ids = {h.name: f"{res.prefix}head-{s}" for h, s in zip(task.heads, slugs([h.name for h in task.heads]))}
    ids.update(combined=f"{res.prefix}combined", _glance=f"{res.prefix}heads")
    body, nav = [_glance(res, ids)], [(ids["_glance"], "Heads")]
    for j, h in enumerate(task.heads):
        if h.type == "regression":
            body.append(regression_section(ids[h.name], res, j, save))
        else:
            body.append(classification_section(
                ids[h.name], f"Head '{h.name}' ({h.size} classes)", res.details["heads"].get(h.name, {}),
                res.value(f"val/{h.name}/acc"), _head_counts(res, j), save))
        nav.append((ids[h.name], h.name))
    if task.rule is not None:
        intro = (f"The combined class {esc(task.rule.expr)}: each code stands for one class of each head it uses. "
                 "Its probability is the product of the heads' probabilities, so its prediction is the rule applied "
                 "to each head's prediction. ")
        body.append(classification_section(
            ids["combined"], f"Combined class ({task.rule.size} classes)", res.details.get("combined", {}),
            res.value("val/combined/acc"), res.combined_train_counts, save, combined_meanings(task), intro))
        nav.append((ids["combined"], "Combined"))
    return body, nav
