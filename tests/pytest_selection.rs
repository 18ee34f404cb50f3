//! Selection on a sample project with real pytest: record everything, make
//! one edit, and the affected tests must be exactly the ones that can
//! observe it, no fewer and no more.

use crate::support::*;
use std::collections::BTreeSet;

/// The sample project: a small library (`app/`) and tests that reach it in
/// every way selection must follow: calls, class attributes read without a
/// call, module constants, default and decorator arguments, session and
/// function fixtures from a conftest, parametrize data from another
/// module, and a JSON file read at test time.
const SAMPLE: &[(&str, &str)] = &[
    (
        "pyproject.toml",
        "[project]\nname = \"sample\"\nversion = \"0\"\n\n[tool.pytest.ini_options]\ntestpaths = [\"tests\"]\n",
    ),
    ("app/__init__.py", ""),
    (
        "app/shapes.py",
        r#"UNIT = "cm"


class Square:
    sides = 4

    def __init__(self, size):
        self.size = size

    def area(self):
        return self.size * self.size

    def describe(self):
        return f"{self.size}{UNIT}"
"#,
    ),
    (
        "app/numbers.py",
        "def scale(x, factor=2):\n    return x * factor\n",
    ),
    (
        "app/text.py",
        r#"def shout(s):
    return s.upper() + "!"


def retry(times):
    def deco(fn):
        fn.retries = times
        return fn

    return deco


@retry(3)
def fetch():
    return "data"
"#,
    ),
    ("app/config.py", "LIMIT = 10\n"),
    ("app/cases.py", "CASES = [(1, 2), (2, 4)]\n"),
    ("app/tables.py", "BASE = 10\n"),
    (
        "app/lazy.py",
        "def compute(x):\n    from app import tables\n\n    return tables.BASE * x\n",
    ),
    (
        "tests/test_lazy.py",
        "from app.lazy import compute\n\n\ndef test_compute_one():\n    assert compute(1) == 10\n\n\ndef test_compute_two():\n    assert compute(2) == 20\n",
    ),
    (
        "tests/conftest.py",
        r#"import pytest


@pytest.fixture(scope="session")
def big_model():
    from app.shapes import Square

    return Square(3)


@pytest.fixture
def greeting():
    return "hi"
"#,
    ),
    (
        "tests/test_shapes.py",
        r#"from app.shapes import Square


def test_area():
    assert Square(2).area() == 4


def test_sides():
    assert Square.sides == 4


def test_init():
    assert Square(5).size == 5
"#,
    ),
    (
        "tests/test_numbers.py",
        "from app.numbers import scale\n\n\ndef test_scale():\n    assert scale(3) == 6\n",
    ),
    (
        "tests/test_model.py",
        r#"def test_model_area(big_model):
    assert big_model.area() == 9


def test_model_size(big_model):
    assert big_model.size == 3


def test_model_double(big_model):
    assert big_model.area() * 2 == 18
"#,
    ),
    (
        "tests/test_text.py",
        r#"from app.text import fetch, shout


def test_shout(greeting):
    assert shout(greeting) == "HI!"


def test_retries():
    assert fetch.retries == 3
"#,
    ),
    (
        "tests/test_config.py",
        "from app import config\n\n\ndef test_limit():\n    assert config.LIMIT == 10\n",
    ),
    (
        "tests/test_data.py",
        r#"import json
import pathlib


def test_json():
    data = json.loads((pathlib.Path(__file__).parent / "data" / "values.json").read_text())
    assert data["x"] == 1


def test_other():
    assert True


def test_listing():
    assert len(sorted((pathlib.Path(__file__).parent / "data").glob("*.json"))) >= 1
"#,
    ),
    ("tests/data/values.json", "{\"x\": 1}\n"),
    (
        "app/derived.py",
        "BASE = 5\n\n\ndef build():\n    return BASE\n\n\nVALUE = build()\n",
    ),
    (
        "app/settings.py",
        "TIMEOUT = 30\nRETRIES = 3\n\n\ndef timeout():\n    return TIMEOUT\n",
    ),
    (
        "tests/test_settings.py",
        r#"from app import settings


def test_timeout():
    assert settings.timeout() == 30


def test_retries():
    assert settings.RETRIES == 3


def test_unrelated():
    assert settings is not None


def test_listing():
    assert "TIMEOUT" in dir(settings)
"#,
    ),
    (
        "tests/test_derived_a.py",
        "from app.derived import VALUE\n\n\ndef test_value_a():\n    assert VALUE == 5\n",
    ),
    (
        "tests/test_derived_b.py",
        "from app.derived import VALUE\n\n\ndef test_value_b():\n    assert VALUE == 5\n",
    ),
    // Identical functions in two files: their code objects compare equal.
    ("app/twin_a.py", "def helper():\n    return 1\n"),
    ("app/twin_b.py", "def helper():\n    return 1\n"),
    (
        "tests/test_twins.py",
        "from app import twin_a, twin_b\n\n\ndef test_twins():\n    assert twin_a.helper() + twin_b.helper() == 2\n",
    ),
    (
        "tests/test_cases.py",
        r#"import pytest

from app.cases import CASES


@pytest.mark.parametrize("a,b", CASES)
def test_double(a, b):
    assert a * 2 == b
"#,
    ),
];

