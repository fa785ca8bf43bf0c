"""The run report: RUN_DIR/report.html (one self-contained file) and RUN_DIR/plots/*.png.

Sections, in reading order: findings, summary, curves, per-class table, confusion matrix,
ROC, calibration, most confident mistakes, hardest correct examples, evaluations (if any).
Numbers shown in the per-class table and the confusion matrix carry ``data-*`` attributes with
their exact values, so tests (and scripts) can read them back from the HTML.
"""
from __future__ import annotations

import datetime as _dt
import math
import warnings
from pathlib import Path
from typing import Optional, Sequence

import matplotlib
import numpy as np

from . import plots
from .findings import RECALL_GAP, Finding, all_findings
from .gallery import Example, build_gallery
from .html import bar, duration, esc, img, num, page, png_uri, section, table
from .rundata import RunData, load_run

SECTIONS = (  # (id, navigation label); evaluations only when the run has eval-*/metrics.json
    ("findings", "Findings"), ("summary", "Summary"), ("curves", "Curves"), ("per-class", "Per class"),
    ("confusion", "Confusion matrix"), ("roc", "ROC"), ("calibration", "Calibration"),
    ("mistakes", "Mistakes"), ("hardest", "Hardest correct"), ("evaluations", "Evaluations"),
)
TABLE_MAX_CLASSES = 30     # above this, the confusion matrix is a heatmap image (the table folds away)
SCALARS = ("val/acc", "val/f1_macro", "val/precision_macro", "val/recall_macro", "val/balanced_acc",
           "val/auroc", "val/loss", "train/loss", "top5_acc", "ece")


class _Plots:
    """Writes each figure to RUN_DIR/plots/<name>.png and hands back its data URI."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(exist_ok=True)

    def __call__(self, name: str, fig) -> str:
        data = plots.png_bytes(fig)
        (self.folder / f"{name}.png").write_bytes(data)
        return png_uri(data)


# ------------------------------------------------------------------ sections

def _findings(found: list[Finding]) -> str:
    items = "".join(f'<li class="{f.severity}" data-kind="{f.kind}">{esc(f.text)}</li>' for f in found)
    return section("findings", "Findings", f'<ul class="findings">{items}</ul>')


def _param_count(path: Path) -> Optional[int]:
    """Learnable parameters in best.safetensors (batch-norm running statistics left out), header only."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


def _config_facts(cfg: dict) -> list[tuple[str, str]]:
    g = lambda sec, key, default="–": cfg.get(sec, {}).get(key, default)  # noqa: E731
    loss = str(g("loss", "name"))
    if loss == "focal":
        loss += f" (gamma {g('loss', 'gamma')})"
    elif loss == "label_smoothing":
        loss += f" (epsilon {g('loss', 'smoothing')})"
    if g("loss", "class_weights", None):
        loss += f", class weights {g('loss', 'class_weights')}"
    sched = str(g("sched", "name"))
    if g("sched", "warmup_epochs", 0):
        sched += f", {g('sched', 'warmup_epochs')} warm-up epoch(s)"
    return [
        ("loss", loss),
        ("optimizer", f"{g('optim', 'name')}, lr {g('optim', 'lr')}, weight decay {g('optim', 'weight_decay')}"),
        ("schedule", sched),
        ("batch", f"{g('train', 'batch_size')} x {g('train', 'accumulate', 1)} accumulated, "
                  f"precision {g('train', 'precision')}"),
        ("data", f"augment {g('data', 'augment')}, sampler {g('data', 'sampler')}, "
                 f"mixup {g('data', 'mixup', 0)}, cutmix {g('data', 'cutmix', 0)}"),
        ("monitor", f"{g('train', 'monitor')}, seed {g('train', 'seed')}"),
    ]


