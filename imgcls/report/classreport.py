"""The run report of a multiclass (single-label) run: RUN_DIR/report.html (one self-contained file) and
RUN_DIR/plots/*.png.

Sections, in reading order: findings, summary, curves, per-class table, confusion matrix,
ROC, calibration, most confident mistakes, hardest correct examples, evaluations (if any).
Numbers shown in the per-class table and the confusion matrix carry ``data-*`` attributes with
their exact values, so tests (and scripts) can read them back from the HTML.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib
import numpy as np

from . import plots
from .findings import all_findings
from .gallery import Example, build_gallery
from .html import bar, esc, img, num, section, table
from .rundata import RunData
from .scores import CONFUSION_INTRO, confusion_block, per_class_intro, per_class_table, worst_first
from .sections import (Plots, config_facts, curves_section, facts_block, findings_section, no_predictions,
                       param_count, time_fact, versions_fact, write_run_page)

SECTIONS = (  # (id, navigation label); evaluations only when the run has eval-*/metrics.json
    ("findings", "Findings"), ("summary", "Summary"), ("curves", "Curves"), ("per-class", "Per class"),
    ("confusion", "Confusion matrix"), ("roc", "ROC"), ("calibration", "Calibration"),
    ("mistakes", "Mistakes"), ("hardest", "Hardest correct"), ("evaluations", "Evaluations"),
)
SCALARS = ("val/acc", "val/f1_macro", "val/precision_macro", "val/recall_macro", "val/balanced_acc",
           "val/auroc", "val/loss", "train/loss", "top5_acc", "ece")


def _summary(run: RunData) -> str:
    vm, meta = run.val_metrics, run.model
    k = len(run.classes)
    n_train = sum(run.train_counts) if run.train_counts else None
    n_val = sum(run.val_counts) if run.val_counts else vm.get("num_samples")
    params = param_count(run.run_dir / "best.safetensors")
    size = meta.image_size if meta else run.config.get("data", {}).get("image_size", "?")
    arch = meta.architecture if meta else run.config.get("model", {}).get("name", "?")
    facts = [
        ("model", f"{arch}" + (f", {params / 1e6:.2f} M parameters" if params else "")
                  + f", input {size}x{size}x{meta.channels if meta else '?'}"),
        ("data", f"{n_train if n_train is not None else '?'} train / {n_val} validation images, {k} classes"),
        ("best epoch", f"{vm.get('epoch', '?')} of {len(run.history)} by {run.monitor} "
                       f"({num(float(vm.get(run.monitor, math.nan)), 4)})"),
        time_fact(run),
        *config_facts(run.config),
        versions_fact(run.env),
    ]
    best = table(["metric", "at the best epoch"], [
        f'<tr data-metric="{esc(m)}"><td>{esc(m)}</td><td class="num">{num(float(vm[m]), 4)}</td></tr>'
        for m in SCALARS if isinstance(vm.get(m), (int, float))])
    counts = ""
    if run.train_counts:
        top = max(max(run.train_counts), 1)
        rows = [f'<tr data-class="{esc(c)}"><td>{esc(c)}</td><td class="num">{n}{bar(n / top, "var(--grey)")}</td>'
                f'<td class="num">{run.val_counts[i] if run.val_counts else "–"}</td></tr>'
                for i, (c, n) in enumerate(zip(run.classes, run.train_counts))]
        counts_table = table(["class", "train images", "validation images"], rows, id_="class-counts")
        counts = f'<div class="scroll">{counts_table}</div>'
    body = f'{facts_block(facts)}<div class="grid"><div>{best}</div>{counts}</div>'
    return section("summary", "Summary", body)


def _curves(run: RunData, save: Plots) -> str:
    monitor = run.monitor
    shown = [monitor] + [m for m in ("val/acc", "val/f1_macro") if m != monitor]
    return curves_section(run, save, [m for m in shown if not m.endswith("loss")][:2])


def _per_class(run: RunData, save: Plots) -> str:
    vm = run.val_metrics
    acc = float(vm.get("val/acc", math.nan))
    rows = list(vm["per_class"])
    order = worst_first(rows)
    save("per_class", plots.per_class_bars([rows[i]["class"] for i in order], [rows[i] for i in order]))
    return section("per-class", "Per-class precision, recall and F1",
                   per_class_table(rows, acc, run.train_counts, "per-class-table"), per_class_intro(acc))


def _confusion(run: RunData, save: Plots) -> str:
    cm = np.asarray(run.val_metrics["confusion_matrix"], dtype=np.int64)
    uri = save("confusion_matrix", plots.confusion(cm, run.classes))
    return section("confusion", "Confusion matrix", confusion_block(cm, run.classes, uri), CONFUSION_INTRO)


def _roc(run: RunData, save: Plots) -> str:
    p = run.predictions
    if p is None:
        return no_predictions("roc", "ROC curves")
    per_class = plots.roc_per_class(p.labels, p.probs)
    uri = save("roc", plots.roc(per_class, run.classes))
    aucs = [(a, c) for (_, _, a), c in zip(per_class, run.classes) if math.isfinite(a)]
    worst = sorted(aucs, key=lambda t: t[0])[:10]
    rows = [f'<tr data-class="{esc(c)}"><td>{esc(c)}</td><td class="num" data-value="{a!r}">{num(a)}</td></tr>'
            for a, c in worst]
    macro = run.val_metrics.get("val/auroc")
    listing = table(["class", "AUC"], rows, id_="auc-table")
    intro = (f"One class against the rest, on the validation probabilities. Macro AUROC {num(macro)}. "
             f"The table lists the {len(worst)} lowest AUCs.")
    return section("roc", "ROC curves (one-vs-rest)",
                   f'<div class="grid">{img(uri, "one-vs-rest ROC curves")}<div>{listing}</div></div>', intro)


def _confidence_word(conf: float, acc: float) -> str:
    if abs(conf - acc) < 0.005:  # half a point: the difference would round away at 2 decimals
        return "well calibrated on average"
    return "over-confident on average" if conf > acc else "under-confident on average"


def _calibration(run: RunData, save: Plots) -> str:
    p = run.predictions
    if p is None:
        return no_predictions("calibration", "Calibration")
    bins = plots.reliability_bins(p.confidence, p.correct)
    uri = save("reliability", plots.reliability(bins))
    conf, acc = float(p.confidence.mean()), float(p.correct.mean())
    text = (f'<p>Expected calibration error <b id="ece" data-value="{bins["ece"]!r}">{bins["ece"]:.3f}</b>: '
            f"on average the confidence (the top probability) is {bins['ece'] * 100:.1f} points away from the "
            f"accuracy of the images with that confidence. Mean confidence {conf:.3f}, accuracy {acc:.3f}"
            f" ({_confidence_word(conf, acc)}).</p>")
    body = f'<div class="grid">{img(uri, "reliability diagram")}<div>{text}</div></div>'
    return section("calibration", "Calibration (reliability diagram)", body,
                   f"Confidence in {plots.ECE_BINS} equal-width bins.")


def _figure(ex: Example, with_cam: bool) -> str:
    pic = img(ex.thumb, f"{ex.path}", "thumb") if ex.thumb else '<div class="missing">image not found</div>'
    if with_cam:
        pic += img(ex.cam, f"Grad-CAM for {ex.pred}", "thumb") if ex.cam else '<div class="missing">no Grad-CAM</div>'
    name = Path(ex.path).name
    return (f'<figure class="ex" data-row="{ex.row}"><div class="pair">{pic}</div><figcaption>'
            f"true <b>{esc(ex.label)}</b>, predicted <b>{esc(ex.pred)}</b> ({ex.prob:.2f})"
            f'<span class="path" title="{esc(ex.path)}">{esc(name)}</span></figcaption></figure>')


def _small_figure(ex: Example) -> str:
    pic = img(ex.thumb, f"{ex.path}", "thumb") if ex.thumb else '<div class="missing small">not found</div>'
    return (f'<figure class="ex small" data-row="{ex.row}" title="{esc(ex.path)}">{pic}'
            f"<figcaption>p {ex.prob:.2f}</figcaption></figure>")


def _galleries(run: RunData, gradcam: bool) -> tuple[str, str]:
    if run.predictions is None:
        note = '<p class="note">val_predictions.csv is missing.</p>'
        return (section("mistakes", "Most confident mistakes", note),
                section("hardest", "Hardest correct examples", note))
    mistakes, hardest, cam_note = build_gallery(run, gradcam=gradcam)
    with_cam = any(ex.cam for ex in mistakes)
    if mistakes:
        body = f'<div class="gallery">{"".join(_figure(ex, with_cam) for ex in mistakes)}</div>'
    else:
        body = '<p class="note">No mistakes on the validation set.</p>'
    intro = ("Wrong predictions the model was surest of, with the probability it gave the wrong class. "
             "These are often label errors or genuinely ambiguous images.")
    if with_cam:
        intro += " Beside each: Grad-CAM for the predicted class (red: the regions that drove it)."
    elif cam_note:
        intro += " " + cam_note
    mistakes_html = section("mistakes", "Most confident mistakes", body, intro)
    cards = []
    for name, examples in hardest.items():
        figs = "".join(_small_figure(ex) for ex in examples) or '<span class="note">none right</span>'
        cards.append(f'<div class="class-card" data-class="{esc(name)}"><b>{esc(name)}</b>'
                     f'<div class="pair">{figs}</div></div>')
    hardest_html = section("hardest", "Hardest correct examples", f'<div class="gallery">{"".join(cards)}</div>',
                           "Per class, the correct predictions with the lowest probability p for the true class: "
                           "the images the model only just got right.")
    return mistakes_html, hardest_html


def _scalar(v) -> str:
    return "–" if v is None else str(v) if isinstance(v, int) else num(float(v), 4)


def _evaluations(run: RunData) -> str:
    if not run.evaluations:
        return ""
    keys: list[str] = []
    for _, m in run.evaluations:
        keys += [k for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys]
    keys.sort(key=lambda k: (k not in SCALARS and k.split("/")[-1] not in {s.split("/")[-1] for s in SCALARS}, k))
    rows = [f'<tr data-eval="{esc(name)}"><td>{esc(name)}</td>'
            + "".join(f'<td class="num">{_scalar(m.get(k))}</td>' for k in keys) + "</tr>"
            for name, m in run.evaluations]
    return section("evaluations", "Evaluations", f'<div class="cm-wrap">{table(["folder", *keys], rows)}</div>',
                   "Written by 'imgcls evaluate' into this run folder.")

# ------------------------------------------------------------------ the report

def write_class_report(run: RunData, *, gradcam: bool = True, force: bool = False) -> Path:
    """Write RUN_DIR/report.html (self-contained) and RUN_DIR/plots/*.png of a multiclass run; returns the
    path of report.html. ``gradcam=False`` skips the Grad-CAM overlays (no model is built). Where the
    validation images are gone, an existing report is kept (with a warning) unless ``force``."""
    from ..io import check_writable

    check_writable(run.run_dir, "run folder", "copy the run folder somewhere writable and report on the copy")
    old = run.run_dir / "report.html"
    gone = run.predictions is not None and run.predictions.paths and not any(
        run.resolve_image(p) for p in run.predictions.paths[:50])
    if gone and old.is_file() and not force:
        # The run was moved away from its images: a rebuilt report would replace every picture with
        # "not found", so the one written where the images were is worth more.
        warnings.warn(f"the validation images are not found here (e.g. '{run.predictions.paths[0]}'), so the "
                      f"existing {old} is kept; rebuild it where the images are, or pass --force (force=True) to write "
                      "one without pictures.", stacklevel=3)
        return old
    with matplotlib.rc_context(plots.font_rc()):  # class names in any script, where a font has the glyphs
        save = Plots(run.run_dir / "plots")
        mistakes, hardest = _galleries(run, gradcam)
        body = [
            findings_section(all_findings(run)), _summary(run), _curves(run, save), _per_class(run, save),
            _confusion(run, save), _roc(run, save), _calibration(run, save), mistakes, hardest, _evaluations(run),
        ]
        nav = [(id_, label) for id_, label in SECTIONS if id_ != "evaluations" or run.evaluations]
        return write_run_page(run, body, nav, task_shown=False)
