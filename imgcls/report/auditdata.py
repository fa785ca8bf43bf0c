"""The audit of a cv folder: label issues from its out-of-fold predictions, duplicates and leaks, and the
files that feed the fixes back (relabel.csv, exclude.csv). ``imgcls audit`` calls ``audit_folder``.

Reads only the cv folder (cv.json, config.yaml, oof_predictions.csv): no engine objects.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..data.audit import LabelIssues, find_label_issues, find_multilabel_issues, find_regression_issues
from ..data.dedup import (DUPLICATE_COLUMNS, EMBEDDING_MIN_COSINE, PHASH_MAX_DISTANCE, Embeddings, Image, Pair,
                          check_min_cosine, duplicate_rows, find_duplicates, to_exclude,
                          unit_embeddings)
from ..data.decode import IMAGE_EXTENSIONS
from ..errors import UserError
from ..io import atomic_write_json, write_csv
from ..runfolder import read_state

ISSUE_COLUMNS = ["path", "label", "suggested", "score", "fold"]
HEAD_ISSUE_COLUMNS = ISSUE_COLUMNS + ["head"]  # multi-head: label and suggested are that head's


@dataclass
class Audit:
    task: str
    classes: list[str]
    n: int                                   # images audited (the cv's data)
    issues: list[list]                       # label_issues.csv rows, worst first
    pairs: list[Pair]
    test_images: int = 0
    multiclass: Optional[LabelIssues] = None  # the confident joint, for the heatmap
    thresholds: dict = field(default_factory=dict)
    exemplars: dict = field(default_factory=dict)  # class -> its unflagged image of highest out-of-fold probability
    columns: list = field(default_factory=lambda: list(ISSUE_COLUMNS))
    relabel: Optional[dict] = None           # path -> the label relabel.csv gives (multi-head: every head's)


def read_oof(cv_dir: Path) -> tuple[list[str], list[list[str]]]:
    path = cv_dir / "oof_predictions.csv"
    if not path.is_file():
        raise UserError(f"'{path}' does not exist: the cv has not finished every fold; continue it with "
                        f"'imgcls cv --resume {cv_dir}' (or run imgcls audit again).")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _column(header: list[str], rows: list[list[str]], name: str) -> list[str]:
    i = header.index(name)
    return [r[i] for r in rows]


def _probs(header, rows, classes) -> np.ndarray:
    cols = [header.index(f"prob_{c}") for c in classes]
    return np.array([[float(r[c]) for c in cols] for r in rows], dtype=np.float64)


def multiclass_issues(header, rows, classes) -> tuple[list[list], LabelIssues]:
    labels_text = _column(header, rows, "label")
    code = {c: i for i, c in enumerate(classes)}
    labels = np.array([code[t] for t in labels_text])
    found = find_label_issues(labels, _probs(header, rows, classes))
    paths, folds = _column(header, rows, "path"), _column(header, rows, "fold")
    out = [[paths[i], labels_text[i], classes[found.suggested[i]], round(float(found.score[i]), 6), folds[i]]
           for i in found.order()]
    return out, found


def exemplars(header, rows, classes, found: LabelIssues) -> dict[str, str]:
    """Per class, the image labelled with it (and not flagged) that the fold models found most typical of it:
    what a flagged image is shown beside for its suggested class."""
    probs, paths = _probs(header, rows, classes), _column(header, rows, "path")
    labels = np.array([classes.index(t) for t in _column(header, rows, "label")])
    out = {}
    for k, c in enumerate(classes):
        ok = np.flatnonzero((labels == k) & ~found.issues)
        if len(ok):
            out[c] = paths[ok[np.argmax(probs[ok, k])]]
    return out


def multilabel_issues(header, rows, classes, sep: str = "|") -> list[list]:
    """One row per (image, label) issue: the given label set, the set with that label switched, and the
    probability of the given state of that label."""
    given = [set(t.split(sep)) - {""} for t in _column(header, rows, "label")]
    targets = np.array([[c in g for c in classes] for g in given], dtype=np.int64)
    per_label = find_multilabel_issues(targets, _probs(header, rows, classes))
    paths, folds = _column(header, rows, "path"), _column(header, rows, "fold")
    out = []
    for c, found in zip(classes, per_label):
        for i in np.flatnonzero(found.issues):
            switched = given[i] ^ {c}
            out.append([paths[i], sep.join(sorted(given[i])), sep.join(sorted(switched)),
                        round(float(found.score[i]), 6), folds[i]])
    out.sort(key=lambda r: (r[3], r[0]))
    return out


def regression_issues(header, rows) -> list[list]:
    """Out-of-fold residuals far from the rest: robust z beyond 3.5; the score is -|z| (worst first)."""
    y = np.array([float(v) for v in _column(header, rows, "label")])
    pred = np.array([float(v) for v in _column(header, rows, "value")])
    flagged, z = find_regression_issues(y, pred)
    paths, folds = _column(header, rows, "path"), _column(header, rows, "fold")
    out = [[paths[i], _column(header, rows, "label")[i], f"{pred[i]:.6g}", round(-abs(float(z[i])), 4), folds[i]]
           for i in np.flatnonzero(flagged)]
    out.sort(key=lambda r: (r[3], r[0]))
    return out


def multihead_issues(header, rows, heads) -> tuple[list[list], dict[str, str]]:
    """Each head audited on its own: confident learning on a multiclass head's ``prob_<head>/<class>``
    columns, the robust z of the residual on a regression head's value column. Rows (with the head's given
    and suggested value, and the head's name) head by head in task.heads order, worst first within a head;
    and per flagged image its whole label ('r|plain|34.5') with every flagged head's suggestion in place."""
    given = [t.split("|") for t in _column(header, rows, "label")]
    paths, folds = _column(header, rows, "path"), _column(header, rows, "fold")
    out, fixed = [], {}
    for j, h in enumerate(heads):
        labels = [g[j] for g in given]
        if h.type == "multiclass":
            classes = [str(c) for c in h.classes]
            code = {c: i for i, c in enumerate(classes)}
            found = find_label_issues(np.array([code[t] for t in labels]),
                                      _probs(header, rows, [f"{h.name}/{c}" for c in classes]))
            head_rows = [[paths[i], labels[i], classes[found.suggested[i]], round(float(found.score[i]), 6),
                          folds[i], h.name, i] for i in found.order()]
        else:
            pred = np.array([float(v) for v in _column(header, rows, h.name)])
            flagged, z = find_regression_issues(np.array([float(v) for v in labels]), pred)
            head_rows = sorted(([paths[i], labels[i], f"{pred[i]:.6g}", round(-abs(float(z[i])), 4), folds[i],
                                 h.name, i] for i in np.flatnonzero(flagged)), key=lambda r: (r[3], r[0]))
        for r in head_rows:
            fixed.setdefault(r[0], list(given[r[-1]]))[j] = r[2]
        out += [r[:-1] for r in head_rows]
    return out, {p: "|".join(v) for p, v in fixed.items()}


