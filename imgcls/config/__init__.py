"""One typed config: YAML file + ``key=value`` overrides -> a validated, frozen object.

The package in layers, low to high: ``schema`` (the sections, their keys, types and defaults),
``parse`` (YAML, overrides, values typed by their field), ``names`` (the registry entries behind
config keys), ``rules`` (the cross-key checks; ``Config``, ``from_dict`` and ``load_config``).
This module only re-exports their public names.
"""
from .names import loss_kwargs, optim_kwargs, registries, sched_kwargs
from .parse import coerce, demo_recipe, parse_override, read_yaml, set_key, to_yaml, unknown_key_error, yaml_load
from .rules import LIGHTNING_UNSUPPORTED, Config, from_dict, load_config
from .schema import (PATH_KEYS, SECTION_TYPES, DataConfig, LossConfig, ModelConfig, OptimConfig, RunConfig,
                     SchedConfig, Sections, TaskConfig, TrackConfig, TrainConfig, all_keys, describe)

__all__ = [
    "Config", "load_config", "from_dict", "LIGHTNING_UNSUPPORTED",
    "parse_override", "read_yaml", "demo_recipe", "to_yaml", "yaml_load", "unknown_key_error", "set_key", "coerce",
    "registries", "loss_kwargs", "optim_kwargs", "sched_kwargs",
    "Sections", "TaskConfig", "DataConfig", "ModelConfig", "LossConfig", "OptimConfig", "SchedConfig", "TrainConfig",
    "RunConfig", "TrackConfig", "SECTION_TYPES", "PATH_KEYS", "all_keys", "describe",
]
