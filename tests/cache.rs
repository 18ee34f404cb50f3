//! The fixture artifact cache with real pytest runs: hits, invalidation by
//! the code and files that produced an entry (and not by anything else),
//! inputs-only entries, refresh and replay-only, corrupt blobs, workers
//! sharing one computation, a worker dying while computing, and eviction.

use crate::support::*;

/// A pipeline like the ones the cache is for: recorded "model responses"
/// (expensive, independent of the code: inputs only) and IRs translated
/// from them with a table read from a data file. Every producer call
/// appends a line to `$TIM_TEST_LOG`, outside the project.
const PIPELINE: &[(&str, &str)] = &[
    (
        "pyproject.toml",
        "[project]\nname = \"pipeline\"\nversion = \"0\"\n",
    ),
    ("pkg/__init__.py", ""),
    (
        "pkg/log.py",
        "import os\n\n\ndef log(what):\n    with open(os.environ[\"TIM_TEST_LOG\"], \"a\") as f:\n        f.write(what + \"\\n\")\n",
    ),
    (
        "pkg/provider.py",
        "from pkg.log import log\n\n\ndef generate(prompt):\n    log(\"generate\")\n    return prompt.upper()\n",
    ),
    (
        "pkg/translate.py",
        r#"import json
import pathlib

from pkg.log import log


def translate(text):
    log("translate")
    table = json.loads((pathlib.Path(__file__).parent.parent / "data" / "table.json").read_text())
    return [table.get(c, c) for c in text]
"#,
    ),
    ("pkg/other.py", "def other():\n    return 1\n"),
    ("data/table.json", "{\"A\": \"a\"}\n"),
    (
        "tests/conftest.py",
        r#"import pytest_tim

from pkg.provider import generate
from pkg.translate import translate

PROMPTS = ["ab", "ba"]


@pytest_tim.cached_fixture(scope="session", serializer="json", code_independent=True)
def responses():
    return {p: generate(p) for p in PROMPTS}


@pytest_tim.cached_fixture(scope="session")
def irs(responses):
    return {p: translate(r) for p, r in responses.items()}
"#,
    ),
    (
        "tests/test_pipeline.py",
        r#"from pkg.other import other


def test_irs(irs):
    assert irs["ab"] == ["a", "B"]


def test_responses(responses):
    assert responses == {"ab": "AB", "ba": "BA"}


def test_other():
    assert other() == 1
"#,
    ),
];

struct Pipeline {
    p: Project,
    log: std::path::PathBuf,
    _outside: tempfile::TempDir,
}

impl Pipeline {
    fn new(files: &[(&str, &str)]) -> Pipeline {
        let mut p = Project::with_files(files);
        let outside = tempfile::tempdir().unwrap();
        let log = outside.path().join("calls.log");
        std::fs::write(&log, "").unwrap();
        p.env("TIM_PYTHON", &test_python());
        p.env("TIM_TEST_LOG", log.to_str().unwrap());
        Pipeline {
            p,
            log,
            _outside: outside,
        }
    }

    /// The producer calls since the last look: (generate, translate).
    fn calls(&self) -> (usize, usize) {
        let text = std::fs::read_to_string(&self.log).unwrap();
        std::fs::write(&self.log, "").unwrap();
        let count = |w: &str| text.lines().filter(|l| *l == w).count();
        (count("generate"), count("translate"))
    }

    fn run(&self, args: &[&str]) -> String {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--no-progress", "--", "-q"]);
        self.p.tim_ok(&all)
    }

    fn edit(&self, path: &str, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.p.path(path)).unwrap();
        assert!(text.contains(from), "{path}: {from:?}");
        self.p.write(path, &text.replacen(from, to, 1));
    }
}