def _summary(run: RunData) -> str:
    vm, meta, env = run.val_metrics, run.model, run.env
    k = len(run.classes)
    n_train = sum(run.train_counts) if run.train_counts else None
    n_val = sum(run.val_counts) if run.val_counts else vm.get("num_samples")
    params = _param_count(run.run_dir / "best.safetensors")
    seconds = float(np.nansum(run.column("seconds"))) if run.history else math.nan
    size = meta.image_size if meta else run.config.get("data", {}).get("image_size", "?")
    arch = meta.architecture if meta else run.config.get("model", {}).get("name", "?")
    facts = [
        ("model", f"{arch}" + (f", {params / 1e6:.2f} M parameters" if params else "")
                  + f", input {size}x{size}x{meta.channels if meta else '?'}"),
        ("data", f"{n_train if n_train is not None else '?'} train / {n_val} validation images, {k} classes"),
        ("best epoch", f"{vm.get('epoch', '?')} of {len(run.history)} by {run.monitor} "
                       f"({num(float(vm.get(run.monitor, math.nan)), 4)})"),
        ("time", f"{duration(seconds)} on {env.get('device', '?')}"
                 + (f" ({env['device_name']})" if env.get("device_name") else "")),
        *_config_facts(run.config),
        ("versions", ", ".join(f"{name} {env[name]}" for name in ("imgcls", "torch", "timm") if env.get(name))
                     + (f", git {str(env['git_commit'])[:10]}" if env.get("git_commit") else "")),
    ]
    facts_html = "".join(f"<div><b>{esc(a)}</b> {esc(b)}</div>" for a, b in facts)
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
    body = f'<div class="facts">{facts_html}</div><div class="grid"><div>{best}</div>{counts}</div>'
    return section("summary", "Summary", body)


def _curves(run: RunData, save: _Plots) -> str:
    monitor = run.monitor
    shown = [monitor] + [m for m in ("val/acc", "val/f1_macro") if m != monitor]
    shown = [m for m in shown if not m.endswith("loss")][:2]
    fig = plots.curves(run.column("epoch"), run.column("train/loss"), run.column("val/loss"),
                       {m: run.column(m) for m in shown}, run.column("lr"), run.val_metrics.get("epoch"))
    return section("curves", "Training curves", img(save("curves", fig), "loss, metrics and learning rate per epoch"),
                   "The dotted line marks the best epoch, whose weights are in best.safetensors.")


def worst_first(rows: Sequence[dict]) -> list[int]:
    """Row order worst F1 first (then recall); classes without validation images last: their 0 is a convention."""
    return sorted(range(len(rows)), key=lambda i: (rows[i]["support"] == 0, rows[i]["f1"], rows[i]["recall"]))


def per_class_table(rows: Sequence[dict], acc: float, train_counts: Optional[Sequence[int]], id_: str,
                    meanings: Optional[Sequence[str]] = None) -> str:
    """The per-class table (``rows``: val_metrics.json's per_class), worst F1 first; ``meanings`` adds a
    column saying what each class stands for (a combined code's head classes)."""
    colors = {"precision": "var(--blue)", "recall": "var(--red)", "f1": "var(--grey)"}
    out = []
    for i in worst_first(rows):
        r = rows[i]
        weak = r["support"] > 0 and r["recall"] < acc - RECALL_GAP
        cells = "".join(f'<td class="num" data-metric="{m}" data-value="{r[m]!r}">{num(r[m])}'
                        f'{bar(r[m], colors[m])}</td>' for m in ("precision", "recall", "f1"))
        meaning = f"<td>{esc(meanings[i])}</td>" if meanings else ""
        train_n = train_counts[i] if train_counts else "–"
        out.append(f'<tr data-class="{esc(r["class"])}"{" class=weak" if weak else ""}>'
                   f'<th>{esc(r["class"])}</th>{meaning}{cells}'
                   f'<td class="num" data-metric="support" data-value="{r["support"]}">{r["support"]}</td>'
                   f'<td class="num">{train_n}</td></tr>')
    headers = ["class", *(["stands for"] if meanings else []), "precision", "recall", "F1", "support", "train images"]
    return table(headers, out, "perclass", id_)


def per_class_intro(acc: float) -> str:
    return (f"Worst F1 first. Rows in red: recall more than {RECALL_GAP:.2f} below the accuracy ({num(acc)}). "
            "Support is the number of validation images.")


