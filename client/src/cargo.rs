//! The Cargo runner: Rust tests of a workspace, built once and run with
//! cargo-nextest (or `cargo test` without it), recorded per test into the
//! same history as pytest's. **The only user of cargo_metadata.**
//!
//! A run is a session of its own process (`tim cargo-session`, started by
//! [`CargoRunner::command`] so `tim watch` can stop it like pytest): build
//! and list (`cargo nextest list` forwarding Cargo's JSON messages, which
//! say where every dep-info file and build-script output is), `begin_run`
//! and `select` with the daemon, run the selection (a nextest filterset,
//! results from its JUnit report), then `cargo_record` each test with what
//! its binary was built from and `end_run`. Doctests (which nextest does
//! not run) go through `cargo test --doc`, one package at a time.

use crate::connect::{self, Connection};
use crate::error::{ClientError, exit};
use crate::runner::{Plan, RunPlan, Runner, Scope};
use cargo_metadata::{DependencyKind, Message, Metadata, MetadataCommand, PackageId, TargetKind};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tim_proto::layout::Layout;
use tim_proto::{
    AffectedReply, BeginRunParams, BuildScriptRun, CargoBinary, CargoContext, CargoRecordParams,
    CargoTarget, CargoTestResult, CollectedTest, EndRunParams, Environment, Order, Outcome,
    Request, Response, RunMode, SelectParams,
};

/// Test ids of Rust tests start with this (the daemon's `cargo::TEST_PREFIX`).
pub const TEST_PREFIX: &str = "cargo:";

/// The nextest profile tim runs with (from a tool config file, so the
/// project's own `.config/nextest.toml` still applies underneath).
const PROFILE: &str = "tool:tim";
const JUNIT_FILE: &str = "tim-junit.xml";

/// Environment variables that change every compilation: part of the
/// toolchain's identity.
const BUILD_WIDE_ENV: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_RUSTFLAGS",
];

/// The root holds a Cargo workspace or package.
pub fn is_cargo_root(root: &Path) -> bool {
    root.join("Cargo.toml").is_file()
}

/// The root holds a Python project (pytest runs there too).
pub fn is_python_root(root: &Path) -> bool {
    [
        "pyproject.toml",
        "setup.py",
        "setup.cfg",
        "pytest.ini",
        "tox.ini",
        "conftest.py",
    ]
    .iter()
    .any(|f| root.join(f).is_file())
}

pub fn test_id(binary_id: &str, name: &str) -> String {
    format!("{TEST_PREFIX}{binary_id} {name}")
}