#[test]
fn entries_are_reused_until_what_produced_them_changes() {
    let c = Pipeline::new(PIPELINE);
    let out = c.run(&["--all"]);
    assert!(out.contains("3 passed"), "{out}");
    assert_eq!(c.calls(), (2, 2), "the first run computes");
    c.run(&["--all"]);
    assert_eq!(c.calls(), (0, 0), "the second run reuses both fixtures");

    // An unrelated edit invalidates nothing.
    c.edit("pkg/other.py", "return 1", "return 0 + 1");
    c.run(&["--all"]);
    assert_eq!(c.calls(), (0, 0));

    // Editing the translator: the IRs are computed again, the responses
    // (inputs only) are not, and the test using the IRs is affected even
    // though the translator did not run in its last run.
    c.edit(
        "pkg/translate.py",
        "return [table",
        "return list(table.get(c, c) for c in text) or [table",
    );
    assert_eq!(affected_ids(&c.p), ["tests/test_pipeline.py::test_irs"]);
    let out = c.run(&[]);
    assert!(out.contains("1 passed"), "{out}");
    assert_eq!(c.calls(), (0, 2));

    // The provider's code does not invalidate inputs-only entries.
    c.edit(
        "pkg/provider.py",
        "return prompt.upper()",
        "return str.upper(prompt)",
    );
    c.run(&["--all"]);
    assert_eq!(c.calls(), (0, 0));

    // A data file read while producing the IRs.
    c.p.write("data/table.json", "{\"A\": \"a\", \"Z\": \"z\"}\n");
    assert_eq!(affected_ids(&c.p), ["tests/test_pipeline.py::test_irs"]);
    c.run(&["--all"]);
    assert_eq!(c.calls(), (0, 2));

    // Refresh recomputes everything once.
    c.run(&["--all", "--cache", "refresh"]);
    assert_eq!(c.calls(), (2, 2));
    c.run(&["--all"]);
    assert_eq!(c.calls(), (0, 0));

    // The counters.
    let stats = c.p.tim_json(&["cache", "stats", "--json"]);
    let fixtures = stats["fixtures"].as_array().unwrap();
    let irs = fixtures
        .iter()
        .find(|f| f["fixture"] == "tests/conftest.py::irs")
        .unwrap_or_else(|| panic!("{stats}"));
    assert_eq!(
        (irs["entries"].as_u64(), irs["misses"].as_u64()),
        (Some(1), Some(4)),
        "{stats}"
    );
    assert!(irs["hits"].as_u64().unwrap() >= 3, "{stats}");
}

#[test]
fn replay_only_names_the_fixture_and_the_change() {
    let c = Pipeline::new(PIPELINE);
    c.run(&["--all"]);
    c.calls();
    let out = c.run(&["--all", "--cache", "replay-only"]);
    assert!(out.contains("3 passed"), "{out}");
    c.edit(
        "pkg/translate.py",
        "return [table",
        "return list(table.get(c, c) for c in text) or [table",
    );
    let run = c.p.tim(&[
        "run",
        "--all",
        "--cache",
        "replay-only",
        "--no-progress",
        "--",
        "-q",
    ]);
    let out = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{out}");
    assert!(
        out.contains(
            "no valid entry for tests/conftest.py::irs: changed: pkg/translate.py::translate"
        ),
        "{out}"
    );
    assert_eq!(c.calls(), (0, 0), "replay-only computes nothing");
}

#[test]
fn a_corrupt_blob_is_recomputed_never_returned() {
    let c = Pipeline::new(PIPELINE);
    c.run(&["--all"]);
    c.calls();
    let mut blobs = 0;
    for dir in std::fs::read_dir(c.p.path(".tim/cache/blobs")).unwrap() {
        for blob in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = blob.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[0] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
            blobs += 1;
        }
    }
    assert_eq!(blobs, 2);
    let out = c.run(&["--all"]);
    assert!(out.contains("3 passed"), "{out}");
    assert_eq!(c.calls(), (2, 2));
}

