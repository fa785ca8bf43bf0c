"""The registry entries behind config keys: which losses, optimizers and schedules there are, the
parameters each takes, and the chosen entries' parameters as the engine passes them.

Above the schema: these ask imgcls.losses, imgcls.optim and imgcls.tasks (imported in the functions,
so importing imgcls.config does not import torch).
"""
from __future__ import annotations

import typing
from dataclasses import fields
from typing import Any, Optional

from ..errors import UserError
from .parse import coerce
from .schema import SECTION_TYPES, SchedConfig, Sections


def registries(task=None) -> dict:
    """section -> (what an entry is called, the entry names, entry name -> the parameters it takes);
    the losses are those ``task`` offers, by the names its users write (focal, not binary_focal)."""
    from .. import losses, optim
    from ..tasks import get_task
    task = task or get_task("multiclass")
    return {
        "loss": ("loss", list(task.losses), lambda n: losses.loss_info(task.resolve_loss(n)).params),
        "optim": ("optimizer", optim.list_optimizers(), lambda n: optim.optim_info(n).params),
        "sched": ("schedule", optim.list_schedulers(), lambda n: optim.sched_info(n).params),
    }


def loss_kwargs(cfg: Sections) -> dict[str, Any]:
    """The parameters the chosen loss takes (``loss.name`` auto resolved through the task), from cfg."""
    from ..losses import loss_info
    from ..tasks import get_task
    name = get_task(cfg.task.type).resolve_loss(cfg.loss.name)
    return {p: getattr(cfg.loss, p) for p in loss_info(name).params}


def optim_kwargs(cfg: Sections) -> dict[str, Any]:
    """The parameters the chosen optimizer takes besides lr and weight_decay, from cfg."""
    from ..optim import optim_info
    return {p: getattr(cfg.optim, p) for p in optim_info(cfg.optim.name).params}


def sched_kwargs(cfg: Sections) -> dict[str, Any]:
    """The parameters the chosen schedule takes that are config keys (``mode`` is the engine's), from cfg."""
    from ..optim import sched_info
    keys = {f.name for f in fields(SchedConfig)}
    return {p: getattr(cfg.sched, p) for p in sched_info(cfg.sched.name).params if p in keys}


def _section_params(task_type: str) -> dict:
    """section -> (the entry names a user may write, entry name -> the parameters it takes) for the flat
    sections; a multi-head task sets its losses per head, so its loss section has no entries to switch."""
    from ..tasks import get_task, list_tasks
    if task_type not in list_tasks():
        task_type = "multiclass"  # from_dict names the unknown type; until then, switch as multiclass does
    task = get_task(task_type)
    out = {s: (set(names), params_of) for s, (_, names, params_of) in registries(task).items()}
    if task_type == "multihead":
        del out["loss"]
    else:
        out["loss"][0].add("auto")
    return out


def _head_params(kind: Any, loss: Any) -> Optional[tuple]:
    """The parameters of a head's loss (``auto`` resolved by the head's type), or None when either is unknown."""
    from ..losses import loss_info
    from ..tasks import get_task
    if str(kind) not in ("multiclass", "regression"):
        return None
    task = get_task(str(kind))
    if str(loss) != "auto" and str(loss) not in task.losses:
        return None
    return tuple(loss_info(task.resolve_loss(str(loss))).params)


def _is_default(section: str, name: str, value: Any, defaults: dict) -> bool:
    """Whether ``value`` (a string from YAML, or a Python value) is the key's default once typed."""
    try:
        return coerce(f"{section}.{name}", value, typing.get_type_hints(SECTION_TYPES[section])[name]) \
            == defaults[section][name]
    except UserError:
        return False


def drop_left_behind(before: dict, after: dict, explicit: set, defaults: dict) -> list[str]:
    """Where ``after`` switched a loss, optimizer or schedule (or a head's loss) that ``before`` chose, remove
    from ``after`` the parameters that came with the old entry and that the new one does not take; returns
    one note per removed key. ``explicit`` holds the keys the user set with the switch (never removed);
    ``defaults`` is each section's default values: a flat key holding its default is fine either way."""
    notes = []
    task_type = str((after.get("task") or {}).get("type") or "multiclass")
    for section, (names, params_of) in _section_params(task_type).items():
        old_s, new_s = before.get(section) or {}, after.get(section) or {}
        old, new = str(old_s.get("name", defaults[section]["name"])), str(new_s.get("name", defaults[section]["name"]))
        if old == new or old not in names or new not in names or not isinstance(new_s, dict):
            continue
        for p in params_of(old):
            key = f"{section}.{p}"
            if (p in params_of(new) or key in explicit or p not in new_s or p not in defaults[section]
                    or new_s[p] != old_s.get(p) or _is_default(section, p, new_s[p], defaults)):
                continue
            notes.append(f"{section}.name is {new}: dropped {key}={new_s.pop(p)}, which came with {old} "
                         f"and {new} does not take.")
    old_heads = (before.get("task") or {}).get("heads") or {}
    new_heads = (after.get("task") or {}).get("heads") or {}
    for name, spec in new_heads.items():
        old = old_heads.get(name)
        if not isinstance(spec, dict) or not isinstance(old, dict):
            continue
        was, now = old.get("loss", "auto"), spec.get("loss", "auto")
        taken, taking = _head_params(old.get("type", "multiclass"), was), _head_params(spec.get("type", "multiclass"), now)
        if str(was) == str(now) or taken is None or taking is None or {"task.heads", f"task.heads.{name}"} & explicit:
            continue  # the same loss, an unknown one (from_dict names it), or a head given whole
        for p in taken:
            key = f"task.heads.{name}.{p}"
            if p in taking or key in explicit or p not in spec or spec[p] != old.get(p):
                continue
            notes.append(f"task.heads.{name}.loss is {now}: dropped {key}={spec.pop(p)}, which came with {was} "
                         f"and {now} does not take.")
    return notes