def test_images(folder: Optional[str]) -> list[str]:
    if folder is None:
        return []
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"--test '{folder}' is not a folder; pass the folder of test images.")
    found = sorted(str(p.resolve()) for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)
                   and not p.name.startswith("."))
    if not found:
        raise UserError(f"--test '{folder}' holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return found


def fold_embeddings(cv_dir: Path, paths: Sequence[str], min_cosine: float, device: str = "auto") -> Embeddings:
    """The embeddings of ``paths`` by the cv folder's fold models, centred and combined so that a dot product
    is their mean cosine similarity (``unit_embeddings``); unreadable images are left out."""
    from ..inference.predictor import load
    res = load(cv_dir, device=device).embed_files(list(paths), batch_size=256)
    return Embeddings(unit_embeddings([f.numpy() for f in res.features]), np.asarray(res.ok, dtype=np.int64),
                      min_cosine)


def analyse(cv_dir: Path, test: Optional[str] = None, max_distance: int = PHASH_MAX_DISTANCE,
            min_cosine: Optional[float] = EMBEDDING_MIN_COSINE) -> Audit:
    """Label issues and duplicates of a finished cv folder (plus a folder of test images); ``min_cosine``
    None leaves out the search by the fold models' embeddings."""
    from ..config import load_config
    task = load_config(cv_dir / "config.yaml").task.type
    classes = [str(c) for c in read_state(cv_dir).get("classes") or []]
    header, rows = read_oof(cv_dir)
    found, columns, relabel = None, list(ISSUE_COLUMNS), None
    if task == "multiclass":
        issues, found = multiclass_issues(header, rows, classes)
    elif task == "multilabel":
        issues = multilabel_issues(header, rows, classes)
    elif task == "regression":
        issues = regression_issues(header, rows)
    elif task == "multihead":
        from ..models.modelinfo import ModelInfo
        from ..runfolder import fold_dirs
        heads = ModelInfo.read(fold_dirs(cv_dir)[0] / "model.json").task_type.heads
        (issues, relabel), columns = multihead_issues(header, rows, heads), list(HEAD_ISSUE_COLUMNS)
    else:
        raise UserError(f"imgcls audit does not look for label issues of task.type={task}; it handles "
                        "multiclass, multilabel, regression and multihead.")
    images = [Image(p, lab, "train") for p, lab in zip(_column(header, rows, "path"), _column(header, rows, "label"))]
    tests = test_images(test)
    images += [Image(p, "", "test") for p in tests]
    thresholds = {"exact": "same SHA-256 of the file", "phash_max_distance": max_distance}
    embedded = None
    if min_cosine is not None:
        embedded = fold_embeddings(cv_dir, [im.path for im in images], check_min_cosine(min_cosine))
        thresholds.update(embedding_min_cosine=min_cosine, embedding_max_distance=round(1.0 - min_cosine, 6),
                          embedding_models=len(read_state(cv_dir)["finished"]))
    pairs = find_duplicates(images, max_distance, embeddings=embedded)
    warn_embedding_flood(pairs, len(images), min_cosine)
    return Audit(task, classes, len(rows), issues, pairs, len(tests), found, thresholds,
                 exemplars(header, rows, classes, found) if found is not None else {}, columns, relabel)


def warn_embedding_flood(pairs: Sequence[Pair], n: int, min_cosine: Optional[float]) -> None:
    """More embedding pairs than images means the fold models see these images as alike whatever they
    show (a model that only needs an image's colour to classify it, say): the pairs are not copies."""
    found = sum(p.method == "embedding" for p in pairs)
    if found > n:
        import warnings
        warnings.warn(f"the embedding search paired {found} images at a mean cosine of {min_cosine} or more, more "
                      f"pairs than the {n} images: the fold models do not tell these images apart; raise "
                      "--min-cosine or pass --no-embeddings (exact and pHash duplicates are unaffected).",
                      stacklevel=3)


def write_audit(audit: Audit, out_dir: Path) -> list[Path]:
    """label_issues.csv, duplicates.csv, relabel.csv, exclude.csv and audit.json in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "label_issues.csv", audit.columns, audit.issues)
    write_csv(out_dir / "duplicates.csv", DUPLICATE_COLUMNS, duplicate_rows(audit.pairs))
    relabel: dict = {}
    for r in audit.issues:  # worst first; a multi-label image flagged on two labels keeps its worst row
        relabel.setdefault(r[0], r[2])
    if audit.relabel is not None:
        relabel = audit.relabel
    write_csv(out_dir / "relabel.csv", ["path", "label"], [[p, lab] for p, lab in relabel.items()])
    write_csv(out_dir / "exclude.csv", ["path"], [[p] for p in to_exclude(audit.pairs)])
    atomic_write_json(out_dir / "audit.json", summary_facts(audit))
    return [out_dir / n for n in ("label_issues.csv", "duplicates.csv", "relabel.csv", "exclude.csv", "audit.json")]


def summary_facts(audit: Audit) -> dict:
    leaks = [p for p in audit.pairs if p.across_splits]
    facts = {"task": audit.task, "images": audit.n, "test_images": audit.test_images,
             "label_issues": len(audit.issues), "label_issue_fraction": len(audit.issues) / max(audit.n, 1),
             "duplicate_pairs": len(audit.pairs), "leaks": len(leaks),
             "pairs_with_different_labels": sum(p.labels_differ for p in audit.pairs),
             "thresholds": audit.thresholds, "top_confusions": top_confusions(audit)}
    if audit.multiclass is not None:
        facts["class_thresholds"] = dict(zip(audit.classes, audit.multiclass.thresholds.round(6).tolist()))
        facts["confident_joint"] = audit.multiclass.confident_joint.tolist()
    return facts


def top_confusions(audit: Audit, n: int = 3) -> list[dict]:
    """The most frequent (given -> suggested) pairs among the flagged images."""
    from collections import Counter
    head = (lambda r: f"{r[5]} ") if audit.columns == HEAD_ISSUE_COLUMNS else (lambda r: "")
    counts = Counter((head(r) + r[1], r[2]) for r in audit.issues)
    return [{"given": g, "suggested": s, "count": c} for (g, s), c in counts.most_common(n)]


def summary_words(audit: Audit) -> str:
    """'about 6% of labels look wrong, mostly 7 -> 1; 10 test images also appear in train'."""
    pct = 100 * len(audit.issues) / max(audit.n, 1)
    parts = [f"about {pct:.1f}% of labels look wrong ({len(audit.issues)} of {audit.n})"]
    top = top_confusions(audit, 2)
    if top:
        parts[0] += ", mostly " + " and ".join(f"{t['given']} -> {t['suggested']} ({t['count']})" for t in top)
    leaks = [p for p in audit.pairs if p.across_splits]
    within = len(audit.pairs) - len(leaks)
    differ = sum(p.labels_differ for p in audit.pairs)
    parts.append(f"{within} duplicate pair(s) within the training data"
                 + (f", {differ} of them with different labels" if differ else ""))
    if audit.test_images:
        leaked = {im.path for p in leaks for im in (p.a, p.b) if im.split == "test"}
        parts.append(f"{len(leaked)} of {audit.test_images} test image(s) also appear in the training data")
    return "; ".join(parts) + "."
