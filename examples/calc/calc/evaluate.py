"""Evaluating parsed expressions."""

from calc.parse import parse

PRECISION = 10


def evaluate(text):
    return round(_eval(parse(text)), PRECISION)


def _eval(node):
    if isinstance(node, float):
        return node
    op, left, right = node
    a, b = _eval(left), _eval(right)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        raise ZeroDivisionError("division by zero in expression")
    return a / b
