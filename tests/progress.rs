//! `tim run`'s progress display: a line per tenth of the run when not on a
//! terminal, a bar with an ETA on one, and the runner's output intact
//! either way.

use crate::support::*;

/// 20 quick tests, the last of which fails.
fn twenty_tests() -> Project {
    let mut text = String::new();
    for i in 0..20 {
        let body = if i == 19 { "assert False" } else { "pass" };
        text.push_str(&format!("def test_{i}():\n    {body}\n\n\n"));
    }
    let mut p = Project::with_files(&[
        (
            "pyproject.toml",
            "[project]\nname = \"many\"\nversion = \"0\"\n",
        ),
        ("tests/test_many.py", &text),
    ]);
    p.env("TIM_PYTHON", &test_python());
    // A line per finished test, so reports can be checked test by test.
    p.env("TIM_PROGRESS_INTERVAL", "0");
    p
}

/// `tim run --all [tim_args] -- -v [pytest_args]` with stdout and stderr
/// in one pipe (not a terminal); its exit code and every line.
fn run_piped(p: &Project, tim_args: &[&str], pytest_args: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut args = vec!["run", "--all"];
    args.extend_from_slice(tim_args);
    args.extend_from_slice(&["--", "-v"]);
    args.extend_from_slice(pytest_args);
    let (status, lines) = Lines::pipe(p.tim_cmd(&args)).finish();
    (status.code(), lines)
}

/// The `N` of every `tim: N/20 tests ...` line.
fn reported_counts(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("tim: "))
        .filter_map(|l| l.split_once("/20 tests"))
        .map(|(n, _)| n.parse().unwrap())
        .collect()
}

fn result_lines(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|l| {
            l.starts_with("tests/test_many.py::test_")
                && (l.contains(" PASSED") || l.contains(" FAILED"))
        })
        .count()
}

#[test]
fn progress_lines_without_a_terminal() {
    let p = twenty_tests();
    let (code, lines) = run_piped(&p, &[], &[]);
    let all = lines.join("\n");
    assert_eq!(code, Some(1), "{all}");
    // Whole lines only: a report never lands inside one of pytest's.
    for line in &lines {
        if let Some(at) = line.find("tim: ") {
            assert_eq!(at, 0, "a report inside a line: {line:?}\n{all}");
        }
    }
    assert!(
        lines.iter().any(|l| l == "tim: 20 tests to run"),
        "no history yet, so no estimate:\n{all}"
    );
    let counts = reported_counts(&lines);
    assert!(!counts.is_empty(), "{all}");
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}\n{all}");
    assert!(counts.iter().all(|&n| n <= 20), "{counts:?}");
    assert_eq!(result_lines(&lines), 20, "{all}");

    // With history: the expected time, the failure first (it failed last
    // time), and an ETA.
    let (code, lines) = run_piped(&p, &[], &[]);
    let all = lines.join("\n");
    assert_eq!(code, Some(1), "{all}");
    let start = lines
        .iter()
        .find(|l| l.starts_with("tim: 20 tests to run"))
        .unwrap_or_else(|| panic!("{all}"));
    assert!(
        start.starts_with("tim: 20 tests to run, about ") && start.ends_with(" from history"),
        "{start}"
    );
    let reports: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("tim: ") && l.contains("/20 tests"))
        .collect();
    assert!(!reports.is_empty(), "{all}");
    assert!(
        reports.iter().all(|l| l.contains("· 1 failed")),
        "the failure ran first: {reports:#?}"
    );
    assert!(
        reports
            .iter()
            .filter(|l| !l.starts_with("tim: 20/20"))
            .all(|l| l.contains(" left")),
        "{reports:#?}"
    );

    // Under xdist the controller reports what its workers ran.
    let (code, lines) = run_piped(&p, &[], &["-n", "2"]);
    let all = lines.join("\n");
    assert_eq!(code, Some(1), "{all}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("tim: 20 tests to run, about ")),
        "{all}"
    );
    let counts = reported_counts(&lines);
    assert!(
        !counts.is_empty() && counts.windows(2).all(|w| w[0] < w[1]),
        "{counts:?}\n{all}"
    );

    // --no-progress: pytest's output alone.
    let (code, lines) = run_piped(&p, &["--no-progress"], &[]);
    assert_eq!(code, Some(1));
    assert!(
        !lines.iter().any(|l| l.starts_with("tim: 20")),
        "{}",
        lines.join("\n")
    );
    assert_eq!(result_lines(&lines), 20);
}

#[test]
fn a_bar_on_a_terminal_and_the_output_intact() {
    let p = twenty_tests();
    p.tim(&["run", "--all"]);
    let mut w = Lines::pty(p.tim_cmd(&["run", "--all", "--", "-v"]));
    // The bar: done of total, the failure, and the time left.
    let bar = w.expect("/20 tests · 1 failed");
    assert!(bar.contains("left"), "{bar}");
    w.expect("1 failed, 19 passed");
    let (status, lines) = w.finish();
    let all = lines.join("\n");
    assert_eq!(status.code(), Some(1), "{all}");
    // Redraws leave the bar's text on the lines read here (a terminal
    // would overwrite it), but every one of pytest's lines went through
    // whole.
    for i in 0..20 {
        let result = if i == 19 { "FAILED" } else { "PASSED" };
        let line = format!("tests/test_many.py::test_{i} {result}");
        assert!(all.contains(&line), "{line:?} missing:\n{all}");
    }
}
