"""Optimizers and LR schedules: param groups, convergence, exact LR sequences against hand values and torch."""
from __future__ import annotations

import io
import math
import re

import pytest
import torch
from torch import nn

from conftest import assert_facts
from imgcls.errors import UserError
from imgcls.optim import (OPTIM_PARAMS, SCHED_PARAMS, create_optimizer, create_scheduler, get_lr, list_optimizers,
                          list_schedulers, optim_info, sched_info, scheduler_takes)

B = 0.1  # base LR used by the schedule tests


def _opt(lr: float = B) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=lr)


def _loop_lrs(sched, opt, epochs: int, micro: int = 10, accumulate: int = 4, metrics=None) -> list[float]:
    """Mimic the training loop: returns the LR each optimizer step used, with a partial last window."""
    used, num_updates = [], 0
    for epoch in range(epochs):
        for i in range(micro):
            if (i + 1) % accumulate == 0 or i == micro - 1:
                used.append(get_lr(opt))  # what optimizer.step() would use now
                num_updates += 1
                sched.step_update(num_updates)
        sched.step_epoch(None if metrics is None else metrics[epoch])
    return used


def _torch_lrs(torch_sched, opt, steps: int) -> list[float]:
    used = []
    for _ in range(steps):
        used.append(get_lr(opt))
        opt.step()
        torch_sched.step()
    return used


# --------------------------------------------------------------------------- optimizers


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.pos_embed = nn.Parameter(torch.ones(1, 2, 4))  # 3-D but listed by no_weight_decay()
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_param_groups_decay_only_matrices():
    net = _Net()
    opt = create_optimizer(net, "sgd", lr=0.1, weight_decay=0.05)
    decay, no_decay = opt.param_groups
    assert ids(decay["params"]) == {id(net.conv.weight), id(net.fc.weight)}
    assert ids(no_decay["params"]) == {
        id(net.conv.bias), id(net.bn.weight), id(net.bn.bias), id(net.fc.bias), id(net.pos_embed)
    }
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    frozen = ids(net.frozen.parameters())
    assert not frozen & (ids(decay["params"]) | ids(no_decay["params"]))


@pytest.mark.parametrize("name", list_optimizers())
def test_weight_decay_shrinks_only_decay_group(name):
    # With zero gradients, only weight decay can move a parameter.
    net = _Net()
    with torch.no_grad():  # away from 0, where Adam's eps would matter
        net.fc.weight.copy_(torch.tensor([[0.5, -0.25, 1.0, -2.0], [0.3, 0.7, -0.4, 0.2]]))
    opt = create_optimizer(net, name, lr=0.1, weight_decay=0.5, **({"momentum": 0.0} if name == "sgd" else {}))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(net.named_parameters())
    if name == "adam":
        # Adam's L2 decay passes through the normalised step: |step| = lr per element.
        assert torch.allclose(after["fc.weight"], before["fc.weight"] - 0.1 * before["fc.weight"].sign())
    else:
        # sgd: p -= lr * wd * p on the first step; adamw: p *= 1 - lr * wd (decoupled).
        assert torch.allclose(after["fc.weight"], before["fc.weight"] * (1 - 0.1 * 0.5))
    for n in ("fc.bias", "bn.weight", "pos_embed", "frozen.weight"):
        assert torch.equal(after[n], before[n]), n


@pytest.mark.parametrize("name", list_optimizers())
def test_every_optimizer_reduces_a_convex_loss(name):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.7
    model = nn.Linear(4, 1)
    opt = create_optimizer(model, name, lr=0.05)
    loss_fn = nn.MSELoss()
    first = loss_fn(model(x), y).item()
    for _ in range(200):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    assert loss_fn(model(x), y).item() < 0.01 * first


def test_optimizer_unknown_name_and_bad_values():
    with pytest.raises(UserError, match="did you mean 'sgd'"):
        create_optimizer(nn.Linear(2, 2), "sdg", lr=0.1)
    with pytest.raises(UserError, match="optim.lr"):
        create_optimizer(nn.Linear(2, 2), "sgd", lr=0.0)
    with pytest.raises(UserError, match="optim.weight_decay"):
        create_optimizer(nn.Linear(2, 2), "sgd", lr=0.1, weight_decay=-1)
    with pytest.raises(UserError, match="no trainable parameters"):
        create_optimizer(nn.Linear(2, 2).requires_grad_(False), "sgd", lr=0.1)


