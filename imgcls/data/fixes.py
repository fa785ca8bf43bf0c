"""``data.relabel`` (CSV path,label) and ``data.exclude`` (CSV path): the fixes ``imgcls audit`` proposes,
applied where the data are read, so training, cv, tune, evaluate and check-data see the same corrected set.
The image files are never moved or rewritten.

A path in either CSV matches an image when it is absolute, or relative to the CSV's own folder, or relative
to a data root (data.root, the folder of data.csv, data.val_root, the folder of data.val_csv). A path that
matches no image is not an error (a fix may name an image of another split), but the count is warned.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import UserError
from ..io import file_sha256, read_csv_rows


def _key(path: str | os.PathLike) -> str:
    return os.path.normcase(os.path.normpath(os.path.abspath(os.path.expanduser(str(path)))))


@dataclass(frozen=True)
class Fixes:
    relabel: list[tuple[str, str]]    # (path as written, label)
    exclude: list[str]                # paths as written
    relabel_csv: Optional[str]
    exclude_csv: Optional[str]

    def candidates(self, roots: Sequence[str]) -> dict[str, tuple[str, int]]:
        """Every absolute form of every entry -> (which file, the entry's index)."""
        out: dict[str, tuple[str, int]] = {}
        for kind, csv_path, entries in (("exclude", self.exclude_csv, self.exclude),
                                        ("relabel", self.relabel_csv, [p for p, _ in self.relabel])):
            bases = [str(Path(csv_path).parent)] + list(roots) if csv_path else list(roots)
            for i, p in enumerate(entries):
                forms = [p] if os.path.isabs(os.path.expanduser(p)) else [os.path.join(b, p) for b in bases]
                for f in forms:
                    out.setdefault(f"{kind}:{_key(f)}", (kind, i))
        return out


def _read_column(csv_path: str, columns: Sequence[str], key: str) -> list[list[str]]:
    if not Path(csv_path).is_file():
        raise UserError(f"{key} '{csv_path}' does not exist; pass the CSV imgcls audit wrote (or remove {key}).")
    header, rows = read_csv_rows(csv_path)
    missing = [c for c in columns if c not in header]
    if missing:
        raise UserError(f"{key} '{csv_path}' has no column '{missing[0]}'; it needs the columns "
                        f"{','.join(columns)}.")
    idx = [header.index(c) for c in columns]
    return [[r[i].strip() for i in idx] for r in rows if any(r[i].strip() for i in idx)]


def read_fixes(relabel: Optional[str], exclude: Optional[str]) -> Optional[Fixes]:
    if not relabel and not exclude:
        return None
    rel = [(p, lab) for p, lab in _read_column(relabel, ["path", "label"], "data.relabel")] if relabel else []
    exc = [r[0] for r in _read_column(exclude, ["path"], "data.exclude")] if exclude else []
    return Fixes(rel, exc, relabel, exclude)


def apply_fixes(fixes: Fixes, roots: Sequence[str], paths: list[str], labels: list, columns: Sequence[list]):
    """(paths, labels, columns) with the excluded images left out and the relabelled ones' labels replaced
    (``columns``: other per-image lists, filtered alike; None entries pass), and the set of entries matched."""
    cand = fixes.candidates(roots)
    keep, new_labels, matched = [], [], set()
    for i, (p, lab) in enumerate(zip(paths, labels)):
        k = _key(p)
        if f"exclude:{k}" in cand:
            matched.add(cand[f"exclude:{k}"])
            continue
        if f"relabel:{k}" in cand:
            hit = cand[f"relabel:{k}"]
            matched.add(hit)
            lab = relabelled(fixes, hit[1], lab)
        keep.append(i)
        new_labels.append(lab)
    cols = [None if c is None else [c[i] for i in keep] for c in columns]
    return [paths[i] for i in keep], new_labels, cols, matched


def relabelled(fixes: Fixes, entry: int, old):
    """The label of relabel entry ``entry``; for a multi-head task (``old`` a tuple, one value per head) the
    entry gives every head's value joined by '|' in task.heads order ('r|plain|34.5', as imgcls audit
    writes it)."""
    text = fixes.relabel[entry][1]
    if not isinstance(old, tuple):
        return text
    parts = tuple(v.strip() for v in text.split("|"))
    if len(parts) != len(old):
        raise UserError(f"data.relabel '{fixes.relabel_csv}' gives '{text}' for '{fixes.relabel[entry][0]}', but "
                        f"this task has {len(old)} heads; give every head's value joined by '|' in task.heads "
                        "order (as imgcls audit's relabel.csv does).")
    return parts


def warn_unmatched(fixes: Optional[Fixes], matched: set) -> None:
    if fixes is None:
        return
    for kind, csv_path, n in (("exclude", fixes.exclude_csv, len(fixes.exclude)),
                              ("relabel", fixes.relabel_csv, len(fixes.relabel))):
        missed = n - sum(1 for m in matched if m[0] == kind)
        if missed:
            warnings.warn(f"{missed} of {n} path(s) in data.{kind} '{csv_path}' match no image of the data; they "
                          "are ignored (paths are absolute, or relative to the CSV or to the data root).",
                          stacklevel=4)


def fixes_record(relabel: Optional[str], exclude: Optional[str]) -> dict:
    """What a run records of its fixes: each file's path, SHA-256 and number of rows."""
    fixes = read_fixes(relabel, exclude)
    out = {}
    if relabel:
        out["relabel"] = {"path": relabel, "sha256": file_sha256(relabel), "rows": len(fixes.relabel)}
    if exclude:
        out["exclude"] = {"path": exclude, "sha256": file_sha256(exclude), "rows": len(fixes.exclude)}
    return out
