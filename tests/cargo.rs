//! Cargo workspaces with real cargo, rustc and cargo-nextest: a sample
//! workspace is built and recorded once, then each edit must affect
//! exactly the test binaries that were built from what it touched.

use crate::support::*;
use std::collections::BTreeSet;

/// Three crates: `core` (a library with unit tests, an integration test,
/// a doctest, an `include_str!` data file and a build script that reads
/// `limits.txt` and `CORE_FACTOR`), `app` (depends on `core`) and `indep`
/// (depends on nothing in the workspace, but on `ext`, a package outside
/// it, so it has a `Cargo.lock` entry of its own).
const WORKSPACE: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        "[workspace]\nmembers = [\"core\", \"app\", \"indep\"]\nresolver = \"2\"\n",
    ),
    (
        "core/Cargo.toml",
        "[package]\nname = \"core\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    ),
    (
        "core/build.rs",
        r#"fn main() {
    println!("cargo:rerun-if-changed=limits.txt");
    println!("cargo:rerun-if-env-changed=CORE_FACTOR");
    let limit = std::fs::read_to_string("limits.txt").unwrap();
    let out = std::env::var("OUT_DIR").unwrap();
    std::fs::write(format!("{out}/limit.rs"), format!("pub const LIMIT: u32 = {};", limit.trim())).unwrap();
}
"#,
    ),
    ("core/limits.txt", "10\n"),
    ("core/src/greeting.txt", "hello\n"),
    ("core/notes.txt", "read through a path with ..\n"),
    (
        "core/src/lib.rs",
        r#"include!(concat!(env!("OUT_DIR"), "/limit.rs"));
pub const GREETING: &str = include_str!("greeting.txt");
pub const NOTES: &str = include_str!("../notes.txt");

/// Adds.
///
/// ```
/// assert_eq!(core::add(1, 2), 3);
/// ```
pub fn add(a: u32, b: u32) -> u32 {
    a + b
}

#[cfg(test)]
mod tests {
    #[test]
    fn adds() {
        assert_eq!(super::add(2, 2), 4);
    }

    #[test]
    fn greets() {
        assert!(super::GREETING.starts_with("hello"));
    }
}
"#,
    ),
    (
        "core/tests/integration.rs",
        "#[test]\nfn limit() {\n    assert!(core::LIMIT >= 10);\n}\n",
    ),
    (
        "app/Cargo.toml",
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\ncore = { path = \"../core\" }\n",
    ),
    (
        "app/src/lib.rs",
        "pub fn double(x: u32) -> u32 {\n    core::add(x, x)\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn doubles() {\n        assert_eq!(super::double(3), 6);\n    }\n}\n",
    ),
    (
        "indep/Cargo.toml",
        "[package]\nname = \"indep\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\next = \"0.1\"\n",
    ),
    (
        "app/src/main.rs",
        "fn main() {\n    println!(\"{}\", app::double(21));\n}\n",
    ),
    (
        "app/tests/cli.rs",
        "#[test]\nfn runs() {\n    let out = std::process::Command::new(env!(\"CARGO_BIN_EXE_app\")).output().unwrap();\n    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), \"42\");\n}\n",
    ),
    (
        ".cargo/config.toml",
        "[source.crates-io]\nreplace-with = \"vendored\"\n\n[source.vendored]\ndirectory = \"vendor\"\n",
    ),
    (
        "indep/src/lib.rs",
        "pub fn id(x: u32) -> u32 {\n    ext::same(x)\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn ids() {\n        assert_eq!(super::id(3), 3);\n    }\n}\n",
    ),
];

const CORE_TESTS: &[&str] = &[
    "cargo:core tests::adds",
    "cargo:core tests::greets",
    "cargo:core::integration limit",
    "cargo:core::doctest core/src/lib.rs - add (line 7)",
];
const APP_TESTS: &[&str] = &["cargo:app tests::doubles", "cargo:app::cli runs"];
const INDEP_TESTS: &[&str] = &["cargo:indep tests::ids"];

