import pytest

from calc.tokens import tokenize


def test_numbers_and_operators():
    assert tokenize("1 + 2.5*3") == [1.0, "+", 2.5, "*", 3.0]


def test_rejects_letters():
    with pytest.raises(ValueError):
        tokenize("1 + x")
