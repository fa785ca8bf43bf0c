"""Reading a config: YAML without YAML 1.1's guesses, ``key=value`` overrides, values typed by their field.

Values are typed by the field, not by YAML 1.1: the loader below resolves only ``null``, so every
other scalar arrives as a string and ``coerce`` converts it by the field's annotation. That is why
``optim.lr=1e-4`` is a float, ``run.name=001`` stays the string '001', ``train.epochs=010`` is 10
(never octal 8), and ``yes``/``no`` in ``data.classes`` stay class names.

Like the schema, this is the config's ground layer: it knows the keys and their types, never the
registries or the task (those are imgcls.config.rules').
"""
from __future__ import annotations

import difflib
import math
import os
import re
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..errors import UserError
from .schema import PATH_KEYS, SECTION_TYPES, Sections, all_keys


# ---------------------------------------------------------------- YAML without YAML 1.1's guesses


class _Loader(yaml.SafeLoader):
    """SafeLoader that resolves only null (``~``, ``null``, empty); every other plain scalar is a string."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag == "tag:yaml.org,2002:null"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _check_duplicates(node: yaml.Node, where: str, prefix: str = "") -> None:
    """A key given twice is an error (YAML keeps the last one silently, dropping a whole section)."""
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        line = key_node.start_mark.line + 1
        if key in seen:
            if not prefix and isinstance(value_node, yaml.MappingNode):
                raise UserError(f"{where} has two '{key}:' sections (lines {seen[key]} and {line}); "
                                "merge them into one.")
            raise UserError(f"{where} sets '{prefix}{key}' twice (lines {seen[key]} and {line}); keep one of them.")
        seen[key] = line
        _check_duplicates(value_node, where, f"{prefix}{key}.")


def yaml_load(text: str, where: str) -> Any:
    """Parse one YAML document with ``_Loader``; syntax errors keep their line and column."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(node, where)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UserError(f"{where} is not valid YAML{at} ({e.problem or e.context}); fix its syntax.") from None
    except yaml.YAMLError as e:
        raise UserError(f"{where} is not valid YAML ({str(e).splitlines()[0]}); fix its syntax.") from None
    finally:
        loader.dispose()


# ---------------------------------------------------------------- keys and did-you-mean

# The names people try first, mapped to the real key whatever section they put them in.
_ALIASES = {"lr": "optim.lr", "learning_rate": "optim.lr", "bs": "train.batch_size", "batch": "train.batch_size",
            "workers": "data.num_workers", "amp": "train.precision"}


def _did_you_mean(key: str) -> str:
    keys = all_keys()
    section, _, name = key.rpartition(".")
    close = [_ALIASES[name]] if name in _ALIASES else []
    if not close and section and section not in SECTION_TYPES:  # 'optimizer.lr' -> 'optim.lr'
        near = difflib.get_close_matches(section, list(SECTION_TYPES), n=1)
        if near and f"{near[0]}.{name}" in keys:
            close = [f"{near[0]}.{name}"]
    if not close:  # the right name in the wrong section: 'train.warmup_epochs' -> 'sched.warmup_epochs'
        close = [k for k in keys if k.split(".")[1] == name][:1]
    if not close:
        close = difflib.get_close_matches(key, keys, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_key_error(key: str) -> UserError:
    """The error for a key no section has, with the nearest real key when there is one."""
    return UserError(f"unknown config key '{key}'{_did_you_mean(key)}; 'imgcls config show' lists every key.")


def _is_mapping_field(section: str, name: str) -> bool:
    tp = typing.get_type_hints(SECTION_TYPES[section])[name]
    args = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    return any(typing.get_origin(a) is dict for a in args)


def _accepts_none(section: str, name: str) -> bool:
    tp = typing.get_type_hints(SECTION_TYPES[section])[name]
    return tp is Any or (typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp))


def set_key(d: dict, key: str, value: Any) -> None:
    """``section.name=value``; a mapping key also takes ``section.name.entry[.sub]=value``
    (e.g. data.bins.age=[30,58]), which changes that entry and keeps the others.

    ``value`` None (``KEY=null``) removes the key: a mapping's entry (task.heads.age.smoothing=null), or a
    key that cannot be null, which then takes its default (loss.smoothing=null); a key whose type has null
    (train.patience=null: off) is set to null."""
    parts = key.split(".")
    if len(parts) < 2 or parts[0] not in SECTION_TYPES:
        raise unknown_key_error(key)
    section, name, rest = parts[0], parts[1], parts[2:]
    if name not in {f.name for f in fields(SECTION_TYPES[section])}:
        raise unknown_key_error(key)
    if rest and not _is_mapping_field(section, name):
        raise unknown_key_error(key)
    if d.get(section) is None:
        d[section] = {}
    if not isinstance(d[section], dict):
        raise UserError(f"config section '{section}' must be a mapping of keys, got {d[section]!r}.")
    if not rest:
        if value is None and not _accepts_none(section, name):
            d[section].pop(name, None)
        else:
            d[section][name] = value
        return
    node = d[section]
    for part in [name, *rest[:-1]]:
        child = node.get(part)
        if value is None and not isinstance(child, dict):
            return  # removing an entry that is not there
        node[part] = dict(child) if isinstance(child, dict) else {}  # a copy: the base config stays as it was
        node = node[part]
    if value is None:
        node.pop(rest[-1], None)
    else:
        node[rest[-1]] = value


