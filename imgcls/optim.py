"""Optimizers with decay/no-decay parameter groups, and epoch-configured LR schedules.

Schedules are configured in EPOCHS but applied per OPTIMIZER STEP at the fractional epoch
t = num_updates / steps_per_epoch, so warmup and cosine are smooth and do not depend on how
many micro-batches are accumulated into one step. The loop calls, in this order:

    optimizer.step(); num_updates += 1; scheduler.step_update(num_updates)   # every optimizer step
    scheduler.step_epoch(val_metric)                                          # after each validation
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from imgcls.errors import UserError, unknown_name
from imgcls.registry import Param, reject_unknown, with_defaults

# --------------------------------------------------------------------------- optimizers


def _check_momentum(momentum: float) -> float:
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise UserError(f"optim.momentum must be in [0, 1), got {momentum!r}; 0.9 is usual.")
    return float(momentum)


def _check_nesterov(nesterov: bool) -> bool:
    if not isinstance(nesterov, bool):
        raise UserError(f"optim.nesterov must be true or false, got {nesterov!r}.")
    return nesterov


def _check_betas(betas) -> tuple[float, float]:
    ok = isinstance(betas, (list, tuple)) and len(betas) == 2 and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
    if not ok:
        raise UserError(f"optim.betas must be two numbers in [0, 1), got {betas!r}; [0.9, 0.999] is usual.")
    return (float(betas[0]), float(betas[1]))


# Every parameter an optimizer may take besides lr and weight_decay. Config key: optim.<name>.
OPTIM_PARAMS: dict[str, Param] = {
    "momentum": Param(0.9, _check_momentum, "heavy-ball momentum; 0 = plain SGD"),
    "nesterov": Param(True, _check_nesterov, "Nesterov momentum (needs momentum > 0)"),
    "betas": Param((0.9, 0.999), _check_betas, "Adam's moment decay rates"),
}


@dataclass(frozen=True)
class OptimInfo:
    name: str
    description: str
    params: tuple[str, ...]   # keyword parameters besides lr and weight_decay (which every optimizer takes)
    build: Callable[..., torch.optim.Optimizer]  # (param groups, lr, **params) -> optimizer


_OPTIMIZERS: dict[str, OptimInfo] = {i.name: i for i in (
    # torch rejects nesterov without momentum; plain SGD is what momentum=0 asks for.
    OptimInfo("sgd", "SGD with momentum; weight decay added to the gradient", ("momentum", "nesterov"),
              lambda groups, lr, momentum, nesterov: torch.optim.SGD(
                  groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)),
    # Adam's weight_decay is an L2 term added to the gradient (coupled to the adaptive step).
    OptimInfo("adam", "Adam; weight decay as L2 on the gradient (coupled)", ("betas",),
              lambda groups, lr, betas: torch.optim.Adam(groups, lr=lr, betas=betas)),
    # AdamW decays the weights directly by lr * weight_decay per step (decoupled).
    OptimInfo("adamw", "AdamW; weight decay applied to the weights directly (decoupled)", ("betas",),
              lambda groups, lr, betas: torch.optim.AdamW(groups, lr=lr, betas=betas)),
)}


def list_optimizers() -> list[str]:
    """Names accepted by `create_optimizer`, sorted."""
    return sorted(_OPTIMIZERS)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into [decay, no_decay] groups.

    Biases and normalisation weights (every parameter with ndim <= 1), plus any names listed by a
    timm-style `model.no_weight_decay()`, get weight_decay 0. Frozen parameters are left out.
    Both groups are always present (one may be empty) so group 0 is always the decay group.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]


def optim_info(name: str) -> OptimInfo:
    if name not in _OPTIMIZERS:
        raise unknown_name("optimizer", name, list_optimizers())
    return _OPTIMIZERS[name]


def check_lr(lr: float) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise UserError(f"optim.lr must be > 0, got {lr!r}; set a positive learning rate such as 1e-3.")
    return float(lr)


def check_weight_decay(weight_decay: float) -> float:
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not (
            math.isfinite(weight_decay) and weight_decay >= 0):
        raise UserError(f"optim.weight_decay must be >= 0, got {weight_decay!r}; use 0 to disable it.")
    return float(weight_decay)


def check_optim_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of optimizer `name`, checked and with defaults filled in; used by the config too."""
    info = optim_info(name)
    reject_unknown("optimizer", name, info.params, params, "optim", always=("lr", "weight_decay"))
    return {p: OPTIM_PARAMS[p].check(v) for p, v in with_defaults(OPTIM_PARAMS, info.params, params).items()}


