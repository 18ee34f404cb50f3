//! JUnit XML in and out. **The only user of quick-junit.**
//!
//! Out: pytest writes the report of the tests it runs (`--junitxml`); when
//! nothing is affected and no pytest starts, tim writes an empty report, so
//! a CI step that collects the file always finds one. In: any runner's
//! report becomes results for the history, with pytest node ids where the
//! `classname` leads to a file under the root.

use crate::error::ClientError;
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use std::path::Path;
use std::time::Duration;
use tim_proto::{AuditReply, ImportedResult, Outcome};

/// Writes a report with no test in it.
pub fn write_empty(path: &Path) -> Result<(), ClientError> {
    let report = Report::new("tim");
    let text = report
        .to_string()
        .map_err(|e| ClientError::Usage(format!("cannot build an empty JUnit report: {e}")))?;
    std::fs::write(path, text)
        .map_err(|e| ClientError::io(format!("cannot write {}", path.display()), e))
}

/// `tim audit --junit`: a test case per test checked, failed when over its
/// budget; a warning is a pass that says so on its output.
pub fn write_audit(path: &Path, audit: &AuditReply) -> Result<(), ClientError> {
    let mut suite = TestSuite::new("tim audit");
    for entry in &audit.tests {
        let share = entry.seconds / entry.budget_seconds;
        let verdict = format!(
            "{:.3}s of a {:.3}s budget ({}, {:.0}%)",
            entry.seconds,
            entry.budget_seconds,
            entry.rule,
            share * 100.0
        );
        let status = if entry.seconds > entry.budget_seconds {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status.set_message(format!("over budget: {verdict}"));
            status
        } else {
            TestCaseStatus::success()
        };
        let mut case = TestCase::new(entry.id.as_str(), status);
        case.set_time(Duration::from_secs_f64(entry.seconds.max(0.0)));
        if entry.seconds <= entry.budget_seconds && share >= audit.warn_at {
            case.set_system_out(format!("near its budget: {verdict}"));
        }
        suite.add_test_case(case);
    }
    let mut report = Report::new("tim");
    report.add_test_suite(suite);
    let text = report
        .to_string()
        .map_err(|e| ClientError::Usage(format!("cannot build the audit's JUnit report: {e}")))?;
    std::fs::write(path, text)
        .map_err(|e| ClientError::io(format!("cannot write {}", path.display()), e))
}

/// The results in the JUnit report at `path`, ids resolved against `root`.
pub fn read(path: &Path, root: &Path) -> Result<Vec<ImportedResult>, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::io(format!("cannot read {}", path.display()), e))?;
    let report = Report::deserialize_from_str(&text).map_err(|e| {
        ClientError::Usage(format!(
            "{} is not a JUnit XML report ({e}); pass the file a test runner wrote with --junitxml or equivalent",
            path.display()
        ))
    })?;
    let mut out = Vec::new();
    for suite in &report.test_suites {
        for case in &suite.test_cases {
            let outcome = outcome_of(&case.status);
            out.push(ImportedResult {
                id: node_id(
                    case.classname.as_ref().map(|c| c.as_str()),
                    case.name.as_str(),
                    root,
                ),
                outcome,
                seconds: case.time.map_or(0.0, |t| t.as_secs_f64()),
            });
        }
    }
    Ok(out)
}

fn outcome_of(status: &TestCaseStatus) -> Outcome {
    match status {
        TestCaseStatus::Success { .. } => Outcome::Passed,
        TestCaseStatus::NonSuccess {
            kind: NonSuccessKind::Failure,
            ..
        } => Outcome::Failed,
        TestCaseStatus::NonSuccess {
            kind: NonSuccessKind::Error,
            ..
        } => Outcome::Error,
        TestCaseStatus::Skipped { .. } => Outcome::Skipped,
    }
}

/// cargo-nextest's report: a suite per binary (named by its binary id), a
/// case per test. (binary id, test name, outcome, seconds).
pub fn read_nextest(text: &str) -> Result<Vec<(String, String, Outcome, f64)>, ClientError> {
    let report = Report::deserialize_from_str(text).map_err(|e| {
        ClientError::Protocol(format!(
            "cannot read cargo-nextest's JUnit report: {e}; run `cargo nextest run` yourself to see what it printed"
        ))
    })?;
    let mut out = Vec::new();
    for suite in &report.test_suites {
        for case in &suite.test_cases {
            out.push((
                suite.name.to_string(),
                case.name.to_string(),
                outcome_of(&case.status),
                case.time.map_or(0.0, |t| t.as_secs_f64()),
            ));
        }
    }
    Ok(out)
}

/// pytest's `classname` is the module's dotted path, then any classes:
/// `tests.test_io.TestLoad` + `test_load` is `tests/test_io.py::TestLoad::test_load`
/// when `tests/test_io.py` exists under the root. Anything else is kept as
/// `classname::name`.
fn node_id(classname: Option<&str>, name: &str, root: &Path) -> String {
    let Some(classname) = classname.filter(|c| !c.is_empty()) else {
        return name.to_owned();
    };
    let parts: Vec<&str> = classname.split('.').collect();
    for split in (1..=parts.len()).rev() {
        let file = format!("{}.py", parts[..split].join("/"));
        if root.join(&file).is_file() {
            let mut id = file;
            for class in &parts[split..] {
                id.push_str("::");
                id.push_str(class);
            }
            id.push_str("::");
            id.push_str(name);
            return id;
        }
    }
    format!("{classname}::{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytest_classnames_become_node_ids() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("tests/unit")).unwrap();
        std::fs::write(root.path().join("tests/unit/test_io.py"), "").unwrap();
        std::fs::write(root.path().join("test_top.py"), "").unwrap();
        for (classname, name, id) in [
            (
                Some("tests.unit.test_io"),
                "test_load",
                "tests/unit/test_io.py::test_load",
            ),
            (
                Some("tests.unit.test_io.TestLoad"),
                "test_load[1-2]",
                "tests/unit/test_io.py::TestLoad::test_load[1-2]",
            ),
            (Some("test_top"), "test_x", "test_top.py::test_x"),
            (
                Some("com.example.ParserTest"),
                "parses",
                "com.example.ParserTest::parses",
            ),
            (None, "lonely", "lonely"),
        ] {
            assert_eq!(
                node_id(classname, name, root.path()),
                id,
                "{classname:?} {name}"
            );
        }
    }
}
