//! Timing and outcome history kept by real runs: per-run rows (selection
//! size, known tests, git commit) and a bounded history per test.

use crate::support::*;
use std::process::Command;

const SUITE: &[(&str, &str)] = &[
    (
        "pyproject.toml",
        "[project]\nname = \"hist\"\nversion = \"0\"\n\n[tool.tim.history]\nkeep = 2\n",
    ),
    ("lib/__init__.py", ""),
    ("lib/a.py", "def one():\n    return 1\n"),
    (
        "tests/test_a.py",
        "from lib.a import one\n\n\ndef test_one():\n    assert one() == 1\n\n\ndef test_other():\n    assert True\n",
    ),
];

fn git(p: &Project, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(p.path(""))
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// mode, selected, known, git commit, exit status
type RunRow = (
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

fn runs(p: &Project) -> Vec<RunRow> {
    let conn = rusqlite::Connection::open(p.path(".tim/tim.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT mode, selected, known, git_commit, exit_status FROM run ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn history(p: &Project, test: &str) -> Vec<i64> {
    let conn = rusqlite::Connection::open(p.path(".tim/tim.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT run_id FROM result WHERE node_id = ?1 ORDER BY run_id")
        .unwrap();
    stmt.query_map([test], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn runs_record_what_they_ran_and_history_keeps_the_newest() {
    let mut p = Project::new();
    std::fs::remove_dir_all(p.path(".git")).unwrap();
    for (path, text) in SUITE {
        p.write(path, text);
    }
    p.write(".gitignore", ".tim/\n__pycache__/\n");
    git(&p, &["init", "-q"]);
    git(&p, &["add", "-A"]);
    git(&p, &["commit", "-q", "-m", "one"]);
    let head = git(&p, &["rev-parse", "HEAD"]);
    p.env("TIM_PYTHON", &test_python());

    p.tim_ok(&["run", "--all"]);
    let nothing = p.tim_ok(&["run"]);
    assert!(
        nothing.contains("nothing affected: 2 known tests") && nothing.contains("s saved"),
        "{nothing}"
    );
    p.write("lib/a.py", "def one():\n    return 2 - 1\n");
    let answer = p.tim_json(&["affected", "--json"]);
    let saved = answer["unaffected_seconds"].as_f64().unwrap();
    assert!(saved > 0.0, "test_other's last time: {answer}");
    let out = p.tim(&["run"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tim: ran the 1 affected of 2 known tests; about ")
            && stderr.contains("saved (what the other 1 took when they last ran)"),
        "{stderr}"
    );
    p.tim_ok(&["run", "--all"]);

    let rows = runs(&p);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let h = Some(head);
    assert_eq!(
        rows[0],
        ("all".into(), Some(2), Some(0), h.clone(), Some(0))
    );
    assert_eq!(
        rows[1],
        ("affected".into(), Some(1), Some(2), h.clone(), Some(0))
    );
    assert_eq!(rows[2], ("all".into(), Some(2), Some(2), h, Some(0)));
    // keep = 2: test_one ran in all three runs, test_other in runs 1 and 3.
    assert_eq!(history(&p, "tests/test_a.py::test_one"), [2, 3]);
    assert_eq!(history(&p, "tests/test_a.py::test_other"), [1, 3]);
}

/// Records an older tim wrote (without what imports ran) are kept as history
/// but are no usable record: their tests run again and are re-recorded.
#[test]
fn records_in_an_older_format_make_their_tests_run_again() {
    let mut p = Project::with_files(SUITE);
    p.env("TIM_PYTHON", &test_python());
    p.tim_ok(&["run", "--all"]);
    p.tim_ok(&["daemon", "stop"]);
    {
        let conn = rusqlite::Connection::open(p.path(".tim/tim.db")).unwrap();
        let changed = conn
            .execute(
                "UPDATE test SET deps_version = 1 WHERE node_id LIKE '%test_one'",
                [],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    let answer = p.tim_json(&["affected", "--json"]);
    let tests = answer["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 1, "{answer}");
    assert_eq!(tests[0]["id"], "tests/test_a.py::test_one");
    assert!(
        tests[0]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("no usable record"),
        "{answer}"
    );
    p.tim_ok(&["run"]);
    assert_eq!(
        p.tim_json(&["affected", "--json"])["tests"],
        serde_json::json!([])
    );
    assert_eq!(history(&p, "tests/test_a.py::test_one"), [1, 2]);
}

/// `tim stats` from real runs: a test whose outcome changes while nothing
/// it depends on does (it reads an environment variable, which is not a
/// dependency) is flaky; failures are counted.
#[test]
fn stats_show_slow_flaky_and_failing_tests() {
    let mut p = Project::with_files(&[
        (
            "pyproject.toml",
            "[project]\nname = \"stats\"\nversion = \"0\"\n",
        ),
        (
            "tests/test_s.py",
            "import os\n\n\ndef test_env():\n    assert os.environ.get(\"TIM_IT_FLAKY\") != \"1\"\n\n\ndef test_steady():\n    assert True\n",
        ),
    ]);
    p.env("TIM_PYTHON", &test_python());
    let empty = p.tim_ok(&["stats"]);
    assert!(empty.contains("no test has been recorded yet"), "{empty}");
    p.tim_ok(&["run", "--all"]);
    p.env("TIM_IT_FLAKY", "1");
    assert_eq!(p.tim(&["run", "--all"]).status.code(), Some(1));
    p.env("TIM_IT_FLAKY", "0");
    p.tim_ok(&["run", "--all"]);

    let s = p.tim_json(&["stats", "--json"]);
    assert_eq!(
        (s["known"].as_u64(), s["runs"].as_u64()),
        (Some(2), Some(3)),
        "{s}"
    );
    assert_eq!(s["slowest"].as_array().unwrap().len(), 2, "{s}");
    assert_eq!(s["flaky"][0]["id"], "tests/test_s.py::test_env", "{s}");
    assert_eq!(s["flaky"][0]["flips"], 2, "{s}");
    assert_eq!(s["flaky"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s["failing"][0]["failures"], 1, "{s}");
    assert_eq!(s["failing"][0]["results"], 3, "{s}");
    let text = p.tim_ok(&["stats", "--limit", "1"]);
    assert!(
        text.contains("2 known tests, 3 recorded runs") && text.contains("2 flips in 3 results"),
        "{text}"
    );
}

/// `tim run --junit FILE` writes pytest's report of the tests it ran (an
/// empty one when nothing is affected), and `tim import-junit` reads it
/// back into the history: a round trip.
#[test]
fn junit_out_and_back_in() {
    let mut p = Project::with_files(SUITE);
    p.env("TIM_PYTHON", &test_python());
    let report = p.path("out/report.xml");
    std::fs::create_dir_all(report.parent().unwrap()).unwrap();
    p.tim_ok(&["run", "--all", "--junit", report.to_str().unwrap()]);
    let text = std::fs::read_to_string(&report).unwrap();
    let parsed = quick_junit::Report::deserialize_from_str(&text).unwrap();
    let cases: Vec<String> = parsed
        .test_suites
        .iter()
        .flat_map(|s| s.test_cases.iter().map(|c| c.name.as_str().to_owned()))
        .collect();
    assert_eq!(cases, ["test_one", "test_other"], "{text}");

    // Nothing affected: no pytest, still a report (empty).
    std::fs::remove_file(&report).unwrap();
    p.tim_ok(&["run", "--junit", report.to_str().unwrap()]);
    let empty =
        quick_junit::Report::deserialize_from_str(&std::fs::read_to_string(&report).unwrap())
            .unwrap();
    assert_eq!(empty.tests, 0);

    // Back in: the report of the first run becomes a run of the history.
    p.tim_ok(&["run", "--all", "--junit", report.to_str().unwrap()]);
    let out = p.tim_ok(&["import-junit", report.to_str().unwrap()]);
    assert!(out.contains("2 results imported"), "{out}");
    assert_eq!(history(&p, "tests/test_a.py::test_one"), [2, 3]); // keep = 2
    let s = p.tim_json(&["stats", "--json"]);
    assert_eq!(s["runs"], 3, "{s}");
}

/// A report written by plain pytest (no tim) seeds the history: classes and
/// parameters map to node ids, failures and skips are kept.
#[test]
fn importing_a_report_of_plain_pytest() {
    let p = Project::with_files(&[
        (
            "pyproject.toml",
            "[project]\nname = \"imp\"\nversion = \"0\"\n",
        ),
        (
            "tests/test_i.py",
            "import pytest\n\n\nclass TestK:\n    @pytest.mark.parametrize('n', [1, 2])\n    def test_m(self, n):\n        assert n < 2\n\n\n@pytest.mark.skip\ndef test_skipped():\n    pass\n",
        ),
    ]);
    let out = std::process::Command::new(test_python())
        .args([
            "-m",
            "pytest",
            "-q",
            "--junitxml=plain.xml",
            "-p",
            "no:cacheprovider",
        ])
        .current_dir(p.path(""))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let imported = p.tim_ok(&["import-junit", "plain.xml"]);
    assert!(imported.contains("3 results imported"), "{imported}");
    let conn = rusqlite::Connection::open(p.path(".tim/tim.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT node_id, outcome FROM result ORDER BY node_id")
        .unwrap();
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        [
            (
                "tests/test_i.py::TestK::test_m[1]".to_owned(),
                "passed".to_owned()
            ),
            (
                "tests/test_i.py::TestK::test_m[2]".to_owned(),
                "failed".to_owned()
            ),
            (
                "tests/test_i.py::test_skipped".to_owned(),
                "skipped".to_owned()
            ),
        ]
    );
    let bad = p.tim(&["import-junit", "pyproject.toml"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not a JUnit XML report"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// `tim audit` on the history of the run just made: budgets by marker and
/// by default from tim.toml, warnings from a share of the budget, exit 1 on
/// a violation, JSON and JUnit output. The sleeps only set lower bounds.
#[test]
fn audit_budgets_from_the_last_run() {
    let mut p = Project::with_files(&[
        (
            "pyproject.toml",
            "[project]\nname = \"audit\"\nversion = \"0\"\n\n[tool.pytest.ini_options]\nmarkers = [\"slow\"]\n",
        ),
        (
            "tim.toml",
            "[audit]\ndefault = \"1s\"\nwarn_at = 0.05\n\n[[audit.budget]]\nmarker = \"slow\"\nlimit = \"200ms\"\n",
        ),
        (
            "tests/test_t.py",
            "import time\n\nimport pytest\n\n\ndef test_fast():\n    pass\n\n\ndef test_near():\n    time.sleep(0.1)\n\n\n@pytest.mark.slow\ndef test_over():\n    time.sleep(0.3)\n\n\n@pytest.mark.slow\nclass TestMarked:\n    def test_inherits(self):\n        time.sleep(0.3)\n",
        ),
    ]);
    p.env("TIM_PYTHON", &test_python());
    p.tim_ok(&["run", "--all"]);
    let report = p.path("audit.xml");
    let out = p.tim(&["audit", "--json", "--junit", report.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "a violation fails the audit");
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = |list: &str| -> Vec<String> {
        a[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(a["checked"], 4, "{a}");
    // A class's marker is every one of its tests' marker.
    let mut over = ids("violations");
    over.sort();
    assert_eq!(
        over,
        [
            "tests/test_t.py::TestMarked::test_inherits",
            "tests/test_t.py::test_over"
        ],
        "{a}"
    );
    assert_eq!(a["violations"][0]["rule"], "marker slow");
    assert_eq!(a["violations"][1]["rule"], "marker slow");
    assert_eq!(ids("near_budget"), ["tests/test_t.py::test_near"], "{a}");
    let junit =
        quick_junit::Report::deserialize_from_str(&std::fs::read_to_string(&report).unwrap())
            .unwrap();
    assert_eq!((junit.tests, junit.failures), (4, 2));

    // Within budget once the slow test's budget allows it.
    p.write(
        "tim.toml",
        "[audit]\ndefault = \"1s\"\n\n[[audit.budget]]\nmarker = \"slow\"\nlimit = \"30s\"\n",
    );
    let text = p.tim_ok(&["audit"]);
    assert!(text.contains("4 tests checked: 0 over budget"), "{text}");
}

/// Times imported from another runner's report order tests tim has not
/// recorded yet: `longest-first` puts the slowest first from the start.
#[test]
fn imported_times_order_tests_not_recorded_yet() {
    let mut p = Project::with_files(&[
        (
            "pyproject.toml",
            "[project]\nname = \"ord\"\nversion = \"0\"\n",
        ),
        (
            "tests/test_o.py",
            "def test_a():\n    pass\n\n\ndef test_b():\n    pass\n\n\ndef test_c():\n    pass\n",
        ),
        (
            "ci.xml",
            r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3">
<testcase classname="tests.test_o" name="test_a" time="0.1"/>
<testcase classname="tests.test_o" name="test_b" time="5.0"/>
<testcase classname="tests.test_o" name="test_c" time="1.0"/>
</testsuite></testsuites>
"#,
        ),
    ]);
    p.env("TIM_PYTHON", &test_python());
    p.tim_ok(&["import-junit", "ci.xml"]);
    let out = p.tim_ok(&["run", "--all", "--order", "longest-first", "--", "-v"]);
    let order: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("tests/test_o.py::"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(order, ["test_b", "test_c", "test_a"], "{out}");
}