fn split_id(id: &str) -> Option<(&str, &str)> {
    id.strip_prefix(TEST_PREFIX)?.split_once(' ')
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn cannot_run(what: &str, e: std::io::Error) -> ClientError {
    ClientError::Usage(format!(
        "cannot run {what}: {e}; is the Rust toolchain (cargo) on PATH?"
    ))
}

fn metadata(root: &Path, no_deps: bool) -> Result<Metadata, ClientError> {
    let mut command = MetadataCommand::new();
    command.manifest_path(root.join("Cargo.toml"));
    if no_deps {
        command.no_deps();
    }
    command.exec().map_err(|e| {
        ClientError::Usage(format!(
            "cannot read the Cargo workspace: {e}; run `cargo metadata` in {} to see what Cargo says",
            root.display()
        ))
    })
}

/// What the daemon judges Rust tests against: the toolchain, the
/// environment, the test targets there are now.
pub fn context(root: &Path) -> Result<CargoContext, ClientError> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| cannot_run("rustc -vV", e))?;
    if !out.status.success() {
        return Err(ClientError::Usage(format!(
            "`rustc -vV` failed in {}: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut toolchain = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
        .filter(|(k, _)| {
            BUILD_WIDE_ENV.contains(&k.as_str())
                || ["CARGO_PROFILE_", "CARGO_TARGET_", "CARGO_BUILD_"]
                    .iter()
                    .any(|p| k.starts_with(p))
                || k == "CARGO_INCREMENTAL"
        })
        .collect();
    vars.sort();
    for (var, value) in vars {
        toolchain.push_str(&format!("{var}={value}\n"));
    }
    // Cargo's configuration (flags, `[env]`, profiles) from the root
    // upwards and from CARGO_HOME changes every build too.
    for config in cargo_configs(root) {
        if let Ok(text) = std::fs::read_to_string(&config) {
            toolchain.push_str(&format!("# {}\n{text}\n", config.display()));
        }
    }
    let meta = metadata(root, true)?;
    let mut targets = Vec::new();
    for package in meta.workspace_packages() {
        for target in &package.targets {
            if let Some(binary_id) = binary_id(&package.name, target) {
                targets.push(CargoTarget {
                    binary_id,
                    src: relative(root, target.src_path.as_std_path()),
                });
            }
            if target.doctest && is_lib(target) {
                targets.push(CargoTarget {
                    binary_id: doctest_binary(&package.name),
                    src: relative(root, target.src_path.as_std_path()),
                });
            }
        }
    }
    Ok(CargoContext {
        toolchain,
        env: std::env::vars_os()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect(),
        targets,
    })
}

/// The Cargo configuration files a build in `root` reads.
fn cargo_configs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = root.ancestors().map(|d| d.join(".cargo")).collect();
    match std::env::var_os("CARGO_HOME") {
        Some(home) => dirs.push(PathBuf::from(home)),
        None => dirs.extend(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo"))),
    }
    dirs.iter()
        .flat_map(|d| [d.join("config.toml"), d.join("config")])
        .filter(|f| f.is_file())
        .collect()
}

fn is_lib(target: &cargo_metadata::Target) -> bool {
    target.kind.iter().any(|k| {
        matches!(
            k,
            TargetKind::Lib
                | TargetKind::RLib
                | TargetKind::DyLib
                | TargetKind::CDyLib
                | TargetKind::StaticLib
                | TargetKind::ProcMacro
        )
    })
}

/// cargo-nextest's binary id of a target that `cargo test` builds as a
/// test binary (`None`: it builds none).
fn binary_id(package: &str, target: &cargo_metadata::Target) -> Option<String> {
    if !target.test {
        return None;
    }
    let kind = target.kind.first()?;
    Some(match kind {
        _ if is_lib(target) => package.to_owned(),
        TargetKind::Bin => format!("{package}::bin/{}", target.name),
        TargetKind::Test => format!("{package}::{}", target.name),
        TargetKind::Example => format!("{package}::example/{}", target.name),
        TargetKind::Bench => format!("{package}::bench/{}", target.name),
        _ => return None,
    })
}

fn doctest_binary(package: &str) -> String {
    format!("{package}::doctest")
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `tim affected`'s lines for the Rust tests.
pub fn print_affected(
    out: &mut impl std::io::Write,
    reply: &AffectedReply,
    part: &tim_proto::CargoAffected,
) -> std::io::Result<()> {
    if let Some(why) = &part.run_all {
        return writeln!(out, "every Rust test is affected: {why}");
    }
    let tests: Vec<&tim_proto::AffectedTest> = reply
        .tests
        .iter()
        .filter(|t| t.id.starts_with(TEST_PREFIX))
        .collect();
    for t in &tests {
        writeln!(out, "{}", t.id)?;
        for r in &t.reasons {
            writeln!(out, "    {r}")?;
        }
    }
    for b in &part.binaries {
        let interesting: Vec<&String> = b
            .reasons
            .iter()
            .filter(|r| !r.ends_with(" affected"))
            .collect();
        if !interesting.is_empty() {
            writeln!(out, "{} (test binary to build and run)", b.file)?;
            for r in interesting {
                writeln!(out, "    {r}")?;
            }
        }
    }
    writeln!(
        out,
        "{} of {} known Rust tests affected; {} to run (Rust tests are selected per test binary)",
        tests.len(),
        part.total,
        plural(part.binaries.len(), "test binary", "test binaries")
    )
}

// -- the runner ---------------------------------------------------------------

/// Cargo as a [`Runner`]: the plan comes from the daemon, the command is a
/// `tim cargo-session` process.
pub struct CargoRunner {
    layout: Layout,
    /// `Scope::Failed`: the tests to run (ids), decided by the plan.
    only: Vec<String>,
    pub since: Option<String>,
    pub order: Option<Order>,
    pub shard: Option<String>,
    command_line: String,
}

impl CargoRunner {
    pub fn new(layout: &Layout, command_line: String) -> CargoRunner {
        CargoRunner {
            layout: layout.clone(),
            only: Vec::new(),
            since: None,
            order: None,
            shard: None,
            command_line,
        }
    }
}

pub fn affected_query(
    conn: &mut Connection,
    python: Option<String>,
    cargo: Option<CargoContext>,
    since: Option<String>,
) -> Result<(AffectedReply, Vec<String>), ClientError> {
    let (reply, warnings) = crate::pytest::affected_query_with(conn, python, cargo, since)?;
    if reply.cargo.is_none() {
        return Err(ClientError::Protocol(
            "the running daemon does not know Cargo workspaces; run `tim daemon restart`".into(),
        ));
    }
    Ok((reply, warnings))
}

impl Runner for CargoRunner {
    fn plan(&mut self, conn: &mut Connection, scope: &Scope) -> Result<Plan, ClientError> {
        if *scope == Scope::All {
            return Ok(Plan::Run(RunPlan {
                select: false,
                targets: Vec::new(),
                summary:
                    "tim: running every Rust test and recording what each binary is built from"
                        .into(),
                footer: None,
            }));
        }
        let context = context(&self.layout.root)?;
        let (reply, warnings) = affected_query(conn, None, Some(context), self.since.clone())?;
        for w in &warnings {
            eprintln!("tim: warning: {w}");
        }
        let part = reply.cargo.unwrap_or_default();
        if let Some(why) = &part.run_all {
            return Ok(Plan::Run(RunPlan {
                select: false,
                targets: Vec::new(),
                summary: format!("tim: running every Rust test: {why}"),
                footer: None,
            }));
        }
        let tests: Vec<&tim_proto::AffectedTest> = reply
            .tests
            .iter()
            .filter(|t| t.id.starts_with(TEST_PREFIX))
            .filter(|t| {
                *scope != Scope::Failed || t.reasons.iter().any(|r| r.ends_with(" last time"))
            })
            .collect();
        self.only = match scope {
            Scope::Failed => tests.iter().map(|t| t.id.clone()).collect(),
            _ => Vec::new(),
        };
        let binaries: Vec<String> = match scope {
            Scope::Failed => tests
                .iter()
                .filter_map(|t| split_id(&t.id).map(|(b, _)| b.to_owned()))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            _ => part.binaries.iter().map(|b| b.file.clone()).collect(),
        };
        if binaries.is_empty() {
            return Ok(Plan::Nothing(match scope {
                Scope::Failed => {
                    format!("tim: no Rust test failed last time ({} known)", part.total)
                }
                _ => format!(
                    "tim: nothing affected: {} known Rust tests, none affected by changes since they last ran; about {} saved",
                    part.total,
                    crate::pytest::seconds_words(reply.unaffected_seconds)
                ),
            }));
        }
        let (reasons, _) = crate::pytest::common_reasons(tests.iter().copied(), 3);
        Ok(Plan::Run(RunPlan {
            select: true,
            summary: format!(
                "tim: {} of {} known Rust tests affected{}; running {} (whole binaries: Rust tests are selected per test binary)",
                tests.len(),
                part.total,
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", reasons.join("; "))
                },
                plural(binaries.len(), "test binary", "test binaries"),
            ),
            targets: binaries,
            footer: None,
        }))
    }

    fn command(&self, plan: &RunPlan, extra: &[String]) -> Result<Command, ClientError> {
        check_extra(extra)?;
        let exe = std::env::current_exe()
            .map_err(|e| ClientError::io("cannot find tim's own executable", e))?;
        let mut command = Command::new(exe);
        command
            .arg("--root")
            .arg(&self.layout.root)
            .arg("cargo-session")
            .arg(if plan.select { "--affected" } else { "--all" });
        if let Some(rev) = &self.since {
            command.args(["--since", rev]);
        }
        if let Some(order) = self.order {
            command.args(["--order", order.name()]);
        }
        if let Some(shard) = &self.shard {
            command.args(["--shard", shard]);
        }
        for id in self.only.iter().filter(|_| plan.select) {
            command.args(["--only", id]);
        }
        command
            .args(["--command-line", &self.command_line])
            .arg("--")
            .args(extra);
        Ok(command)
    }

    fn exit_code(&self, _plan: &RunPlan, code: i32) -> u8 {
        u8::try_from(code).unwrap_or(exit::INTERNAL)
    }

    fn watch_args(&self, user: &[String], filter: Option<&str>) -> Vec<String> {
        // nextest's own filters: a test name must contain the watch's.
        let mut extra = user.to_vec();
        extra.extend(filter.map(str::to_owned));
        extra
    }
}

/// Options that would change what is built or which tests exist: tim
/// builds and selects itself, so it refuses them rather than record
/// results of another build as this one's.
const BUILD_OPTIONS: &[&str] = &[
    "--features",
    "-F",
    "--all-features",
    "--no-default-features",
    "--release",
    "-r",
    "--cargo-profile",
    "--profile",
    "-P",
    "--target",
    "--target-dir",
    "--package",
    "-p",
    "--workspace",
    "--exclude",
    "--lib",
    "--bin",
    "--bins",
    "--test",
    "--tests",
    "--example",
    "--examples",
    "--bench",
    "--benches",
    "--all-targets",
    "-E",
    "--filterset",
];

fn check_extra(extra: &[String]) -> Result<(), ClientError> {
    for arg in extra {
        if arg == "--" {
            break;
        }
        let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
        if BUILD_OPTIONS.contains(&name) {
            return Err(ClientError::Usage(format!(
                "{arg}: tim chooses what to build and which tests to run in a Cargo workspace; \
                 build and selection options are not supported after `--` (pass runner options \
                 such as --no-capture or --retries N, or run cargo nextest yourself)"
            )));
        }
    }
    Ok(())
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// `tim run` in a Cargo workspace: the plan, then a session (nothing
/// affected: one line, no build).
pub fn run(
    layout: &Layout,
    runner: &mut CargoRunner,
    all: bool,
    extra: &[String],
) -> anyhow::Result<u8> {
    check_extra(extra)?;
    let mut conn = connect::connect(layout)?;
    let scope = if all { Scope::All } else { Scope::Affected };
    let plan = match runner.plan(&mut conn, &scope)? {
        Plan::Nothing(line) => {
            println!("{line}");
            return Ok(exit::OK);
        }
        Plan::Run(plan) => plan,
    };
    drop(conn);
    eprintln!("{}", plan.summary);
    let status = runner
        .command(&plan, extra)?
        .status()
        .map_err(|e| ClientError::io("cannot start the Cargo session", e))?;
    Ok(match status.code() {
        Some(code) => runner.exit_code(&plan, code),
        None => exit::INTERRUPTED,
    })
}

/// `I/N`, already checked by `parse_shard`.
pub fn parse_shard(text: &str) -> Option<tim_proto::Shard> {
    let (i, n) = text.split_once('/')?;
    Some(tim_proto::Shard {
        index: i.parse().ok()?,
        count: n.parse().ok()?,
    })
}

// -- the session ----------------------------------------------------------------

pub struct SessionArgs {
    pub all: bool,
    pub since: Option<String>,
    pub order: Option<Order>,
    pub shard: Option<tim_proto::Shard>,
    pub command_line: String,
    /// Only these tests, if any (`Scope::Failed`).
    pub only: Vec<String>,
    /// Passed to `cargo nextest run` (or to the test binaries under
    /// `cargo test`).
    pub extra: Vec<String>,
}

/// One listed test binary.
struct Suite {
    binary_id: String,
    package: PackageId,
    /// Main source file, absolute.
    src: PathBuf,
    /// The executable (`None` for doctests).
    executable: Option<PathBuf>,
    /// How `cargo test` names the target (`--lib`, `--test NAME`, ...).
    target_args: Vec<String>,
    /// Test names that run by default (not `#[ignore]`d).
    tests: Vec<String>,
}

/// What the build said: dep-info files and build scripts per package.
#[derive(Default)]
struct Build {
    /// Package → dep-info of its library (as a dependency, not a test).
    lib_dep_info: HashMap<PackageId, PathBuf>,
    /// Package → (build script dep-info, its `output` file).
    scripts: HashMap<PackageId, (Option<PathBuf>, Option<PathBuf>)>,
    /// Test executables: path → (package, target).
    executables: Vec<(PathBuf, PackageId, cargo_metadata::Target)>,
    /// Package → dep-info of its binaries (`CARGO_BIN_EXE_*`).
    bins: HashMap<PackageId, Vec<PathBuf>>,
}

impl Build {
    fn take(&mut self, message: Message) {
        match message {
            Message::CompilerArtifact(a) => {
                let custom_build = a.target.kind.contains(&TargetKind::CustomBuild);
                if custom_build {
                    let dir = a.filenames.first().and_then(|f| f.parent());
                    let dep_info = dir.and_then(|d| find_dep_info(d.as_std_path()));
                    self.scripts.entry(a.package_id).or_default().0 = dep_info;
                } else if let Some(exe) = a.executable.as_ref().filter(|_| a.profile.test) {
                    self.executables.push((
                        exe.clone().into_std_path_buf(),
                        a.package_id,
                        a.target,
                    ));
                } else if let Some(exe) = &a.executable {
                    // A binary of the package (integration tests run it).
                    // Unreadable dep-info keeps those tests affected.
                    let dep_info = uplifted_dep_info(exe.as_std_path())
                        .unwrap_or_else(|| format!("{exe}.d").into());
                    self.bins.entry(a.package_id).or_default().push(dep_info);
                } else if is_lib(&a.target)
                    && !a.profile.test
                    && let Some(first) = a.filenames.first()
                {
                    // `libcore-<hash>.rlib` was built with `core-<hash>.d`.
                    let stem = first.file_stem().unwrap_or_default();
                    let stem = stem.strip_prefix("lib").unwrap_or(stem);
                    let dep_info = first.as_std_path().with_file_name(format!("{stem}.d"));
                    self.lib_dep_info.insert(a.package_id, dep_info);
                }
            }
            Message::BuildScriptExecuted(s) => {
                let output = s
                    .out_dir
                    .parent()
                    .map(|d| d.join("output").into_std_path_buf());
                self.scripts.entry(s.package_id).or_default().1 = output;
            }
            _ => {}
        }
    }
}

/// The dep-info of a binary Cargo uplifted (`target/debug/app`, a hard
/// link to `target/debug/deps/app-<hash>`, whose dep-info is beside it).
fn uplifted_dep_info(exe: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(exe).ok()?.ino();
    let name = exe.file_name()?.to_str()?;
    let deps = exe.parent()?.join("deps");
    std::fs::read_dir(&deps).ok()?.flatten().find_map(|e| {
        let file = e.file_name();
        let file = file.to_str()?;
        let hashed = file.strip_prefix(name)?.strip_prefix('-')?;
        let same = !hashed.contains('.') && e.metadata().ok()?.ino() == inode;
        same.then(|| deps.join(format!("{file}.d")))
    })
}

/// A build script's own dep-info: `build_script_build-<hash>.d` in its
/// directory.
fn find_dep_info(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "d")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("build_script_build"))
        })
}

