//! `tim watch`, driven the way a person uses it: saving files, pressing
//! keys in a real pseudo-terminal, hitting Ctrl-C. Every wait is for a line
//! of its output.

use crate::support::*;

/// A project with fast tests, and one slow test that runs until a gate file
/// exists, to make "a change arrives while tests run" happen on purpose.
const PROJECT: &[(&str, &str)] = &[
    (
        "pyproject.toml",
        "[project]\nname = \"w\"\nversion = \"0\"\n",
    ),
    ("app/__init__.py", ""),
    ("app/fast.py", "def add(a, b):\n    return a + b\n"),
    (
        "app/slow.py",
        r#"import pathlib
import time

GATE = pathlib.Path(__file__).resolve().parent.parent / "gate"


def wait_for_gate():
    while not GATE.exists():
        time.sleep(0.01)
    return True
"#,
    ),
    (
        "tests/test_fast.py",
        "from app.fast import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n\n\ndef test_add_zero():\n    assert add(0, 0) == 0\n",
    ),
    (
        "tests/test_slow.py",
        r#"import os

from app.slow import wait_for_gate


def test_slow():
    print(f"SLOW STARTED pid={os.getpid()}", flush=True)
    assert wait_for_gate()
"#,
    ),
];

fn recorded() -> Project {
    let mut p = Project::with_files(PROJECT);
    p.env("TIM_PYTHON", &test_python());
    p.write("gate", "open");
    let out = p.tim(&["run", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    p.remove("gate");
    p
}

fn watch_cmd(p: &Project, extra: &[&str]) -> std::process::Command {
    let mut args = vec!["watch"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "-s", "-v", "-p", "no:cacheprovider"]);
    p.tim_cmd(&args)
}

fn slow_pid(line: &str) -> u32 {
    line.rsplit("pid=").next().unwrap().trim().parse().unwrap()
}

#[test]
fn a_save_runs_exactly_the_affected_tests() {
    let p = recorded();
    let mut w = Lines::pipe(watch_cmd(&p, &[]));
    w.expect("nothing affected");
    w.expect("waiting for changes");
    let mark = w.seen.len();
    p.write("app/fast.py", "def add(a, b):\n    return b + a\n");
    let header = w.expect("changed: app/fast.py (modified)");
    assert!(header.contains("2 of 3 known tests affected"), "{header}");
    w.expect("passed in");
    let ran: Vec<&String> = w
        .since(mark)
        .iter()
        .filter(|l| l.contains(" PASSED"))
        .collect();
    assert_eq!(ran.len(), 2, "{:#?}", w.since(mark));
    assert!(
        ran.iter().all(|l| l.contains("tests/test_fast.py::")),
        "{ran:?}"
    );
    w.expect("waiting for changes");

    // An edit that affects nothing runs nothing, in one line.
    p.write(
        "app/fast.py",
        "def add(a, b):\n    # commutative\n    return b + a\n",
    );
    let line = w.expect("nothing affected");
    assert!(line.contains("app/fast.py (modified)"), "{line}");
    stop(w);
}

#[test]
fn a_burst_of_saves_makes_one_run() {
    let p = recorded();
    let mut w = Lines::pipe(watch_cmd(&p, &[]));
    w.expect("waiting for changes");
    let mark = w.seen.len();
    for i in 0..20 {
        p.write(
            "app/fast.py",
            &format!("def add(a, b):\n    return a + b + {i} - {i}\n"),
        );
    }
    w.expect("passed in");
    w.expect("waiting for changes");
    let runs = w
        .since(mark)
        .iter()
        .filter(|l| l.contains("· changed:"))
        .count();
    assert_eq!(runs, 1, "{:#?}", w.since(mark));
    stop(w);
}

#[test]
fn a_change_during_a_run_is_queued() {
    let p = recorded();
    let mut w = Lines::pipe(watch_cmd(&p, &[]));
    w.expect("waiting for changes");
    p.write(
        "app/slow.py",
        &format!("{}\n# slow edit\nX = 1\n", PROJECT[3].1),
    );
    w.expect("changed: app/slow.py");
    w.expect("SLOW STARTED");
    p.write("app/fast.py", "def add(a, b):\n    return a + b + 0\n");
    w.expect("queued until the running tests finish");
    p.write("gate", "open");
    w.expect("passed in");
    let next = w.expect("· queued");
    assert!(next.contains("2 of 3 known tests affected"), "{next}");
    w.expect("passed in");
    stop(w);
}

#[test]
fn restart_policy_stops_the_running_tests() {
    let p = recorded();
    let mut w = Lines::pipe(watch_cmd(&p, &["--on-change", "restart"]));
    w.expect("waiting for changes");
    p.write(
        "app/slow.py",
        &format!("{}\n# slow edit\nX = 1\n", PROJECT[3].1),
    );
    let pid = slow_pid(&w.expect("SLOW STARTED"));
    p.write("app/fast.py", "def add(a, b):\n    return a + b + 0\n");
    w.expect("stopped the running tests to start over");
    wait_gone(pid);
    // The new run covers both changes: the slow test again, and the fast ones.
    let header = w.expect("· changed:");
    assert!(header.contains("app/fast.py"), "{header}");
    let pid2 = slow_pid(&w.expect("SLOW STARTED"));
    assert_ne!(pid, pid2);
    p.write("gate", "open");
    w.expect("passed in");
    stop(w);
}

#[test]
fn watch_survives_the_daemon_being_killed() {
    let p = recorded();
    let mut w = Lines::pipe(watch_cmd(&p, &[]));
    w.expect("waiting for changes");
    let pid = p.daemon_pid().unwrap();
    kill(pid, libc::SIGKILL);
    w.expect("lost the daemon");
    w.expect("the daemon restarted");
    w.expect("waiting for changes");
    assert_ne!(p.daemon_pid(), Some(pid));
    p.write("app/fast.py", "def add(a, b):\n    return a + b + 1 - 1\n");
    w.expect("changed: app/fast.py");
    w.expect("passed in");
    stop(w);
}

#[test]
fn ctrl_c_stops_the_tests_and_leaves_no_process() {
    let p = recorded();
    let mut w = Lines::pty(watch_cmd(&p, &[]));
    w.expect("waiting for changes");
    p.write(
        "app/slow.py",
        &format!("{}\n# slow edit\nX = 1\n", PROJECT[3].1),
    );
    let pid = slow_pid(&w.expect("SLOW STARTED"));
    w.keys(b"\x03");
    w.expect("stopped the running tests");
    let status = w.wait();
    assert_eq!(status.code(), Some(2), "interrupted");
    wait_gone(pid);
    assert!(
        processes_in(&p.root).is_empty(),
        "left behind: {:?}",
        processes_in(&p.root)
    );
}

#[test]
fn keys_in_a_terminal() {
    let p = recorded();
    p.write("gate", "open");
    let mut w = Lines::pty(watch_cmd(&p, &[]));
    w.expect("a all · f failed · Enter rerun · p filter · c clear · q quit");

    w.keys(b"a");
    let mark = w.seen.len();
    w.expect("· all tests");
    w.expect("passed in");
    assert_eq!(
        w.since(mark)
            .iter()
            .filter(|l| l.contains("PASSED"))
            .count(),
        3,
        "{:#?}",
        w.since(mark)
    );

    // Break a test, let the change run it, then `f` runs only the failure.
    p.write("app/fast.py", "def add(a, b):\n    return a - b\n");
    w.expect("FAILED in");
    w.keys(b"f");
    let mark = w.seen.len();
    let header = w.expect("· failed tests");
    assert!(
        header.contains("the 1 tests that failed last time"),
        "{header}"
    );
    w.expect("FAILED in");
    let ran: Vec<&String> = w
        .since(mark)
        .iter()
        .filter(|l| l.starts_with("tests/") && (l.contains("PASSED") || l.contains("FAILED")))
        .collect();
    assert_eq!(ran.len(), 1, "{ran:?}");

    // A filter restricts the next runs.
    w.keys(b"p");
    w.expect_prompt_then(b"zero\n");
    w.expect("· filter");
    w.expect("(filter: -k zero)");
    w.keys(b"c");
    w.expect("filter cleared");

    w.keys(b"q");
    assert!(w.wait().success());
}

fn stop(w: Lines) {
    kill(w.child.id(), libc::SIGINT);
    assert_eq!(w.wait().code(), Some(2));
}

impl Lines {
    /// After `p`, the prompt is printed without a newline; type the answer.
    fn expect_prompt_then(&mut self, answer: &[u8]) {
        self.keys(answer);
    }
}
