"""audit.html: the audit in the report's page shell, one self-contained file (images as data URIs).

Sections: a summary in words; the flagged images, each with its given and suggested label beside the most
typical training image of the suggested class (its unflagged image of highest out-of-fold probability);
duplicate pairs side by side; the confident joint as a heatmap (multiclass).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib.figure import Figure

from ..io import atomic_write_text
from .auditdata import Audit, summary_words
from .gallery import thumbnail
from .html import esc, img, page, png_uri, section, table
from .plots import png_bytes

SHOWN = 48  # flagged images and duplicate pairs drawn on the page; the CSVs hold them all
THUMB = 96


def _thumb(path: Optional[str], caption: str) -> str:
    uri = thumbnail(Path(path), THUMB) if path else None
    pic = img(uri, caption, "thumb") if uri else '<div class="missing small">no image</div>'
    return (f'<figure class="ex small">{pic}<figcaption>{esc(caption)}'
            f'<span class="path">{esc(Path(path).name if path else "")}</span></figcaption></figure>')


def joint_heatmap(cj: np.ndarray, classes: list[str]) -> Figure:
    k = len(classes)
    side = min(max(3.5, 0.4 * k + 1.5), 11.0)
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.subplots()
    off = cj.astype(float).copy()
    np.fill_diagonal(off, 0)  # the diagonal (labels that agree) would drown the noise
    im = ax.imshow(off, cmap="Reds", vmin=0, vmax=max(off.max(), 1), interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title("confident joint, off-diagonal (images)")
    ax.set_xlabel("confident true label")
    ax.set_ylabel("given label")
    if k <= 40:
        ax.set_xticks(range(k), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if cj[i, j]:
                    ax.text(j, i, str(int(cj[i, j])), ha="center", va="center", fontsize=8)
    return fig


def _issues_section(audit: Audit) -> str:
    cards = []
    for path, given, suggested, score, fold, *head in audit.issues[:SHOWN]:
        beside = audit.exemplars.get(suggested)
        what = f"{head[0]}: " if head else ""
        cards.append(f'<div class="class-card"><b>{esc(what + given)} → {esc(suggested)}</b><div class="pair">'
                     f'{_thumb(path, f"given {given}, score {float(score):.3f}")}'
                     + (_thumb(beside, f"a typical {suggested}") if beside else "")
                     + f"</div></div>")
    body = f'<div class="grid">{"".join(cards)}</div>' if cards else "<p>No label looks wrong.</p>"
    intro = (f"{len(audit.issues)} flagged, worst first (score: the out-of-fold probability of the given label); "
             f"the first {min(SHOWN, len(audit.issues))} are shown, all are in label_issues.csv.")
    return section("issues", "Label issues", body, intro)


def _pairs_section(audit: Audit) -> str:
    rows = []
    for p in audit.pairs[:SHOWN]:
        rows.append(f"<tr><td>{_thumb(p.a.path, f'{p.a.split} {p.a.label}')}</td>"
                    f"<td>{_thumb(p.b.path, f'{p.b.split} {p.b.label}')}</td>"
                    f"<td>{esc(p.method)} {p.distance} (≤ {p.threshold})</td>"
                    f"<td>{'leak' if p.across_splits else 'same split'}"
                    f"{', labels differ' if p.labels_differ else ''}</td></tr>")
    body = table(["image a", "image b", "distance", "kind"], rows) if rows else "<p>No duplicates found.</p>"
    t = audit.thresholds
    by_embedding = ("" if "embedding_min_cosine" not in t else
                    f", and pairs whose embeddings by the {t.get('embedding_models')} fold model(s) have a mean cosine "
                    f"similarity of at least {t['embedding_min_cosine']} (distance 1 - cosine)")
    intro = (f"{len(audit.pairs)} pair(s): exact copies ({esc(t.get('exact', ''))}), pHash near-duplicates "
             f"within {t.get('phash_max_distance')} bits of 64{by_embedding}; different labels first, then leaks.")
    return section("duplicates", "Duplicates and leaks", body, intro)


def write_audit_report(audit: Audit, out_dir: Path) -> Path:
    parts = [section("summary", "Summary", f"<p>{esc(summary_words(audit))}</p>"), _issues_section(audit),
             _pairs_section(audit)]
    nav = [("summary", "Summary"), ("issues", "Label issues"), ("duplicates", "Duplicates")]
    if audit.multiclass is not None:
        fig = joint_heatmap(audit.multiclass.confident_joint, audit.classes)
        parts.append(section("joint", "Estimated noise between classes", img(png_uri(png_bytes(fig)), "confident joint"),
                             "How many images of each given label (row) the fold models confidently put in "
                             "another class (column)."))
        nav.append(("joint", "Noise"))
    html = page("imgcls audit", esc(f"{audit.task}, {audit.n} images"), nav, "".join(parts),
                "written by imgcls audit")
    path = out_dir / "audit.html"
    atomic_write_text(path, html)
    return path