/// `tim cargo-session`: build, list, select, run, record.
pub fn session(layout: &Layout, args: SessionArgs) -> anyhow::Result<u8> {
    let root = &layout.root;
    let context = context(root)?;
    let nextest = has_nextest();
    if !nextest {
        eprintln!(
            "tim: cargo-nextest not found: running with `cargo test` (per-test durations are then the binary's time shared among its tests; install cargo-nextest for real ones)"
        );
    }
    // Build once, and learn where everything went.
    let mut build = Build::default();
    let listing = if nextest {
        build_and_list_nextest(root, &mut build)?
    } else {
        build_cargo_test(root, &mut build)?
    };
    let Some(listing) = listing else {
        eprintln!(
            "tim: the build failed (compiler errors above): no Rust test ran and nothing was recorded"
        );
        return Ok(exit::INTERRUPTED);
    };
    let meta = metadata(root, false)?;
    let mut suites = match listing {
        Listing::Nextest(json) => nextest_suites(&json, &meta)?,
        Listing::Executables => list_executables(&build, &meta)?,
    };
    let mut conn = connect::connect(layout)?;
    let run_id = begin_run(&mut conn, &args, &context)?;
    // Doctests: only packages whose doctests must run are listed (rustdoc
    // compiles them to list them).
    let doc_packages = doctest_packages(&mut conn, &args, &context, &meta)?;
    suites.extend(list_doctests(root, &meta, &doc_packages)?);
    let collected: Vec<CollectedTest> = suites
        .iter()
        .flat_map(|s| {
            s.tests.iter().map(move |t| CollectedTest {
                id: test_id(&s.binary_id, t),
                file: relative(root, &s.src),
                group: None,
            })
        })
        .collect();
    let (selection, _) = {
        let (response, warnings) = conn.request(Request::Select(SelectParams {
            run_id,
            tests: collected,
            parts: None,
            selected: false,
        }))?;
        match response {
            Response::Selection(s) => (s, warnings),
            other => {
                return Err(ClientError::Protocol(format!(
                    "`{}` in answer to select",
                    other.type_name()
                ))
                .into());
            }
        }
    };
    let mut selected: BTreeSet<String> = selection.run.iter().cloned().collect();
    if !args.only.is_empty() {
        selected.retain(|id| args.only.contains(id));
    }
    let mut results: Vec<CargoTestResult> = Vec::new();
    let mut worst = exit::OK;
    if selected.is_empty() {
        eprintln!("tim: every listed Rust test is unaffected: nothing to run");
    } else {
        eprintln!(
            "tim: running {} of {} listed Rust tests",
            selected.len(),
            suites.iter().map(|s| s.tests.len()).sum::<usize>()
        );
        let (code, found) = if nextest {
            run_nextest(layout, &meta, &suites, &selected, &args.extra)?
        } else {
            run_cargo_test(root, &meta, &suites, &selected, &args.extra)?
        };
        worst = worst.max(code);
        results.extend(found);
        let (code, found) = run_doctests(root, &meta, &suites, &selected)?;
        worst = worst.max(code);
        results.extend(found);
    }
    let binaries = describe_binaries(root, &meta, &build, &suites);
    conn.request(Request::CargoRecord(CargoRecordParams {
        run_id,
        workspace_root: meta.workspace_root.to_string(),
        target_dir: meta.target_directory.to_string(),
        binaries,
        tests: results,
    }))?;
    conn.request(Request::EndRun(EndRunParams {
        run_id,
        exit_status: i32::from(worst),
    }))?;
    Ok(worst)
}

