import json
import pickle

import pytest

from pipeline.translator import BinOp, Function, Module, Num, TranslationError, Var, parse_expression, translate

RESPONSE = json.dumps(
    {
        "model": "toy-spec-1",
        "prompt": "a tip calculator",
        "functions": [
            {"name": "tip", "params": ["x"], "body": "x * 15 - 3", "examples": [{"args": [10], "result": 147}]},
            {"name": "split", "params": ["x", "y"], "body": "(x + y) * 2", "examples": []},
        ],
    }
)


def test_translate_builds_the_ir():
    ir = translate(RESPONSE)
    assert ir == Module(
        model="toy-spec-1",
        prompt="a tip calculator",
        functions=(
            Function("tip", ("x",), BinOp("-", BinOp("*", Var("x"), Num(15)), Num(3)), (((10,), 147),)),
            Function("split", ("x", "y"), BinOp("*", BinOp("+", Var("x"), Var("y")), Num(2)), ()),
        ),
    )


def test_the_ir_survives_pickling():
    ir = translate(RESPONSE)
    assert pickle.loads(pickle.dumps(ir)) == ir


def test_multiplication_binds_tighter():
    assert parse_expression("x + y * 2", ("x", "y")) == BinOp("+", Var("x"), BinOp("*", Var("y"), Num(2)))


def test_subtraction_associates_to_the_left():
    assert parse_expression("9 - x - 1", ("x",)) == BinOp("-", BinOp("-", Num(9), Var("x")), Num(1))


@pytest.mark.parametrize(
    "body,message",
    [
        ("x / 2", "unexpected character '/'"),
        ("x + w", "unknown name 'w'"),
        ("(x + 1", "missing )"),
        ("x +", "unexpected end"),
    ],
)
def test_bad_expressions_are_rejected(body, message):
    with pytest.raises(TranslationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_expression(body, ("x",))


def test_duplicate_names_are_rejected():
    doubled = json.loads(RESPONSE)
    doubled["functions"][1]["name"] = "tip"
    with pytest.raises(TranslationError, match="duplicate"):
        translate(json.dumps(doubled))


def test_non_json_is_rejected():
    with pytest.raises(TranslationError, match="not JSON"):
        translate("Sure! Here is your spec:")
