"""Labels from the path, for data without a label file: a regular expression with named groups
(``data.path_pattern``) must match each image's whole POSIX path below the root, and each group
becomes a column of values, optionally renamed (``data.label_maps``) or binned (``data.bins``).

The course's layout ``train/images/<id>_<gender>_<race>_<age>/<mask1..mask5|incorrect_mask|normal>.jpg``
is read with COURSE_PATTERN and COURSE_MASK_MAP. A group named ``group`` is the person id, which the
caller uses for grouped splits; here it is a column like any other.
"""
from __future__ import annotations

import bisect
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imgcls.data.decode import IMAGE_EXTENSIONS
from imgcls.data.sources import FolderListing, images_under
from imgcls.errors import UserError
from imgcls.metrics import bin_names  # one spelling for data.bins and a regression's task.bins

COURSE_PATTERN = (r"(?P<group>\d+)_(?P<gender>male|female)_(?P<race>[^_/]+)_(?P<age>\d+)/"
                  r"(?P<mask>mask\d|incorrect_mask|normal)\.\w+")
COURSE_MASK_MAP = {"mask1": "wear", "mask2": "wear", "mask3": "wear", "mask4": "wear", "mask5": "wear",
                   "incorrect_mask": "incorrect", "normal": "not_wear"}
COURSE_AGE_BINS = [30, 60]  # the course's age classes: <30, 30-59, >=60


@dataclass
class PatternScan:
    """The images whose path matches, with one value per image for every group of the pattern."""
    paths: list[str]                    # root joined with the relative path, sorted by relative path
    columns: dict[str, list[str]]       # group -> value of each image (after label_maps / bins)
    class_order: dict[str, list[str]]   # mapped and binned groups only: their classes in order
    unmatched: list[str] = field(default_factory=list)  # image paths relative to root the pattern does not match
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): broken links, link loops
    found: int = 0                      # image files under root, matched or not
    problems: list[str] = field(default_factory=list)  # on_bad="collect": each sentence training would stop at


def unmatched_message(unmatched: Sequence[str], found: int, root, skipped: bool = False) -> str:
    """Training's sentence for the images ``data.path_pattern`` does not match (an error, or with
    ``skipped`` the warning of data.on_bad_image=skip); check-data quotes it as it stands."""
    shown = ", ".join(f"'{p}'" for p in unmatched[:3])
    head = f"{len(unmatched)} of {found} image file(s) under '{root}' do not match data.path_pattern"
    if skipped:
        return f"{head} and are skipped (data.on_bad_image=skip), e.g. {shown}."
    fix = "fix the pattern" if len(unmatched) == found else "fix the pattern or set data.on_bad_image=skip"
    return f"{head}, e.g. {shown}; {fix}."


def scan_pattern(
    root: str | os.PathLike,
    pattern: str,
    label_maps: Mapping[str, Mapping[str, str]] | None = None,
    bins: Mapping[str, Sequence[float]] | None = None,
    on_bad: str = "error",
) -> PatternScan:
    """Walk ``root`` (sorted, hidden entries and non-image files skipped silently, links to folders
    followed once) and read each image's groups from ``re.fullmatch(pattern, relative_path)``.

    ``label_maps[g]`` renames raw values of group g (its class order is the map's distinct targets in
    order); ``bins[g]`` turns group g's numbers into bin names (value v is in bin i when i boundaries
    are <= v; names from ``imgcls.metrics.bin_names``). Images the pattern does not match are an error with
    ``on_bad="error"`` and listed in ``unmatched`` with ``on_bad="skip"``. ``on_bad="collect"`` (check-data)
    stops at nothing: unmatched files are listed, and a file whose value cannot be mapped or binned is
    left out with training's sentence for it in ``problems``.
    """
    if on_bad not in ("error", "skip", "collect"):
        raise ValueError(f"on_bad must be 'error', 'skip' or 'collect', got {on_bad!r}")
    regex = compile_pattern(pattern)
    label_maps = {g: {str(k): str(v) for k, v in m.items()} for g, m in (label_maps or {}).items()}
    bins = {g: list(b) for g, b in (bins or {}).items()}
    _check_groups(regex, label_maps, bins)
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise UserError(f"data.root '{root}' {what}; point it at the folder whose paths data.path_pattern matches.")
    listing = FolderListing()
    found = images_under(root, listing)
    if not found:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under '{root}'; check data.root.")
    matches = [(rel, regex.fullmatch(rel)) for rel in found]
    unmatched = [rel for rel, m in matches if m is None]
    if unmatched and on_bad != "collect" and (on_bad == "error" or len(unmatched) == len(found)):
        raise UserError(unmatched_message(unmatched, len(found), root))
    binned = {g: (b, bin_names(b)) for g, b in bins.items()}
    kept, rows, problems = [], [], []
    for rel, m in matches:
        if m is None:
            continue
        try:
            rows.append([_value(g, m.group(g) or "", rel, label_maps, binned) for g in regex.groupindex])
        except UserError as e:
            if on_bad != "collect":
                raise
            problems.append(str(e))
            continue
        kept.append(rel)
    columns = {g: [row[j] for row in rows] for j, g in enumerate(regex.groupindex)}
    class_order = {g: list(dict.fromkeys(m.values())) for g, m in label_maps.items()}
    class_order.update({g: names for g, (_, names) in binned.items()})
    return PatternScan([str(root / rel) for rel in kept], columns, class_order, unmatched, listing.skipped,
                       len(found), problems)


def compile_pattern(pattern: str) -> re.Pattern:
    """The compiled ``data.path_pattern``; a bad expression or one without named groups is one sentence."""
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise UserError(f"data.path_pattern is not a valid regular expression ({e}); fix it.") from None
    if not regex.groupindex:
        raise UserError("data.path_pattern has no named groups; name the parts of the path that carry labels, "
                        "e.g. (?P<mask>[^/]+)/.")
    return regex


def _check_groups(regex: re.Pattern, label_maps: dict, bins: dict) -> None:
    groups = sorted(regex.groupindex)
    for key, table in (("data.label_maps", label_maps), ("data.bins", bins)):
        for g in table:
            if g not in regex.groupindex:
                raise UserError(f"{key} has group '{g}', which data.path_pattern does not have (groups: "
                                f"{', '.join(groups)}); rename it to one of them.")
    for g in sorted(set(label_maps) & set(bins)):
        raise UserError(f"group '{g}' has both data.label_maps.{g} and data.bins.{g}; keep one of them.")
    for g, b in bins.items():
        if not b or any(not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x) for x in b) \
                or any(lo >= hi for lo, hi in zip(b, b[1:])):
            raise UserError(f"data.bins.{g} must list increasing boundaries such as [30, 60], got {b}.")


def _value(group: str, raw: str, rel: str, label_maps: dict, bins: dict) -> str:
    """The column value of one group of one file; ``bins[g]`` is (boundaries, names)."""
    if group in label_maps:
        if raw not in label_maps[group]:
            raise UserError(f"group '{group}' has value '{raw}' in '{rel}', which data.label_maps.{group} does not "
                            f"map (it maps {', '.join(label_maps[group])}); add it to the map.")
        return label_maps[group][raw]
    if group in bins:
        try:
            v = float(raw)
        except ValueError:
            v = math.nan
        if not math.isfinite(v):
            raise UserError(f"group '{group}' has value '{raw}' in '{rel}', which is not a number, so "
                            f"data.bins.{group} cannot bin it; fix data.path_pattern or remove the bins.")
        return bins[group][1][bisect.bisect_right(bins[group][0], v)]  # i boundaries <= v: bin i
    return raw
