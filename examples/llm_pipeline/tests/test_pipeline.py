"""The whole pipeline on the model's answers: IR -> Python -> run it."""

import keyword

import pytest

from pipeline.codegen import compile_module, generate_python

pytestmark = pytest.mark.integration


def test_every_response_has_an_ir(responses, irs):
    assert set(irs) == set(responses)
    for prompt, ir in irs.items():
        assert ir.prompt == prompt
        assert 3 <= len(ir.functions) <= 5


def test_generated_code_reproduces_the_examples(irs):
    for prompt, ir in irs.items():
        module = compile_module(generate_python(ir))
        for fn in ir.functions:
            for args, result in fn.examples:
                assert getattr(module, fn.name)(*args) == result, f"{prompt!r}: {fn.name}{args}"


def test_generated_names_are_usable(irs):
    for ir in irs.values():
        module = compile_module(generate_python(ir))
        assert module.__all__ == [fn.name for fn in ir.functions]
        assert not any(keyword.iskeyword(name) for name in module.__all__)