def test_optimizer_options_reach_torch():
    model = nn.Linear(2, 2)
    sgd = create_optimizer(model, "sgd", lr=0.1, momentum=0.8, nesterov=True)
    assert sgd.defaults["momentum"] == 0.8 and sgd.defaults["nesterov"] is True
    plain = create_optimizer(model, "sgd", lr=0.1, momentum=0.0)  # nesterov needs momentum
    assert plain.defaults["nesterov"] is False
    adamw = create_optimizer(model, "adamw", lr=0.1, betas=(0.8, 0.99))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.99)


# --------------------------------------------------------------------------- schedules: hand values
# 10 micro-batches per epoch with accumulate=4 -> windows of 4, 4, 2 -> 3 optimizer steps per epoch.
# warmup_epochs=1 -> 3 warmup steps using B/3, 2B/3, B.

WARM = [B / 3, 2 * B / 3, B]


def test_steps_per_epoch_counted_with_partial_window():
    sched = create_scheduler(_opt(), "none", epochs=2, steps_per_epoch=3)
    assert len(_loop_lrs(sched, sched.optimizer, epochs=2)) == 6


def test_none_with_warmup():
    opt = _opt()
    sched = create_scheduler(opt, "none", epochs=2, steps_per_epoch=3, warmup_epochs=1)
    assert _loop_lrs(sched, opt, 2) == pytest.approx(WARM + [B] * 3, rel=1e-12)


def test_fractional_warmup_never_starts_at_zero():
    opt = _opt()
    sched = create_scheduler(opt, "none", epochs=2, steps_per_epoch=4, warmup_epochs=0.5)
    assert get_lr(opt) == pytest.approx(B / 2)  # set at construction for the first step
    assert _loop_lrs(sched, opt, 1, micro=4, accumulate=1) == pytest.approx([B / 2, B, B, B], rel=1e-12)


def test_cosine_with_warmup():
    opt = _opt()
    sched = create_scheduler(opt, "cosine", epochs=3, steps_per_epoch=3, warmup_epochs=1)
    # After warmup, 6 steps over 2 epochs: progress 0, 1/6, 1/3, 1/2, 2/3, 5/6.
    s3 = math.sqrt(3)
    expected = WARM + [B, B * (2 + s3) / 4, 0.75 * B, 0.5 * B, 0.25 * B, B * (2 - s3) / 4]
    assert _loop_lrs(sched, opt, 3) == pytest.approx(expected, rel=1e-12)
    assert get_lr(opt) == pytest.approx(0.0, abs=1e-15)  # t = E: reached min_lr


def test_cosine_min_lr_and_hold_after_end():
    opt = _opt(0.11)
    sched = create_scheduler(opt, "cosine", epochs=2, steps_per_epoch=2, min_lr=0.01)
    s2 = math.sqrt(2)  # 4 steps: progress 0, 1/4, 1/2, 3/4, then held at 1
    expected = [0.11, 0.01 + 0.1 * (2 + s2) / 4, 0.06, 0.01 + 0.1 * (2 - s2) / 4, 0.01, 0.01]
    assert _loop_lrs(sched, opt, 3, micro=2, accumulate=1) == pytest.approx(expected, rel=1e-12)


def test_step_with_warmup_and_fractional_step_size():
    opt = _opt()
    # step_size 1.5 epochs = 4.5 optimizer steps: drops at t = 1.5 (n=5) and t = 3 (n=9).
    sched = create_scheduler(opt, "step", epochs=4, steps_per_epoch=3, warmup_epochs=1, step_size=1.5, gamma=0.1)
    expected = WARM + [B, B] + [B * 0.1] * 4 + [B * 0.01] * 3
    assert _loop_lrs(sched, opt, 4) == pytest.approx(expected, rel=1e-12)


def test_step_float_rounding_does_not_delay_a_drop():
    opt = _opt()
    # 0.14 epochs * 50 = 7.000000000000001 steps in floats, so 7 / (0.14 * 50) < 1.
    sched = create_scheduler(opt, "step", epochs=1, steps_per_epoch=50, step_size=0.14, gamma=0.5)
    assert _loop_lrs(sched, opt, 1, micro=15, accumulate=1) == pytest.approx([B] * 7 + [B / 2] * 7 + [B / 4])