enum Listing {
    Nextest(String),
    Executables,
}

/// Streams a Cargo build's JSON messages into `build`; other stdout lines
/// are returned. `None`: the build failed (Cargo printed why on stderr).
fn stream_build(
    mut command: Command,
    build: &mut Build,
) -> Result<Option<Vec<String>>, ClientError> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| cannot_run("cargo", e))?;
    let stdout = child.stdout.take().expect("piped");
    let mut other = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.map_err(|e| ClientError::io("cannot read cargo's output", e))?;
        if line.starts_with("{\"reason\":") {
            if let Ok(message) = serde_json::from_str::<Message>(&line) {
                build.take(message);
            }
        } else {
            other.push(line);
        }
    }
    let status = child
        .wait()
        .map_err(|e| ClientError::io("cannot wait for cargo", e))?;
    Ok(status.success().then_some(other))
}

fn build_and_list_nextest(root: &Path, build: &mut Build) -> Result<Option<Listing>, ClientError> {
    let mut command = cargo();
    command.current_dir(root).args([
        "nextest",
        "list",
        "--workspace",
        "--message-format",
        "json",
        "--cargo-message-format",
        "json-render-diagnostics",
    ]);
    let Some(lines) = stream_build(command, build)? else {
        return Ok(None);
    };
    let json = lines
        .into_iter()
        .rfind(|l| l.starts_with('{'))
        .ok_or_else(|| ClientError::Protocol("cargo nextest list printed no test list; run `cargo nextest list --workspace` to see why".into()))?;
    Ok(Some(Listing::Nextest(json)))
}