def create_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    groups: Optional[list[dict[str, Any]]] = None,
    **params: Any,
) -> torch.optim.Optimizer:
    """Create optimizer `name` over the model's trainable parameters (see `param_groups`).

    `lr` is the peak LR per optimizer step (not per micro-batch). `params` are the ones the entry
    takes (sgd: momentum, nesterov; adam, adamw: betas); anything else is refused. `groups`: parameter
    groups with their own lr and weight_decay instead (fine-tuning's layer decay or backbone lr).
    """
    info = optim_info(name)
    checked = check_optim_params(name, params)
    lr, weight_decay = check_lr(lr), check_weight_decay(weight_decay)
    groups = param_groups(model, weight_decay) if groups is None else groups
    if not any(g["params"] for g in groups):
        raise UserError("the model has no trainable parameters; unfreeze at least one layer.")
    return info.build(groups, lr, **checked)


def get_lr(optimizer: torch.optim.Optimizer) -> float:
    """LR of the first param group (what the next optimizer step uses); the `lr` column of metrics."""
    return float(optimizer.param_groups[0]["lr"])


# --------------------------------------------------------------------------- schedulers
# A schedule is one `SchedInfo` entry: the parameters it takes and its LR formula. Parameter checks
# get the run's epochs and base LR, so cross-field rules (warmup < epochs, min_lr <= lr) hold for the
# config at load and for Python callers of `create_scheduler` alike.


