"""A recursive-descent parser producing nested tuples."""

from calc.tokens import tokenize


def parse(text):
    tokens = tokenize(text)
    tree, rest = _sum(tokens)
    if rest:
        raise ValueError(f"unexpected {rest[0]!r}")
    return tree


def _sum(tokens):
    left, tokens = _product(tokens)
    while tokens and tokens[0] in ("+", "-"):
        op, tokens = tokens[0], tokens[1:]
        right, tokens = _product(tokens)
        left = (op, left, right)
    return left, tokens


def _product(tokens):
    left, tokens = _atom(tokens)
    while tokens and tokens[0] in ("*", "/"):
        op, tokens = tokens[0], tokens[1:]
        right, tokens = _atom(tokens)
        left = (op, left, right)
    return left, tokens


def _atom(tokens):
    if not tokens:
        raise ValueError("unexpected end of expression")
    head, rest = tokens[0], tokens[1:]
    if head == "(":
        inner, rest = _sum(rest)
        if not rest or rest[0] != ")":
            raise ValueError("missing )")
        return inner, rest[1:]
    if isinstance(head, float):
        return head, rest
    if head == "-":
        value, rest = _atom(rest)
        return ("-", 0.0, value), rest
    raise ValueError(f"unexpected {head!r}")
