"""Translating a model's response into the pipeline's IR.

The IR is a `Module` of `Function`s whose bodies are expression trees of
`Num`, `Var` and `BinOp` nodes (all frozen dataclasses, so IRs compare by
value and pickle as they are).
"""

import json
import re
from dataclasses import dataclass
from typing import Tuple, Union


@dataclass(frozen=True)
class Num:
    value: int


@dataclass(frozen=True)
class Var:
    name: str


@dataclass(frozen=True)
class BinOp:
    op: str
    left: "Node"
    right: "Node"


Node = Union[Num, Var, BinOp]


@dataclass(frozen=True)
class Function:
    name: str
    params: Tuple[str, ...]
    body: Node
    examples: Tuple[Tuple[Tuple[int, ...], int], ...]  # ((args, result), ...)


@dataclass(frozen=True)
class Module:
    model: str
    prompt: str
    functions: Tuple[Function, ...]


class TranslationError(ValueError):
    """The response is not a spec the pipeline understands."""


PRECEDENCE = {"+": 1, "-": 1, "*": 2}
_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_]\w*)|(.))")
_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")


def translate(response_text):
    """The IR of a response (the JSON text `provider.generate` returns)."""
    try:
        data = json.loads(response_text)
    except json.JSONDecodeError as e:
        raise TranslationError(f"the response is not JSON: {e}") from None
    functions = tuple(_function(raw) for raw in data["functions"])
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise TranslationError(f"duplicate function names in {names}")
    return Module(model=data["model"], prompt=data["prompt"], functions=functions)


def _function(raw):
    name = raw["name"]
    if not _NAME.match(name):
        raise TranslationError(f"bad function name {name!r}")
    params = tuple(raw["params"])
    body = parse_expression(raw["body"], params)
    examples = tuple((tuple(e["args"]), e["result"]) for e in raw.get("examples", ()))
    for args, _ in examples:
        if len(args) != len(params):
            raise TranslationError(f"{name}: example {list(args)} does not match the parameters {list(params)}")
    return Function(name=name, params=params, body=body, examples=examples)


def parse_expression(text, params):
    """The IR of an infix expression over integers and `params` with + - *
    and parentheses (* binds tighter; operators of equal precedence
    associate to the left)."""
    tokens = _tokenize(text)
    node, rest = _binary(tokens, params, 1)
    if rest:
        raise TranslationError(f"unexpected {rest[0]!r} in {text!r}")
    return node


def _tokenize(text):
    tokens = []
    for number, name, other in _TOKEN.findall(text.strip()):
        if number:
            tokens.append(int(number))
        elif name:
            tokens.append(name)
        elif other in PRECEDENCE or other in "()":
            tokens.append(other)
        else:
            raise TranslationError(f"unexpected character {other!r} in {text!r}")
    return tokens


def _binary(tokens, params, level):
    if level > max(PRECEDENCE.values()):
        return _atom(tokens, params)
    left, tokens = _binary(tokens, params, level + 1)
    while tokens and PRECEDENCE.get(tokens[0]) == level:
        op, tokens = tokens[0], tokens[1:]
        right, tokens = _binary(tokens, params, level + 1)
        left = BinOp(op, left, right)
    return left, tokens


def _atom(tokens, params):
    if not tokens:
        raise TranslationError("unexpected end of expression")
    head, rest = tokens[0], tokens[1:]
    if isinstance(head, int):
        return Num(head), rest
    if head == "(":
        inner, rest = _binary(rest, params, 1)
        if not rest or rest[0] != ")":
            raise TranslationError("missing )")
        return inner, rest[1:]
    if head in params:
        return Var(head), rest
    if head[0].isalpha() or head[0] == "_":
        raise TranslationError(f"unknown name {head!r} (parameters: {', '.join(params)})")
    raise TranslationError(f"unexpected {head!r}")