fn build_cargo_test(root: &Path, build: &mut Build) -> Result<Option<Listing>, ClientError> {
    let mut command = cargo();
    command.current_dir(root).args([
        "test",
        "--workspace",
        "--no-run",
        "--message-format",
        "json-render-diagnostics",
    ]);
    Ok(stream_build(command, build)?.map(|_| Listing::Executables))
}

#[derive(serde::Deserialize)]
struct NextestList {
    #[serde(rename = "rust-suites")]
    suites: BTreeMap<String, NextestSuite>,
}

#[derive(serde::Deserialize)]
struct NextestSuite {
    #[serde(rename = "binary-id")]
    binary_id: String,
    #[serde(rename = "binary-path")]
    binary_path: PathBuf,
    #[serde(rename = "package-id")]
    package_id: String,
    #[serde(rename = "binary-name")]
    binary_name: String,
    kind: String,
    #[serde(default)]
    testcases: BTreeMap<String, NextestCase>,
}

#[derive(serde::Deserialize)]
struct NextestCase {
    #[serde(default)]
    ignored: bool,
}

fn nextest_suites(json: &str, meta: &Metadata) -> Result<Vec<Suite>, ClientError> {
    let list: NextestList = serde_json::from_str(json).map_err(|e| {
        ClientError::Protocol(format!(
            "cannot read cargo nextest list's output: {e}; is cargo-nextest older than 0.9 (`cargo install cargo-nextest` updates it)?"
        ))
    })?;
    let mut out = Vec::new();
    for suite in list.suites.into_values() {
        let package = PackageId {
            repr: suite.package_id,
        };
        let Some(pkg) = meta.packages.iter().find(|p| p.id == package) else {
            continue;
        };
        let target = pkg.targets.iter().find(|t| {
            binary_id(&pkg.name, t).as_deref() == Some(suite.binary_id.as_str())
                || (t.name == suite.binary_name
                    && t.kind.iter().any(|k| k.to_string() == suite.kind))
        });
        let Some(target) = target else { continue };
        out.push(Suite {
            binary_id: suite.binary_id,
            package,
            src: target.src_path.clone().into_std_path_buf(),
            executable: Some(suite.binary_path),
            target_args: target_args(target),
            tests: suite
                .testcases
                .into_iter()
                .filter(|(_, c)| !c.ignored)
                .map(|(name, _)| name)
                .collect(),
        });
    }
    Ok(out)
}

fn target_args(target: &cargo_metadata::Target) -> Vec<String> {
    let name = target.name.clone();
    match target.kind.first() {
        _ if is_lib(target) => vec!["--lib".into()],
        Some(TargetKind::Bin) => vec!["--bin".into(), name],
        Some(TargetKind::Test) => vec!["--test".into(), name],
        Some(TargetKind::Example) => vec!["--example".into(), name],
        Some(TargetKind::Bench) => vec!["--bench".into(), name],
        _ => vec!["--doc".into()],
    }
}

/// Without nextest: each test executable lists its own tests.
fn list_executables(build: &Build, meta: &Metadata) -> Result<Vec<Suite>, ClientError> {
    let mut out = Vec::new();
    for (exe, package, target) in &build.executables {
        let Some(pkg) = meta.packages.iter().find(|p| &p.id == package) else {
            continue;
        };
        let Some(binary_id) = binary_id(&pkg.name, target) else {
            continue;
        };
        let listed = Command::new(exe)
            .args(["--list", "--format", "terse"])
            .current_dir(
                pkg.manifest_path
                    .parent()
                    .map_or(Path::new("."), |p| p.as_std_path()),
            )
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| cannot_run(&exe.display().to_string(), e))?;
        if !listed.status.success() {
            // Not known, so not reported: its tests stay as they were.
            eprintln!(
                "tim: {} could not list its tests ({}); it is left out of this run",
                binary_id, listed.status
            );
            continue;
        }
        let tests: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .map(str::to_owned)
            .collect();
        // `--list` shows ignored tests too; they do not run by default.
        let ignored: BTreeSet<String> = Command::new(exe)
            .args(["--list", "--format", "terse", "--ignored"])
            .current_dir(
                pkg.manifest_path
                    .parent()
                    .map_or(Path::new("."), |p| p.as_std_path()),
            )
            .stdin(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.strip_suffix(": test"))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let tests: Vec<String> = tests.into_iter().filter(|t| !ignored.contains(t)).collect();
        out.push(Suite {
            binary_id,
            package: package.clone(),
            src: target.src_path.clone().into_std_path_buf(),
            executable: Some(exe.clone()),
            target_args: target_args(target),
            tests,
        });
    }
    Ok(out)
}

