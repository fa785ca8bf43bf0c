"""What the registries (losses, optimizers, schedules, augmentation presets) share: declared parameters.

Each registry entry names the keyword parameters it takes; a parameter's default and its check live
in one table per registry (``Param``), next to the entries, so the factories and config validation
apply the same rules. Parameter ``p`` of a registry whose config section is ``s`` is config key
``s.p`` (``loss.gamma``, ``sched.factor``), which is why the checks' messages can name real keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from .errors import UserError


@dataclass(frozen=True)
class Param:
    default: Any
    check: Callable[..., Any]   # (value, ...) -> the value to use; raises UserError naming the key
    help: str


def join(words: Iterable[str], last: str = "and") -> str:
    """'a', 'a and b', 'a, b and c'."""
    words = list(words)
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {last} {words[-1]}"


def reject_unknown(kind: str, name: str, takes: tuple[str, ...], given: Mapping[str, Any], section: str,
                   always: tuple[str, ...] = ()) -> None:
    """One sentence for the first keyword argument that entry ``name`` does not take."""
    for p in given:
        if p not in takes:
            what = join(takes) if takes else "no parameters"
            also = f" (besides {join(always)})" if always else ""
            raise UserError(f"{kind} '{name}' does not take '{p}' ({section}.{p}); it takes {what}{also}.")


def with_defaults(table: Mapping[str, Param], takes: tuple[str, ...], given: Mapping[str, Any]) -> dict:
    """The entry's parameters: the given ones, the table's defaults for the rest."""
    return {p: given.get(p, table[p].default) for p in takes}
