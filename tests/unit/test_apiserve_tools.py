"""models/apiserve/tools.py: the tools a paused request calls."""
from __future__ import annotations

import time

import pytest

from models.apiserve.tools import Calculator, Environment, Retrieval, TimedStub, ToolBox, ToolError, default_toolbox

TEXT = """HAMLET.
Alas, poor Yorick! I knew him, Horatio, a fellow of infinite jest.

OPHELIA.
There's rosemary, that's for remembrance; pray, love, remember.

HORATIO.
A truant disposition, good my lord. A truant, a truant indeed.

GERTRUDE.
One woe doth tread upon another's heel, so fast they follow.
"""


@pytest.mark.parametrize("expression, value", [
    ("2 + 3 * 4", "14"), ("(2 + 3) * 4", "20"), ("7 / 2", "3.5"), ("0.1 + 0.2", "0.3"), ("-(3 - 5) * 2", "4"),
    ("10 // 3", "3"), ("-7 // 2", "-4"), ("10 % 3", "1"), ("2 ** 10", "1024"), ("2 ** -2", "0.25"),
    ("1 / 3", "0.333333333333"), ("2 ** 0.5", "1.41421356237"), ("1e3 / 8", "125"), ("-1 / 8", "-0.125"),
    ("123456789 * 987654321", "121932631112635269"),
])
def test_calculator_is_exact(expression: str, value: str) -> None:
    assert Calculator()({"expression": expression}) == value


@pytest.mark.parametrize("expression, message", [
    ("__import__('os')", "only numbers"), ("(1).__class__", "only numbers"), ("x + 1", "only numbers"),
    ("'a' * 3", "only numbers"), ("True + 1", "only numbers"), ("[1, 2]", "only numbers"), ("abs(-1)", "only numbers"),
    ("1 +", "not an arithmetic expression"), ("1 / 0", "division by zero"), ("2 ** 1000", "exponent"),
    ("(9 ** 64) ** 64", "bits"), ("(-8) ** 0.5", "not a real number"), ("1" * 201, "longer than"),
])
def test_calculator_rejects_anything_but_arithmetic(expression: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        Calculator()({"expression": expression})


def test_calculator_needs_a_string_expression() -> None:
    with pytest.raises(ToolError, match="'expression'"):
        Calculator()({"expression": 3})


def test_retrieval_returns_the_passage_that_holds_the_query_terms() -> None:
    retrieval = Retrieval(TEXT)
    assert len(retrieval.passages) == 4
    assert retrieval({"query": "Yorick"}).startswith("HAMLET.\nAlas, poor Yorick!")
    assert "rosemary" in retrieval({"query": "what is rosemary for"})
    # a term repeated in a passage outranks a single mention of a common word
    assert retrieval({"query": "truant lord"}).startswith("HORATIO.")
    assert retrieval({"query": "unicorn"}) == "no passage mentions 'unicorn'"
    assert len(Retrieval(TEXT, max_chars=10)({"query": "Yorick"})) == 10


def test_environment_is_deterministic_per_episode() -> None:
    actions = ["look", "take apple", "open fridge", "take apple", "go to bedroom", "open drawer",
               "put apple in drawer", "look", "inventory", "fly"]
    first, second = Environment(), Environment()
    observations = [first({"action": a, "episode": "e1"}) for a in actions]
    assert observations == [second({"action": a, "episode": "e1"}) for a in actions]
    assert observations[0] == ("You are in the kitchen. You see a fridge (closed); a cabinet (closed); "
                               "a countertop (knife).")
    assert observations[1] == "Nothing happens."               # the apple is in the closed fridge
    assert observations[3] == "You pick up the apple."
    assert observations[7] == "You are in the bedroom. You see a drawer (book, apple); a desk (lamp, pen)."
    assert observations[8] == "You are carrying nothing."
    assert observations[9] == "Nothing happens."
    # another episode starts from the initial world
    assert first({"action": "look", "episode": "e2"}) == observations[0]


def test_timed_stub_waits_its_duration_and_returns_its_length() -> None:
    started = time.monotonic()
    text = TimedStub()({"duration_s": 0.2, "tokens": 5})
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 1.0
    assert text == " ok" * 5
    with pytest.raises(ToolError, match="duration_s"):
        TimedStub()({"duration_s": -1, "tokens": 5})


def test_toolbox_names_the_known_tools_for_an_unknown_one() -> None:
    box = default_toolbox(TEXT)
    assert set(box.tools) == {"calculator", "retrieval", "environment", "timed_stub"}
    assert box.call("calculator", {"expression": "6 * 7"}) == "42"
    with pytest.raises(ToolError, match="unknown tool 'python'; this server offers calculator, environment"):
        box.call("python", {"code": "print(1)"})
    with pytest.raises(ToolError, match="JSON object"):
        ToolBox([Calculator()]).call("calculator", ["6 * 7"])  # type: ignore[arg-type]