def _number(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise UserError(f"{key} must be a number, got {v!r}.")
    return float(v)


def _check_warmup(w: Any, *, epochs: int, lr: float) -> float:
    w = _number("sched.warmup_epochs", w)
    if not 0 <= w < epochs:
        raise UserError(f"sched.warmup_epochs must be >= 0 and below train.epochs ({epochs}), got {w:g}; "
                        "shorten the warmup.")
    return w


def _check_step_size(v: Any, *, epochs: int, lr: float) -> float:
    if not _number("sched.step_size", v) > 0:
        raise UserError(f"sched.step_size must be > 0 epochs, got {v}; e.g. 30.")
    return float(v)


def _check_gamma(v: Any, *, epochs: int, lr: float) -> float:
    if not _number("sched.gamma", v) > 0:
        raise UserError(f"sched.gamma must be > 0, got {v}; e.g. 0.1.")
    return float(v)


def _check_min_lr(v: Any, *, epochs: int, lr: float) -> float:
    if not 0 <= _number("sched.min_lr", v) <= lr:
        raise UserError(f"sched.min_lr must be between 0 and optim.lr ({lr:g}), got {v:g}; lower it.")
    return float(v)


def _check_patience(v: Any, *, epochs: int, lr: float) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise UserError(f"sched.patience must be an integer >= 0, got {v!r}.")
    return v


def _check_factor(v: Any, *, epochs: int, lr: float) -> float:
    if not 0 < _number("sched.factor", v) < 1:
        raise UserError(f"sched.factor must be in (0, 1), got {v:g}; e.g. 0.1.")
    return float(v)


def _check_mode(v: Any, *, epochs: int, lr: float) -> str:
    if v not in ("max", "min"):
        raise UserError(f"the plateau schedule's mode must be 'max' or 'min' (the direction of train.monitor), "
                        f"got {v!r}.")
    return v


# Every parameter a schedule may take. Config key: sched.<name>, except `mode`, which the engine
# passes from the monitored metric's direction.
SCHED_PARAMS: dict[str, Param] = {
    "warmup_epochs": Param(0.0, _check_warmup, "linear warm-up, in epochs"),
    "step_size": Param(30.0, _check_step_size, "epochs between decays"),
    "gamma": Param(0.1, _check_gamma, "LR multiplier at each decay"),
    "min_lr": Param(0.0, _check_min_lr, "LR floor"),
    "patience": Param(2, _check_patience, "epochs without improvement before a cut"),
    "factor": Param(0.1, _check_factor, "LR multiplier at a cut"),
    "mode": Param("max", _check_mode, "'max' or 'min': the monitored metric's direction"),
}

# OneCycleLR's defaults in torch; the peak is the optimizer's lr.
_ONECYCLE_PCT_START = 0.3
_ONECYCLE_DIV = 25.0
_ONECYCLE_FINAL_DIV = 1e4


def _onecycle_lr(max_lr: float, step: int, total_steps: int) -> float:
    """torch.optim.lr_scheduler.OneCycleLR's LR at `step` (two phases, cos annealing)."""
    initial = max_lr / _ONECYCLE_DIV
    final = initial / _ONECYCLE_FINAL_DIV
    phases = [(float(_ONECYCLE_PCT_START * total_steps) - 1, initial, max_lr), (total_steps - 1, max_lr, final)]
    start_step = 0.0
    for i, (end_step, start_lr, end_lr) in enumerate(phases):
        if step <= end_step or i == len(phases) - 1:
            pct = (step - start_step) / (end_step - start_step)
            return end_lr + (start_lr - end_lr) / 2.0 * (math.cos(math.pi * pct) + 1)
        start_step = end_step
    raise AssertionError("unreachable")


# The formulas: (scheduler, base LR b, optimizer steps done n) -> LR of step n + 1, after warm-up.
# s.p holds the entry's parameters, s.steps_per_epoch (spe) and s.epochs (E) the run's length.

def _lr_none(s: "Scheduler", b: float, n: int) -> float:
    return b


def _lr_step(s: "Scheduler", b: float, n: int) -> float:
    # Epochs are counted from 0, not from the end of warm-up. The 1e-9 tolerance stops float rounding
    # (e.g. 3 / (0.3 * 10)) from delaying a drop by a step.
    return b * s.p["gamma"] ** math.floor(n / (s.p["step_size"] * s.steps_per_epoch) + 1e-9)


def _lr_cosine(s: "Scheduler", b: float, n: int) -> float:
    w, lo = s.p["warmup_epochs"], s.p["min_lr"]
    progress = min(1.0, (n / s.steps_per_epoch - w) / (s.epochs - w))  # held at min_lr after E
    return lo + (b - lo) * (1 + math.cos(math.pi * progress)) / 2


def _lr_onecycle(s: "Scheduler", b: float, n: int) -> float:
    total = s.epochs * s.steps_per_epoch
    return _onecycle_lr(b, min(n, total - 1), total)  # held at its final LR after the last step


def _lr_plateau(s: "Scheduler", b: float, n: int) -> float:
    return max(s.p["min_lr"], b * s.scale)


def _plateau_epoch(s: "Scheduler", metric: float) -> None:
    """torch's ReduceLROnPlateau with threshold=0 and cooldown=0."""
    improved = metric > s.best if s.p["mode"] == "max" else metric < s.best
    if improved:
        s.best, s.num_bad_epochs = metric, 0
    else:
        s.num_bad_epochs += 1
    if s.num_bad_epochs > s.p["patience"]:
        s.scale *= s.p["factor"]
        s.num_bad_epochs = 0


@dataclass(frozen=True)
class SchedInfo:
    name: str
    description: str
    params: tuple[str, ...]                              # keyword parameters (see SCHED_PARAMS)
    lr: Callable[["Scheduler", float, int], float]       # the LR formula after warm-up (if it takes one)
    step_epoch: Optional[Callable[["Scheduler", float], None]] = None  # after each validation, with the metric


_SCHEDULERS: dict[str, SchedInfo] = {i.name: i for i in (
    SchedInfo("none", "constant LR after the optional warm-up", ("warmup_epochs",), _lr_none),
    SchedInfo("step", "LR times gamma every step_size epochs", ("warmup_epochs", "step_size", "gamma"), _lr_step),
    SchedInfo("cosine", "cosine decay from optim.lr to min_lr at the last epoch", ("warmup_epochs", "min_lr"), _lr_cosine),
    SchedInfo("onecycle", "torch's OneCycleLR: its own warm-up over the first 30% to a peak of optim.lr", (), _lr_onecycle),
    SchedInfo("plateau", "LR times factor once train.monitor has not improved for more than patience epochs",
              ("warmup_epochs", "min_lr", "patience", "factor", "mode"), _lr_plateau, _plateau_epoch),
)}


def list_schedulers() -> list[str]:
    """Names accepted by `create_scheduler`, sorted."""
    return sorted(_SCHEDULERS)


def sched_info(name: str) -> SchedInfo:
    if name not in _SCHEDULERS:
        raise unknown_name("scheduler", name, list_schedulers())
    return _SCHEDULERS[name]


def scheduler_takes(name: str, param: str) -> bool:
    """Whether schedule `name` takes `param` (the engine passes `mode` only to those that do)."""
    return param in sched_info(name).params


def check_sched_params(name: str, params: dict[str, Any], *, epochs: int, lr: float) -> dict[str, Any]:
    """The parameters of schedule `name`, checked against the run's epochs and (smallest) base LR,
    with defaults filled in; used by the config too."""
    info = sched_info(name)
    reject_unknown("scheduler", name, info.params, params, "sched")
    return {p: SCHED_PARAMS[p].check(v, epochs=epochs, lr=lr)
            for p, v in with_defaults(SCHED_PARAMS, info.params, params).items()}


class Scheduler:
    """Per-optimizer-step LR schedule configured in epochs. Build it with `create_scheduler`.

    For a param group with base LR b (its lr when the scheduler is built), E = epochs,
    w = warmup_epochs, n = optimizer steps done and t = n / steps_per_epoch (fractional epochs),
    the LR of step n+1 is:

    - warmup, while t < w: b * min(1, (n + 1) / (w * steps_per_epoch)); a linear ramp that gives
      the first step b / (w * steps_per_epoch), never 0, and reaches b on the last warmup step.
    - none: b
    - step: b * gamma ** floor(t / step_size); t is counted from 0, not from the end of warmup.
    - cosine: min_lr + (b - min_lr) * (1 + cos(pi * (t - w) / (E - w))) / 2, held at min_lr after E.
    - onecycle: torch's OneCycleLR (cos annealing, pct_start 0.3, max_lr b, div_factor 25,
      final_div_factor 1e4) over E * steps_per_epoch steps, held at its final LR after them.
      It has its own warm-up, so it takes no warmup_epochs; momentum is not cycled.
    - plateau: max(min_lr, b * factor ** reductions). `step_epoch(metric)` follows torch's
      ReduceLROnPlateau with threshold=0 and cooldown=0: an epoch improves only if the metric is
      strictly better than the best so far (mode 'max': greater, 'min': smaller); the LR is reduced
      on the epoch when more than `patience` consecutive epochs have not improved (with patience 2:
      on the third), and the count then restarts.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, name: str, *, epochs: int, steps_per_epoch: int,
                 **params: Any) -> None:
        self.info = sched_info(name)
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise UserError(f"train.epochs must be an integer >= 1, got {epochs!r}; set at least one epoch.")
        self.optimizer = optimizer
        self.name = name
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.p = check_sched_params(name, params, epochs=epochs, lr=min(self.base_lrs))
        self.warmup_epochs = self.p.get("warmup_epochs", 0.0)
        self.num_updates = 0
        # Metric state (plateau); the first metric always counts as an improvement.
        self.best = math.inf if self.p.get("mode") == "min" else -math.inf
        self.num_bad_epochs = 0
        self.scale = 1.0
        self._apply()

    def _lr(self, base: float, n: int) -> float:
        """LR of optimizer step n + 1 for a group with base LR `base`."""
        w = self.warmup_epochs * self.steps_per_epoch  # warm-up steps (fractional)
        if n < w:
            return base * min(1.0, (n + 1) / w)
        return self.info.lr(self, base, n)

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self._lr(base, self.num_updates)

    # -- called by the loop

    def step_update(self, num_updates: int) -> None:
        """Call right after each optimizer.step() with the optimizer steps done so far (1, 2, ...)."""
        self.num_updates = int(num_updates)
        self._apply()

    def step_epoch(self, metric: float | None = None) -> None:
        """Call after each validation; only plateau uses the metric, and None (no validation) is ignored."""
        if self.info.step_epoch is None or metric is None:
            return
        self.info.step_epoch(self, float(metric))
        self._apply()

    # -- resume

    def state_dict(self) -> dict[str, Any]:
        """Plain values (str, int, float, list) so torch.load(weights_only=True) can read them."""
        return {
            "name": self.name,
            "num_updates": self.num_updates,
            "base_lrs": list(self.base_lrs),
            "best": self.best,
            "num_bad_epochs": self.num_bad_epochs,
            "scale": self.scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters and base LRs, then set the LR the next optimizer step will use."""
        if state["name"] != self.name:
            raise UserError(
                f"the checkpoint was trained with scheduler '{state['name']}', not '{self.name}'; "
                "resume with the same scheduler."
            )
        # Base LRs come from the checkpoint: the optimizer's current lr may already be a scheduled one.
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self.num_updates = int(state["num_updates"])
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.scale = float(state["scale"])
        self._apply()


def create_scheduler(optimizer: torch.optim.Optimizer, name: str, *, epochs: int, steps_per_epoch: int,
                     **params: Any) -> Scheduler:
    """Create LR schedule `name` (see `Scheduler`) and set the LR of the first optimizer step.

    `steps_per_epoch` counts optimizer steps, i.e. ceil(micro_batches / accumulate); `epochs`,
    `warmup_epochs` and `step_size` are in epochs (fractions allowed for the last two). `params` are
    the ones the entry takes (`sched_info(name).params`); anything else is refused.
    """
    return Scheduler(optimizer, name, epochs=epochs, steps_per_epoch=steps_per_epoch, **params)
