"""Fine-tuning recipes: the head/backbone split, frozen epochs, frozen BatchNorm, and parameter groups.

The head is what timm's ``get_classifier()`` returns (imgcls's tiny CNNs: the module their pretrained_cfg
names as ``classifier``); the backbone is every other parameter. Layer-wise decay uses timm's own grouping
of each model's layers (``param_groups_layer_decay``), so no layer map is written here.

Frozen parameters stay in the optimizer: with ``requires_grad`` off their gradient stays None, which every
torch optimizer skips (no step, no weight decay, no state), so the groups and the optimizer's state_dict
keep one layout across the unfreeze point and last.pt resumes exactly on either side of it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def head_module(model: nn.Module) -> nn.Module:
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "fc")
    return model.get_submodule(name)


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    head = {id(p) for p in head_module(model).parameters()}
    return [p for p in model.parameters() if id(p) not in head]


def _batchnorms(model: nn.Module, skip: nn.Module) -> list[nn.Module]:
    inside = {id(m) for m in skip.modules()}
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inside]


def _eval_mode(module: nn.Module, args) -> None:
    module.training = False  # normalise with the running statistics and leave them as they are


class BatchNormHold:
    """BatchNorm layers held in eval mode (statistics unchanged, whatever ``model.train()`` sets) while on;
    ``affine=True`` also freezes their weight and bias. timm's ``freeze_batch_norm_2d`` does the same by
    swapping in FrozenBatchNorm2d modules, which would drop ``num_batches_tracked`` from best.safetensors
    and leave the optimizer holding the replaced parameters, so the layers are held in place instead."""

    def __init__(self, modules: list[nn.Module], affine: bool):
        self.modules, self.affine, self.handles = modules, affine, []

    def set(self, on: bool) -> None:
        if on == bool(self.handles):
            return
        if on:
            self.handles = [m.register_forward_pre_hook(_eval_mode) for m in self.modules]
        else:
            for h in self.handles:
                h.remove()
            self.handles = []
        if self.affine:
            for m in self.modules:
                for p in m.parameters(recurse=False):
                    p.requires_grad_(not on)


class Freezer:
    """``model.freeze_bn`` for the whole run, ``finetune.freeze_epochs`` for the first N epochs."""

    def __init__(self, model: nn.Module, freeze_epochs: int, freeze_bn: bool):
        self.freeze_epochs = freeze_epochs
        head = head_module(model)
        self.backbone = backbone_parameters(model)
        self.always = BatchNormHold(_batchnorms(model, nn.Module()), affine=True) if freeze_bn else None
        self.backbone_bn = BatchNormHold(_batchnorms(model, head), affine=False)
        self.frozen: Optional[bool] = None  # unknown until the first epoch starts (all parameters train)
        if self.always is not None:
            self.always.set(True)

    def start_epoch(self, epoch: int) -> Optional[str]:
        """Freeze or unfreeze for 0-based ``epoch``. None: nothing changed; else the trainable parameters
        changed (a data-parallel wrapper must be rebuilt) and the text is the line to log ('' on a resume)."""
        frozen = epoch < self.freeze_epochs
        if frozen == self.frozen:
            return None
        self.frozen = frozen
        held_bn = {id(p) for m in (self.always.modules if self.always else []) for p in m.parameters(recurse=False)}
        for p in self.backbone:
            if id(p) not in held_bn:
                p.requires_grad_(not frozen)
        self.backbone_bn.set(frozen)
        if frozen and epoch == 0:
            return f"finetune.freeze_epochs={self.freeze_epochs}: training the head only, backbone frozen"
        if not frozen and epoch == self.freeze_epochs and self.freeze_epochs > 0:
            return f"epoch {epoch + 1}: backbone unfrozen"
        return ""


def finetune_param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: Optional[float],
                          backbone_lr_mult: float) -> Optional[list[dict]]:
    """Parameter groups with their own lr (schedules scale each group's lr), or None for imgcls's two
    default groups. Group 0 is always at optim.lr (the metrics' ``lr`` column): the head's."""
    from ..optim import param_groups
    if layer_decay is not None:
        from timm.optim import param_groups_layer_decay
        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
        groups = param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
        groups = sorted(groups, key=lambda g: -g["lr_scale"])  # the head's group (scale 1) first
        return [{**g, "lr": lr * g["lr_scale"]} for g in groups]
    if backbone_lr_mult == 1.0:
        return None
    head = {id(p) for p in head_module(model).parameters()}
    groups = []
    for g in param_groups(model, weight_decay):
        groups.append({**g, "name": "head_" + g["name"], "lr": lr, "params": [p for p in g["params"] if id(p) in head]})
    for g in param_groups(model, weight_decay):
        groups.append({**g, "name": "backbone_" + g["name"], "lr": lr * backbone_lr_mult,
                       "params": [p for p in g["params"] if id(p) not in head]})
    return groups


def group_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [float(g["lr"]) for g in optimizer.param_groups]
