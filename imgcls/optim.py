"""Optimizers with decay/no-decay parameter groups, and epoch-configured LR schedules.

Schedules are configured in EPOCHS but applied per OPTIMIZER STEP at the fractional epoch
t = num_updates / steps_per_epoch, so warmup and cosine are smooth and do not depend on how
many micro-batches are accumulated into one step. The loop calls, in this order:

    optimizer.step(); num_updates += 1; scheduler.step_update(num_updates)   # every optimizer step
    scheduler.step_epoch(val_metric)                                          # after each validation
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from imgcls.errors import UserError, unknown_name

# --------------------------------------------------------------------------- optimizers


def _sgd(groups: list[dict], lr: float, momentum: float, nesterov: bool, betas: tuple[float, float]):
    # torch rejects nesterov without momentum; plain SGD is what momentum=0 asks for.
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


def _adam(groups: list[dict], lr: float, momentum: float, nesterov: bool, betas: tuple[float, float]):
    # Adam's weight_decay is an L2 term added to the gradient (coupled to the adaptive step).
    return torch.optim.Adam(groups, lr=lr, betas=betas)


def _adamw(groups: list[dict], lr: float, momentum: float, nesterov: bool, betas: tuple[float, float]):
    # AdamW decays the weights directly by lr * weight_decay per step (decoupled).
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"adam": _adam, "adamw": _adamw, "sgd": _sgd}


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


def create_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    *,
    momentum: float = 0.9,
    nesterov: bool = True,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """Create optimizer `name` over the model's trainable parameters (see `param_groups`).

    `lr` is the peak LR per optimizer step (not per micro-batch); `momentum`/`nesterov` are used
    by sgd, `betas` by adam/adamw.
    """
    if name not in _OPTIMIZERS:
        raise unknown_name("optimizer", name, _OPTIMIZERS)
    if not lr > 0:
        raise UserError(f"optim.lr must be > 0, got {lr}; set a positive learning rate.")
    if not weight_decay >= 0:
        raise UserError(f"optim.weight_decay must be >= 0, got {weight_decay}; use 0 to disable it.")
    if not 0 <= momentum < 1:
        raise UserError(f"optim.momentum must be in [0, 1), got {momentum}; 0.9 is usual.")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise UserError(f"optim.betas must be two numbers in [0, 1), got {betas}; (0.9, 0.999) is usual.")
    groups = param_groups(model, weight_decay)
    if not any(g["params"] for g in groups):
        raise UserError("the model has no trainable parameters; unfreeze at least one layer.")
    return _OPTIMIZERS[name](groups, lr, momentum, nesterov, tuple(betas))


def get_lr(optimizer: torch.optim.Optimizer) -> float:
    """LR of the first param group (what the next optimizer step uses); the `lr` column of metrics."""
    return float(optimizer.param_groups[0]["lr"])


# --------------------------------------------------------------------------- schedulers

_SCHEDULERS = ("cosine", "none", "onecycle", "plateau", "step")

# OneCycleLR's defaults in torch; the peak is the optimizer's lr.
_ONECYCLE_PCT_START = 0.3
_ONECYCLE_DIV = 25.0
_ONECYCLE_FINAL_DIV = 1e4


def list_schedulers() -> list[str]:
    """Names accepted by `create_scheduler`, sorted."""
    return sorted(_SCHEDULERS)


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
      It has its own warm-up, so warmup_epochs must be 0; min_lr is not used; momentum is not cycled.
    - plateau: max(min_lr, b * plateau_factor ** reductions). `step_epoch(metric)` follows torch's
      ReduceLROnPlateau with threshold=0 and cooldown=0: an epoch improves only if the metric is
      strictly better than the best so far ('max': greater, 'min': smaller); the LR is reduced on
      the epoch when more than plateau_patience consecutive epochs have not improved (with
      patience 2: on the third), and the count then restarts.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        name: str,
        *,
        epochs: int,
        steps_per_epoch: int,
        warmup_epochs: float = 0.0,
        step_size: float = 30,
        gamma: float = 0.1,
        min_lr: float = 0.0,
        plateau_mode: str = "max",
        plateau_patience: int = 2,
        plateau_factor: float = 0.1,
    ) -> None:
        if name not in _SCHEDULERS:
            raise unknown_name("scheduler", name, _SCHEDULERS)
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.optimizer = optimizer
        self.name = name
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.warmup_epochs = float(warmup_epochs)
        self.step_size = float(step_size)
        self.gamma = gamma
        self.min_lr = min_lr
        self.plateau_mode = plateau_mode
        self.plateau_patience = plateau_patience
        self.plateau_factor = plateau_factor
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self._validate()
        self.num_updates = 0
        # Plateau state; the first metric always counts as an improvement.
        self.best = -math.inf if plateau_mode == "max" else math.inf
        self.num_bad_epochs = 0
        self.scale = 1.0
        self._apply()

    def _validate(self) -> None:
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise UserError(f"train.epochs must be an integer >= 1, got {self.epochs}; set at least one epoch.")
        w = self.warmup_epochs
        if self.name == "onecycle" and w != 0:
            raise UserError(
                f"sched.warmup_epochs must be 0 with onecycle, got {w}; onecycle warms up over its first 30%."
            )
        if not 0 <= w < self.epochs:
            raise UserError(
                f"sched.warmup_epochs must be >= 0 and below train.epochs ({self.epochs}), got {w}; shorten the warmup."
            )
        if self.name == "step":
            if not self.step_size > 0:
                raise UserError(f"sched.step_size must be > 0 epochs, got {self.step_size}; e.g. 30.")
            if not self.gamma > 0:
                raise UserError(f"sched.gamma must be > 0, got {self.gamma}; e.g. 0.1.")
        if self.name in ("cosine", "plateau"):
            if not 0 <= self.min_lr <= min(self.base_lrs):
                raise UserError(
                    f"sched.min_lr must be between 0 and optim.lr ({min(self.base_lrs)}), got {self.min_lr}; lower it."
                )
        if self.name == "plateau":
            if self.plateau_mode not in ("max", "min"):
                raise UserError(f"sched.plateau_mode must be 'max' or 'min', got '{self.plateau_mode}'.")
            if not (isinstance(self.plateau_patience, int) and self.plateau_patience >= 0):
                raise UserError(f"sched.plateau_patience must be an integer >= 0, got {self.plateau_patience}.")
            if not 0 < self.plateau_factor < 1:
                raise UserError(f"sched.plateau_factor must be in (0, 1), got {self.plateau_factor}; e.g. 0.1.")

    # -- the schedule itself

    def _lr(self, base: float, n: int) -> float:
        """LR of optimizer step n + 1 for a group with base LR `base`."""
        spe, w, E = self.steps_per_epoch, self.warmup_epochs, self.epochs
        if n < w * spe:
            return base * min(1.0, (n + 1) / (w * spe))
        t = n / spe
        if self.name == "none":
            return base
        if self.name == "step":
            # The 1e-9 tolerance stops float rounding (e.g. 3 / (0.3 * 10)) from delaying a drop by a step.
            return base * self.gamma ** math.floor(n / (self.step_size * spe) + 1e-9)
        if self.name == "cosine":
            progress = min(1.0, (t - w) / (E - w))
            return self.min_lr + (base - self.min_lr) * (1 + math.cos(math.pi * progress)) / 2
        if self.name == "onecycle":
            return _onecycle_lr(base, min(n, E * spe - 1), E * spe)
        if self.name == "plateau":
            return max(self.min_lr, base * self.scale)
        raise AssertionError(f"scheduler '{self.name}' has no formula")

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
        if self.name != "plateau" or metric is None:
            return
        metric = float(metric)
        improved = metric > self.best if self.plateau_mode == "max" else metric < self.best
        if improved:
            self.best, self.num_bad_epochs = metric, 0
        else:
            self.num_bad_epochs += 1
        if self.num_bad_epochs > self.plateau_patience:
            self.scale *= self.plateau_factor
            self.num_bad_epochs = 0
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


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    step_size: float = 30,
    gamma: float = 0.1,
    min_lr: float = 0.0,
    plateau_mode: str = "max",
    plateau_patience: int = 2,
    plateau_factor: float = 0.1,
) -> Scheduler:
    """Create LR schedule `name` (see `Scheduler`) and set the LR of the first optimizer step.

    `steps_per_epoch` counts optimizer steps, i.e. ceil(micro_batches / accumulate); `epochs`,
    `warmup_epochs` and `step_size` are in epochs (fractions allowed for the last two).
    """
    return Scheduler(
        optimizer,
        name,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=warmup_epochs,
        step_size=step_size,
        gamma=gamma,
        min_lr=min_lr,
        plateau_mode=plateau_mode,
        plateau_patience=plateau_patience,
        plateau_factor=plateau_factor,
    )
