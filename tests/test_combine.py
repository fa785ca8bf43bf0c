"""parse_combine: the course rule against hand-computed codes, vectorised apply, refusals, no eval."""
from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
import torch

from conftest import facts
from imgcls.tasks.combine import CombineRule, parse_combine
from imgcls.errors import UserError

COURSE = {"mask": 3, "gender": 2, "age": 3}


def test_course_rule_gives_18_codes_with_hand_computed_table():
    rule = parse_combine("mask * 6 + gender * 3 + age", COURSE)
    assert rule.names == ("mask", "gender", "age") and rule.size == 18
    table = rule.table()
    assert len(table) == 18
    # The course's class list: 0 wear/male/<30, 4 wear/female/30-59, 8 incorrect/male/>=60, 17 not_wear/female/>=60.
    assert table[0] == {"mask": 0, "gender": 0, "age": 0}
    assert table[4] == {"mask": 0, "gender": 1, "age": 1}
    assert table[8] == {"mask": 1, "gender": 0, "age": 2}
    assert table[17] == {"mask": 2, "gender": 1, "age": 2}
    for code, heads in enumerate(table):
        assert heads["mask"] * 6 + heads["gender"] * 3 + heads["age"] == code


def test_apply_on_tensors_arrays_and_ints_equals_the_formula():
    rule = parse_combine("mask * 6 + gender * 3 + age", COURSE)
    g = torch.Generator().manual_seed(0)
    codes = {n: torch.randint(0, k, (100,), generator=g) for n, k in COURSE.items()}
    got = rule.apply(codes)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int64
    assert torch.equal(got, codes["mask"] * 6 + codes["gender"] * 3 + codes["age"])
    arrays = {n: c.numpy() for n, c in codes.items()}
    np.testing.assert_array_equal(rule.apply(arrays), got.numpy())
    assert rule.apply({"mask": 2, "gender": 0, "age": 1}) == 13


def test_parentheses_and_constants():
    rule = parse_combine("(mask * 2 + gender) * 3 + age", COURSE)
    assert rule.size == 18
    assert [rule.apply(t) for t in rule.table()] == list(range(18))
    assert parse_combine("mask * 6 + gender * 3 + age", COURSE).table() == rule.table()


def test_rule_over_some_heads():
    rule = parse_combine("gender * 3 + age", {**COURSE, "race": None})  # an unused head needs no size
    assert rule.names == ("gender", "age") and rule.size == 6
    assert rule.table()[5] == {"gender": 1, "age": 2}
    assert rule.apply({"gender": np.array([1, 0]), "age": np.array([2, 1]), "mask": None}).tolist() == [5, 1]


def test_names_in_order_of_appearance():
    assert parse_combine("age + gender * 3 + mask * 6", COURSE).names == ("age", "gender", "mask")


def test_collisions_are_refused_naming_the_codes():
    with pytest.raises(UserError, match=facts("task.combine 'mask * 3 + gender * 3 + age': codes 3, 4, 5, 6, 7, "
                                              "... collide (3 stands for both mask=0, gender=1, age=0 and mask=1, "
                                              "gender=0, age=0); use e.g. 'mask * 6 + gender * 3 + age'")):
        parse_combine("mask * 3 + gender * 3 + age", COURSE)


def test_gaps_are_refused():
    with pytest.raises(UserError, match=r"codes 6, 7, 8, 15, 16, \.\.\. never occur and codes 18, 19, 20, 21, 22, \.\.\. fall outside that range"):
        parse_combine("mask * 9 + gender * 3 + age", COURSE)  # one-to-one, but onto 0..26 with holes
    with pytest.raises(UserError, match=r"code 0 never occurs and code 2 falls outside that range"):
        parse_combine("gender + 1", COURSE)  # shifted: 1..2 instead of 0..1


@pytest.mark.parametrize("expr, message", [
    ("mask * 6 +", "is not a valid rule"),
    ("mask gender", "is not a valid rule"),
    ("gendr * 3 + age", r"unknown head in task\.combine 'gendr' \(did you mean 'gender'\?\)"),
    ("mask * 6 - gender", r"not the operator '-'"),
    ("mask / 2", r"not the operator '/'"),
    ("mask ** 2 + gender", r"not the operator '\*\*'"),
    ("-mask + gender", r"not '-mask'"),
    ("mask * 1.5", r"not '1\.5'"),
    ("mask * True", r"not 'True'"),
    ("abs(mask)", r"not the call 'abs\(mask\)'"),
    ("mask.real", r"not the attribute 'mask\.real'"),
    ("mask[0]", r"not the indexing 'mask\[0\]'"),
    ("3", "uses no head"),
])
def test_bad_rules_are_one_sentence_naming_task_combine(expr, message):
    with pytest.raises(UserError, match=message) as e:
        parse_combine(expr, COURSE)
    assert "task.combine" in str(e.value)


@pytest.mark.parametrize("expr", [
    "__import__('os').system('touch {flag}')",
    "open('{flag}', 'w').write('x') * 0 + mask",
    "[open('{flag}', 'w') for _ in 'x']",
    "(lambda: open('{flag}', 'w'))()",
    "mask if open('{flag}', 'w') else gender",
    "(f := open('{flag}', 'w'))",
])
def test_injection_is_refused_and_never_runs(tmp_path, monkeypatch, expr):
    flag = tmp_path / "ran"
    monkeypatch.setattr(os, "system", lambda *a: pytest.fail("os.system was called"))
    with pytest.raises(UserError, match=r"task\.combine"):
        parse_combine(expr.format(flag=flag), COURSE)
    assert not flag.exists()


def test_head_without_size_is_refused():
    with pytest.raises(UserError, match=r"head 'age' must list its classes to be used in task\.combine"):
        parse_combine("gender * 3 + age", {"gender": 2, "age": None})


def test_key_names_the_callers_config_key():
    with pytest.raises(UserError, match=r"^task\.label 'x \+' is not a valid rule"):
        parse_combine("x +", COURSE, key="task.label")


def test_json_round_trip_for_the_model_record():
    rule = parse_combine("mask * 6 + gender * 3 + age", COURSE)
    record = json.loads(json.dumps(rule.to_json()))
    assert record["expr"] == "mask * 6 + gender * 3 + age" and len(record["table"]) == 18
    back = CombineRule.from_json(record)
    assert back.names == rule.names and back.size == 18 and back.table() == rule.table()
    record["table"][0], record["table"][1] = record["table"][1], record["table"][0]
    with pytest.raises(UserError, match="does not match its stored table"):
        CombineRule.from_json(record)


def test_every_combination_of_small_heads_is_checked_exhaustively():
    sizes = {"a": 2, "b": 3, "c": 4}
    for order in itertools.permutations(sizes):
        r1, r2 = sizes[order[1]] * sizes[order[2]], sizes[order[2]]
        rule = parse_combine(f"{order[0]} * {r1} + {order[1]} * {r2} + {order[2]}", sizes)
        assert sorted(rule.apply(t) for t in rule.table()) == list(range(24))