#[test]
fn eviction_keeps_the_cache_under_its_size_and_clear_empties_it() {
    let c = Pipeline::new(PIPELINE);
    c.run(&["--all"]);
    let ls = c.p.tim_json(&["cache", "ls", "--json"]);
    let entries = ls["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{ls}");
    let smallest = entries
        .iter()
        .map(|e| e["size"].as_u64().unwrap())
        .min()
        .unwrap();
    let total = ls["bytes"].as_u64().unwrap();
    // Room for one of the two: the least recently used goes.
    let gc = c.p.tim_json(&[
        "cache",
        "gc",
        "--max-size",
        &(total - smallest).to_string(),
        "--json",
    ]);
    assert_eq!(gc["removed"], 1, "{gc}");
    assert!(gc["bytes"].as_u64().unwrap() <= total - smallest, "{gc}");
    let cleared = c.p.tim_json(&["cache", "clear", "--json"]);
    assert_eq!(cleared["kept"], 0, "{cleared}");
    assert!(
        c.p.tim_json(&["cache", "ls", "--json"])["entries"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    c.calls();
    c.run(&["--all"]);
    assert_eq!(c.calls(), (2, 2), "an emptied cache computes again");
}

/// Function-scoped cached fixtures used by tests on two xdist workers: the
/// producer waits until both workers are setting up tests, and logs its
/// start; with `die`, the first producer kills its worker mid-computation.
fn workers(die: bool) -> Pipeline {
    let conftest = format!(
        r#"import os
import pathlib

import pytest_tim

from pkg.log import log

MARKS = pathlib.Path(os.environ["TIM_TEST_LOG"]).parent


def pytest_runtest_setup(item):
    (MARKS / ("worker-" + os.environ.get("PYTEST_XDIST_WORKER", "main"))).touch()


def both_workers_started():
    import time

    # Bounded: the other worker is scheduled at once.
    for _ in range(1000):
        if len(list(MARKS.glob("worker-*"))) >= 2:
            return
        time.sleep(0.01)


@pytest_tim.cached_fixture(scope="function")
def shared():
    log("start")
    both_workers_started()
    if {die} and not (MARKS / "died").exists():
        (MARKS / "died").touch()
        os._exit(1)
    log("done")
    return 42
"#,
        die = if die { "True" } else { "False" }
    );
    let tests = "def test_a(shared):\n    assert shared == 42\n\n\ndef test_b(shared):\n    assert shared == 42\n\n\ndef test_c(shared):\n    assert shared == 42\n\n\ndef test_d(shared):\n    assert shared == 42\n";
    Pipeline::new(&[
        (
            "pyproject.toml",
            "[project]\nname = \"w\"\nversion = \"0\"\n",
        ),
        ("pkg/__init__.py", ""),
        ("pkg/log.py", PIPELINE[2].1),
        ("tests/conftest.py", &conftest),
        ("tests/test_shared.py", tests),
    ])
}

fn log_lines(c: &Pipeline, what: &str) -> usize {
    std::fs::read_to_string(&c.log)
        .unwrap()
        .lines()
        .filter(|l| *l == what)
        .count()
}

#[test]
fn concurrent_workers_compute_once() {
    let c = workers(false);
    let out =
        c.p.tim_ok(&["run", "--all", "--no-progress", "--", "-q", "-n", "2"]);
    assert!(out.contains("4 passed"), "{out}");
    assert_eq!(log_lines(&c, "start"), 1, "{out}");
    assert_eq!(log_lines(&c, "done"), 1);
}

#[test]
fn a_worker_killed_while_computing_hands_over_to_another() {
    let c = workers(true);
    let run =
        c.p.tim(&["run", "--all", "--no-progress", "--", "-q", "-n", "2"]);
    let out = String::from_utf8_lossy(&run.stdout);
    // The dead worker's test fails; every other test gets the value the
    // next worker computed once its lease passed on.
    assert_eq!(run.status.code(), Some(1), "{out}");
    assert!(out.contains("3 passed"), "{out}");
    assert_eq!(log_lines(&c, "start"), 2, "{out}");
    assert_eq!(log_lines(&c, "done"), 1, "{out}");
}

#[test]
fn exported_recordings_replay_in_another_checkout() {
    let a = Pipeline::new(PIPELINE);
    a.run(&["--all"]);
    let export = tempfile::tempdir().unwrap();
    let dir = export.path().join("recordings");
    let out = a.p.tim_ok(&["cache", "export", dir.to_str().unwrap()]);
    assert!(out.contains("exported 2 entries"), "{out}");

    // A fresh checkout of the same project, without credentials.
    let b = Pipeline::new(PIPELINE);
    let out = b.p.tim_ok(&["cache", "import", dir.to_str().unwrap()]);
    assert!(out.contains("imported 2 entries"), "{out}");
    let out = b.run(&["--all", "--cache", "replay-only"]);
    assert!(out.contains("3 passed"), "{out}");
    assert_eq!(b.calls(), (0, 0), "nothing computed");

    // An artifact damaged on the way is left out, never imported.
    let blobs: Vec<_> = std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(blobs.len(), 2);
    std::fs::write(&blobs[0], b"damaged").unwrap();
    let c = Pipeline::new(PIPELINE);
    let out = c.p.tim_ok(&["cache", "import", dir.to_str().unwrap()]);
    assert!(out.contains("imported 1 entries"), "{out}");
    assert!(
        out.contains("left out: ") && out.contains("does not match its digest"),
        "{out}"
    );
    let bad =
        c.p.tim(&["cache", "import", export.path().to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not a tim cache export"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// Tests depend on what a cached fixture held, not only on what produced
/// it: an entry recomputed with other content (a model's new answer under
/// `--cache refresh`) affects the tests that used the old one.
#[test]
fn a_refreshed_artifact_affects_the_tests_that_used_the_old_one() {
    let c = Pipeline::new(&[
        (
            "pyproject.toml",
            "[project]\nname = \"stamp\"\nversion = \"0\"\n",
        ),
        (
            "tests/conftest.py",
            "import time\n\nimport pytest_tim\n\n\n@pytest_tim.cached_fixture(scope=\"session\", code_independent=True)\ndef stamp():\n    return time.time_ns()\n",
        ),
        (
            "tests/test_stamp.py",
            "def test_a(stamp):\n    assert stamp > 0\n\n\ndef test_b(stamp):\n    assert stamp > 0\n",
        ),
    ]);
    c.run(&["--all"]);
    assert_eq!(affected_ids(&c.p), Vec::<String>::new());
    c.p.tim_ok(&[
        "run",
        "--all",
        "--cache",
        "refresh",
        "--no-progress",
        "--",
        "-q",
        "tests/test_stamp.py::test_a",
    ]);
    let v = c.p.tim_json(&["affected", "--json"]);
    let tests = v["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 1, "{v:#}");
    assert_eq!(tests[0]["id"], "tests/test_stamp.py::test_b");
    assert!(
        tests[0]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "cached fixture changed: tests/conftest.py::stamp"),
        "{v:#}"
    );
}
