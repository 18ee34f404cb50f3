//! What the watcher sees. Every step is "do this to the tree, then ask":
//! the answer must list exactly the expected changes, with no sleep in
//! between: the daemon's sync cookie makes the answer include every write
//! made before the question.

use crate::support::*;

enum Op {
    Write(&'static str, &'static str),
    Remove(&'static str),
    Rename(&'static str, &'static str),
    /// Same bytes, new mtime.
    Touch(&'static str),
    /// Write a temp file and rename it over the target, as editors do.
    AtomicSave(&'static str, &'static str),
}

struct Step {
    what: &'static str,
    ops: Vec<Op>,
    expect: Vec<(&'static str, &'static str)>,
}

fn apply(p: &Project, op: &Op) {
    match op {
        Op::Write(path, text) => p.write(path, text),
        Op::Remove(path) => p.remove(path),
        Op::Rename(from, to) => p.rename(from, to),
        Op::Touch(path) => {
            let f = std::fs::File::options()
                .write(true)
                .open(p.path(path))
                .unwrap();
            f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
                .unwrap();
        }
        Op::AtomicSave(path, text) => {
            let tmp = format!("{path}.swp.tmp");
            p.write(&tmp, text);
            p.rename(&tmp, path);
        }
    }
}

fn run_steps(p: &Project, steps: Vec<Step>) {
    let mut clock = p.clock();
    for step in steps {
        for op in &step.ops {
            apply(p, op);
        }
        let (changes, next) = p.changes_since(&clock);
        let got: Vec<(&str, &str)> = changes
            .iter()
            .map(|(k, f)| (k.as_str(), f.as_str()))
            .collect();
        assert_eq!(got, step.expect, "step: {}", step.what);
        clock = next;
    }
}

#[test]
fn native_watching_sees_every_change() {
    let p = Project::new();
    check_tracking(&p);
    assert_eq!(p.status()["watcher"]["mode"], "native");
}

#[test]
fn rescan_mode_sees_every_change() {
    let p = Project::with_files(&[("tim.toml", "[watch]\nmode = \"rescan\"\n")]);
    check_tracking(&p);
    let status = p.status();
    assert_eq!(status["watcher"]["mode"], "rescan_on_query");
    assert_eq!(
        status["warnings"],
        serde_json::json!([]),
        "a chosen mode is no warning"
    );
}

fn check_tracking(p: &Project) {
    for (path, text) in [
        (".gitignore", "*.log\nbuild/\n"),
        ("pkg/core.py", "def f():\n    return 1\n"),
        ("pkg/util.py", "X = 1\n"),
        ("tests/test_core.py", "from pkg.core import f\n"),
    ] {
        p.write(path, text);
    }
    use Op::*;
    run_steps(
        p,
        vec![
            Step {
                what: "edit a file",
                ops: vec![Write("pkg/core.py", "def f():\n    return 2\n")],
                expect: vec![("modified", "pkg/core.py")],
            },
            Step {
                what: "create a file in a new nested directory",
                ops: vec![Write("pkg/sub/deep/new.py", "Y = 2\n")],
                expect: vec![("added", "pkg/sub/deep/new.py")],
            },
            Step {
                what: "a file created in a directory that appeared after the daemon started is watched",
                ops: vec![Write("pkg/sub/deep/new.py", "Y = 3\n")],
                expect: vec![("modified", "pkg/sub/deep/new.py")],
            },
            Step {
                what: "delete a file",
                ops: vec![Remove("pkg/util.py")],
                expect: vec![("deleted", "pkg/util.py")],
            },
            Step {
                what: "rename a file",
                ops: vec![Rename("tests/test_core.py", "tests/test_renamed.py")],
                expect: vec![
                    ("deleted", "tests/test_core.py"),
                    ("added", "tests/test_renamed.py"),
                ],
            },
            Step {
                what: "rename a directory",
                ops: vec![Rename("pkg/sub", "pkg/moved")],
                expect: vec![
                    ("added", "pkg/moved/deep/new.py"),
                    ("deleted", "pkg/sub/deep/new.py"),
                ],
            },
            Step {
                what: "files in a renamed directory are still watched",
                ops: vec![Write("pkg/moved/deep/new.py", "Y = 4\n")],
                expect: vec![("modified", "pkg/moved/deep/new.py")],
            },
            Step {
                what: "ignored files and directories are not tracked",
                ops: vec![
                    Write("pkg/debug.log", "noise"),
                    Write("build/out.py", "generated"),
                    Write("node_modules/x/index.js", ""),
                    Write("pkg/__pycache__/core.cpython-311.pyc", ""),
                    Write(".venv/pyvenv.cfg", "home = /usr\n"),
                    Write(".venv/lib/site.py", ""),
                ],
                expect: vec![],
            },
            Step {
                what: "touching without changing content is not a change",
                ops: vec![Touch("pkg/core.py")],
                expect: vec![],
            },
            Step {
                what: "an editor's atomic save is one modification",
                ops: vec![AtomicSave("pkg/core.py", "def f():\n    return 3\n")],
                expect: vec![("modified", "pkg/core.py")],
            },
            Step {
                what: "writing the same content again is not a change",
                ops: vec![Write("pkg/core.py", "def f():\n    return 3\n")],
                expect: vec![],
            },
            Step {
                what: "editing .gitignore re-evaluates what is tracked",
                ops: vec![Write(".gitignore", "build/\n")],
                expect: vec![("modified", ".gitignore"), ("added", "pkg/debug.log")],
            },
            Step {
                what: "delete a whole directory",
                ops: vec![Remove("pkg/moved")],
                expect: vec![("deleted", "pkg/moved/deep/new.py")],
            },
            Step {
                what: "a file that comes back is added again",
                ops: vec![Write("pkg/util.py", "X = 1\n")],
                expect: vec![("added", "pkg/util.py")],
            },
        ],
    );
}

#[test]
fn configured_excludes_apply_and_reload_when_the_config_changes() {
    let p = Project::with_files(&[
        ("tim.toml", "[watch]\nexclude = [\"data/raw/**\"]\n"),
        ("data/raw/big.csv", "1,2\n"),
        ("data/small.json", "{}\n"),
    ]);
    assert_eq!(
        p.status()["tracked_files"],
        2,
        "tim.toml and data/small.json"
    );
    use Op::*;
    run_steps(
        &p,
        vec![
            Step {
                what: "an excluded file is not tracked",
                ops: vec![Write("data/raw/more.csv", "3,4\n")],
                expect: vec![],
            },
            Step {
                what: "dropping the exclude tracks the files",
                ops: vec![Write("tim.toml", "[watch]\nexclude = []\n")],
                expect: vec![
                    ("added", "data/raw/big.csv"),
                    ("added", "data/raw/more.csv"),
                    ("modified", "tim.toml"),
                ],
            },
        ],
    );
    p.write("tim.toml", "[watch]\nexclude = 7\n");
    let out = p.tim(&["status"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("watch.exclude") && stderr.contains("keeping"),
        "{stderr}"
    );
}

#[test]
fn edits_made_while_the_daemon_was_down_are_reported_after_restart() {
    let p = Project::with_files(&[
        ("pkg/a.py", "A = 1\n"),
        ("pkg/b.py", "B = 1\n"),
        ("pkg/c.py", "C = 1\n"),
    ]);
    let clock = p.clock();
    p.tim_ok(&["daemon", "stop"]);
    p.write("pkg/a.py", "A = 2\n");
    p.remove("pkg/b.py");
    p.write("pkg/new/d.py", "D = 1\n");
    let (changes, _) = p.changes_since(&clock);
    assert_eq!(
        changes,
        [
            ("modified".into(), "pkg/a.py".into()),
            ("deleted".into(), "pkg/b.py".into()),
            ("added".into(), "pkg/new/d.py".into()),
        ]
    );
}

#[test]
fn clocks_from_elsewhere_mean_everything_may_have_changed() {
    let p = Project::with_files(&[("a.py", ""), ("b.py", "")]);
    for clock in ["tim:0000000000000000:1", "nonsense", ""] {
        let v = p.tim_json(&["changes", "--since", clock, "--json"]);
        assert_eq!(v["fresh_instance"], true, "{clock}: {v}");
        assert!(v["fresh_reason"].as_str().is_some());
        assert_eq!(v["files"].as_array().unwrap().len(), 2, "{v}");
    }
}

#[test]
fn a_burst_of_saves_is_coalesced() {
    let p = Project::with_files(&[("a.py", "0")]);
    p.tim_ok(&["daemon", "start"]);
    let mut sub = p.raw();
    sub.hello();
    assert_eq!(
        sub.request(2, "subscribe", serde_json::json!({}))["type"],
        "subscribed"
    );
    for i in 1..=20 {
        p.write("a.py", &format!("{i}"));
    }
    // Sync through a second connection: its answer comes after the burst
    // has been processed, and the marker file ends the notifications we
    // look at.
    p.write("zz_end_marker.py", "");
    p.status();
    let mut notes = 0;
    loop {
        let note = sub.recv().expect("notifications");
        notes += 1;
        let files = note["data"]["files"].as_array().unwrap();
        if files.iter().any(|f| f["path"] == "zz_end_marker.py") {
            break;
        }
    }
    assert!(notes <= 3, "20 saves produced {notes} notifications");
}
