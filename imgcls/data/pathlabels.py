"""Labels read from the path itself (the course's layout: no CSV, the class in the folder and file
names): ``data.path_pattern`` matched by ``imgcls.data.pattern``, then ``task.label`` picks the class.

``task.label`` is either one group of the pattern (``mask``) or a combine rule over groups
(``mask * 6 + gender * 3 + age``, parsed by ``imgcls.tasks.combine`` without eval). With a rule the classes
are the combined codes ``"0" .. "N-1"`` (all of them, even ones absent from the data), and the model
record stores which group values each code stands for. A group's classes are the order of its
``data.label_maps`` entry, its ``data.bins`` names, or else its distinct values sorted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from ..errors import UserError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class PathLabels:
    """The config keys behind labels from paths (data.path_pattern, data.label_maps, data.bins, task.label)."""
    pattern: str
    label: Optional[str]
    label_maps: Optional[dict] = None
    bins: Optional[dict] = None
    on_bad: str = "error"
    columns: Optional[tuple[str, ...]] = None  # multi-head: one group per head; labels are tuples


@dataclass
class PathLabelled:
    paths: list[str]
    labels: list[str]
    groups: Optional[list[str]]             # the 'group' group (a person id), if the pattern has one
    classes: Optional[list[str]]            # the class order, when the labels fix it
    record: dict = field(default_factory=dict)  # for model.json: the rule and what each code means
    unmatched: list[str] = field(default_factory=list)
    found: int = 0                          # image files under the root, matched or not
    problems: list[str] = field(default_factory=list)  # on_bad="collect": what training would stop at


def read_path_labels(root: str, spec: PathLabels, classes_of: Optional[dict] = None) -> PathLabelled:
    """Scan ``root`` with the pattern and label every file by ``spec.label``. ``classes_of`` (group ->
    class list) fixes each group's codes, so a separate validation folder codes like the training one."""
    from .pattern import scan_pattern
    scan = scan_pattern(root, spec.pattern, spec.label_maps, spec.bins, on_bad=spec.on_bad)
    seen = {"found": scan.found, "problems": scan.problems}
    cols = scan.columns
    groups = cols.get("group")
    if spec.columns:  # one label per head
        missing = [c for c in spec.columns if c not in cols]
        if missing:
            raise UserError(f"head label '{missing[0]}' is not a group of data.path_pattern (groups: "
                            f"{', '.join(sorted(cols))}); set task.heads.<name>.label to one of them.")
        return PathLabelled(scan.paths, list(zip(*(cols[c] for c in spec.columns))), groups, None,
                            {"class_order": {c: scan.class_order[c] for c in spec.columns if c in scan.class_order}},
                            scan.unmatched, **seen)
    label = spec.label.strip()
    if _NAME.fullmatch(label):  # one group is the class
        if label not in cols:
            raise UserError(f"task.label '{label}' is not a group of data.path_pattern (groups: "
                            f"{', '.join(sorted(cols))}); name one of them or write a combine rule.")
        order = (classes_of or {}).get(label) or scan.class_order.get(label)
        return PathLabelled(scan.paths, list(cols[label]), groups, list(order) if order else None,
                            {"label": label}, scan.unmatched, **seen)
    from ..tasks.combine import parse_combine
    group_classes = {n: list((classes_of or {}).get(n) or scan.class_order.get(n) or sorted(set(cols[n])))
                     for n in cols if n != "group"}
    rule = parse_combine(label, {n: len(c) for n, c in group_classes.items()}, key="task.label")
    codes = {}
    for n in rule.names:
        index = {c: i for i, c in enumerate(group_classes[n])}
        missing = sorted(set(cols[n]) - set(index))
        if missing:
            raise UserError(f"group '{n}' has value '{missing[0]}' that is not among its classes "
                            f"({', '.join(group_classes[n])}); add it to data.label_maps.{n}.")
        codes[n] = [index[v] for v in cols[n]]
    combined = [str(int(rule.apply({n: codes[n][i] for n in rule.names}))) for i in range(len(scan.paths))]
    record = {"label": label, "combine": rule.to_json(),
              "groups": {n: group_classes[n] for n in rule.names}}
    return PathLabelled(scan.paths, combined, groups, [str(i) for i in range(rule.size)], record, scan.unmatched,
                        **seen)