const ALL_TESTS: usize = 24;

/// Which recorder the plugin uses depends on the interpreter.
#[derive(Clone, Copy)]
enum Recorder {
    /// Python 3.11, the default: the project's modules instrumented.
    Instrument,
    /// Python 3.11, the fallback (`TIM_RECORDER=profile`): the C profiler.
    Profile,
    /// Python >= 3.12: `sys.monitoring`.
    Monitoring,
}

fn recorded_sample_with(recorder: Recorder) -> Project {
    let mut p = Project::with_files(SAMPLE);
    let (python, banner) = match recorder {
        Recorder::Instrument => (test_python(), "recording with source instrumentation"),
        Recorder::Profile => {
            p.env("TIM_RECORDER", "profile");
            (test_python(), "recording with cProfile")
        }
        Recorder::Monitoring => (test_python_monitoring(), "recording with sys.monitoring"),
    };
    p.env("TIM_PYTHON", &python);
    let out = p.tim(&["run", "--all"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("{ALL_TESTS} passed")),
        "the recording run failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(banner), "expected {banner:?}:\n{stdout}");
    p
}

fn recorded_sample() -> Project {
    recorded_sample_with(Recorder::Instrument)
}

fn affected(p: &Project) -> (BTreeSet<String>, serde_json::Value) {
    let v = p.tim_json(&["affected", "--json"]);
    let ids = v["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, v)
}

/// Replaces `from` with `to` in `path`; a file that does not exist yet is
/// created (with `to`).
fn edit(p: &Project, path: &str, from: &str, to: &str) {
    let Ok(text) = std::fs::read_to_string(p.path(path)) else {
        p.write(path, to);
        return;
    };
    assert!(text.contains(from), "{path} does not contain {from:?}");
    p.write(path, &text.replacen(from, to, 1));
}

/// One edit, the exact set of affected tests, and a reason that must be
/// among theirs.
fn check(edits: &[(&str, &str, &str)], expected: &[&str], reason: &str) -> Project {
    check_with(Recorder::Instrument, edits, expected, reason)
}

fn check_with(
    recorder: Recorder,
    edits: &[(&str, &str, &str)],
    expected: &[&str],
    reason: &str,
) -> Project {
    let p = recorded_sample_with(recorder);
    let (before, _) = affected(&p);
    assert!(
        before.is_empty(),
        "nothing is affected right after recording: {before:?}"
    );
    for (path, from, to) in edits {
        edit(&p, path, from, to);
    }
    let (got, json) = affected(&p);
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, expected, "affected tests; full answer: {json:#}");
    for t in json["tests"].as_array().unwrap() {
        let reasons: Vec<&str> = t["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert!(
            reasons.iter().any(|r| r.contains(reason)),
            "{} lacks a reason containing {reason:?}: {reasons:?}",
            t["id"]
        );
    }
    p
}

/// Each scenario runs with every recorder.
macro_rules! selection {
    ($($name:ident: [$($edit:expr),* $(,)?] => [$($id:expr),* $(,)?], $reason:expr;)*) => {$(
        mod $name {
            use super::*;

            #[test]
            fn instrument() {
                check_with(Recorder::Instrument, &[$($edit),*], &[$($id),*], $reason);
            }

            #[test]
            fn cprofile() {
                check_with(Recorder::Profile, &[$($edit),*], &[$($id),*], $reason);
            }

            #[test]
            fn monitoring() {
                check_with(Recorder::Monitoring, &[$($edit),*], &[$($id),*], $reason);
            }
        }
    )*};
}

selection! {
    edit_inside_a_function_body:
        [("app/shapes.py", "return self.size * self.size", "return self.size ** 2")]
        => ["tests/test_shapes.py::test_area", "tests/test_model.py::test_model_area", "tests/test_model.py::test_model_double"],
        "changed: app/shapes.py::Square.area";
    edit_one_of_two_identical_functions_in_two_files:
        [("app/twin_b.py", "return 1", "return 1 + 0")]
        => ["tests/test_twins.py::test_twins"],
        "changed: app/twin_b.py::helper";
    edit_a_module_constant_read_without_a_call:
        [("app/config.py", "LIMIT = 10", "LIMIT = 11")]
        => ["tests/test_config.py::test_limit"],
        "changed: app/config.py::<module>";
    edit_a_function_called_at_import_time_by_a_module_two_test_files_import:
        [("app/derived.py", "return BASE", "return BASE + 1")]
        => ["tests/test_derived_a.py::test_value_a", "tests/test_derived_b.py::test_value_b"],
        "changed: app/derived.py::build";
    edit_a_constant_read_only_by_a_function_called_at_import_time:
        [("app/derived.py", "BASE = 5", "BASE = 6")]
        => ["tests/test_derived_a.py::test_value_a", "tests/test_derived_b.py::test_value_b"],
        "changed: app/derived.py::<module>.BASE";
    edit_a_constant_selects_the_tests_whose_code_reads_it:
        [("app/settings.py", "TIMEOUT = 30", "TIMEOUT = 31")]
        // test_listing lists the module's names with dir(): it may read any.
        => ["tests/test_settings.py::test_timeout", "tests/test_settings.py::test_listing"],
        "changed: app/settings.py::<module>.TIMEOUT";
    edit_a_constant_read_directly_by_one_test:
        [("app/settings.py", "RETRIES = 3", "RETRIES = 4")]
        => ["tests/test_settings.py::test_retries", "tests/test_settings.py::test_listing"],
        "changed: app/settings.py::<module>.RETRIES";
    rename_a_constant:
        [("app/settings.py", "RETRIES = 3", "ATTEMPTS = 3")]
        => ["tests/test_settings.py::test_timeout", "tests/test_settings.py::test_retries",
            "tests/test_settings.py::test_unrelated", "tests/test_settings.py::test_listing"],
        "app/settings.py";
    edit_a_class_attribute:
        [("app/shapes.py", "sides = 4", "sides = 5")]
        => ["tests/test_shapes.py::test_area", "tests/test_shapes.py::test_sides", "tests/test_shapes.py::test_init",
            "tests/test_model.py::test_model_area", "tests/test_model.py::test_model_size", "tests/test_model.py::test_model_double"],
        "changed: app/shapes.py::<module>";
    edit_a_constant_of_a_module_imported_inside_a_function:
        [("app/tables.py", "BASE = 10", "BASE = 11")]
        => ["tests/test_lazy.py::test_compute_one", "tests/test_lazy.py::test_compute_two"],
        "changed: app/tables.py::<module>";
    edit_a_default_argument:
        [("app/numbers.py", "factor=2", "factor=3")]
        => ["tests/test_numbers.py::test_scale"],
        "changed: app/numbers.py::<module>";
    edit_a_decorator_argument:
        [("app/text.py", "@retry(3)", "@retry(4)")]
        => ["tests/test_text.py::test_shout", "tests/test_text.py::test_retries"],
        "changed: app/text.py::<module>";
    edit_a_session_fixture_used_by_three_tests:
        [("tests/conftest.py", "return Square(3)", "return Square(1 + 2)")]
        => ["tests/test_model.py::test_model_area", "tests/test_model.py::test_model_size", "tests/test_model.py::test_model_double"],
        "changed: tests/conftest.py::big_model";
    edit_a_conftest_fixture:
        [("tests/conftest.py", "return \"hi\"", "return \"h\" + \"i\"")]
        => ["tests/test_text.py::test_shout"],
        "changed: tests/conftest.py::greeting";
    edit_a_json_file_a_test_reads:
        [("tests/data/values.json", "{\"x\": 1}", "{\"x\": 1, \"y\": 2}")]
        => ["tests/test_data.py::test_json"],
        "file: tests/data/values.json";
    add_a_file_to_a_directory_a_test_lists:
        [("tests/data/values.json", "{\"x\": 1}", "{\"x\": 1}"), ("tests/data/more.json", "", "")]
        => ["tests/test_data.py::test_listing"],
        "directory: tests/data/";
    delete_a_function:
        [("app/text.py", "def shout(s):\n    return s.upper() + \"!\"\n", "")]
        => ["tests/test_text.py::test_shout", "tests/test_text.py::test_retries"],
        "app/text.py";
    comment_and_blank_line_edits_select_nothing:
        [("app/shapes.py", "    def area(self):", "    # The area, in square units.\n\n    def area(self):"),
         ("app/numbers.py", "def scale", "# Scaling.\ndef scale")]
        => [],
        "";
    editing_pyproject_outside_pytests_tables_selects_nothing:
        [("pyproject.toml", "version = \"0\"", "version = \"1\"")]
        => [],
        "";
    a_syntax_error_affects_its_dependents:
        [("app/numbers.py", "factor=2)", "factor=2")]
        => ["tests/test_numbers.py::test_scale"],
        "syntax error: app/numbers.py line 1";
}

#[test]
fn revert_an_edit_selects_nothing_again() {
    let p = check(
        &[(
            "app/shapes.py",
            "return self.size * self.size",
            "return self.size ** 2",
        )],
        &[
            "tests/test_shapes.py::test_area",
            "tests/test_model.py::test_model_area",
            "tests/test_model.py::test_model_double",
        ],
        "Square.area",
    );
    edit(
        &p,
        "app/shapes.py",
        "return self.size ** 2",
        "return self.size * self.size",
    );
    assert!(affected(&p).0.is_empty());
    let out = p.tim_ok(&["run"]);
    assert!(out.contains("nothing affected"), "{out}");
}

#[test]
fn a_new_test_runs_alone_and_others_stay_unaffected() {
    let p = check(
        &[(
            "tests/test_data.py",
            "def test_other():",
            "def test_new():\n    assert 1 + 1 == 2\n\n\ndef test_other():",
        )],
        &[],
        "",
    );
    let (_, json) = affected(&p);
    assert_eq!(collect_files(&json), ["tests/test_data.py"], "{json:#}");
    let stdout = p.tim_ok(&["run"]);
    assert!(stdout.contains("1 passed, 3 deselected"), "{stdout}");
    assert!(affected(&p).0.is_empty());
    let why = p.tim_json(&["why", "tests/test_data.py::test_new", "--json"]);
    assert_eq!(why["known"], true);
    assert_eq!(why["affected"], false);
}

#[test]
fn a_parametrize_case_added_in_another_module_is_collected_and_run() {
    let p = check(
        &[(
            "app/cases.py",
            "CASES = [(1, 2), (2, 4)]",
            "CASES = [(1, 2), (2, 4), (3, 6)]",
        )],
        &[
            "tests/test_cases.py::test_double[1-2]",
            "tests/test_cases.py::test_double[2-4]",
        ],
        "changed: app/cases.py::<module>",
    );
    let stdout = p.tim_ok(&["run"]);
    assert!(
        stdout.contains("3 passed"),
        "the new case runs too: {stdout}"
    );
    assert!(!stdout.contains("test_shapes"), "{stdout}");
    assert!(affected(&p).0.is_empty());
}

#[test]
fn failures_stay_affected_until_they_pass() {
    let p = check(
        &[("app/config.py", "LIMIT = 10", "LIMIT = 11")],
        &["tests/test_config.py::test_limit"],
        "config.py",
    );
    let out = p.tim(&["run"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the test fails: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (still, json) = affected(&p);
    assert_eq!(
        still.into_iter().collect::<Vec<_>>(),
        ["tests/test_config.py::test_limit"]
    );
    assert_eq!(json["tests"][0]["reasons"][0], "failed last time");
    edit(&p, "app/config.py", "LIMIT = 11", "LIMIT = 10");
    p.tim_ok(&["run"]);
    assert!(affected(&p).0.is_empty());
}

#[test]
fn nothing_affected_starts_no_python() {
    let mut p = recorded_sample();
    // An interpreter that cannot start: if tim tried, the run would fail.
    p.env("TIM_PYTHON", "/nonexistent/python");
    let out = p.tim(&["run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("nothing affected: {ALL_TESTS} known tests")),
        "{stdout}"
    );
}

#[test]
fn why_explains_dependencies() {
    let p = recorded_sample();
    let why = p.tim_json(&["why", "tests/test_model.py::test_model_size", "--json"]);
    let targets = why_targets(&why);
    for expected in [
        "tests/conftest.py::big_model",
        "app/shapes.py::Square.__init__",
        "app/shapes.py::<module>",
        "tests/test_model.py::test_model_size",
    ] {
        assert!(
            targets.iter().any(|t| t == expected),
            "{expected} missing from {targets:?}"
        );
    }
    assert!(
        !targets.iter().any(|t| t.contains("Square.area")),
        "area is not called by this test: {targets:?}"
    );
    assert_eq!(why["affected"], false);
    edit(
        &p,
        "tests/conftest.py",
        "return Square(3)",
        "return Square(1 + 2)",
    );
    let text = p.tim_ok(&["why", "tests/test_model.py::test_model_size"]);
    assert!(
        text.contains("changed: tests/conftest.py::big_model"),
        "{text}"
    );
    let unknown = p.tim_ok(&["why", "tests/test_nope.py::test_x"]);
    assert!(unknown.contains("not recorded yet"), "{unknown}");
}

#[test]
fn changing_pytest_configuration_affects_every_test() {
    let p = recorded_sample();
    edit(
        &p,
        "pyproject.toml",
        "testpaths = [\"tests\"]",
        "testpaths = [\"tests\"]\naddopts = \"-q\"",
    );
    let (ids, json) = affected(&p);
    assert_eq!(ids.len(), ALL_TESTS, "{json:#}");
    assert!(
        json["tests"][0]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "pytest configuration: pyproject.toml"),
        "{json:#}"
    );
}

/// A generator started in one test and resumed in the next runs its body in
/// both, though only the first enters it: every recorder must see the
/// resumption (a `sys.monitoring` PY_RESUME; on 3.11 a hit after `yield`).
#[test]
fn a_generator_resumed_in_a_later_test_is_a_dependency_of_it() {
    for recorder in [
        Recorder::Instrument,
        Recorder::Profile,
        Recorder::Monitoring,
    ] {
        let mut p = Project::with_files(&[
            (
                "pyproject.toml",
                "[project]\nname = \"gen\"\nversion = \"0\"\n",
            ),
            ("app/__init__.py", ""),
            (
                "app/gen.py",
                "def numbers():\n    yield 1\n    yield 2\n\n\nNUMS = numbers()\n",
            ),
            (
                "tests/test_gen.py",
                "from app.gen import NUMS\n\n\ndef test_first():\n    assert next(NUMS) == 1\n\n\ndef test_second():\n    assert next(NUMS) == 2\n",
            ),
        ]);
        let python = match recorder {
            Recorder::Monitoring => test_python_monitoring(),
            Recorder::Profile => {
                p.env("TIM_RECORDER", "profile");
                test_python()
            }
            Recorder::Instrument => test_python(),
        };
        p.env("TIM_PYTHON", &python);
        // No history: collection order, so the first test starts it.
        let out = p.tim_ok(&["run", "--all", "--no-progress", "--", "-q"]);
        assert!(out.contains("2 passed"), "{out}");
        edit(&p, "app/gen.py", "yield 2", "yield 1 + 1");
        let (got, json) = affected(&p);
        assert!(
            got.contains("tests/test_gen.py::test_second"),
            "{}: the resumed generator's edit must affect test_second: {json:#}",
            python
        );
    }
}
