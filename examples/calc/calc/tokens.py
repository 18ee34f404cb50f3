"""Splitting an expression into tokens."""

OPERATORS = "+-*/()"


def tokenize(text):
    """Return the tokens of `text`: numbers (as floats) and operator characters."""
    tokens = []
    number = ""
    for char in text:
        if char.isdigit() or char == ".":
            number += char
            continue
        if number:
            tokens.append(float(number))
            number = ""
        if char in OPERATORS:
            tokens.append(char)
        elif not char.isspace():
            raise ValueError(f"unexpected character {char!r}")
    if number:
        tokens.append(float(number))
    return tokens
