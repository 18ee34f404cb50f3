//! `tim`, the client. It is glue: it finds the project root, reaches the
//! daemon (starting or replacing it as needed), sends one request and
//! prints the answer. It holds no selection logic of its own.

mod cache;
mod cargo;
pub mod connect;
pub mod error;
pub mod junit;
mod progress;
pub mod pytest;
pub mod runner;
mod term;
pub mod watch;

use crate::error::{ClientError, exit};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tim_proto::layout::{self, Layout};
use tim_proto::{
    ChangeKind, ChangesParams, ChangesReply, FileChange, Request, Response, StatusParams,
    StatusReply, WatcherMode,
};

#[derive(Parser, Debug)]
#[command(
    name = "tim",
    version,
    about = "tim: rerun only the tests a change can break",
    after_help = "Exit codes: 0 success, 1 tests failed, 2 interrupted, 3 internal error, 4 usage error, 5 no tests collected, 6 daemon unavailable, 7 daemon newer than tim, 8 daemon not running (`tim daemon status`)."
)]
struct Cli {
    /// Project root (default: the nearest ancestor with tim.toml, pyproject.toml, Cargo.toml or .git).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the affected tests (the default), or all of them, recording what each depends on.
    Run {
        /// Run only the tests affected by changes since they last ran (the default).
        #[arg(long, conflicts_with = "all")]
        affected: bool,
        /// Run every test and record it.
        #[arg(long)]
        all: bool,
        /// The order of the tests (default: `run.order` in tim.toml, else quick-feedback: failed last time, new, then fastest first).
        #[arg(long, value_enum)]
        order: Option<pytest::OrderArg>,
        /// Write a JUnit XML report of the tests run to FILE (an empty one when nothing is affected).
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// No progress display (a bar with an ETA on a terminal, else a line per tenth of the run).
        #[arg(long)]
        no_progress: bool,
        /// Run the tests in N xdist workers (auto: one per core), each given a part balanced by the tests' durations in history (needs pytest-xdist).
        #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = pytest::parse_jobs)]
        jobs: Option<usize>,
        /// Also run the tests depending on files that differ from the merge base with REV, committed or not (before a push, in PR CI).
        #[arg(long, value_name = "REV", conflicts_with = "all")]
        since: Option<String>,
        /// Run part I of N duration-balanced parts of the selected tests (CI shards: every job computes the same parts from the same history).
        #[arg(long, value_name = "I/N", value_parser = pytest::parse_shard)]
        shard: Option<String>,
        /// How cached fixtures use the artifact cache: use (default), refresh (compute all again), replay-only (compute nothing; a missing entry fails its tests). Default: $TIM_CACHE.
        #[arg(long, value_name = "MODE", value_parser = ["use", "refresh", "replay-only"])]
        cache: Option<String>,
        /// The Python interpreter to run pytest with (default: $TIM_PYTHON, the active or the root's virtualenv, python3).
        #[arg(long, value_name = "PATH")]
        python: Option<PathBuf>,
        /// Extra arguments for pytest, after `--`.
        #[arg(last = true, value_name = "PYTEST_ARGS")]
        pytest_args: Vec<String>,
    },
    /// Watch the project and rerun the affected tests after every change.
    Watch {
        /// What to do with a change that arrives while tests run.
        #[arg(long, value_enum, default_value = "queue")]
        on_change: watch::OnChange,
        /// The Python interpreter to run pytest with (as for `tim run`).
        #[arg(long, value_name = "PATH")]
        python: Option<PathBuf>,
        /// Extra arguments for pytest, after `--`.
        #[arg(last = true, value_name = "PYTEST_ARGS")]
        pytest_args: Vec<String>,
    },
    /// List the tests affected by changes since they last ran, with the reasons.
    Affected {
        /// The interpreter the next run will use (a different one affects every test).
        #[arg(long, value_name = "PATH")]
        python: Option<PathBuf>,
        /// Also the tests depending on files that differ from the merge base with REV (committed or not).
        #[arg(long, value_name = "REV")]
        since: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show what a test depends on, and why it is or is not affected.
    Why {
        /// A pytest node id, e.g. tests/test_parser.py::test_parse.
        test: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Add the results in JUnit XML reports (from any runner, e.g. CI artifacts) to the timing and outcome history.
    ImportJunit {
        /// JUnit XML files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Check every known test's last duration against its time budget ([audit] in tim.toml); exits 1 on a test over budget.
    Audit {
        /// Also write the result as a JUnit XML report.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show what the timing and outcome history says: slowest, slowing, flaky and failing tests.
    Stats {
        /// Entries per list.
        #[arg(long, default_value_t = 10, value_name = "N")]
        limit: u32,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show the daemon, the tracked files and what changed since the last recorded run.
    Status(JsonFlag),
    /// List files changed since a clock (from `tim status --json` or an earlier `tim changes`).
    Changes {
        /// A clock from an earlier answer; without it every tracked file is listed.
        #[arg(long, value_name = "CLOCK")]
        since: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Start, stop or inspect this project's daemon.
    Daemon {
        #[command(subcommand)]
        action: DaemonAction,
    },
    /// The fixture artifact cache: stats, ls, gc, clear.
    Cache {
        #[command(subcommand)]
        action: cache::CacheAction,
    },
    /// (Internal) one run of a Cargo workspace's tests, as `tim run` and `tim watch` start it.
    #[command(hide = true)]
    CargoSession {
        #[arg(long, conflicts_with = "all")]
        affected: bool,
        #[arg(long)]
        all: bool,
        #[arg(long, value_name = "REV")]
        since: Option<String>,
        #[arg(long, value_enum)]
        order: Option<pytest::OrderArg>,
        #[arg(long, value_name = "I/N", value_parser = pytest::parse_shard)]
        shard: Option<String>,
        #[arg(long, default_value = "tim run")]
        command_line: String,
        #[arg(long, value_name = "TEST")]
        only: Vec<String>,
        #[arg(last = true)]
        extra: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum DaemonAction {
    /// Start the daemon unless it is running.
    Start {
        /// Run it in this terminal, logging to stderr (for debugging; TIM_LOG sets the filter).
        #[arg(long)]
        foreground: bool,
    },
    /// Stop the daemon; the next tim command starts a new one.
    Stop,
    /// Stop the daemon if it runs, then start a new one.
    Restart,
    /// Say whether a daemon is running, without starting one (exit 8 when not).
    Status(JsonFlag),
}

#[derive(Args, Debug, Clone, Copy)]
pub(crate) struct JsonFlag {
    /// Print JSON (the format is documented in README.md and stable).
    #[arg(long)]
    json: bool,
}

/// Entry point of the `tim` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // A closed pipe (`tim status | head`) is not an error.
            if let Some(ClientError::Io { source, .. }) = e.downcast_ref::<ClientError>()
                && source.kind() == std::io::ErrorKind::BrokenPipe
            {
                return ExitCode::from(exit::OK);
            }
            eprintln!("tim: error: {e:#}");
            let code = e
                .downcast_ref::<ClientError>()
                .map_or(exit::INTERNAL, ClientError::exit_code);
            ExitCode::from(code)
        }
    }
}

fn find_root(explicit: Option<&Path>) -> Result<PathBuf, ClientError> {
    let cwd = std::env::current_dir()
        .map_err(|e| ClientError::io("cannot read the current directory", e))?;
    match explicit {
        Some(root) => {
            let root = cwd.join(root);
            root.canonicalize()
                .map_err(|e| ClientError::Usage(format!("--root {}: {e}", root.display())))
        }
        None => {
            let cwd = cwd
                .canonicalize()
                .map_err(|e| ClientError::io("cannot resolve the current directory", e))?;
            layout::find_root(&cwd).ok_or_else(|| {
                ClientError::Usage(format!(
                    "no project root found from {}: none of it or its parents holds {}; run tim inside a project, pass --root DIR, or create a tim.toml",
                    cwd.display(),
                    layout::ROOT_MARKERS.join(", ")
                ))
            })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let root = find_root(cli.root.as_deref())?;
    let layout = Layout::from_env(&root);
    match cli.command {
        Command::Run {
            affected: _,
            all,
            order,
            junit,
            no_progress,
            cache,
            shard,
            since,
            jobs,
            python,
            pytest_args,
        } => {
            let command_line = std::env::args().collect::<Vec<_>>().join(" ");
            // A root with both a Cargo workspace and a Python project runs
            // both, pytest first; the worse exit code wins.
            let cargo_root = cargo::is_cargo_root(&root);
            let python_root = !cargo_root || cargo::is_python_root(&root);
            let mut code = exit::OK;
            if python_root {
                code = pytest::run(
                    &layout,
                    pytest::RunArgs {
                        all,
                        order: order.map(Into::into),
                        junit,
                        python,
                        pytest_args: pytest_args.clone(),
                        command_line: command_line.clone(),
                        no_progress,
                        cache,
                        shard: shard.clone(),
                        since: since.clone(),
                        jobs,
                    },
                )?;
            }
            if cargo_root {
                let mut runner = cargo::CargoRunner::new(&layout, command_line);
                runner.order = order.map(Into::into);
                runner.since = since;
                runner.shard = shard;
                // Extra arguments are pytest's when pytest runs too.
                let extra = if python_root { Vec::new() } else { pytest_args };
                let rust = cargo::run(&layout, &mut runner, all, &extra)?;
                code = worse(code, rust);
            }
            Ok(code)
        }
        Command::Watch {
            on_change,
            python,
            pytest_args,
        } => {
            let command_line = std::env::args().collect::<Vec<_>>().join(" ");
            if cargo::is_cargo_root(&root) && !cargo::is_python_root(&root) {
                let mut runner = cargo::CargoRunner::new(&layout, command_line);
                return watch::watch(
                    &layout,
                    &mut runner,
                    watch::WatchArgs {
                        on_change,
                        extra: pytest_args,
                    },
                );
            }
            let mut runner = pytest::PytestRunner::new(&layout, python.as_deref(), command_line);
            watch::watch(
                &layout,
                &mut runner,
                watch::WatchArgs {
                    on_change,
                    extra: pytest_args,
                },
            )
        }
        Command::Affected {
            python,
            since,
            json,
        } => pytest::affected(&layout, python.as_deref(), since, json.json),
        Command::Why { test, json } => pytest::why(&layout, test, json.json),
        Command::Stats { limit, json } => pytest::stats(&layout, limit, json.json),
        Command::ImportJunit { files } => pytest::import_junit(&layout, &files),
        Command::Audit { junit, json } => pytest::audit(&layout, junit.as_deref(), json.json),
        Command::Status(flag) => status(&layout, flag.json),
        Command::Changes { since, json } => changes(&layout, since, json.json),
        Command::Daemon { action } => daemon(&layout, action),
        Command::Cache { action } => cache::run(&layout, action),
        Command::CargoSession {
            affected: _,
            all,
            since,
            order,
            shard,
            command_line,
            only,
            extra,
        } => cargo::session(
            &layout,
            cargo::SessionArgs {
                all,
                since,
                order: order.map(Into::into),
                shard: shard.as_deref().and_then(cargo::parse_shard),
                command_line,
                only,
                extra,
            },
        ),
    }
}

/// The exit code of two runners' runs: "no tests collected" from one
/// (a Python project without tests beside a Cargo workspace) yields to the
/// other's; otherwise the higher code, the worse outcome.
fn worse(a: u8, b: u8) -> u8 {
    match (a, b) {
        (exit::NO_TESTS, other) | (other, exit::NO_TESTS) => other,
        (a, b) => a.max(b),
    }
}

fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("tim: warning: {w}");
    }
}

pub(crate) fn print_json(value: &serde_json::Value) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .map_err(|e| ClientError::io("cannot write the output", e))
}

/// JSON output is the reply's own fields plus `warnings`.
pub(crate) fn with_warnings<T: serde::Serialize>(
    reply: &T,
    warnings: &[String],
) -> serde_json::Value {
    let mut value = serde_json::to_value(reply).expect("replies serialize");
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("warnings".into(), serde_json::json!(warnings));
    }
    value
}

fn status(layout: &Layout, json: bool) -> anyhow::Result<u8> {
    let mut conn = connect::connect(layout)?;
    let (response, warnings) = conn.request(Request::Status(StatusParams {}))?;
    let Response::Status(reply) = response else {
        return Err(ClientError::Protocol(format!(
            "`{}` in answer to status",
            response.type_name()
        ))
        .into());
    };
    if json {
        print_json(&with_warnings(&reply, &warnings))?;
    } else {
        print_warnings(&warnings);
        print_status(&reply).map_err(|e| ClientError::io("cannot write the output", e))?;
    }
    Ok(exit::OK)
}

fn duration_words(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

fn change_word(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Added => "added",
        ChangeKind::Modified => "modified",
        ChangeKind::Deleted => "deleted",
    }
}

fn print_files(out: &mut impl Write, files: &[FileChange]) -> std::io::Result<()> {
    for f in files {
        writeln!(out, "  {:<9} {}", change_word(f.kind), f.path)?;
    }
    Ok(())
}

fn print_status(reply: &StatusReply) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "timd {} (protocol {}), pid {}, up {}",
        reply.daemon_version,
        reply.protocol,
        reply.pid,
        duration_words(reply.uptime_ms)
    )?;
    writeln!(out, "root:    {}", reply.root)?;
    let watching = match reply.watcher.mode {
        WatcherMode::Native => "watching for changes".to_owned(),
        WatcherMode::RescanOnQuery => "not watching: rescanning on every query".to_owned(),
    };
    writeln!(out, "tracked: {} files, {watching}", reply.tracked_files)?;
    match (&reply.last_run, &reply.changed_since_last_run) {
        (Some(run), Some(changed)) => {
            let ago = now_ms().saturating_sub(run.started_at_ms);
            writeln!(
                out,
                "last run: #{} {} ago ({})",
                run.id,
                duration_words(ago),
                if run.command.is_empty() {
                    "tim"
                } else {
                    &run.command
                }
            )?;
            if changed.is_empty() {
                writeln!(out, "changed: nothing since the last run")?;
            } else {
                writeln!(out, "changed: {} files since the last run", changed.len())?;
                print_files(&mut out, changed)?;
            }
        }
        _ => writeln!(
            out,
            "last run: none recorded yet, so every test counts as affected"
        )?,
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn changes(layout: &Layout, since: Option<String>, json: bool) -> anyhow::Result<u8> {
    let mut conn = connect::connect(layout)?;
    let (response, warnings) = conn.request(Request::Changes(ChangesParams { since }))?;
    let Response::Changes(reply) = response else {
        return Err(ClientError::Protocol(format!(
            "`{}` in answer to changes",
            response.type_name()
        ))
        .into());
    };
    if json {
        print_json(&with_warnings(&reply, &warnings))?;
        return Ok(exit::OK);
    }
    print_warnings(&warnings);
    print_changes(&reply).map_err(|e| ClientError::io("cannot write the output", e))?;
    Ok(exit::OK)
}

fn print_changes(reply: &ChangesReply) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if let Some(reason) = &reply.fresh_reason {
        writeln!(out, "every tracked file is listed: {reason}")?;
    }
    print_files(&mut out, &reply.files)?;
    writeln!(out, "clock: {}", reply.clock)
}

fn daemon(layout: &Layout, action: DaemonAction) -> anyhow::Result<u8> {
    match action {
        DaemonAction::Start { foreground: true } => {
            use std::os::unix::process::CommandExt;
            if let Some(conn) = connect::connect_existing(layout)? {
                return Err(ClientError::Usage(format!(
                    "a daemon is already running for {} (pid {}); stop it first with `tim daemon stop`",
                    layout.root.display(),
                    conn.hello.pid
                ))
                .into());
            }
            let binary = std::env::var_os(connect::DAEMON_BIN_ENV)
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::current_exe()
                        .ok()
                        .and_then(|e| e.parent().map(|d| d.join("timd")))
                })
                .unwrap_or_else(|| PathBuf::from("timd"));
            let error = std::process::Command::new(&binary)
                .arg("--root")
                .arg(&layout.root)
                .arg("--foreground")
                .exec();
            Err(ClientError::io(format!("cannot run {}", binary.display()), error).into())
        }
        DaemonAction::Start { foreground: false } => {
            let conn = connect::connect(layout)?;
            println!(
                "timd {} running for {} (pid {})",
                conn.hello.daemon_version, conn.hello.root, conn.hello.pid
            );
            Ok(exit::OK)
        }
        DaemonAction::Stop => {
            match connect::connect_existing(layout)? {
                Some(conn) => {
                    let pid = conn.shutdown("tim daemon stop")?;
                    println!("stopped timd (pid {pid})");
                }
                None => {
                    let stale = clean_stale(layout);
                    println!("no daemon is running for {}{stale}", layout.root.display());
                }
            }
            Ok(exit::OK)
        }
        DaemonAction::Restart => {
            if let Some(conn) = connect::connect_existing(layout)? {
                conn.shutdown("tim daemon restart")?;
            }
            let conn = connect::start(layout)?;
            println!(
                "timd {} running for {} (pid {})",
                conn.hello.daemon_version, conn.hello.root, conn.hello.pid
            );
            Ok(exit::OK)
        }
        DaemonAction::Status(flag) => {
            let conn = connect::connect_existing(layout)?;
            let stale = if conn.is_none() {
                clean_stale(layout)
            } else {
                String::new()
            };
            if flag.json {
                let value = match &conn {
                    Some(c) => serde_json::json!({
                        "running": true,
                        "pid": c.hello.pid,
                        "daemon_version": c.hello.daemon_version,
                        "protocol": c.hello.protocol,
                        "root": c.hello.root,
                        "socket": layout.socket.display().to_string(),
                        "log": layout.log().display().to_string(),
                    }),
                    None => serde_json::json!({
                        "running": false,
                        "root": layout.root.display().to_string(),
                        "socket": layout.socket.display().to_string(),
                        "log": layout.log().display().to_string(),
                    }),
                };
                print_json(&value)?;
            } else {
                match &conn {
                    Some(c) => println!(
                        "running: timd {} (protocol {}), pid {}\nsocket:  {}\nlog:     {}",
                        c.hello.daemon_version,
                        c.hello.protocol,
                        c.hello.pid,
                        layout.socket.display(),
                        layout.log().display()
                    ),
                    None => println!("not running for {}{stale}", layout.root.display()),
                }
            }
            Ok(if conn.is_some() {
                exit::OK
            } else {
                exit::NOT_RUNNING
            })
        }
    }
}

/// Removes the pid file of a daemon that died without cleaning up (nobody
/// holds the daemon lock); returns a note for the user, or "".
fn clean_stale(layout: &Layout) -> String {
    let pid_file = layout.pid_file();
    if !pid_file.exists() {
        return String::new();
    }
    let Ok(lock) = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(layout.daemon_lock())
    else {
        return String::new();
    };
    if lock.try_lock().is_err() {
        // A daemon holds the lock: it is alive, just not answering yet.
        return String::new();
    }
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| serde_json::from_str::<tim_proto::DaemonInfo>(&t).ok())
        .map(|i| i.pid);
    let _ = std::fs::remove_file(&pid_file);
    drop(lock);
    match pid {
        Some(pid) => {
            format!(" (removed the stale pid file of pid {pid}, which did not shut down cleanly)")
        }
        None => " (removed a stale pid file)".to_owned(),
    }
}
