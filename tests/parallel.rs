//! For CI and pre-push checks: shards that every job computes alike from
//! the same history, whatever order it collects the tests in; `--since REV`
//! on a real git repository with a branch.

use crate::support::*;
use std::collections::BTreeSet;

const SUITE: &[(&str, &str)] = &[
    (
        "pyproject.toml",
        "[project]\nname = \"shards\"\nversion = \"0\"\n",
    ),
    (
        "tests/test_a.py",
        "def test_a():\n    pass\n\n\ndef test_b():\n    pass\n\n\ndef test_c():\n    pass\n",
    ),
    (
        "tests/test_d.py",
        "import pytest\n\n\ndef test_d():\n    pass\n\n\n@pytest.mark.xdist_group(\"db\")\ndef test_e():\n    pass\n\n\n@pytest.mark.xdist_group(\"db\")\ndef test_f():\n    pass\n",
    ),
    // The history every job shares: times from an earlier CI run.
    (
        "ci.xml",
        r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="6">
<testcase classname="tests.test_a" name="test_a" time="5.0"/>
<testcase classname="tests.test_a" name="test_b" time="3.0"/>
<testcase classname="tests.test_a" name="test_c" time="2.0"/>
<testcase classname="tests.test_d" name="test_d" time="2.0"/>
<testcase classname="tests.test_d" name="test_e" time="1.0"/>
<testcase classname="tests.test_d" name="test_f" time="1.0"/>
</testsuite></testsuites>
"#,
    ),
];

/// A CI job: a fresh checkout with the shared history, running one shard;
/// the tests it ran and its header line.
fn job(shard: &str, files: &[&str]) -> (BTreeSet<String>, String) {
    job_with(&["--all"], shard, files)
}

fn job_with(mode: &[&str], shard: &str, files: &[&str]) -> (BTreeSet<String>, String) {
    let mut p = Project::with_files(SUITE);
    p.env("TIM_PYTHON", &test_python());
    p.tim_ok(&["import-junit", "ci.xml"]);
    let mut args = vec!["run"];
    args.extend_from_slice(mode);
    args.extend_from_slice(&["--shard", shard, "--no-progress", "--", "-v"]);
    args.extend_from_slice(files);
    let out = p.tim_ok(&args);
    let ran = out
        .lines()
        .filter(|l| l.contains(" PASSED"))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    let header = out
        .lines()
        .find(|l| l.starts_with("tim: shard "))
        .unwrap_or_else(|| panic!("no shard line:\n{out}"))
        .to_owned();
    (ran, header)
}

#[test]
fn shards_are_balanced_disjoint_and_the_same_on_every_job() {
    let (one, header) = job("1/2", &[]);
    let (two, _) = job("2/2", &[]);
    let all: BTreeSet<String> = one.union(&two).cloned().collect();
    assert_eq!(all.len(), 6, "{one:?} {two:?}");
    assert!(one.is_disjoint(&two), "{one:?} {two:?}");
    // Longest first onto the lighter shard: 5+2 | 3+2+(1+1 together).
    let expect =
        |ids: &[&str]| -> BTreeSet<String> { ids.iter().map(|i| format!("tests/{i}")).collect() };
    let heavy = expect(&["test_a.py::test_a", "test_d.py::test_d"]);
    let rest = expect(&[
        "test_a.py::test_b",
        "test_a.py::test_c",
        "test_d.py::test_e",
        "test_d.py::test_f",
    ]);
    assert_eq!((&one, &two), (&heavy, &rest), "{header}");
    assert!(
        header.contains(
            "shard 1/2: running 2 of 6 tests, about 7.0s from history (shards: 7.0s, 7.0s)"
        ),
        "{header}"
    );
    // Another job collecting in another order computes the same shard.
    let (reordered, _) = job("1/2", &["tests/test_d.py", "tests/test_a.py"]);
    assert_eq!(reordered, one);
    // With --affected (the default) too: nothing recorded yet, so every
    // test is affected, split the same way.
    let (affected, _) = job_with(&[], "2/2", &[]);
    assert_eq!(affected, two);
}

#[test]
fn a_bad_shard_is_refused_before_anything_runs() {
    let mut p = Project::with_files(SUITE);
    p.env("TIM_PYTHON", &test_python());
    for bad in ["0/2", "3/2", "two", "1/0"] {
        let out = p.tim(&["run", "--all", "--shard", bad]);
        assert_eq!(out.status.code(), Some(4), "{bad}: a usage error");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("I/N"), "{bad}: {err}");
    }
}

const BRANCHY: &[(&str, &str)] = &[
    (
        "pyproject.toml",
        "[project]\nname = \"branchy\"\nversion = \"0\"\n",
    ),
    (".gitignore", ".tim/\n__pycache__/\n"),
    ("lib/__init__.py", ""),
    ("lib/a.py", "def one():\n    return 1\n"),
    ("lib/b.py", "def two():\n    return 2\n"),
    ("lib/c.py", "def three():\n    return 3\n"),
    (
        "tests/test_a.py",
        "from lib.a import one\n\n\ndef test_one():\n    assert one() == 1\n",
    ),
    (
        "tests/test_b.py",
        "from lib.b import two\n\n\ndef test_two():\n    assert two() == 2\n",
    ),
    (
        "tests/test_c.py",
        "from lib.c import three\n\n\ndef test_three():\n    assert three() == 3\n",
    ),
];

fn git(p: &Project, args: &[&str]) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(&p.root)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn affected_since(p: &Project, rev: &str) -> serde_json::Value {
    p.tim_json(&["affected", "--since", rev, "--json"])
}