# ---------------------------------------------------------------- values typed by their field

# Numbers as people write them: 3, 010, 1_000, 0.5, .001, 1e-4, 3E-4, 2.5e3 (no inf/nan: no key wants one).
_INT = re.compile(r"[-+]?[0-9](?:_?[0-9])*")
_FLOAT = re.compile(r"[-+]?(?:[0-9](?:_?[0-9])*(?:\.(?:[0-9](?:_?[0-9])*)?)?|\.[0-9](?:_?[0-9])*)(?:[eE][-+]?[0-9]+)?")
_TRUE, _FALSE = {"true", "yes", "on"}, {"false", "no", "off"}


class _NoMatch(Exception):
    pass


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        args = typing.get_args(tp)
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"a mapping of {_describe(k)} to {_describe(v)}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _scalar(value: Any, tp: Any) -> Any:
    """``value`` (a string from YAML, or a Python value) as type ``tp``; raises _NoMatch."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
    elif tp in (int, float):
        if isinstance(value, str):
            text = value.strip()
            if _INT.fullmatch(text):
                value = int(text.replace("_", ""))  # decimal: 010 is 10, never octal
            elif _FLOAT.fullmatch(text):
                value = float(text.replace("_", ""))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _NoMatch
        if tp is float:
            return float(value)
        if isinstance(value, int) or value.is_integer():  # 4.0 and 1e3 are whole numbers of epochs
            return int(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):  # from Python: data.classes=[0, 1]
            return str(value)
    else:  # pragma: no cover - a new annotation kind
        raise TypeError(f"unsupported config annotation {tp!r}")
    raise _NoMatch


def _convert(value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        if (type(None) in args and str not in args and isinstance(value, str)
                and value.strip().lower() == "none"):  # "none" reads as off where no string is valid
            return None
        for a in args:
            if a is not type(None):
                try:
                    return _convert(value, a)
                except _NoMatch:
                    pass
        raise _NoMatch
    if origin is Literal:
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) in typing.get_args(tp):
            return str(value)
        raise _NoMatch
    if origin is dict:
        if not isinstance(value, dict):
            raise _NoMatch
        k_tp, v_tp = typing.get_args(tp) or (str, Any)
        return {_scalar(k, k_tp): (v if v_tp is Any else _convert(v, v_tp)) for k, v in value.items()}
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise _NoMatch
        (elem,) = typing.get_args(tp) or (Any,)
        return [v if elem is Any else _scalar(v, elem) for v in value]
    return _scalar(value, tp)


def coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` converted by the annotation ``tp`` of config key ``key``, or one sentence."""
    try:
        value = _convert(value, tp)
    except _NoMatch:
        raise UserError(f"config key '{key}' must be {_describe(tp)}, got {value!r}.") from None
    if key in PATH_KEYS and isinstance(value, str):
        value = os.path.expanduser(value)
    return value


# ---------------------------------------------------------------- reading and writing


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value); the value is read like a YAML file's (only null is resolved)."""
    if "=" not in text:
        raise UserError(f"override '{text}' must look like key=value, e.g. train.epochs=3.")
    key, raw = text.split("=", 1)
    value = yaml_load(raw, f"the value of override '{text}'") if raw != "" else None
    return key.strip(), value


def read_yaml(path: str | Path) -> dict:
    """A config file as a dict of sections (values still strings: ``from_dict`` types them)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{p}' does not exist; pass an existing YAML file (see configs/).")
    d = yaml_load(p.read_text(encoding="utf-8"), f"config file '{p}'")
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise UserError(f"config file '{p}' must be a mapping of sections (data:, model:, train:, ...).")
    return d


def demo_recipe() -> dict:
    """The demo's recipe, read from the package's configs/demo.yaml (the root configs/demo.yaml links to it)."""
    from importlib.resources import files
    text = files("imgcls").joinpath("configs", "demo.yaml").read_text(encoding="utf-8")
    return yaml_load(text, "imgcls/configs/demo.yaml")


def to_yaml(cfg: Sections) -> str:
    """The config as YAML, every key written (``config.yaml`` of a run folder)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