fn begin_run(
    conn: &mut Connection,
    args: &SessionArgs,
    context: &CargoContext,
) -> Result<u64, ClientError> {
    let (response, _) = conn.request(Request::BeginRun(BeginRunParams {
        command: args.command_line.clone(),
        mode: if args.all {
            RunMode::All
        } else {
            RunMode::Affected
        },
        environment: Environment {
            python: String::new(),
            version: String::new(),
            implementation: String::new(),
            site_dirs: Vec::new(),
            root_paths: Vec::new(),
        },
        collection: Default::default(),
        order: args.order,
        since: args.since.clone(),
        shard: args.shard,
        cargo: Some(context.clone()),
    }))?;
    match response {
        Response::RunStarted(r) => Ok(r.run_id),
        Response::Error(e) => Err(ClientError::Usage(e.message)),
        other => Err(ClientError::Protocol(format!(
            "`{}` in answer to begin_run",
            other.type_name()
        ))),
    }
}

/// Packages whose doctests must be listed: all (`--all`), else those
/// whose doctest binary is affected or was never recorded.
fn doctest_packages(
    conn: &mut Connection,
    args: &SessionArgs,
    context: &CargoContext,
    meta: &Metadata,
) -> Result<Vec<String>, ClientError> {
    let with_doctests: Vec<String> = meta
        .workspace_packages()
        .iter()
        .filter(|p| p.targets.iter().any(|t| t.doctest && is_lib(t)))
        .map(|p| p.name.to_string())
        .collect();
    // A shard splits everything collected, whatever is affected.
    if args.all || args.shard.is_some() {
        return Ok(with_doctests);
    }
    let (reply, _) = affected_query(conn, None, Some(context.clone()), args.since.clone())?;
    let wanted: BTreeSet<String> = reply
        .cargo
        .unwrap_or_default()
        .binaries
        .into_iter()
        .map(|b| b.file)
        .collect();
    Ok(with_doctests
        .into_iter()
        .filter(|p| wanted.contains(&doctest_binary(p)))
        .collect())
}

/// Lists the doctests of `packages` in one `cargo test --doc` (a suite
/// per package, empty ones too: they are remembered as having none).
/// Doctest names start with their file's path from the workspace root,
/// which says whose they are.
fn list_doctests(
    root: &Path,
    meta: &Metadata,
    packages: &[String],
) -> Result<Vec<Suite>, ClientError> {
    if packages.is_empty() {
        return Ok(Vec::new());
    }
    let mut command = cargo();
    command.current_dir(root).args(["test", "--doc"]);
    for p in packages {
        command.args(["-p", p]);
    }
    let out = command
        .args(["--", "--list", "--format", "terse"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| cannot_run("cargo test --doc", e))?;
    if !out.status.success() {
        eprintln!("tim: cannot list the doctests (see above); they stay affected");
        return Ok(Vec::new());
    }
    let mut suites: Vec<(String, Suite)> = Vec::new();
    for pkg in meta.workspace_packages() {
        if !packages.iter().any(|p| p == pkg.name.as_str()) {
            continue;
        }
        let Some(lib) = pkg.targets.iter().find(|t| is_lib(t)) else {
            continue;
        };
        let dir = pkg
            .manifest_path
            .parent()
            .and_then(|d| d.strip_prefix(&meta.workspace_root).ok())
            .map_or_else(String::new, |d| d.to_string());
        suites.push((
            dir,
            Suite {
                binary_id: doctest_binary(&pkg.name),
                package: pkg.id.clone(),
                src: lib.src_path.clone().into_std_path_buf(),
                executable: None,
                target_args: vec!["--doc".into()],
                tests: Vec::new(),
            },
        ));
    }
    for name in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
    {
        let file = name.split(" - ").next().unwrap_or(name);
        // The package whose directory holds the file (the deepest one).
        let owner = suites
            .iter_mut()
            .filter(|(dir, _)| dir.is_empty() || file.starts_with(&format!("{dir}/")))
            .max_by_key(|(dir, _)| dir.len());
        if let Some((_, suite)) = owner {
            suite.tests.push(name.to_owned());
        }
    }
    Ok(suites.into_iter().map(|(_, s)| s).collect())
}

/// A nextest filterset for the selected tests: a whole binary where all
/// of its tests are selected (the usual case: selection is per binary),
/// else its tests by name.
fn filterset(suites: &[Suite], selected: &BTreeSet<String>) -> Option<String> {
    let mut parts = Vec::new();
    for suite in suites.iter().filter(|s| s.executable.is_some()) {
        let chosen: Vec<&String> = suite
            .tests
            .iter()
            .filter(|t| selected.contains(&test_id(&suite.binary_id, t)))
            .collect();
        if chosen.is_empty() {
            continue;
        }
        let binary = format!("binary_id(={})", suite.binary_id);
        if chosen.len() == suite.tests.len() {
            parts.push(binary);
        } else {
            let tests: Vec<String> = chosen.iter().map(|t| format!("test(={t})")).collect();
            parts.push(format!("({binary} & ({}))", tests.join(" | ")));
        }
    }
    (!parts.is_empty()).then(|| parts.join(" | "))
}

fn run_nextest(
    layout: &Layout,
    meta: &Metadata,
    suites: &[Suite],
    selected: &BTreeSet<String>,
    extra: &[String],
) -> Result<(u8, Vec<CargoTestResult>), ClientError> {
    let Some(filter) = filterset(suites, selected) else {
        return Ok((exit::OK, Vec::new()));
    };
    let state = layout
        .db()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let config = state.join("nextest.toml");
    std::fs::write(
        &config,
        format!(
            "# Written by tim for its runs: a JUnit report to read results from.\n\
             [profile.\"{PROFILE}\"]\nfail-fast = false\n\n[profile.\"{PROFILE}\".junit]\npath = \"{JUNIT_FILE}\"\n"
        ),
    )
    .map_err(|e| ClientError::io(format!("cannot write {}", config.display()), e))?;
    let junit = meta
        .target_directory
        .as_std_path()
        .join("nextest")
        .join(PROFILE)
        .join(JUNIT_FILE);
    let _ = std::fs::remove_file(&junit);
    let mut command = cargo();
    command
        .current_dir(&layout.root)
        .args(["nextest", "run", "--workspace", "--no-tests", "pass"])
        .arg("--tool-config-file")
        .arg(format!("tim:{}", config.display()))
        .args(["--profile", PROFILE])
        .args(["-E", &filter]);
    command.args(extra).stdin(Stdio::inherit());
    let status = command
        .status()
        .map_err(|e| cannot_run("cargo nextest run", e))?;
    let results = match std::fs::read_to_string(&junit) {
        Ok(text) => crate::junit::read_nextest(&text)?,
        Err(_) => Vec::new(),
    };
    let code = match status.code() {
        Some(0) => exit::OK,
        // nextest: 100 means tests failed.
        Some(100) => exit::TESTS_FAILED,
        // A build error here means the tree changed since the build.
        Some(101) => exit::INTERRUPTED,
        Some(_) if !results.is_empty() => exit::TESTS_FAILED,
        _ => exit::INTERRUPTED,
    };
    let results = results
        .into_iter()
        .map(|(binary_id, name, outcome, seconds)| CargoTestResult {
            id: test_id(&binary_id, &name),
            binary_id,
            outcome,
            seconds,
        })
        .filter(|r| selected.contains(&r.id))
        .collect();
    Ok((code, results))
}

/// Runs libtest's output lines (`test NAME ... ok`) of one binary into
/// results; the binary's time is shared among its tests (stable libtest
/// reports no per-test times).
fn libtest_results(
    binary_id: &str,
    stdout: &str,
    wanted: &BTreeSet<&str>,
    seconds: f64,
) -> Vec<CargoTestResult> {
    let mut found = Vec::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("test ") else {
            continue;
        };
        let Some((name, verdict)) = rest.rsplit_once(" ... ") else {
            continue;
        };
        let outcome = match verdict.trim() {
            "ok" => Outcome::Passed,
            "FAILED" => Outcome::Failed,
            v if v.starts_with("ignored") => Outcome::Skipped,
            _ => continue,
        };
        if wanted.contains(name) {
            found.push((name.to_owned(), outcome));
        }
    }
    let share = seconds / found.len().max(1) as f64;
    found
        .into_iter()
        .map(|(name, outcome)| CargoTestResult {
            id: test_id(binary_id, &name),
            binary_id: binary_id.to_owned(),
            outcome,
            seconds: share,
        })
        .collect()
}

