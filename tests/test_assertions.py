"""Each deterministic assertion of an eval, on answers that meet it and answers that do not."""

from __future__ import annotations

import pytest

from fanout.assertions import check
from fanout.evalfile import parse_assertion

CASES = [
    ({"type": "equals", "value": "Paris"}, " Paris\n", "Paris."),
    ({"type": "contains", "value": "Paris"}, "It is Paris.", "it is paris."),
    ({"type": "icontains", "value": "paris"}, "It is PARIS.", "It is Lyon."),
    ({"type": "not-icontains", "value": "lyon"}, "Paris", "Lyon"),
    ({"type": "starts-with", "value": "Yes"}, "Yes, it is.", "No. Yes."),
    ({"type": "regex", "value": r"^\d{4}$"}, "1789", "in 1789"),
    ({"type": "contains-any", "value": ["Paris", "Lyon"]}, "Lyon", "Nice"),
    ({"type": "icontains-all", "value": ["red", "blue"]}, "Blue and RED", "red only"),
    ({"type": "is-json"}, '```json\n{"a": 1}\n```', "{a: 1}"),
    (
        {"type": "json-schema", "value": {"type": "object", "required": ["city"]}},
        '{"city": "Paris"}',
        '{"town": "Paris"}',
    ),
    ({"type": "max-length", "value": 5}, "Paris", "Paris!"),
]


@pytest.mark.parametrize(("spec", "good", "bad"), CASES)
def test_an_assertion_holds_and_fails(spec: dict[str, object], good: str, bad: str) -> None:
    assertion = parse_assertion(spec, 1)
    assert assertion is not None
    assert check(assertion, good, cost_usd=None, latency_s=None).passed
    failed = check(assertion, bad, cost_usd=None, latency_s=None)
    assert not failed.passed and failed.reason


def test_cost_and_latency_ceilings() -> None:
    cost = parse_assertion({"type": "cost", "value": 0.01}, 1)
    latency = parse_assertion({"type": "latency", "value": 2}, 1)
    assert cost is not None and latency is not None
    assert check(cost, "", cost_usd=0.005, latency_s=None).passed
    assert check(cost, "", cost_usd=0.02, latency_s=None).reason == "cost $0.02, over $0.01"
    assert check(cost, "", cost_usd=None, latency_s=None).reason == "cost unknown (no price)"
    assert check(latency, "", cost_usd=None, latency_s=1.5).passed
    assert not check(latency, "", cost_usd=None, latency_s=2.5).passed


def test_bad_assertions_say_why() -> None:
    said: list[str] = []
    for spec in (
        {"type": "rubric"},
        {"type": "rubric", "value": "x", "threshold": 2},
        {"type": "not-rubric", "value": "x"},
        {"type": "contains-any", "value": []},
        {"type": "cost", "value": "cheap"},
        {"type": "equals", "value": "x", "extra": 1},
    ):
        assert parse_assertion(spec, 3, lambda line, message: said.append(message)) is None
    assert said == [
        "a rubric needs a value: what a good answer does, in words",
        "a rubric's threshold is from 0 to 1, not 2",
        "rubric cannot be negated with not-",
        "contains-any takes a list of texts: [paris, Paris]",
        "cost takes a number of USD (0 or more)",
        "unknown key 'extra' in an assertion (it takes type, value, threshold)",
    ]
