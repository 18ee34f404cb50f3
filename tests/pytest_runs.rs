//! Whole runs with real pytest: the user's own `pytest --tim`, xdist
//! workers, and environment changes made with pip.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const SMALL: &[(&str, &str)] = &[
    (
        "pyproject.toml",
        "[project]\nname = \"small\"\nversion = \"0\"\n",
    ),
    ("lib/__init__.py", ""),
    ("lib/a.py", "def one():\n    return 1\n"),
    ("lib/b.py", "def two():\n    return 2\n"),
    (
        "tests/test_a.py",
        "from lib.a import one\n\n\ndef test_one():\n    assert one() == 1\n\n\ndef test_one_again():\n    assert one() + 1 == 2\n",
    ),
    (
        "tests/test_b.py",
        "import pytest\n\nfrom lib.b import two\n\n\n@pytest.mark.parametrize('n', range(6))\ndef test_two(n):\n    assert two() * n == 2 * n\n",
    ),
];

fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../python")
}

/// `python -m pytest ARGS` in the project, as a user would run it, with the
/// plugin importable from the source tree.
fn pytest(p: &Project, python: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(python)
        .current_dir(&p.root)
        .args(["-m", "pytest", "-p", "pytest_tim"])
        .args(args)
        .env("PYTHONPATH", plugin_dir())
        .env("TIM_RUNTIME_DIR", &p.runtime)
        .env("TIM_BIN", TIM)
        .env("TIM_DAEMON", TIMD)
        .env_remove("TIM_MODE")
        .env_remove("TIM_SOCKET")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_users_own_pytest_command_with_tim() {
    let p = Project::with_files(SMALL);
    let python = test_python();
    // The first run starts the daemon through `tim`, records everything.
    let (code, out) = pytest(&p, &python, &["--tim"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("8 passed"), "{out}");
    assert!(!out.contains("warning"), "{out}");
    // Nothing changed: everything is deselected.
    let (code, out) = pytest(&p, &python, &["--tim"]);
    assert_eq!(
        code, 5,
        "pytest's own code when every test is deselected: {out}"
    );
    assert!(
        out.contains("tim: running 0 of 8 tests (8 unaffected)"),
        "{out}"
    );
    p.write("lib/a.py", "def one():\n    return 1 * 1\n");
    let (code, out) = pytest(&p, &python, &["--tim", "-v"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("tim: running 2 of 8 tests (6 unaffected)"),
        "{out}"
    );
    assert!(
        out.contains("test_one PASSED") && out.contains("test_one_again PASSED"),
        "{out}"
    );
    assert!(affected_ids(&p).is_empty());
}

#[test]
fn xdist_workers_record_once_and_select_alike() {
    let mut p = Project::with_files(SMALL);
    p.env("TIM_PYTHON", &test_python());
    let stdout = p.tim_ok(&["run", "--all", "--", "-n", "2"]);
    assert!(stdout.contains("8 passed"), "{stdout}");
    assert!(
        affected_ids(&p).is_empty(),
        "every test was recorded by some worker"
    );
    let status = p.status();
    assert_eq!(status["changed_since_last_run"], serde_json::json!([]));

    p.write("lib/b.py", "def two():\n    return 1 + 1\n");
    assert_eq!(affected_ids(&p).len(), 6);
    let stdout = p.tim_ok(&["run", "--", "-n", "2"]);
    assert!(stdout.contains("6 passed"), "{stdout}");
    assert!(
        !stdout.contains("Different tests were collected"),
        "{stdout}"
    );
    assert!(affected_ids(&p).is_empty());
    // Each result is recorded once per run.
    let db = rusqlite::Connection::open(p.path(".tim/tim.db")).unwrap();
    let (rows, distinct): (i64, i64) = db
        .query_row(
            "SELECT COUNT(*), COUNT(DISTINCT node_id) FROM result WHERE run_id = (SELECT MAX(id) FROM run)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((rows, distinct), (6, 6));
}

/// Builds a wheel of `tinydep` (a module with `VALUE`) with the standard
/// library, so pip can install it without a network.
const WHEEL_SCRIPT: &str = r#"
import base64, hashlib, sys, zipfile
out, version, value = sys.argv[1], sys.argv[2], sys.argv[3]
info = f"tinydep-{version}.dist-info"
files = {
    "tinydep/__init__.py": f"VALUE = {value}\n",
    f"{info}/METADATA": f"Metadata-Version: 2.1\nName: tinydep\nVersion: {version}\n",
    f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tim-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    f"{info}/top_level.txt": "tinydep\n",
}
name = f"{out}/tinydep-{version}-py3-none-any.whl"
record = []
with zipfile.ZipFile(name, "w") as z:
    for path, text in files.items():
        data = text.encode()
        z.writestr(path, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
print(name)
"#;

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn installing_and_upgrading_a_package_affects_its_importers() {
    let base = test_python();
    let mut p = Project::with_files(&[
        (
            "pyproject.toml",
            "[project]\nname = \"envy\"\nversion = \"0\"\n",
        ),
        (
            "tests/test_dep.py",
            "import tinydep\n\n\ndef test_value():\n    assert tinydep.VALUE >= 1\n",
        ),
        (
            "tests/test_plain.py",
            "def test_plain():\n    assert True\n",
        ),
    ]);
    // A virtualenv of its own that sees the test environment's pytest.
    let venv = p.root.parent().unwrap().join("venv");
    run_ok(
        Command::new(&base)
            .args(["-m", "venv", "--without-pip"])
            .arg(&venv),
    );
    let python = venv.join("bin/python").display().to_string();
    let purelib = |py: &str| {
        run_ok(Command::new(py).args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ]))
    };
    std::fs::write(
        Path::new(&purelib(&python)).join("base.pth"),
        purelib(&base),
    )
    .unwrap();
    let wheels = p.root.parent().unwrap().join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    let wheel = |version: &str, value: &str| {
        run_ok(
            Command::new(&python)
                .args(["-c", WHEEL_SCRIPT])
                .arg(&wheels)
                .args([version, value]),
        )
    };
    let pip_install = |wheel: &str| {
        run_ok(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            wheel,
        ]));
    };
    pip_install(&wheel("1.0", "1"));
    p.env("TIM_PYTHON", &python);
    p.tim_ok(&["run", "--all"]);
    assert!(affected_ids(&p).is_empty());

    pip_install(&wheel("1.1", "2"));
    let v = p.tim_json(&["affected", "--json"]);
    assert_eq!(v["tests"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(v["tests"][0]["id"], "tests/test_dep.py::test_value");
    assert_eq!(
        v["tests"][0]["reasons"][0], "environment: tinydep 1.0→1.1",
        "{v:#}"
    );
    let out = p.tim(&["run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}"
    );
    assert!(affected_ids(&p).is_empty());

    // A different interpreter affects everything, and says so.
    let v = p.tim_json(&["affected", "--json", "--python", &base]);
    let why = v["run_all"].as_str().unwrap_or_default();
    assert!(why.starts_with("environment: python"), "{v:#}");
}

#[test]
fn new_test_files_are_found_by_pytests_own_discovery_settings() {
    let p = Project::recorded_python(
        &[
            (
                "pyproject.toml",
                "[project]\nname = \"custom\"\nversion = \"0\"\n\n[tool.pytest.ini_options]\npython_files = [\"check_*.py\"]\ntestpaths = [\"suite\"]\n",
            ),
            (
                "suite/check_first.py",
                "def test_first():\n    assert True\n",
            ),
        ],
        0,
    );
    p.write(
        "suite/check_second.py",
        "def test_second():\n    assert True\n",
    );
    p.write(
        "suite/test_not_a_test_here.py",
        "def test_x():\n    assert False\n",
    );
    p.write(
        "tools/check_outside.py",
        "def test_y():\n    assert False\n",
    );
    let v = p.tim_json(&["affected", "--json"]);
    assert_eq!(collect_files(&v), ["suite/check_second.py"], "{v:#}");
    assert_eq!(v["collect"][0]["reasons"][0], "new test file");
    let out = p.tim(&["run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}"
    );
    assert!(affected_ids(&p).is_empty());
    assert_eq!(
        p.tim_json(&["affected", "--json"])["collect"],
        serde_json::json!([])
    );
}

/// A project whose tests have known durations, one failing last time, and
/// one new test added after the recording.
fn ordering_project() -> Project {
    let p = Project::recorded_python(
        &[
            (
                "pyproject.toml",
                "[project]\nname = \"order\"\nversion = \"0\"\n",
            ),
            (
                "tests/test_order.py",
                "import time\n\n\ndef test_1_slow():\n    time.sleep(0.3)\n\n\ndef test_2_fast():\n    pass\n\n\ndef test_3_fails():\n    assert False\n\n\ndef test_5_medium():\n    time.sleep(0.1)\n",
            ),
        ],
        1,
    );
    p.write(
        "tests/test_order.py",
        &format!(
            "{}\n\ndef test_4_new():\n    pass\n",
            std::fs::read_to_string(p.path("tests/test_order.py")).unwrap()
        ),
    );
    p
}

/// The order in which `tim run ARGS -- -v` ran the tests.
fn run_order(p: &Project, args: &[&str]) -> Vec<String> {
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--", "-v"]);
    let out = p.tim(&full);
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter(|l| l.starts_with("tests/test_order.py::"))
        .map(|l| {
            l.split_whitespace()
                .next()
                .unwrap()
                .trim_start_matches("tests/test_order.py::")
                .to_owned()
        })
        .collect()
}

#[test]
fn failed_tests_run_first_then_new_ones_then_the_fastest() {
    let p = ordering_project();
    assert_eq!(
        run_order(&p, &["run", "--all"]),
        [
            "test_3_fails",
            "test_4_new",
            "test_2_fast",
            "test_5_medium",
            "test_1_slow"
        ]
    );
}

#[test]
fn longest_first_from_the_command_line_or_the_configuration() {
    // The slowest first. The new test counts as the median known duration,
    // test_5_medium's own (the upper middle of 0.3 s, 0.1 s and two near-zero
    // times), and ties keep collection order.
    let p = ordering_project();
    let order = run_order(&p, &["run", "--all", "--order", "longest-first"]);
    assert_eq!(
        order[..3],
        ["test_1_slow", "test_5_medium", "test_4_new"],
        "{order:?}"
    );
    assert_eq!(order.len(), 5, "{order:?}");
    p.write("tim.toml", "[run]\norder = \"longest-first\"\n");
    let order = run_order(&p, &["run", "--all"]);
    assert_eq!(order[..2], ["test_1_slow", "test_5_medium"], "{order:?}");
    // The command line wins over the configuration.
    let order = run_order(&p, &["run", "--all", "--order", "quick-feedback"]);
    assert_eq!(order[0], "test_3_fails", "{order:?}");
}

#[test]
fn a_recursion_error_in_a_test_does_not_stop_recording() {
    let p = Project::recorded_python(
        &[
            (
                "pyproject.toml",
                "[project]\nname = \"deep\"\nversion = \"0\"\n",
            ),
            ("lib/__init__.py", ""),
            ("lib/calc.py", "def double(x):\n    return 2 * x\n"),
            (
                "tests/test_deep.py",
                "import pytest\n\nfrom lib.calc import double\n\n\ndef deep(n):\n    return deep(n + 1)\n\n\ndef test_deep():\n    with pytest.raises(RecursionError):\n        deep(0)\n    assert double(2) == 4\n\n\ndef test_after():\n    assert double(3) == 6\n\n\n@pytest.mark.xfail(reason=\"passes anyway\")\ndef test_xpass():\n    assert True\n",
            ),
        ],
        0,
    );
    // A trace function hit by a RecursionError is dropped by Python; the
    // recorder must not lose the tests after it. A non-strict XPASS passes.
    let v = p.tim_json(&["affected", "--json"]);
    assert_eq!(v["tests"], serde_json::json!([]), "{v:#}");
    for test in [
        "tests/test_deep.py::test_deep",
        "tests/test_deep.py::test_after",
    ] {
        let why = p.tim_json(&["why", test, "--json"]);
        let targets = why_targets(&why);
        assert!(
            targets.iter().any(|t| t == "lib/calc.py::double"),
            "{test}: {targets:?}"
        );
    }
    p.write("lib/calc.py", "def double(x):\n    return x + x\n");
    let v = p.tim_json(&["affected", "--json"]);
    assert_eq!(v["tests"].as_array().unwrap().len(), 2, "{v:#}");
}

/// The small project, run by `tim` with Python writing bytecode caches
/// (this machine may set PYTHONDONTWRITEBYTECODE; a developer's does not).
fn small_writing_bytecode() -> Project {
    let mut p = Project::with_files(SMALL);
    p.env("TIM_PYTHON", &test_python());
    p.env("PYTHONDONTWRITEBYTECODE", "");
    p
}

/// Files in `dir` with their modification times, sorted.
fn mtimes(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (e.path(), e.metadata().unwrap().modified().unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_plugin_tim_provides_and_its_bytecode_outlive_a_fresh_state_directory() {
    let p = small_writing_bytecode();
    p.tim_ok(&["run", "--all"]);
    // One directory per plugin version in the (private) runtime directory,
    // holding the plugin of this source tree; nothing under `.tim/`.
    let versions: Vec<PathBuf> = std::fs::read_dir(p.runtime.join("python"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
    let copy = versions[0].join("pytest_tim");
    let source = plugin_dir().join("pytest_tim");
    for name in ["__init__.py", "_recorder.py", "_client.py"] {
        assert_eq!(
            std::fs::read_to_string(copy.join(name)).unwrap(),
            std::fs::read_to_string(source.join(name)).unwrap(),
            "{name}"
        );
    }
    assert!(!p.path(".tim/python").exists());
    let bytecode = mtimes(&copy.join("__pycache__"));
    assert!(!bytecode.is_empty());

    // A fresh `.tim/` (a new checkout, a deleted one) compiles nothing again.
    p.tim_ok(&["daemon", "stop"]);
    std::fs::remove_dir_all(p.path(".tim")).unwrap();
    let out = p.tim_ok(&["run", "--all"]);
    assert!(out.contains("8 passed"), "{out}");
    assert_eq!(mtimes(&copy.join("__pycache__")), bytecode);

    // A damaged copy is repaired before the next run.
    std::fs::write(copy.join("__init__.py"), "raise SystemExit(99)\n").unwrap();
    let out = p.tim_ok(&["run", "--all"]);
    assert!(out.contains("8 passed"), "{out}");
    assert_eq!(
        std::fs::read_to_string(copy.join("__init__.py")).unwrap(),
        std::fs::read_to_string(source.join("__init__.py")).unwrap()
    );
}

#[test]
fn bytecode_caches_are_no_dependencies() {
    let p = small_writing_bytecode();
    // The first run writes bytecode caches (Python's, pytest's rewritten
    // test modules, the 3.11 recorder's instrumented modules); the second
    // reads them while its tests are recorded.
    p.tim_ok(&["run", "--all"]);
    assert!(p.path("lib/__pycache__").is_dir());
    p.tim_ok(&["run", "--all"]);
    let why = p.tim_json(&["why", "tests/test_a.py::test_one", "--json"]);
    let targets = why_targets(&why);
    assert!(targets.iter().any(|t| t == "lib/a.py::one"), "{targets:?}");
    assert!(
        !targets.iter().any(|t| t.contains("__pycache__")),
        "{targets:?}"
    );
}