def test_plateau_with_warmup_max_mode():
    opt = _opt()
    sched = create_scheduler(
        opt, "plateau", epochs=4, steps_per_epoch=3, warmup_epochs=1, patience=1, factor=0.5
    )
    # epoch 1 sets best; epoch 2 is 1 bad epoch (= patience, kept); epoch 3 is the 2nd -> halve.
    lrs = _loop_lrs(sched, opt, 4, metrics=[0.5, 0.5, 0.4, 0.9])
    assert lrs == pytest.approx(WARM + [B] * 6 + [B / 2] * 3, rel=1e-12)


@pytest.mark.parametrize(
    "mode, metrics, reduced_after",
    [
        ("max", [0.5, 0.6, 0.6, 0.55, 0.6, 0.7, 0.7, 0.7, 0.7], [5, 9]),
        ("min", [1.0, 0.9, 0.9, 0.95, 0.9, 0.5, 0.5, 0.5, 0.5], [5, 9]),
    ],
)
def test_plateau_reduces_after_patience_hand(mode, metrics, reduced_after):
    opt = _opt()
    sched = create_scheduler(opt, "plateau", epochs=10, steps_per_epoch=1, mode=mode, patience=2)
    reductions = []
    for epoch, m in enumerate(metrics, start=1):
        before = get_lr(opt)
        sched.step_epoch(m)
        if get_lr(opt) < before:
            reductions.append(epoch)
    assert reductions == reduced_after
    assert get_lr(opt) == pytest.approx(B * 0.01)


@pytest.mark.parametrize("mode", ["max", "min"])
def test_plateau_matches_torch_reduce_on_plateau(mode):
    torch.manual_seed(1)
    metrics = torch.randint(0, 4, (30,)).tolist()  # many ties and drops
    ours, theirs = _opt(), _opt()
    sched = create_scheduler(ours, "plateau", epochs=30, steps_per_epoch=1, mode=mode,
                             patience=2, factor=0.5)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, mode=mode, factor=0.5, patience=2, threshold=0)
    for m in metrics:
        sched.step_epoch(m)
        ref.step(m)
        assert get_lr(ours) == pytest.approx(get_lr(theirs), rel=1e-12)
    assert get_lr(ours) < B  # the sequence did exercise a reduction


def test_warmup_is_independent_of_accumulation():
    # The LR at each whole epoch is the same whether an epoch has 3 or 10 optimizer steps.
    per_epoch = {}
    for spe, accumulate in ((3, 4), (10, 1)):
        opt = _opt()
        sched = create_scheduler(opt, "cosine", epochs=4, steps_per_epoch=spe, warmup_epochs=1)
        lrs = _loop_lrs(sched, opt, 4, accumulate=accumulate)
        per_epoch[spe] = [lrs[e * spe] for e in range(1, 4)]
    assert per_epoch[3] == pytest.approx(per_epoch[10], rel=1e-12)


# --------------------------------------------------------------------------- schedules: torch oracles


def test_cosine_matches_torch_cosine_annealing():
    ours, theirs = _opt(), _opt()
    sched = create_scheduler(ours, "cosine", epochs=4, steps_per_epoch=3, min_lr=0.001)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=12, eta_min=0.001)
    assert _loop_lrs(sched, ours, 4) == pytest.approx(_torch_lrs(ref, theirs, 12), rel=1e-9)


def test_step_matches_torch_step_lr():
    ours, theirs = _opt(), _opt()
    sched = create_scheduler(ours, "step", epochs=6, steps_per_epoch=3, step_size=2, gamma=0.3)
    ref = torch.optim.lr_scheduler.StepLR(theirs, step_size=6, gamma=0.3)
    assert _loop_lrs(sched, ours, 6) == pytest.approx(_torch_lrs(ref, theirs, 18), rel=1e-12)


