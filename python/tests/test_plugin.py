"""The plugin inside real pytest sessions (pytester): without a daemon it
warns once and runs everything; it never deselects on a guess."""

import pytest
from conftest import PYTHON_DIR

pytest_plugins = ["pytester"]


@pytest.fixture
def suite(pytester, monkeypatch, tmp_path):
    pytester.makepyprojecttoml("[project]\nname = 'x'\n")
    pytester.makepyfile(
        test_a="def test_one():\n    pass\n\ndef test_two():\n    pass\n",
        test_b="def test_three():\n    pass\n",
    )
    monkeypatch.setenv("PYTHONPATH", str(PYTHON_DIR))
    monkeypatch.setenv("TIM_SOCKET", str(tmp_path / "no-daemon.sock"))
    monkeypatch.delenv("TIM_MODE", raising=False)
    return pytester


def test_without_a_daemon_everything_runs_with_one_warning(suite):
    result = suite.runpytest_subprocess("-p", "pytest_tim", "--tim")
    result.assert_outcomes(passed=3)
    warnings = [line for line in result.errlines if "pytest-tim: warning" in line]
    assert len(warnings) == 1, result.errlines
    assert "running every test without recording" in warnings[0]


def test_inactive_without_the_flag(suite):
    result = suite.runpytest_subprocess("-p", "pytest_tim")
    result.assert_outcomes(passed=3)
    assert not [line for line in result.errlines if "pytest-tim" in line]


def test_options_are_documented(suite):
    result = suite.runpytest_subprocess("-p", "pytest_tim", "--help")
    out = result.stdout.str()
    assert "--tim " in out and "--tim-all" in out


def test_works_without_xdist(suite):
    # xdist-only hooks must not be required (pytest rejects unknown hooks).
    result = suite.runpytest_subprocess("-p", "pytest_tim", "--tim", "-p", "no:xdist")
    result.assert_outcomes(passed=3)
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
