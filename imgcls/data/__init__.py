"""Data: sources (folder, CSV), splits, decoding, transforms, per-sample-seeded loading, demo data."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "DataSplit": "build", "Side": "build", "build_split": "build", "write_split_csv": "build",
    "demo_root": "demo", "write_demo": "demo",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'imgcls.data' has no attribute '{name}'")