/// `ext`, a registry package (from a vendored directory source, so no
/// network): only its `Cargo.lock` entry can tell a change.
fn vendor_ext(p: &Project, version: &str) {
    let dir = format!("vendor/ext-{version}");
    let manifest =
        format!("[package]\nname = \"ext\"\nversion = \"{version}\"\nedition = \"2021\"\n");
    let lib = "pub fn same(x: u32) -> u32 {\n    x\n}\n";
    p.write(&format!("{dir}/Cargo.toml"), &manifest);
    p.write(&format!("{dir}/src/lib.rs"), lib);
    let sha = |file: &str| {
        let out = std::process::Command::new("sha256sum")
            .arg(p.path(&format!("{dir}/{file}")))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)[..64].to_owned()
    };
    // The package digest is what Cargo.lock records; any stands in here.
    let package = format!("{:0>64}", version.replace('.', ""));
    p.write(
        &format!("{dir}/.cargo-checksum.json"),
        &format!(
            r#"{{"files":{{"Cargo.toml":"{}","src/lib.rs":"{}"}},"package":"{package}"}}"#,
            sha("Cargo.toml"),
            sha("src/lib.rs")
        ),
    );
}

fn workspace() -> Project {
    let p = Project::with_files(WORKSPACE);
    p.write(".gitignore", "/target\n");
    vendor_ext(&p, "0.1.0");
    p
}