def _per_class(run: RunData, save: _Plots) -> str:
    vm = run.val_metrics
    acc = float(vm.get("val/acc", math.nan))
    rows = list(vm["per_class"])
    order = worst_first(rows)
    save("per_class", plots.per_class_bars([rows[i]["class"] for i in order], [rows[i] for i in order]))
    return section("per-class", "Per-class precision, recall and F1",
                   per_class_table(rows, acc, run.train_counts, "per-class-table"), per_class_intro(acc))


def _cm_cell(i: int, j: int, count: int, frac: float, true: str, pred: str,
             shown: Optional[tuple[str, str]] = None) -> str:
    # Diagonal in blue (right), off-diagonal in red (wrong); sqrt so that small confusions still show.
    alpha = frac if i == j else math.sqrt(frac)
    rgb = "42,111,176" if i == j else "200,69,60"
    ink = "#fff" if alpha > 0.55 else "inherit"
    attrs = f'data-true="{esc(true)}" data-pred="{esc(pred)}" data-count="{count}" data-frac="{frac!r}"'
    t, p = shown or (true, pred)
    title = f'title="true {esc(t)}, predicted {esc(p)}: {count} ({frac:.1%} of {esc(t)})"'
    if count == 0:
        return f'<td class="zero" {attrs} {title}>0</td>'
    return (f'<td {attrs} {title} style="background:rgba({rgb},{alpha:.3f});color:{ink}">'
            f'{count}<small>{frac:.0%}</small></td>')


def confusion_block(cm: np.ndarray, classes: Sequence[str], uri: str, prefix: str = "",
                    shown: Optional[Sequence[str]] = None) -> str:
    """The confusion matrix as a table (a heatmap image ``uri`` above TABLE_MAX_CLASSES) and the most
    confused pairs. Cells carry ``classes`` in data-* attributes and show ``shown`` (default: the same);
    element ids start with ``prefix``."""
    k = len(classes)
    shown = list(shown or classes)
    totals = cm.sum(axis=1)
    frac = cm / np.maximum(totals[:, None], 1)
    rot = ' class="rot"' if k > 8 else ""
    head = "".join(f'<th{rot} title="{esc(s)}">{esc(c if len(s) > 12 and k > 8 else s)}</th>'
                   for c, s in zip(classes, shown))
    body = "".join(
        f'<tr data-true="{esc(classes[i])}"><th>{esc(shown[i])}</th>'
        + "".join(_cm_cell(i, j, int(cm[i, j]), float(frac[i, j]), classes[i], classes[j], (shown[i], shown[j]))
                  for j in range(k))
        + f'<td class="num">{int(totals[i])}</td></tr>' for i in range(k))
    grid = (f'<div class="cm-wrap"><table class="cm" id="{prefix}confusion-table"><thead><tr><th>true \\ predicted'
            f'</th>{head}<th>images</th></tr></thead><tbody>{body}</tbody></table></div>')
    if k > TABLE_MAX_CLASSES:
        out = (img(uri, "confusion matrix heatmap, row-normalised")
               + f"<details><summary>the full {k} x {k} table</summary>{grid}</details>")
    else:
        out = grid
    off = cm.copy()
    np.fill_diagonal(off, 0)
    n_pairs = 10 if k <= TABLE_MAX_CLASSES else 20
    pairs = [(int(v), i, j) for v, i, j in sorted(((off[i, j], i, j) for i in range(k) for j in range(k)
                                                   if off[i, j] > 0), reverse=True)[:n_pairs]]
    if pairs:
        items = "".join(
            f'<li data-true="{esc(classes[i])}" data-pred="{esc(classes[j])}" data-count="{v}">'
            f'<b>{esc(shown[i])}</b> taken for <b>{esc(shown[j])}</b>: {v} image(s), '
            f'{frac[i, j]:.0%} of {esc(shown[i])}</li>' for v, i, j in pairs)
        out += f'<h3>Most confused pairs</h3><ol id="{prefix}confused-pairs">{items}</ol>'
    return out