/// Runs a `cargo test` command for one binary, showing its output.
fn run_libtest(
    mut command: Command,
    suite: &Suite,
    wanted: &BTreeSet<&str>,
) -> Result<(u8, Vec<CargoTestResult>), ClientError> {
    let started = std::time::Instant::now();
    let out = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| cannot_run("cargo test", e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    let results = libtest_results(
        &suite.binary_id,
        &stdout,
        wanted,
        started.elapsed().as_secs_f64(),
    );
    let code = match out.status.code() {
        Some(0) => exit::OK,
        Some(101) if !results.is_empty() => exit::TESTS_FAILED,
        _ => exit::INTERRUPTED,
    };
    Ok((code, results))
}

fn chosen<'s>(suite: &'s Suite, selected: &BTreeSet<String>) -> BTreeSet<&'s str> {
    suite
        .tests
        .iter()
        .filter(|t| selected.contains(&test_id(&suite.binary_id, t)))
        .map(String::as_str)
        .collect()
}

fn package_name<'m>(meta: &'m Metadata, id: &PackageId) -> &'m str {
    meta.packages
        .iter()
        .find(|p| &p.id == id)
        .map_or("", |p| p.name.as_str())
}

fn run_cargo_test(
    root: &Path,
    meta: &Metadata,
    suites: &[Suite],
    selected: &BTreeSet<String>,
    extra: &[String],
) -> Result<(u8, Vec<CargoTestResult>), ClientError> {
    let mut worst = exit::OK;
    let mut results = Vec::new();
    for suite in suites.iter().filter(|s| s.executable.is_some()) {
        let wanted = chosen(suite, selected);
        if wanted.is_empty() {
            continue;
        }
        let mut command = cargo();
        command
            .current_dir(root)
            .args(["test", "-p", package_name(meta, &suite.package)])
            .args(&suite.target_args)
            .args(["--", "--exact"])
            .args(wanted.iter().copied())
            .args(extra);
        let (code, found) = run_libtest(command, suite, &wanted)?;
        worst = worst.max(code);
        results.extend(found);
    }
    Ok((worst, results))
}