/// Runs `tim run ARGS`, returning (exit code, stdout + stderr).
fn run(p: &Project, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let out = p.tim(&all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn recorded() -> Project {
    let p = workspace();
    let (code, out) = run(&p, &["--all"]);
    assert_eq!(code, Some(0), "the recording run:\n{out}");
    let after = affected_ids(&p);
    let why: Vec<String> = after.iter().map(|id| p.tim_ok(&["why", id])).collect();
    assert!(
        after.is_empty(),
        "affected right after recording: {why:#?}\n{out}"
    );
    p
}

fn ids(list: &[&[&str]]) -> BTreeSet<String> {
    list.iter()
        .flat_map(|l| l.iter().map(|s| (*s).to_owned()))
        .collect()
}

fn affected_set(p: &Project) -> BTreeSet<String> {
    affected_ids(p).into_iter().collect()
}

#[test]
fn each_edit_affects_exactly_the_binaries_built_from_it() {
    let p = recorded();
    // Every test known, each binary's inputs listed by `tim why`.
    let why = p.tim_json(&["why", "cargo:app tests::doubles", "--json"]);
    let targets = why_targets(&why);
    for needed in [
        "app/src/lib.rs",
        "core/src/lib.rs",
        "core/src/greeting.txt",
        "core/limits.txt",
        "core/build.rs",
        "app/Cargo.toml",
        "core/Cargo.toml",
        "Cargo.toml",
        "CORE_FACTOR",
    ] {
        assert!(
            targets.iter().any(|t| t == needed),
            "{needed} not in {targets:#?}"
        );
    }
    assert!(
        targets
            .iter()
            .any(|t| t.starts_with("the whole test binary app")),
        "why says Rust tests are selected per binary: {targets:#?}"
    );
    let indep = why_targets(&p.tim_json(&["why", "cargo:indep tests::ids", "--json"]));
    assert!(indep.iter().any(|t| t == "Cargo.lock: ext"), "{indep:#?}");
    assert!(!indep.iter().any(|t| t.starts_with("core/")), "{indep:#?}");

    let core_set = ids(&[CORE_TESTS, APP_TESTS]);
    let cases: &[(&str, &str, &str, BTreeSet<String>)] = &[
        (
            "a function body in the core library",
            "core/src/lib.rs",
            "a + b\n",
            core_set.clone(),
        ),
        (
            "an include_str! data file",
            "core/src/greeting.txt",
            "hello\n",
            core_set.clone(),
        ),
        (
            "a build script's rerun-if-changed input",
            "core/limits.txt",
            "10\n",
            core_set.clone(),
        ),
        (
            "the build script itself",
            "core/build.rs",
            "fn main() {",
            core_set.clone(),
        ),
        (
            "an integration test",
            "core/tests/integration.rs",
            ">= 10",
            ids(&[&["cargo:core::integration limit"]]),
        ),
        (
            "the dependent crate",
            "app/src/lib.rs",
            "core::add(x, x)",
            ids(&[APP_TESTS]),
        ),
        (
            "a file read through a path with ..",
            "core/notes.txt",
            "read",
            core_set.clone(),
        ),
        (
            "a binary an integration test runs",
            "app/src/main.rs",
            "double(21)",
            ids(&[&["cargo:app::cli runs"]]),
        ),
        (
            "the dependent crate's manifest",
            "app/Cargo.toml",
            "edition = \"2021\"\n",
            ids(&[APP_TESTS]),
        ),
        (
            "the independent crate",
            "indep/src/lib.rs",
            "ext::same(x)",
            ids(&[INDEP_TESTS]),
        ),
    ];
    for (what, file, anchor, expected) in cases {
        let original = std::fs::read_to_string(p.path(file)).unwrap();
        assert!(original.contains(anchor), "{file} has no {anchor:?}");
        p.write(file, &original.replacen(anchor, &format!("{anchor} "), 1));
        assert_eq!(&affected_set(&p), expected, "editing {what} ({file})");
        p.write(file, &original);
        assert_eq!(affected_set(&p), BTreeSet::new(), "reverting {what}");
    }

    // An environment variable the build script declared.
    let with_factor = |args: &[&str]| -> serde_json::Value {
        let out = p.tim_cmd(args).env("CORE_FACTOR", "3").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let reply = with_factor(&["affected", "--json"]);
    let set: BTreeSet<String> = reply["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(set, core_set, "CORE_FACTOR set");
    let why = with_factor(&["why", "cargo:core tests::adds", "--json"]);
    assert!(
        why["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "environment variable CORE_FACTOR changed"),
        "{why}"
    );
    assert_eq!(affected_set(&p), BTreeSet::new(), "CORE_FACTOR unset again");

    // A Cargo.lock bump of the one outside package: only its dependents.
    let lock = std::fs::read_to_string(p.path("Cargo.lock")).unwrap();
    vendor_ext(&p, "0.1.1");
    let status = std::process::Command::new("cargo")
        .args(["update", "-p", "ext", "--offline"])
        .current_dir(&p.root)
        .status()
        .unwrap();
    assert!(status.success());
    assert_ne!(std::fs::read_to_string(p.path("Cargo.lock")).unwrap(), lock);
    assert_eq!(affected_set(&p), ids(&[INDEP_TESTS]), "ext 0.1.0 → 0.1.1");
    let why = p.tim_json(&["why", "cargo:indep tests::ids", "--json"]);
    assert!(
        why["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "Cargo.lock: ext changed"),
        "{why}"
    );
    p.write("Cargo.lock", &lock);
    assert_eq!(affected_set(&p), BTreeSet::new(), "lock restored");

    // A new test target: its binary was never built, so it is to run.
    p.write("app/tests/more.rs", "#[test]\nfn more() {}\n");
    let reply = p.tim_json(&["affected", "--json"]);
    let binaries: Vec<&str> = reply["cargo"]["binaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["file"].as_str().unwrap())
        .collect();
    assert_eq!(binaries, vec!["app::more"], "{reply}");
}

/// The directories of PATH, with cargo-nextest hidden: a directory that
/// holds it is replaced by one of links to everything else it holds.
fn path_without_nextest(p: &Project) -> String {
    let shims = p.root.parent().unwrap().join("shims");
    let mut dirs = Vec::new();
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap()) {
        if !dir.join("cargo-nextest").exists() {
            dirs.push(dir);
            continue;
        }
        let shim = shims.join(dirs.len().to_string());
        std::fs::create_dir_all(&shim).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_name() != "cargo-nextest" {
                std::os::unix::fs::symlink(entry.path(), shim.join(entry.file_name())).unwrap();
            }
        }
        dirs.push(shim);
    }
    std::env::join_paths(dirs).unwrap().into_string().unwrap()
}

#[test]
fn runs_record_outcomes_and_select_from_them() {
    let mut p = recorded();
    // Nothing affected: one line, no build.
    let (code, out) = run(&p, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("tim: nothing affected: 7 known Rust tests"),
        "{out}"
    );
    assert!(
        !out.contains("Compiling") && !out.contains("Starting"),
        "{out}"
    );

    // Build and selection options are tim's to choose.
    let out = p.tim(&["run", "--", "--release"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--release: tim chooses what to build"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A failing test: exit 1, recorded as failed, affected until it passes.
    let lib = std::fs::read_to_string(p.path("indep/src/lib.rs")).unwrap();
    p.write(
        "indep/src/lib.rs",
        &lib.replace("ext::same(x)", "ext::same(x) + 1"),
    );
    let (code, out) = run(&p, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("Starting 1 test across"),
        "only indep runs: {out}"
    );
    p.write("indep/src/lib.rs", &lib);
    let why = p.tim_json(&["why", "cargo:indep tests::ids", "--json"]);
    assert_eq!(why["last_outcome"], "failed", "{why}");
    assert!(
        why["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "failed last time"),
        "{why}"
    );
    let (code, out) = run(&p, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(affected_ids(&p).is_empty());

    // Durations and outcomes are history like pytest's.
    let stats = p.tim_json(&["stats", "--json"]);
    assert!(
        stats["slowest"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == "cargo:indep tests::ids"),
        "{stats}"
    );

    // A compile error is shown as one, and nothing is recorded.
    let app = std::fs::read_to_string(p.path("app/src/lib.rs")).unwrap();
    p.write(
        "app/src/lib.rs",
        &app.replace("core::add(x, x)", "core::add(x, x"),
    );
    let (code, out) = run(&p, &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("error"), "rustc's error is shown: {out}");
    assert!(out.contains("the build failed"), "{out}");
    let why = p.tim_json(&["why", "cargo:app tests::doubles", "--json"]);
    assert_eq!(
        why["last_outcome"], "passed",
        "not recorded as a failure: {why}"
    );
    p.write("app/src/lib.rs", &app);

    // Without cargo-nextest: `cargo test`, same selection and history.
    p.write(
        "app/src/lib.rs",
        &app.replace("core::add(x, x)", "core::add(x, x) * 1"),
    );
    p.env("PATH", &path_without_nextest(&p));
    let (code, out) = run(&p, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("cargo-nextest not found"), "{out}");
    assert!(out.contains("test tests::doubles ... ok"), "{out}");
    assert!(!out.contains("tests::ids"), "indep is unaffected: {out}");
    assert!(affected_ids(&p).is_empty(), "recorded under cargo test");
    let why = p.tim_json(&["why", "cargo:app tests::doubles", "--json"]);
    assert_eq!(why["last_outcome"], "passed", "{why}");
    assert!(why["last_run"].as_u64().unwrap() > 3, "{why}");
}

#[test]
fn watch_reruns_the_affected_binaries() {
    let p = recorded();
    let mut w = Lines::pipe(p.tim_cmd(&["watch"]));
    w.expect("waiting for changes");
    let mark = w.seen.len();
    let lib = std::fs::read_to_string(p.path("indep/src/lib.rs")).unwrap();
    p.write(
        "indep/src/lib.rs",
        &lib.replace("ext::same(x)", "ext::same(x) * 1"),
    );
    let header = w.expect("changed: indep/src/lib.rs (modified)");
    assert!(
        header.contains("1 of 7 known Rust tests affected"),
        "{header}"
    );
    w.expect("passed in");
    let ran: Vec<&String> = w
        .since(mark)
        .iter()
        .filter(|l| l.contains("PASS ["))
        .collect();
    assert_eq!(ran.len(), 1, "{:#?}", w.since(mark));
    assert!(ran[0].contains("indep tests::ids"), "{ran:?}");
    w.expect("waiting for changes");
    kill(w.child.id(), libc::SIGINT);
    assert_eq!(w.wait().code(), Some(2));
}

#[test]
fn a_root_with_a_python_project_too_runs_both() {
    let mut p = workspace();
    p.write(
        "pyproject.toml",
        "[project]\nname = \"mixed\"\nversion = \"0\"\n\n[tool.pytest.ini_options]\ntestpaths = [\"tests\"]\n",
    );
    p.write("tests/test_py.py", "def test_py():\n    assert 1\n");
    p.env("TIM_PYTHON", &test_python());
    let (code, out) = run(&p, &["--all"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 passed"), "pytest ran: {out}");
    assert!(out.contains("6 tests run: 6 passed"), "nextest ran: {out}");
    assert!(affected_ids(&p).is_empty());

    p.write("tests/test_py.py", "def test_py():\n    assert 2\n");
    assert_eq!(affected_set(&p), ids(&[&["tests/test_py.py::test_py"]]));
    p.write("tests/test_py.py", "def test_py():\n    assert 1\n");
    let lib = std::fs::read_to_string(p.path("indep/src/lib.rs")).unwrap();
    p.write(
        "indep/src/lib.rs",
        &lib.replace("ext::same(x)", "ext::same(x) * 1"),
    );
    assert_eq!(affected_set(&p), ids(&[INDEP_TESTS]));
    let (code, out) = run(&p, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("tim: nothing affected: 1 known tests"),
        "pytest: {out}"
    );
    assert!(out.contains("1 test run: 1 passed"), "nextest: {out}");
    assert!(affected_ids(&p).is_empty());
}