CONFUSION_INTRO = ("Rows are the true class, columns the prediction; each cell shows the count and, below it, the "
                   "share of the row (the diagonal share is the class's recall). Blue: right, red: wrong.")


def _confusion(run: RunData, save: _Plots) -> str:
    cm = np.asarray(run.val_metrics["confusion_matrix"], dtype=np.int64)
    uri = save("confusion_matrix", plots.confusion(cm, run.classes))
    return section("confusion", "Confusion matrix", confusion_block(cm, run.classes, uri), CONFUSION_INTRO)


def _roc(run: RunData, save: _Plots) -> str:
    p = run.predictions
    if p is None:
        return section("roc", "ROC curves", '<p class="note">val_predictions.csv is missing.</p>')
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


def _calibration(run: RunData, save: _Plots) -> str:
    p = run.predictions
    if p is None:
        return section("calibration", "Calibration", '<p class="note">val_predictions.csv is missing.</p>')
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

def write_report(run_dir: str | Path, *, gradcam: bool = True) -> Path:
    """Write RUN_DIR/report.html (self-contained) and RUN_DIR/plots/*.png from the run folder's files.

    Returns the path of report.html. Raises UserError when ``run_dir`` is not a run folder with at
    least one finished epoch. ``gradcam=False`` skips the Grad-CAM overlays (no model is built).
    A cv folder (``imgcls cv``) gets CV_DIR/report.html instead, from ``cvreport``.
    """
    from ..engine.cv import is_cv_dir
    from ..io import check_writable

    if is_cv_dir(run_dir):
        from .cvreport import write_cv_report  # the folds side by side, out-of-fold results
        return write_cv_report(run_dir)
    if (Path(run_dir) / "model.json").is_file():
        from ..models.modelinfo import ModelInfo
        if ModelInfo.read(Path(run_dir) / "model.json").task != "multiclass":
            from .taskreport import write_task_report  # here: taskreport builds on this module's sections
            return write_task_report(run_dir)
    run = load_run(run_dir)
    check_writable(run.run_dir, "run folder", "copy the run folder somewhere writable and report on the copy")
    old = run.run_dir / "report.html"
    gone = run.predictions is not None and run.predictions.paths and not any(
        run.resolve_image(p) for p in run.predictions.paths[:50])
    if gone and old.is_file():
        # The run was moved away from its images: a rebuilt report would replace every picture with
        # "not found", so the one written where the images were is worth more.
        warnings.warn(f"the validation images are not found here (e.g. '{run.predictions.paths[0]}'), so the "
                      f"existing {old} is kept; rebuild it where the images are, or delete it to write one "
                      "without pictures.", stacklevel=2)
        return old
    with matplotlib.rc_context(plots.font_rc()):  # class names in any script, where a font has the glyphs
        return _write_report(run, gradcam)


def _write_report(run, gradcam: bool) -> Path:
    from ..io import atomic_write_text

    save = _Plots(run.run_dir / "plots")
    mistakes, hardest = _galleries(run, gradcam)
    sections = [
        _findings(all_findings(run)), _summary(run), _curves(run, save), _per_class(run, save),
        _confusion(run, save), _roc(run, save), _calibration(run, save), mistakes, hardest, _evaluations(run),
    ]
    present = [(id_, label) for id_, label in SECTIONS if id_ != "evaluations" or run.evaluations]
    vm = run.val_metrics
    finished = _dt.datetime.fromtimestamp((run.run_dir / "metrics.csv").stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    subtitle = esc(f"{run.run_dir.resolve()}  ·  finished {finished}  ·  best {run.monitor} "
                   f"{num(float(vm.get(run.monitor, math.nan)), 4)} at epoch {vm.get('epoch', '?')}")
    html = page(f"Run report: {run.name}", subtitle, present, "".join(sections),
                footer=esc(f"written by imgcls {run.env.get('imgcls', '')} from the files in this run folder"))
    out = run.run_dir / "report.html"
    atomic_write_text(out, html)
    return out
