"""imgcls: train, evaluate and export image classifiers with PyTorch.

The public API is re-exported here lazily (PEP 562), so ``import imgcls`` stays cheap and
a submodule can be used without importing the rest.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "config", "load_config": "config", "UserError": "errors",
    "create_loss": "losses", "list_losses": "losses", "list_metrics": "tasks",
    "create_model": "models", "list_models": "models",
    "create_optimizer": "optim", "create_scheduler": "optim", "list_optimizers": "optim",
    "list_schedulers": "optim", "train": "api", "resume": "api", "cross_validate": "api", "resume_cv": "api",
    "audit": "api",
    "ModelInfo": "models.modelinfo",
    "list_tasks": "tasks", "get_task": "tasks",
    "load": "inference.predictor", "write_report": "report",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'imgcls' has no attribute '{name}'")
