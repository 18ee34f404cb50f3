import json
import pathlib

import pytest

from calc import evaluate

CASES = json.loads((pathlib.Path(__file__).parent / "data" / "cases.json").read_text())


@pytest.mark.parametrize("expression,expected", CASES)
def test_cases(expression, expected):
    assert evaluate(expression) == expected


def test_division_by_zero():
    with pytest.raises(ZeroDivisionError):
        evaluate("1 / (2 - 2)")