@pytest.mark.parametrize("epochs, spe", [(4, 3), (5, 7), (1, 1), (2, 1)])
def test_onecycle_matches_torch(epochs, spe):
    ours, theirs = _opt(), _opt()
    sched = create_scheduler(ours, "onecycle", epochs=epochs, steps_per_epoch=spe)
    ref = torch.optim.lr_scheduler.OneCycleLR(theirs, max_lr=B, epochs=epochs, steps_per_epoch=spe,
                                              cycle_momentum=False)
    lrs = _loop_lrs(sched, ours, epochs, micro=spe, accumulate=1)
    assert lrs == pytest.approx(_torch_lrs(ref, theirs, epochs * spe), rel=1e-12)
    sched.step_update(epochs * spe + 5)  # past the planned steps: hold the final LR
    assert get_lr(ours) == pytest.approx(B / 25 / 1e4, rel=1e-9)


def test_every_group_follows_its_own_base_lr():
    opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1},
                           {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.02}], lr=0.1)
    sched = create_scheduler(opt, "cosine", epochs=2, steps_per_epoch=2, warmup_epochs=0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.02])
    sched.step_update(2)  # t = 1: cosine progress (1 - 0.5) / 1.5 = 1/3 -> factor 0.75
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.075, 0.015])


# --------------------------------------------------------------------------- resume, names, validation


# Every parameter a schedule may take, with values that make each one matter in 6 epochs of 3 steps.
ROUND_TRIP = dict(warmup_epochs=1.0, step_size=2, gamma=0.1, min_lr=0.001, patience=0, factor=0.5, mode="max")


