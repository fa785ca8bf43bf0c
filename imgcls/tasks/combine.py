"""A combine rule: one integer code from several heads' class codes, e.g. ``mask * 6 + gender * 3 + age``
(the course's 18 classes from mask 3 x gender 2 x age 3).

The rule is integer arithmetic over head names with ``+``, ``*``, parentheses and non-negative
integer constants. It is read with ``ast.parse(expr, mode="eval")`` and only those node types are
accepted (anything else is refused before anything runs); nothing is ever passed to ``eval``.
At parse time every combination of the used heads' codes is enumerated, and the rule must map them
one-to-one onto 0..N-1, N being the product of the used heads' sizes: then a combined code can be
split back into head codes (``table``), which is what the model record stores.
"""
from __future__ import annotations

import ast
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from imgcls.errors import UserError, unknown_name

_OPS = {ast.Add: "+", ast.Mult: "*"}
_REFUSED_OPS = {ast.Sub: "-", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**", ast.MatMult: "@",
                ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|", ast.BitAnd: "&", ast.BitXor: "^"}
MAX_CODES = 1_000_000  # combined classes; one output per class, so more is no longer a classifier
Tree = Union[int, str, tuple]  # a constant, a head name, or (op, left, right)


@dataclass(frozen=True)
class CombineRule:
    """A parsed, checked rule. ``names``: the heads it uses, in order of appearance; ``size``: N."""
    expr: str
    names: tuple[str, ...]
    sizes: dict[str, int]
    size: int
    _tree: Tree = field(repr=False)
    _table: tuple[tuple[int, ...], ...] = field(repr=False)

    def apply(self, codes: Mapping[str, Any]) -> Any:
        """The combined code(s) of head codes: ints, numpy arrays or tensors (elementwise, same type).
        Codes are assumed in range (0..size-1 of each head)."""
        return _evaluate(self._tree, codes)

    def table(self) -> list[dict[str, int]]:
        """``table()[c]``: the head codes that combined code c stands for."""
        return [dict(zip(self.names, combo)) for combo in self._table]

    def to_json(self) -> dict:
        """What the model record stores: the expression, the used heads' sizes and the table."""
        return {"expr": self.expr, "heads": dict(self.sizes), "table": self.table()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "model.json") -> "CombineRule":
        """The rule back from ``to_json``; a table that disagrees with the expression is a damaged record."""
        try:
            rule = parse_combine(d["expr"], d["heads"], key=f"{where} combine")
        except (KeyError, TypeError):
            raise UserError(f"the combine rule in '{where}' lacks its expression or head sizes; "
                            "the record is damaged, so export or train the model again.") from None
        if "table" in d and d["table"] != rule.table():
            raise UserError(f"the combine rule in '{where}' does not match its stored table; "
                            "the record is damaged, so export or train the model again.")
        return rule


def parse_combine(expr: str, heads: Mapping[str, Optional[int]], key: str = "task.combine") -> CombineRule:
    """Parse and check ``expr`` over ``heads`` (head name -> number of classes, None if unknown).
    ``key`` is the config key named in error messages."""
    text = str(expr).strip()
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise UserError(f"{key} '{text}' is not a valid rule ({e.msg}); write it like 'mask * 6 + gender * 3 + age'.") from None
    except (RecursionError, MemoryError, ValueError):
        raise UserError(f"{key} '{text[:60]}...' is too deeply nested or not plain text; write a short rule.") from None
    tree = _to_tree(node, text, heads, key)
    names = tuple(dict.fromkeys(_names(tree)))
    if not names:
        raise UserError(f"{key} '{text}' uses no head; combine heads, as in 'mask * 6 + gender * 3 + age'.")
    for n in names:
        if not isinstance(heads[n], int) or isinstance(heads[n], bool) or heads[n] < 1:
            raise UserError(f"head '{n}' must list its classes to be used in {key} (its size is {heads[n]!r}).")
    sizes = {n: heads[n] for n in names}
    size = math.prod(sizes.values())
    if size > MAX_CODES:  # the check below enumerates every combination
        raise UserError(f"{key} '{text}' combines heads into {size} classes, more than {MAX_CODES}; use fewer heads.")
    table = _check_one_to_one(tree, text, names, sizes, size, key)
    return CombineRule(text, names, sizes, size, tree, table)


def _to_tree(node: ast.AST, text: str, heads: Mapping, key: str) -> Tree:
    """The accepted subset of Python's expression grammar as a nested tuple; anything else is refused."""
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return (_OPS[type(node.op)], _to_tree(node.left, text, heads, key), _to_tree(node.right, text, heads, key))
    if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in heads:
            raise unknown_name(f"head in {key}", node.id, heads)
        return node.id
    if isinstance(node, ast.BinOp) and type(node.op) in _REFUSED_OPS:
        what = f"the operator '{_REFUSED_OPS[type(node.op)]}'"
    else:
        noun = {ast.Call: "the call ", ast.Attribute: "the attribute ", ast.Subscript: "the indexing "}.get(type(node), "")
        what = f"{noun}'{ast.get_source_segment(text, node) or type(node).__name__}'"
    raise UserError(f"{key} '{text}' may only use +, *, parentheses, non-negative integers and head names, "
                    f"not {what}; rewrite it.")


def _names(tree: Tree):
    if isinstance(tree, str):
        yield tree
    elif isinstance(tree, tuple):
        yield from _names(tree[1])
        yield from _names(tree[2])


def _evaluate(tree: Tree, codes: Mapping[str, Any]) -> Any:
    if isinstance(tree, int):
        return tree
    if isinstance(tree, str):
        return codes[tree]
    op, left, right = tree
    a, b = _evaluate(left, codes), _evaluate(right, codes)
    return a + b if op == "+" else a * b


def _check_one_to_one(tree: Tree, text: str, names: tuple, sizes: dict, size: int, key: str) -> tuple:
    """The combination of head codes behind each combined code 0..size-1, or a sentence on why not."""
    by_code: dict[int, list[tuple[int, ...]]] = {}
    for combo in itertools.product(*(range(sizes[n]) for n in names)):
        by_code.setdefault(_evaluate(tree, dict(zip(names, combo))), []).append(combo)
    collide = sorted(c for c, combos in by_code.items() if len(combos) > 1)
    missing = sorted(set(range(size)) - set(by_code))
    beyond = sorted(c for c in by_code if c >= size)
    if not collide and not missing:  # then nothing is beyond either: size combinations fill 0..size-1
        return tuple(by_code[c][0] for c in range(size))

    def spell(combo):
        return ", ".join(f"{n}={v}" for n, v in zip(names, combo))

    problems = []
    if collide:
        c = collide[0]
        problems.append(f"{_codes(collide, 'collide', 'collides')} ({c} stands for both {spell(by_code[c][0])} "
                        f"and {spell(by_code[c][1])})")
    if missing:
        problems.append(_codes(missing, "never occur", "never occurs"))
    if beyond:
        problems.append(_codes(beyond, "fall outside that range", "falls outside that range"))
    radix = [math.prod(sizes[m] for m in names[i + 1:]) for i in range(len(names))]
    suggestion = " + ".join(n if r == 1 else f"{n} * {r}" for n, r in zip(names, radix))
    raise UserError(f"{key} '{text}' must give each combination of {', '.join(f'{n} ({sizes[n]})' for n in names)} "
                    f"its own code in 0..{size - 1}, but {' and '.join(problems)}; use e.g. '{suggestion}'.")


def _codes(codes: list[int], plural: str, singular: str, limit: int = 5) -> str:
    """'codes 3, 4, 5, ... collide' or 'code 0 never occurs'."""
    if len(codes) == 1:
        return f"code {codes[0]} {singular}"
    return f"codes {', '.join(map(str, codes[:limit]))}{', ...' if len(codes) > limit else ''} {plural}"