/// Runs the selected doctests in one `cargo test --doc`.
fn run_doctests(
    root: &Path,
    meta: &Metadata,
    suites: &[Suite],
    selected: &BTreeSet<String>,
) -> Result<(u8, Vec<CargoTestResult>), ClientError> {
    let chosen: Vec<(&Suite, BTreeSet<&str>)> = suites
        .iter()
        .filter(|s| s.executable.is_none())
        .map(|s| (s, chosen(s, selected)))
        .filter(|(_, wanted)| !wanted.is_empty())
        .collect();
    if chosen.is_empty() {
        return Ok((exit::OK, Vec::new()));
    }
    let mut command = cargo();
    command.current_dir(root).args(["test", "--doc"]);
    for (suite, _) in &chosen {
        command.args(["-p", package_name(meta, &suite.package)]);
    }
    if chosen
        .iter()
        .any(|(s, wanted)| wanted.len() < s.tests.len())
    {
        command
            .args(["--", "--exact"])
            .args(chosen.iter().flat_map(|(_, w)| w.iter().copied()));
    }
    let started = std::time::Instant::now();
    let out = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| cannot_run("cargo test --doc", e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    let share = started.elapsed().as_secs_f64() / chosen.len() as f64;
    let mut results = Vec::new();
    for (suite, wanted) in &chosen {
        results.extend(libtest_results(&suite.binary_id, &stdout, wanted, share));
    }
    let code = match out.status.code() {
        Some(0) => exit::OK,
        Some(101) if !results.is_empty() => exit::TESTS_FAILED,
        _ => exit::INTERRUPTED,
    };
    Ok((code, results))
}

/// What each listed binary was built from, for the daemon to hash.
fn describe_binaries(
    root: &Path,
    meta: &Metadata,
    build: &Build,
    suites: &[Suite],
) -> Vec<CargoBinary> {
    let members: BTreeSet<&PackageId> = meta.workspace_members.iter().collect();
    let nodes: HashMap<&PackageId, &cargo_metadata::Node> = meta
        .resolve
        .as_ref()
        .map(|r| r.nodes.iter().map(|n| (&n.id, n)).collect())
        .unwrap_or_default();
    let lock = meta.workspace_root.as_std_path().join("Cargo.lock");
    let mut out = Vec::new();
    for suite in suites {
        // The package itself, everything it depends on (dev-dependencies
        // too: test binaries link them), and what those need in turn.
        let mut closure: BTreeSet<&PackageId> = BTreeSet::new();
        let mut work: Vec<(&PackageId, bool)> = vec![(&suite.package, true)];
        while let Some((id, top)) = work.pop() {
            if !closure.insert(id) {
                continue;
            }
            let Some(node) = nodes.get(id) else { continue };
            for dep in &node.deps {
                let counts = top
                    || dep
                        .dep_kinds
                        .iter()
                        .any(|k| k.kind != DependencyKind::Development);
                if counts {
                    work.push((&dep.pkg, false));
                }
            }
        }
        let mut dep_info: Vec<String> = Vec::new();
        if let Some(exe) = &suite.executable {
            dep_info.push(format!("{}.d", exe.display()));
        }
        // Integration tests, examples and benches may run the package's
        // binaries (`env!("CARGO_BIN_EXE_<name>")`).
        let beside = suite
            .binary_id
            .split_once("::")
            .is_some_and(|(_, kind)| !kind.starts_with("bin/") && kind != "doctest");
        if beside {
            for d in build.bins.get(&suite.package).into_iter().flatten() {
                dep_info.push(d.display().to_string());
            }
        }
        let mut build_scripts = Vec::new();
        let mut manifests = vec![meta.workspace_root.join("Cargo.toml").to_string()];
        let mut externals = Vec::new();
        for id in closure {
            let Some(pkg) = meta.packages.iter().find(|p| &p.id == id) else {
                continue;
            };
            // Registry and git packages are judged by their Cargo.lock
            // entries; a path dependency outside the workspace by its files.
            if !members.contains(id) && pkg.source.is_some() {
                externals.push(pkg.name.to_string());
                continue;
            }
            manifests.push(pkg.manifest_path.to_string());
            if let Some(d) = build.lib_dep_info.get(id) {
                dep_info.push(d.display().to_string());
            }
            if let Some((script_dep_info, output)) = build.scripts.get(id) {
                build_scripts.push(BuildScriptRun {
                    package_dir: pkg
                        .manifest_path
                        .parent()
                        .map_or_else(String::new, |p| p.to_string()),
                    output: output
                        .as_ref()
                        .map_or_else(String::new, |o| o.display().to_string()),
                    dep_info: script_dep_info.as_ref().map(|d| d.display().to_string()),
                });
            }
        }
        manifests.sort();
        manifests.dedup();
        externals.sort();
        externals.dedup();
        out.push(CargoBinary {
            binary_id: suite.binary_id.clone(),
            src: relative(root, &suite.src),
            dep_info,
            build_scripts,
            manifests,
            lock: lock.is_file().then(|| lock.display().to_string()),
            externals,
            tests: suite
                .tests
                .iter()
                .map(|t| test_id(&suite.binary_id, t))
                .collect(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite(binary: &str, tests: &[&str]) -> Suite {
        Suite {
            binary_id: binary.into(),
            package: PackageId { repr: "p".into() },
            src: PathBuf::from("src/lib.rs"),
            executable: Some(PathBuf::from("/x")),
            target_args: vec!["--lib".into()],
            tests: tests.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    #[test]
    fn filtersets_name_whole_binaries_where_they_can() {
        let suites = [
            suite("core", &["tests::a", "tests::b"]),
            suite("core::integration", &["limit", "other"]),
            suite("indep", &["ids"]),
        ];
        let selected: BTreeSet<String> = [
            test_id("core", "tests::a"),
            test_id("core", "tests::b"),
            test_id("core::integration", "limit"),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            filterset(&suites, &selected).unwrap(),
            "binary_id(=core) | (binary_id(=core::integration) & (test(=limit)))"
        );
        assert_eq!(filterset(&suites, &BTreeSet::new()), None);
    }

    #[test]
    fn libtest_lines_become_results() {
        let out = "running 3 tests\ntest a ... ok\ntest b ... FAILED\ntest c ... ignored, slow\ntest d ... ok\n\nfailures:\n";
        let wanted: BTreeSet<&str> = ["a", "b", "c"].into_iter().collect();
        let results = libtest_results("core", out, &wanted, 0.9);
        let got: Vec<(&str, Outcome)> =
            results.iter().map(|r| (r.id.as_str(), r.outcome)).collect();
        assert_eq!(
            got,
            vec![
                ("cargo:core a", Outcome::Passed),
                ("cargo:core b", Outcome::Failed),
                ("cargo:core c", Outcome::Skipped),
            ]
        );
        assert!((results[0].seconds - 0.3).abs() < 1e-9);
    }
}
