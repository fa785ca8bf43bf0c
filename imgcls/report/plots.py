"""The report's plots as matplotlib figures (Agg, no pyplot state), saved as PNG bytes.

Figures are built with ``matplotlib.figure.Figure`` directly: no global pyplot state, so a
report can be written from any thread and never opens a window.
"""
from __future__ import annotations

import fnmatch
import functools
import io
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..metrics import ECE_BINS  # one binning for val_metrics.json and the reliability diagram
DPI = 100
_MANY = 10      # above this many classes, ROC curves get no per-class legend


# Fonts that cover Hangul, kana and CJK ideographs (the course this grew from is Korean), by family name
# as matplotlib reports it, then by file name for fonts installed after matplotlib built its font cache.
_CJK_FAMILIES = ("Noto Sans CJK KR", "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans KR",
                 "Source Han Sans K", "Source Han Sans", "NanumGothic", "Malgun Gothic", "Apple SD Gothic Neo",
                 "AppleGothic", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "Microsoft YaHei")
_CJK_FILES = ("NotoSansCJK*", "NotoSansKR*", "SourceHanSans*", "NanumGothic*", "wqy-*", "DroidSansFallback*")
_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts",
              "/Library/Fonts", "/System/Library/Fonts", "C:/Windows/Fonts")


@functools.lru_cache(maxsize=1)
def cjk_font() -> Optional[str]:
    """The family name of an installed font with CJK glyphs, or None (then CJK labels render as boxes)."""
    from matplotlib import font_manager

    def known() -> Optional[str]:
        names = {f.name for f in font_manager.fontManager.ttflist}
        return next((n for n in _CJK_FAMILIES if n in names), None)

    if known():
        return known()
    for folder in _FONT_DIRS:
        root = Path(folder).expanduser()
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() in (".ttf", ".otf", ".ttc") and any(fnmatch.fnmatch(path.name, p) for p in _CJK_FILES):
                try:
                    font_manager.fontManager.addfont(str(path))
                except (OSError, RuntimeError, ValueError):  # a font file matplotlib cannot parse
                    continue
    return known()


def font_rc() -> dict:
    """rcParams for the report's figures: the default font first, a CJK font as the per-glyph fallback."""
    cjk = cjk_font()
    # Named families, not the generic "sans-serif": matplotlib falls back glyph by glyph only along an
    # explicit family list (a generic family resolves to its first installed font alone).
    return {} if cjk is None else {"font.family": ["DejaVu Sans", cjk]}


def png_bytes(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _arr(x: Sequence[float]) -> np.ndarray:
    return np.asarray(x, dtype=float)


def curves(epochs: Sequence[float], train_loss, val_loss, metrics: dict[str, Sequence[float]],
           lr, best_epoch: Optional[int] = None) -> Figure:
    """Three panels over epochs: losses, the given metrics (e.g. monitor and accuracy), learning rate."""
    fig = Figure(figsize=(12, 3.3), layout="constrained")
    ax_loss, ax_metric, ax_lr = fig.subplots(1, 3)
    ep = _arr(epochs)
    marker = "o" if len(ep) <= 30 else None
    ax_loss.plot(ep, _arr(train_loss), marker=marker, ms=3, label="train")
    ax_loss.plot(ep, _arr(val_loss), marker=marker, ms=3, label="validation")
    ax_loss.set_title("loss")
    for name, values in metrics.items():
        ax_metric.plot(ep, _arr(values), marker=marker, ms=3, label=name)
    ax_metric.set_title("validation metrics")
    ax_lr.plot(ep, _arr(lr), marker=marker, ms=3, color="tab:green")
    ax_lr.set_title("learning rate (after each epoch)")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in (ax_loss, ax_metric, ax_lr):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls=":", lw=1)
    ax_loss.legend(fontsize=8)
    ax_metric.legend(fontsize=8)
    return fig


