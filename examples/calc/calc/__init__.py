"""A tiny calculator: tokenize, parse and evaluate arithmetic expressions."""

from calc.evaluate import evaluate

__all__ = ["evaluate"]
