"""The artifact cache's Python side on its own: keys, serializers, and
cached fixtures in sessions without a daemon (they compute every time)."""

import json

import pytest
from conftest import PYTHON_DIR

from pytest_tim._cache import ArtifactCache, _canonical, _serializer

pytest_plugins = ["pytester"]


def test_keys_are_stable_and_tell_values_apart():
    assert _canonical({"b": [1, 2.5], "a": ("x", None)}) == _canonical({"a": ["x", None], "b": (1, 2.5)})
    assert _canonical({1, 2, 3}) == _canonical({3, 2, 1})
    assert _canonical("1") != _canonical(1)
    assert _canonical(b"abc") != _canonical(b"abd")

    class Opaque:
        def __reduce__(self):
            raise TypeError("no pickling")

    with pytest.raises(TypeError, match="plain data") as e:
        _canonical({"model": Opaque()})
    assert "model" in str(e.value)


class Upper:
    """A user-supplied serializer."""

    @staticmethod
    def dumps(value):
        return value.upper().encode()

    @staticmethod
    def loads(data):
        return data.decode().lower()


@pytest.mark.parametrize(
    "spec, value",
    [("pickle", {"ir": [1, 2]}), ("json", {"a": [1, "b"]}), ("bytes", b"\x00\xff"), (Upper, "text")],
)
def test_serializers_round_trip(spec, value):
    name, dumps, loads = _serializer(spec)
    data = dumps(value)
    assert isinstance(data, bytes)
    assert loads(data) == value
    assert name == (spec if isinstance(spec, str) else "custom:Upper")


def test_bad_serializers_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="pickle, json, bytes"):
        _serializer("yaml")
    with pytest.raises(TypeError, match="dumps/loads"):
        _serializer(42)
    with pytest.raises(TypeError, match="bytes value"):
        _serializer("bytes")[1]("text")


def test_without_a_daemon_every_call_computes_and_counts():
    cache = ArtifactCache(None)
    calls = []
    for _ in range(3):
        assert cache.get_or_create("k", lambda: calls.append(1) or len(calls)) == len(calls)
    assert (cache.cache_hits, cache.cache_misses, cache.hit_rate) == (0, 3, 0.0)


def test_cached_fixtures_are_plain_fixtures_without_tim(pytester, monkeypatch, tmp_path):
    pytester.makepyprojecttoml("[project]\nname = 'x'\n")
    log = tmp_path / "calls"
    pytester.makeconftest(
        f"""
import pytest_tim

@pytest_tim.cached_fixture(scope="session", serializer="json")
def data():
    with open({str(log)!r}, "a") as f:
        f.write("x")
    return {{"n": 1}}

@pytest_tim.cached_fixture(scope="function", params=[1, 2])
def doubled(request, data):
    return request.param * 2 + data["n"]
"""
    )
    pytester.makepyfile(
        test_a="def test_one(data, doubled):\n    assert data == {'n': 1} and doubled in (3, 5)\n",
        test_b="def test_two(data, tim_cache):\n    assert tim_cache.get_or_create('k', lambda: 7) == 7\n",
    )
    monkeypatch.setenv("PYTHONPATH", str(PYTHON_DIR))
    monkeypatch.delenv("TIM_MODE", raising=False)
    result = pytester.runpytest_subprocess("-p", "pytest_tim")
    result.assert_outcomes(passed=3)
    assert log.read_text() == "x", "a session fixture, computed once"


def test_generator_fixtures_cannot_be_cached():
    from pytest_tim import cached_fixture

    with pytest.raises(TypeError, match="yield fixture"):

        @cached_fixture
        def gen():
            yield 1


def test_json_keys_need_no_pickle():
    assert json.loads(_canonical(["a", 1])) == ["a", 1]
