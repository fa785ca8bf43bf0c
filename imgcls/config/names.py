"""The registry entries behind config keys: which losses, optimizers and schedules there are, the
parameters each takes, and the chosen entries' parameters as the engine passes them.

Above the schema: these ask imgcls.losses, imgcls.optim and imgcls.tasks (imported in the functions,
so importing imgcls.config does not import torch).
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from .schema import SchedConfig, Sections


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