def per_class_bars(classes: Sequence[str], per_class: Sequence[dict]) -> Figure:
    """Precision, recall and F1 per class as horizontal bars, in the given (worst-first) order."""
    k = len(classes)
    fig = Figure(figsize=(7, 0.9 + 0.28 * k), layout="constrained")
    ax = fig.subplots()
    y = np.arange(k)
    h = 0.27
    for j, (key, color) in enumerate((("precision", "tab:blue"), ("recall", "tab:red"), ("f1", "tab:grey"))):
        ax.barh(y + (j - 1) * h, [row[key] for row in per_class], height=h, color=color, label=key)
    ax.set_yticks(y, [str(c) for c in classes], fontsize=8 if k <= 40 else 6)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("per class (worst F1 first)")
    return fig


def confusion(cm: Sequence[Sequence[int]], classes: Sequence[str]) -> Figure:
    """Counts and row-normalised (fraction of each true class) side by side, numbers in the cells up to
    15 classes; above 30 classes only the row-normalised heatmap (the page's table keeps the counts)."""
    cm = np.asarray(cm, dtype=float)
    k = len(classes)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    panels = [(cm, "counts", "{:.0f}"), (norm, "row-normalised (recall on the diagonal)", "{:.2f}")]
    if k > 30:
        panels = panels[1:]
    side = min(max(4.0, 0.42 * k + 1.5), 12.0)
    fig = Figure(figsize=(len(panels) * (side + 1), side + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (data, title, fmt) in zip(axes, panels):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=max(data.max(), 1e-9) if data is cm else 1,
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if k <= 40:
            fs = 9 if k <= 15 else 6
            ax.set_xticks(range(k), [str(c) for c in classes], rotation=90, fontsize=fs)
            ax.set_yticks(range(k), [str(c) for c in classes], fontsize=fs)
        if k <= 15:
            top = data.max() or 1
            for i in range(k):
                for j in range(k):
                    if data[i, j]:
                        ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", fontsize=8,
                                color="white" if data[i, j] > 0.6 * top else "black")
    return fig


def roc_per_class(labels: np.ndarray, probs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """One-vs-rest (fpr, tpr, auc) per class with sklearn; NaN AUC (empty curve) where a class has
    no positives or no negatives in the validation set."""
    from sklearn.metrics import auc, roc_curve

    out = []
    for c in range(probs.shape[1]):
        y = labels == c
        if y.all() or not y.any():
            out.append((np.array([]), np.array([]), math.nan))
            continue
        fpr, tpr, _ = roc_curve(y, probs[:, c])
        out.append((fpr, tpr, float(auc(fpr, tpr))))
    return out


def roc(curves_per_class: Sequence[tuple], classes: Sequence[str]) -> Figure:
    """ROC curves; beyond 10 classes all in grey with the 5 lowest-AUC classes highlighted."""
    fig = Figure(figsize=(5.2, 4.6), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="lightgrey", ls="--", lw=1)
    valid = [i for i, (_, _, a) in enumerate(curves_per_class) if math.isfinite(a)]
    highlight = valid if len(classes) <= _MANY else sorted(valid, key=lambda i: curves_per_class[i][2])[:5]
    for i in valid:
        fpr, tpr, a = curves_per_class[i]
        if i in highlight:
            ax.plot(fpr, tpr, lw=1.5, label=f"{classes[i]} (AUC {a:.3f})")
        else:
            ax.plot(fpr, tpr, lw=0.6, color="grey", alpha=0.4)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    title = "one-vs-rest ROC" + ("" if len(classes) <= _MANY else " (5 lowest AUC in colour)")
    ax.set_title(title)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.grid(alpha=0.3)
    if highlight:
        ax.legend(fontsize=7, loc="lower right")
    return fig


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Equal-width bins (i/n, (i+1)/n] over confidence: count, mean confidence and accuracy per bin,
    and ECE = sum over bins of (count / N) * |accuracy - mean confidence| (Guo et al., 2017)."""
    confidence = np.asarray(confidence, float)
    correct = np.asarray(correct, float)
    import torch
    from ..metrics import ece_bin_index
    idx = ece_bin_index(torch.as_tensor(confidence, dtype=torch.float32), n_bins).numpy()
    count = np.bincount(idx, minlength=n_bins).astype(float)
    conf_sum = np.bincount(idx, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = conf_sum / count
        acc = correct_sum / count
    ece = float(np.abs(correct_sum - conf_sum).sum() / max(len(confidence), 1))
    return {"count": count, "confidence": mean_conf, "accuracy": acc, "ece": ece, "n_bins": n_bins}


def reliability(bins: dict) -> Figure:
    """Accuracy per confidence bin against the diagonal, with the bin sizes underneath."""
    n = bins["n_bins"]
    centers = (np.arange(n) + 0.5) / n
    fig = Figure(figsize=(5.2, 4.6), layout="constrained")
    ax, ax_count = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    filled = bins["count"] > 0
    ax.plot([0, 1], [0, 1], color="lightgrey", ls="--", lw=1, label="perfect calibration")
    ax.bar(centers[filled], bins["accuracy"][filled], width=1 / n, edgecolor="white", color="tab:blue",
           label="accuracy")
    # The gap runs from the bin's accuracy to its mean confidence: up when over-confident, down when under.
    ax.bar(centers[filled], (bins["confidence"] - bins["accuracy"])[filled], bottom=bins["accuracy"][filled],
           width=1 / n, color="none", edgecolor="tab:red", hatch="///", lw=0.8, label="gap to mean confidence")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {bins['ece']:.3f}, {n} bins)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    ax_count.bar(centers, bins["count"], width=1 / n, color="tab:grey", edgecolor="white")
    ax_count.set_xlabel("confidence (max probability)")
    ax_count.set_ylabel("images")
    ax_count.set_xlim(0, 1)
    return fig


def compare_curves(runs: Sequence[tuple[str, dict[str, np.ndarray]]], monitor: str, third: str = "val/acc") -> Figure:
    """Each run's curves overlaid: loss (validation solid, train dashed), monitor, ``third`` (accuracy), LR."""
    fig = Figure(figsize=(12, 6.6), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for n, (name, cols) in enumerate(runs):
        color = f"C{n % 10}"
        ep = cols["epoch"]
        axes[0].plot(ep, cols["val/loss"], color=color, label=f"{name} (val)")
        axes[0].plot(ep, cols["train/loss"], color=color, ls="--", lw=1, label=f"{name} (train)")
        axes[1].plot(ep, cols.get(monitor, np.full(len(ep), np.nan)), color=color, label=name)
        axes[2].plot(ep, cols.get(third, np.full(len(ep), np.nan)), color=color, label=name)
        axes[3].plot(ep, cols["lr"], color=color, label=name)
    _epoch_axes(axes, ("loss (validation solid, train dashed)", monitor, third, "learning rate"))
    return fig


def _epoch_axes(axes, titles: Sequence[str]) -> None:
    """Titles, an integer epoch axis, a grid and a legend on each of ``axes``."""
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)


def fold_curves(folds: Sequence[tuple[str, dict[str, np.ndarray], Optional[int]]], monitor: str) -> Figure:
    """Each fold's validation loss and monitored metric over epochs, its best epoch as a dot."""
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for n, (name, cols, best) in enumerate(folds):
        ep = cols["epoch"]
        for ax, key in zip(axes, ("val/loss", monitor)):
            ax.plot(ep, cols[key], color=f"C{n % 10}", marker="o" if len(ep) <= 30 else None, ms=3, label=name)
            at = np.flatnonzero(ep == best)
            if len(at):
                ax.plot(ep[at], cols[key][at], "o", ms=8, mfc="none", color=f"C{n % 10}")
    _epoch_axes(axes, ("validation loss", f"{monitor} (circled: best epoch)"))
    return fig