@pytest.mark.parametrize("name", list_schedulers())
def test_state_dict_round_trip_continues_identical_sequence(name):
    kwargs = dict(epochs=6, steps_per_epoch=3, **{p: ROUND_TRIP[p] for p in sched_info(name).params})
    metrics = [0.5, 0.4, 0.4, 0.6, 0.6, 0.6]
    full_opt = _opt()
    full = _loop_lrs(create_scheduler(full_opt, name, **kwargs), full_opt, 6, metrics=metrics)

    opt = _opt()
    sched = create_scheduler(opt, name, **kwargs)
    first = _loop_lrs(sched, opt, 3, metrics=metrics[:3])
    buf = io.BytesIO()
    torch.save({"sched": sched.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    # Resume: fresh optimizer with its state loaded first (so its lr is already a scheduled one).
    opt2 = _opt()
    opt2.load_state_dict(ckpt["opt"])
    sched2 = create_scheduler(opt2, name, **kwargs)
    sched2.load_state_dict(ckpt["sched"])
    rest, n = [], sched2.num_updates
    for epoch in range(3, 6):
        for _ in range(3):
            rest.append(get_lr(opt2))
            n += 1
            sched2.step_update(n)
        sched2.step_epoch(metrics[epoch])
    assert first + rest == pytest.approx(full, rel=1e-12)


def test_scheduler_unknown_name():
    with pytest.raises(UserError, match="did you mean 'cosine'"):
        create_scheduler(_opt(), "cosin", epochs=2, steps_per_epoch=1)


def test_list_registries():
    assert list_optimizers() == ["adam", "adamw", "sgd"]
    assert list_schedulers() == ["cosine", "none", "onecycle", "plateau", "step"]


@pytest.mark.parametrize(
    "name, kwargs, key",
    [
        ("cosine", dict(epochs=0), "train.epochs"),
        ("cosine", dict(epochs=3, warmup_epochs=3), "sched.warmup_epochs"),
        ("none", dict(epochs=3, warmup_epochs=-1), "sched.warmup_epochs"),
        ("onecycle", dict(epochs=3, warmup_epochs=1), "sched.warmup_epochs"),
        ("onecycle", dict(epochs=3, warmup_epochs=0), "sched.warmup_epochs"),  # not taken, even at 0
        ("step", dict(epochs=3, step_size=0), "sched.step_size"),
        ("step", dict(epochs=3, gamma=0), "sched.gamma"),
        ("cosine", dict(epochs=3, min_lr=1.0), "sched.min_lr"),
        ("cosine", dict(epochs=3, factor=0.5), "sched.factor"),
        ("plateau", dict(epochs=3, mode="up"), "mode must be 'max' or 'min'"),
        ("plateau", dict(epochs=3, factor=1.0), "sched.factor"),
        ("plateau", dict(epochs=3, factor=0.0), "sched.factor"),
        ("plateau", dict(epochs=3, patience=-1), "sched.patience"),
        ("plateau", dict(epochs=3, patience=1.5), "sched.patience"),
        ("plateau", dict(epochs=3, step_size=3), "sched.step_size"),
    ],
)
def test_scheduler_validation_names_the_key(name, kwargs, key):
    with pytest.raises(UserError, match=re.escape(key)) as e:
        create_scheduler(_opt(), name, steps_per_epoch=2, **kwargs)
    assert "plateau_" not in str(e.value)  # the old, non-existent keys sched.plateau_factor etc.


def test_a_parameter_the_schedule_does_not_take_names_what_it_takes():
    with pytest.raises(UserError) as e:
        create_scheduler(_opt(), "cosine", epochs=3, steps_per_epoch=2, factor=0.5)
    assert_facts(str(e.value), "scheduler 'cosine' does not take 'factor' (sched.factor); "
                               "it takes warmup_epochs and min_lr.")
    with pytest.raises(UserError, match=r"it takes no parameters\."):
        create_scheduler(_opt(), "onecycle", epochs=3, steps_per_epoch=2, min_lr=0.0)


@pytest.mark.parametrize("name, kwargs, key", [
    ("sgd", dict(betas=(0.9, 0.99)), "optimizer 'sgd' does not take 'betas' (optim.betas); it takes momentum and nesterov"),
    ("adam", dict(momentum=0.9), "optimizer 'adam' does not take 'momentum' (optim.momentum); it takes betas"),
    ("adamw", dict(nesterov=True), "optimizer 'adamw' does not take 'nesterov'"),
    ("sgd", dict(momentum=1.0), "optim.momentum must be in [0, 1)"),
    ("sgd", dict(nesterov="yes"), "optim.nesterov must be true or false"),
    ("adam", dict(betas=(0.9,)), "optim.betas must be two numbers in [0, 1)"),
    ("adamw", dict(betas=(0.9, 1.0)), "optim.betas must be two numbers in [0, 1)"),
])
def test_optimizer_refuses_parameters_it_does_not_take_or_bad_values(name, kwargs, key):
    with pytest.raises(UserError, match=re.escape(key)):
        create_optimizer(nn.Linear(2, 2), name, lr=0.1, **kwargs)


def test_registries_declare_params_with_the_config_defaults():
    from imgcls.config import OptimConfig, SchedConfig
    assert {n: optim_info(n).params for n in list_optimizers()} == {
        "sgd": ("momentum", "nesterov"), "adam": ("betas",), "adamw": ("betas",)}
    assert {n: sched_info(n).params for n in list_schedulers()} == {
        "none": ("warmup_epochs",), "step": ("warmup_epochs", "step_size", "gamma"),
        "cosine": ("warmup_epochs", "min_lr"), "onecycle": (),
        "plateau": ("warmup_epochs", "min_lr", "patience", "factor", "mode")}
    for p, param in OPTIM_PARAMS.items():
        assert tuple(getattr(OptimConfig(), p)) == param.default if p == "betas" else getattr(OptimConfig(), p) == param.default
    for p, param in SCHED_PARAMS.items():
        if p != "mode":  # mode is not a config key: the engine passes the monitored metric's direction
            assert getattr(SchedConfig(), p) == param.default, p
    assert scheduler_takes("plateau", "mode") and not scheduler_takes("cosine", "mode")
    for name in [*list_optimizers(), *list_schedulers()]:
        info = optim_info(name) if name in list_optimizers() else sched_info(name)
        assert info.name == name and info.description


@pytest.mark.parametrize("name", list_schedulers())
def test_every_scheduler_builds_with_every_parameter_and_steps(name):
    params = {p: ROUND_TRIP[p] for p in sched_info(name).params}
    opt = _opt()
    sched = create_scheduler(opt, name, epochs=6, steps_per_epoch=3, **params)
    lrs = _loop_lrs(sched, opt, 6, metrics=[0.5, 0.4, 0.4, 0.6, 0.6, 0.6])
    assert len(lrs) == 18 and all(0 < lr <= B + 1e-12 for lr in lrs)
    if name != "none":
        assert min(lrs) < B  # the schedule did change the LR
    # built with no parameters at all, the registry's defaults apply
    create_scheduler(_opt(), name, epochs=40, steps_per_epoch=1).step_update(1)