/// `--since REV` for "before push" and PR CI: what the branch changed
/// since it left `main` (committed or not), not what `main` did since.
#[test]
fn since_a_revision_selects_what_the_branch_changed() {
    let mut p = Project::with_files(BRANCHY);
    p.env("TIM_PYTHON", &test_python());
    git(&p, &["init", "-q", "-b", "main"]);
    git(&p, &["add", "-A"]);
    git(&p, &["commit", "-q", "-m", "base"]);
    git(&p, &["checkout", "-q", "-b", "feature"]);
    p.write("lib/b.py", "def two():\n    return 1 + 1\n");
    git(&p, &["commit", "-q", "-am", "feature: b"]);
    // main moves on: a change the branch does not have.
    git(&p, &["checkout", "-q", "main"]);
    p.write("lib/a.py", "def one():\n    return 2 - 1\n");
    git(&p, &["commit", "-q", "-am", "main: a"]);
    git(&p, &["checkout", "-q", "feature"]);
    // Everything recorded on the branch: nothing is affected since then.
    p.tim_ok(&["run", "--all", "--no-progress"]);
    assert_eq!(
        p.tim_json(&["affected", "--json"])["tests"],
        serde_json::json!([])
    );
    // An uncommitted edit counts too.
    p.write("lib/c.py", "def three():\n    return 1 + 2\n");

    let v = affected_since(&p, "main");
    let tests = v["tests"].as_array().unwrap();
    let ids: Vec<&str> = tests.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["tests/test_b.py::test_two", "tests/test_c.py::test_three"],
        "{v:#}"
    );
    assert!(
        tests[0]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "changed since main: lib/b.py"),
        "{v:#}"
    );
    let out = p.tim_ok(&["run", "--since", "main", "--no-progress", "--", "-q"]);
    assert!(out.contains("2 passed"), "{out}");

    let bad = p.tim(&["affected", "--since", "no-such-branch"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("no-such-branch") && err.contains("merge base"),
        "{err}"
    );
}

/// Tests of skewed durations (a lower bound each, from sleeping), two of
/// them in one xdist_group, and one that kills its worker when asked to.
const SKEWED: &[(&str, &str)] = &[
    (
        "pyproject.toml",
        "[project]\nname = \"skewed\"\nversion = \"0\"\n",
    ),
    (
        "tests/test_w.py",
        r#"import os
import time

import pytest


@pytest.mark.parametrize("n", range(6))
def test_short(n):
    time.sleep(0.01)


def test_long():
    time.sleep(0.3)


@pytest.mark.xdist_group("db")
def test_g1():
    time.sleep(0.02)


@pytest.mark.xdist_group("db")
def test_g2():
    time.sleep(0.02)


def test_crash():
    if os.environ.get("CRASH_A_WORKER"):
        os._exit(1)
"#,
    ),
];

fn worker_of(out: &str, test: &str) -> String {
    out.lines()
        .find(|l| l.contains(&format!("tests/test_w.py::{test} ")) && l.starts_with("[gw"))
        .and_then(|l| l.split(']').next())
        .unwrap_or_else(|| panic!("{test} did not run on a worker:\n{out}"))
        .to_owned()
}

#[test]
fn parallel_workers_get_balanced_parts_and_survive_a_crash() {
    let mut p = Project::with_files(SKEWED);
    p.env("TIM_PYTHON", &test_python());
    p.tim_ok(&["run", "--all", "--no-progress", "--", "-q"]);

    let out = p.tim_ok(&["run", "--all", "-j", "2", "--no-progress", "--", "-v"]);
    assert!(out.contains("10 passed"), "{out}");
    assert_eq!(
        worker_of(&out, "test_g1"),
        worker_of(&out, "test_g2"),
        "{out}"
    );
    // The long test has a worker to itself: everything else is lighter.
    let long = worker_of(&out, "test_long");
    assert!(
        out.lines()
            .filter(|l| l.starts_with(&long) && l.contains("PASSED"))
            .count()
            < 10,
        "{out}"
    );
    let makespan = out
        .lines()
        .find(|l| l.starts_with("tim: workers: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        makespan.contains("gw0 busy") && makespan.contains("gw1 busy") && makespan.contains("idle"),
        "{makespan}"
    );
    assert!(makespan.contains("expected"), "{makespan}");
    // Recorded once each, by whichever worker ran it.
    assert_eq!(
        p.tim_json(&["affected", "--json"])["tests"],
        serde_json::json!([])
    );

    // A worker dies: its test is reported, the rest run on.
    p.env("CRASH_A_WORKER", "1");
    let run = p.tim(&["run", "--all", "-j", "2", "--no-progress", "--", "-v"]);
    let out = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{out}");
    assert!(
        out.contains("crashed") && out.contains("test_crash"),
        "{out}"
    );
    assert!(out.contains("9 passed"), "{out}");
}

#[test]
fn parallel_runs_need_pytest_xdist_and_say_so() {
    let p = Project::with_files(SKEWED);
    let fake = p.path("no-xdist-python");
    std::fs::write(&fake, "#!/bin/sh\nexit 1\n").unwrap();
    let mut perms = std::fs::metadata(&fake).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&fake, perms).unwrap();
    let out = p.tim(&[
        "run",
        "--all",
        "-j",
        "2",
        "--python",
        fake.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pip install pytest-xdist"), "{err}");
    let bad = p.tim(&["run", "-j", "0"]);
    assert_eq!(bad.status.code(), Some(4));
}
