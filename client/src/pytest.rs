//! Running pytest: choosing the interpreter, providing the plugin, and the
//! `tim run`, `tim affected` and `tim why` commands.
//!
//! The plugin ships inside the `tim` binary and is written to the runtime
//! directory before each run, so the pytest that runs always speaks this
//! tim's protocol, whether or not `pytest-tim` is installed.

use crate::connect::{self, Connection};
use crate::error::{ClientError, exit};
use crate::runner::{Plan, RunPlan, Runner, Scope};
use std::path::{Path, PathBuf};
use std::process::Command;
use tim_proto::layout::Layout;
use tim_proto::{
    AffectedParams, AffectedReply, AuditParams, AuditReply, ImportResultsParams, Order, Request,
    Response, StatsParams, StatsReply, WhyParams, WhyReply,
};

/// The plugin's files, embedded at build time.
const PLUGIN: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../python/pytest_tim/__init__.py"),
    ),
    (
        "_cache.py",
        include_str!("../../python/pytest_tim/_cache.py"),
    ),
    (
        "_client.py",
        include_str!("../../python/pytest_tim/_client.py"),
    ),
    (
        "_schedule.py",
        include_str!("../../python/pytest_tim/_schedule.py"),
    ),
    (
        "_instrument.py",
        include_str!("../../python/pytest_tim/_instrument.py"),
    ),
    (
        "_recorder.py",
        include_str!("../../python/pytest_tim/_recorder.py"),
    ),
];

/// Names this plugin's directory: the files' hash, which is deterministic
/// for one build (`DefaultHasher::new` has fixed keys). A collision would
/// cost nothing but rewrites: every run compares the files it finds.
fn plugin_digest() -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    PLUGIN.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Overrides the interpreter `tim run` uses.
pub const PYTHON_ENV: &str = "TIM_PYTHON";

/// The interpreter to run tests with: `--python`, `$TIM_PYTHON`, the active
/// virtualenv, a `.venv` or `venv` in the root, then `python3` on PATH.
pub fn choose_python(root: &Path, explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(venv).join("bin/python"));
    }
    candidates.push(root.join(".venv/bin/python"));
    candidates.push(root.join("venv/bin/python"));
    candidates
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// The identity of an interpreter's environment, as the plugin reports it:
/// `venv:<prefix>` for a virtualenv's interpreter (any of its `python`,
/// `python3`, ... names), else the interpreter's real path.
fn python_identity(python: &Path) -> Option<String> {
    let path = if python.components().count() > 1 {
        std::path::absolute(python).ok()?
    } else {
        let dirs = std::env::var_os("PATH")?;
        std::env::split_paths(&dirs)
            .map(|dir| dir.join(python))
            .find(|p| p.exists())?
    };
    if let Some(prefix) = path.parent().and_then(Path::parent)
        && prefix.join("pyvenv.cfg").exists()
    {
        return Some(format!("venv:{}", prefix.canonicalize().ok()?.display()));
    }
    Some(path.canonicalize().ok()?.display().to_string())
}

/// Writes the embedded plugin (only what differs) and returns the directory
/// to put on `PYTHONPATH`: `<runtime dir>/python/<hash of the files>/`.
///
/// Not under `.tim/`: the bytecode pytest compiles for the plugin (its
/// assertion rewriter loads `-p` plugins) is kept next to it, and a fresh
/// `.tim/` (a new checkout, a deleted one) would compile it again, which
/// costs a first recording tens of milliseconds. The runtime directory is
/// private to the user (a shared one could let others plant code in the
/// tests' process), and one directory per plugin version serves every
/// project and never changes under a running pytest.
fn install_plugin(layout: &Layout) -> Result<PathBuf, ClientError> {
    connect::ensure_runtime_dir(layout)?;
    let base = layout.runtime_dir.join("python").join(plugin_digest());
    let dir = base.join("pytest_tim");
    std::fs::create_dir_all(&dir)
        .map_err(|e| ClientError::io(format!("cannot create {}", dir.display()), e))?;
    for (name, text) in PLUGIN {
        let path = dir.join(name);
        if std::fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
            continue;
        }
        // Write and rename, so a concurrent run never imports half a file.
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| ClientError::io(format!("cannot write {}", path.display()), e))?;
    }
    Ok(base)
}

fn request<T>(
    conn: &mut Connection,
    request: Request,
    pick: impl FnOnce(Response) -> Option<T>,
) -> Result<(T, Vec<String>), ClientError> {
    let kind = request.type_name();
    let (response, warnings) = conn.request(request)?;
    let name = response.type_name();
    match pick(response) {
        Some(v) => Ok((v, warnings)),
        None => Err(ClientError::Protocol(format!(
            "`{name}` in answer to {kind}"
        ))),
    }
}

pub fn affected_query(
    conn: &mut Connection,
    python: Option<String>,
    since: Option<String>,
) -> Result<(AffectedReply, Vec<String>), ClientError> {
    affected_query_with(conn, python, None, since)
}

/// [`affected_query`], with the Rust tests' part when `cargo` is given.
pub fn affected_query_with(
    conn: &mut Connection,
    python: Option<String>,
    cargo: Option<tim_proto::CargoContext>,
    since: Option<String>,
) -> Result<(AffectedReply, Vec<String>), ClientError> {
    if !conn.hello.capabilities.iter().any(|c| c == "affected") {
        return Err(ClientError::Protocol(
            "the running daemon predates test selection; run `tim daemon restart`".into(),
        ));
    }
    request(
        conn,
        Request::Affected(AffectedParams {
            python,
            since,
            cargo,
        }),
        |r| match r {
            Response::Affected(a) => Some(a),
            _ => None,
        },
    )
}

pub struct RunArgs {
    pub all: bool,
    pub order: Option<Order>,
    pub junit: Option<PathBuf>,
    pub python: Option<PathBuf>,
    pub pytest_args: Vec<String>,
    pub command_line: String,
    /// `--no-progress`: no progress display; pytest writes to the terminal.
    pub no_progress: bool,
    /// `--cache MODE`: the artifact cache's mode for this run.
    pub cache: Option<String>,
    /// `--shard I/N`, checked by [`parse_shard`].
    pub shard: Option<String>,
    /// `--since REV`.
    pub since: Option<String>,
    /// `-j N`: xdist workers.
    pub jobs: Option<usize>,
}

/// `-j N` (N >= 1) or `-j auto` (the cores available).
pub fn parse_jobs(text: &str) -> Result<usize, String> {
    if text == "auto" {
        return Ok(std::thread::available_parallelism().map_or(1, |n| n.get()));
    }
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{text:?} is not a number of workers: write a number from 1, or auto"
        )),
    }
}

/// `I/N` with `1 <= I <= N`.
pub fn parse_shard(text: &str) -> Result<String, String> {
    let parsed = text
        .split_once('/')
        .and_then(|(i, n)| Some((i.trim().parse::<u32>().ok()?, n.trim().parse::<u32>().ok()?)));
    match parsed {
        Some((i, n)) if 1 <= i && i <= n => Ok(format!("{i}/{n}")),
        _ => Err(format!(
            "{text:?} is not a shard: write I/N with 1 <= I <= N, e.g. 2/4"
        )),
    }
}

/// `--order` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OrderArg {
    QuickFeedback,
    LongestFirst,
}

impl From<OrderArg> for Order {
    fn from(arg: OrderArg) -> Order {
        match arg {
            OrderArg::QuickFeedback => Order::QuickFeedback,
            OrderArg::LongestFirst => Order::LongestFirst,
        }
    }
}

/// Tells the plugin the order the run asks for (`pytest_tim.ENV_ORDER`).
const ORDER_ENV: &str = "TIM_ORDER";

/// pytest as a [`Runner`].
pub struct PytestRunner {
    layout: Layout,
    python: PathBuf,
    command_line: String,
    order: Option<Order>,
    /// `--since REV`: also the tests depending on files changed since it.
    since: Option<String>,
}

impl PytestRunner {
    pub fn new(layout: &Layout, python: Option<&Path>, command_line: String) -> PytestRunner {
        PytestRunner {
            python: choose_python(&layout.root, python),
            layout: layout.clone(),
            command_line,
            order: None,
            since: None,
        }
    }
}

impl Runner for PytestRunner {
    fn plan(&mut self, conn: &mut Connection, scope: &Scope) -> Result<Plan, ClientError> {
        if *scope == Scope::All {
            return Ok(Plan::Run(RunPlan {
                select: false,
                targets: Vec::new(),
                summary: "tim: running every test and recording what each depends on".into(),
                footer: None,
            }));
        }
        let (reply, warnings) =
            affected_query(conn, python_identity(&self.python), self.since.clone())?;
        print_warnings(&warnings);
        if let Some(why) = &reply.run_all {
            return Ok(Plan::Run(RunPlan {
                select: false,
                targets: Vec::new(),
                summary: format!("tim: running every test: {why}"),
                footer: None,
            }));
        }
        if *scope == Scope::Failed {
            let failed: Vec<String> = reply
                .tests
                .iter()
                .filter(|t| t.reasons.iter().any(|r| r.ends_with(" last time")))
                .map(|t| t.id.clone())
                .collect();
            if failed.is_empty() {
                return Ok(Plan::Nothing(format!(
                    "tim: no test failed last time ({} known tests)",
                    reply.total
                )));
            }
            return Ok(Plan::Run(RunPlan {
                select: true,
                summary: format!(
                    "tim: running the {} tests that failed last time",
                    failed.len()
                ),
                targets: failed,
                footer: None,
            }));
        }
        if reply.tests.is_empty() && reply.collect.is_empty() {
            return Ok(Plan::Nothing(format!(
                "tim: nothing affected: {} known tests, none affected by changes since they last ran; about {} saved",
                reply.total,
                seconds_words(reply.unaffected_seconds)
            )));
        }
        let affected = reply.tests.len() as u64;
        Ok(Plan::Run(RunPlan {
            select: true,
            targets: reply.collect.iter().map(|c| c.file.clone()).collect(),
            summary: summary(&reply),
            footer: Some(format!(
                "tim: ran the {affected} affected of {} known tests; about {} saved (what the other {} took when they last ran)",
                reply.total,
                seconds_words(reply.unaffected_seconds),
                reply.total.saturating_sub(affected)
            )),
        }))
    }

    fn command(&self, plan: &RunPlan, extra: &[String]) -> Result<Command, ClientError> {
        let pythonpath = install_plugin(&self.layout)?;
        let mut path_var = pythonpath.into_os_string();
        if let Some(existing) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
            path_var.push(":");
            path_var.push(existing);
        }
        let mut command = Command::new(&self.python);
        command
            .current_dir(&self.layout.root)
            .args(["-m", "pytest", "-p", "pytest_tim"])
            .args(&plan.targets)
            .args(extra)
            .env("PYTHONPATH", path_var)
            .env("TIM_MODE", if plan.select { "affected" } else { "all" })
            .env("TIM_ROOT", &self.layout.root)
            .env("TIM_SOCKET", &self.layout.socket)
            .env("TIM_COMMAND", &self.command_line);
        if let Ok(bin) = std::env::current_exe() {
            command.env("TIM_BIN", bin);
        }
        match self.order {
            Some(order) => command.env(ORDER_ENV, order.name()),
            None => command.env_remove(ORDER_ENV),
        };
        match &self.since {
            Some(rev) => command.env("TIM_SINCE", rev),
            None => command.env_remove("TIM_SINCE"),
        };
        Ok(command)
    }

    fn watch_args(&self, user: &[String], filter: Option<&str>) -> Vec<String> {
        // Compact by default; the user's own verbosity wins.
        let verbosity_given = user.iter().any(|a| {
            matches!(a.as_str(), "--verbose" | "--quiet")
                || (a.starts_with('-')
                    && !a.starts_with("--")
                    && a[1..].chars().all(|c| c == 'v' || c == 'q'))
        });
        let mut extra = vec!["--tb=short".to_owned()];
        if !verbosity_given {
            extra.push("-q".to_owned());
        }
        if let Some(filter) = filter {
            extra.push("-k".into());
            extra.push(filter.to_owned());
        }
        extra.extend(user.iter().cloned());
        extra
    }

    fn exit_code(&self, plan: &RunPlan, code: i32) -> u8 {
        if code == i32::from(exit::NO_TESTS) && plan.select {
            // Every collected test was unaffected: nothing needed to run.
            return exit::OK;
        }
        u8::try_from(code).unwrap_or(exit::INTERNAL)
    }
}

/// The error for an interpreter that cannot be started.
pub fn cannot_run(python: &Path, e: std::io::Error) -> ClientError {
    ClientError::Usage(format!(
        "cannot run {}: {e}; point tim at your interpreter with --python PATH or {PYTHON_ENV}",
        python.display()
    ))
}

impl PytestRunner {
    pub fn python(&self) -> &Path {
        &self.python
    }
}

/// `tim run`: asks what is affected, then runs pytest on exactly that with
/// the plugin recording. Nothing affected: says so and starts no Python.
pub fn run(layout: &Layout, args: RunArgs) -> anyhow::Result<u8> {
    let mut runner = PytestRunner::new(layout, args.python.as_deref(), args.command_line);
    runner.order = args.order;
    runner.since = args.since.clone();
    let mut conn = connect::connect(layout)?;
    let scope = if args.all {
        Scope::All
    } else {
        Scope::Affected
    };
    // Relative to where the user is, not to the root pytest runs in.
    let junit = match &args.junit {
        Some(path) => Some(
            std::path::absolute(path)
                .map_err(|e| ClientError::io(format!("cannot use {}", path.display()), e))?,
        ),
        None => None,
    };
    let plan = match runner.plan(&mut conn, &scope)? {
        Plan::Nothing(line) => {
            if let Some(junit) = &junit {
                crate::junit::write_empty(junit)?;
            }
            println!("{line}");
            return Ok(exit::OK);
        }
        Plan::Run(plan) => plan,
    };
    drop(conn);
    eprintln!("{}", plan.summary);
    let mut pytest_args = args.pytest_args.clone();
    if let Some(junit) = &junit {
        let mut arg = std::ffi::OsString::from("--junitxml=");
        arg.push(junit);
        pytest_args.push(arg.to_string_lossy().into_owned());
    }
    if let Some(jobs) = args.jobs {
        require_xdist(runner.python())?;
        pytest_args.extend(["-n".to_owned(), jobs.to_string()]);
    }
    let mut command = runner.command(&plan, &pytest_args)?;
    if args.jobs.is_some() {
        command.env("TIM_JOBS", "1");
    }
    if let Some(mode) = &args.cache {
        command.env("TIM_CACHE", mode);
    }
    match &args.shard {
        Some(shard) => command.env("TIM_SHARD", shard),
        None => command.env_remove("TIM_SHARD"),
    };
    let display = if interactive(&args.pytest_args) {
        // The debugger needs the terminal itself.
        crate::progress::Display::Off
    } else {
        crate::progress::Display::choose(args.no_progress)
    };
    let status = match display {
        crate::progress::Display::Off => { command }.status(),
        display => crate::progress::run(command, display),
    }
    .map_err(|e| cannot_run(runner.python(), e))?;
    if let Some(footer) = &plan.footer
        && status.code().is_some()
    {
        eprintln!("{footer}");
    }
    Ok(match status.code() {
        Some(code) => runner.exit_code(&plan, code),
        // Killed by a signal (Ctrl-C reaches pytest too).
        None => exit::INTERRUPTED,
    })
}

/// `-j` runs xdist workers: the interpreter must have pytest-xdist.
fn require_xdist(python: &Path) -> Result<(), ClientError> {
    let found = Command::new(python)
        .args(["-c", "import xdist"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| cannot_run(python, e))?;
    if found.success() {
        return Ok(());
    }
    Err(ClientError::Usage(format!(
        "-j runs the tests in pytest-xdist workers, and {} has no pytest-xdist: install it there (pip install pytest-xdist)",
        python.display()
    )))
}

/// pytest arguments that hand the terminal to the tests or a debugger:
/// their output must not go through a pipe.
fn interactive(args: &[String]) -> bool {
    // Options in PYTEST_ADDOPTS count as given here.
    let extra: Vec<String> = std::env::var("PYTEST_ADDOPTS")
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let args: Vec<&String> = args.iter().chain(&extra).collect();
    // Short options taking a value: `-k s` is not `-s`.
    const VALUED: &str = "kmpcoWnr";
    args.iter().any(|a| {
        matches!(a.as_str(), "-s" | "--pdb" | "--trace" | "--capture=no")
            || a.starts_with("--pdbcls")
            || (a.len() > 2
                && a.starts_with('-')
                && !a.starts_with("--")
                && a[1..].chars().all(|c| c.is_ascii_alphabetic())
                && a[1..]
                    .chars()
                    .take_while(|c| !VALUED.contains(*c))
                    .any(|c| c == 's'))
    }) || args.windows(2).any(|w| w[0] == "--capture" && w[1] == "no")
}

/// `0.4s`, `12.5s`, `3m 20s`, `2h 5m`: a duration from history, as
/// precise as it is worth being.
pub(crate) fn seconds_words(secs: f64) -> String {
    let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
    let tenths = (secs * 10.0).round() / 10.0;
    if tenths < 60.0 {
        return format!("{tenths:.1}s");
    }
    let s = secs.round() as u64;
    match s {
        0..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// Tests grouped by their first reason, the most common first: the first
/// `top` groups as `reason ×N`, and how many groups there are in all.
pub(crate) fn common_reasons<'a>(
    tests: impl Iterator<Item = &'a tim_proto::AffectedTest>,
    top: usize,
) -> (Vec<String>, usize) {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for t in tests {
        if let Some(first) = t.reasons.first() {
            *counts.entry(first.as_str()).or_default() += 1;
        }
    }
    let mut common: Vec<(&str, usize)> = counts.into_iter().collect();
    common.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let shown = common
        .iter()
        .take(top)
        .map(|(r, n)| {
            if *n == 1 {
                (*r).to_owned()
            } else {
                format!("{r} ×{n}")
            }
        })
        .collect();
    (shown, common.len())
}

fn summary(reply: &AffectedReply) -> String {
    let (mut parts, groups) = common_reasons(
        reply
            .tests
            .iter()
            .filter(|t| !t.id.starts_with(crate::cargo::TEST_PREFIX)),
        3,
    );
    if groups > 3 {
        parts.push(format!("{} more reasons: see `tim affected`", groups - 3));
    }
    let new_files = reply
        .collect
        .iter()
        .filter(|c| c.reasons.iter().any(|r| r == "new test file"))
        .count();
    if new_files > 0 {
        parts.push(plural(new_files, "new test file"));
    }
    format!(
        "tim: {} of {} known tests affected{}; collecting {}",
        reply.tests.len(),
        reply.total,
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join("; "))
        },
        plural(reply.collect.len(), "file")
    )
}

fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("tim: warning: {w}");
    }
}

/// `tim affected`.
pub fn affected(
    layout: &Layout,
    python: Option<&Path>,
    since: Option<String>,
    json: bool,
) -> anyhow::Result<u8> {
    let cargo_root = crate::cargo::is_cargo_root(&layout.root);
    let python_root = !cargo_root || crate::cargo::is_python_root(&layout.root);
    let cargo = match cargo_root {
        true => Some(crate::cargo::context(&layout.root)?),
        false => None,
    };
    let python = python_root
        .then(|| python_identity(&choose_python(&layout.root, python)))
        .flatten();
    let mut conn = connect::connect(layout)?;
    let (reply, warnings) = match cargo {
        Some(cargo) => crate::cargo::affected_query(&mut conn, python, Some(cargo), since)?,
        None => affected_query(&mut conn, python, since)?,
    };
    if json {
        crate::print_json(&crate::with_warnings(&reply, &warnings))?;
        return Ok(exit::OK);
    }
    print_warnings(&warnings);
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let w = |e| ClientError::io("cannot write the output", e);
    if let Some(part) = &reply.cargo {
        crate::cargo::print_affected(&mut out, &reply, part).map_err(w)?;
        if !python_root {
            return Ok(exit::OK);
        }
    }
    if let Some(why) = &reply.run_all {
        writeln!(out, "every test is affected: {why}").map_err(w)?;
        return Ok(exit::OK);
    }
    for t in reply
        .tests
        .iter()
        .filter(|t| !t.id.starts_with(crate::cargo::TEST_PREFIX))
    {
        writeln!(out, "{}", t.id).map_err(w)?;
        for r in &t.reasons {
            writeln!(out, "    {r}").map_err(w)?;
        }
    }
    for c in &reply.collect {
        let interesting: Vec<&String> = c
            .reasons
            .iter()
            .filter(|r| !r.ends_with(" affected"))
            .collect();
        if !interesting.is_empty() {
            writeln!(out, "{} (to collect)", c.file).map_err(w)?;
            for r in interesting {
                writeln!(out, "    {r}").map_err(w)?;
            }
        }
    }
    writeln!(
        out,
        "{} of {} known tests affected; {} to collect",
        reply
            .tests
            .iter()
            .filter(|t| !t.id.starts_with(crate::cargo::TEST_PREFIX))
            .count(),
        reply.total,
        plural(reply.collect.len(), "file")
    )
    .map_err(w)?;
    Ok(exit::OK)
}

/// `tim why TEST`.
/// Asks the daemon one question. With `json`, prints the answer (and its
/// warnings) as JSON and returns `None`; else prints the warnings and
/// returns the answer for the caller to print.
pub(crate) fn answer<T: serde::Serialize>(
    layout: &Layout,
    question: Request,
    pick: impl FnOnce(Response) -> Option<T>,
    json: bool,
) -> anyhow::Result<Option<T>> {
    let mut conn = connect::connect(layout)?;
    let (reply, warnings) = request(&mut conn, question, pick)?;
    if json {
        crate::print_json(&crate::with_warnings(&reply, &warnings))?;
        return Ok(None);
    }
    print_warnings(&warnings);
    Ok(Some(reply))
}

/// `tim import-junit FILE...`: each report's results become a run of the
/// history.
pub fn import_junit(layout: &Layout, files: &[PathBuf]) -> anyhow::Result<u8> {
    // Read everything first: a bad file imports nothing.
    let mut reports = Vec::new();
    for file in files {
        reports.push((file, crate::junit::read(file, &layout.root)?));
    }
    let mut conn = connect::connect(layout)?;
    for (file, results) in reports {
        let count = results.len();
        let params = ImportResultsParams {
            source: format!("tim import-junit {}", file.display()),
            results,
        };
        let (_, warnings) = request(&mut conn, Request::ImportResults(params), |r| match r {
            Response::Ok(_) => Some(()),
            _ => None,
        })?;
        print_warnings(&warnings);
        println!("{}: {} imported", file.display(), plural(count, "result"));
    }
    Ok(exit::OK)
}

/// `tim audit`: budgets, warnings, violations; exit 1 on a violation.
pub fn audit(layout: &Layout, junit: Option<&Path>, json: bool) -> anyhow::Result<u8> {
    let pick = |r| match r {
        Response::Audit(a) => Some(a),
        _ => None,
    };
    let mut conn = connect::connect(layout)?;
    let (reply, warnings): (AuditReply, _) =
        request(&mut conn, Request::Audit(AuditParams {}), pick)?;
    if let Some(path) = junit {
        crate::junit::write_audit(path, &reply)?;
    }
    let status = if reply.violations.is_empty() {
        exit::OK
    } else {
        exit::TESTS_FAILED
    };
    if json {
        crate::print_json(&crate::with_warnings(&reply, &warnings))?;
        return Ok(status);
    }
    print_warnings(&warnings);
    if reply.checked == 0 {
        println!("no test has been recorded yet: run `tim run --all` first");
        return Ok(exit::OK);
    }
    let line = |e: &tim_proto::AuditEntry| {
        format!(
            "  {:>8} of {:>8} ({:>3.0}%)  {}  [{}]",
            seconds_words(e.seconds),
            seconds_words(e.budget_seconds),
            100.0 * e.seconds / e.budget_seconds,
            e.id,
            e.rule
        )
    };
    section("over budget:", &reply.violations, line);
    section(
        &format!(
            "near budget (at least {:.0}% of it):",
            reply.warn_at * 100.0
        ),
        &reply.near_budget,
        line,
    );
    println!(
        "\n{} checked: {} over budget, {} near it",
        plural(reply.checked as usize, "test"),
        reply.violations.len(),
        reply.near_budget.len()
    );
    Ok(status)
}

/// `tim stats`: the history's slowest, slowing, flaky and failing tests.
pub fn stats(layout: &Layout, limit: u32, json: bool) -> anyhow::Result<u8> {
    let params = StatsParams { limit: Some(limit) };
    let pick = |r| match r {
        Response::Stats(s) => Some(s),
        _ => None,
    };
    let Some(reply): Option<StatsReply> = answer(layout, Request::Stats(params), pick, json)?
    else {
        return Ok(exit::OK);
    };
    if reply.known == 0 {
        println!("no test has been recorded yet: run `tim run --all` first");
        return Ok(exit::OK);
    }
    println!("{} known tests, {} recorded runs", reply.known, reply.runs);
    println!("\nslowest (median over their history):");
    for t in &reply.slowest {
        println!(
            "  {:>8}  {}  (last {}, {} results)",
            seconds_words(t.median_seconds),
            t.id,
            seconds_words(t.last_seconds),
            t.results
        );
    }
    section(
        "getting slower (older half → newer half of their history):",
        &reply.slower,
        |t| {
            format!(
                "  {} → {}  {}",
                seconds_words(t.before_seconds),
                seconds_words(t.after_seconds),
                t.id
            )
        },
    );
    section(
        "flaky (outcome changed while nothing they depend on did):",
        &reply.flaky,
        |t| format!("  {:>3} flips in {} results  {}", t.flips, t.results, t.id),
    );
    section(
        "failing (failed or errored in their history):",
        &reply.failing,
        |t| {
            format!(
                "  {:>3}% ({} of {})  {}",
                100 * t.failures / t.results.max(1),
                t.failures,
                t.results,
                t.id
            )
        },
    );
    Ok(exit::OK)
}

fn section<T>(title: &str, items: &[T], line: impl Fn(&T) -> String) {
    println!("\n{title}");
    if items.is_empty() {
        println!("  none");
    }
    for item in items {
        println!("{}", line(item));
    }
}

pub fn why(layout: &Layout, test: String, json: bool) -> anyhow::Result<u8> {
    let pick = |r| match r {
        Response::Why(w) => Some(w),
        _ => None,
    };
    let cargo = match test.starts_with(crate::cargo::TEST_PREFIX) {
        true => Some(crate::cargo::context(&layout.root)?),
        false => None,
    };
    let Some(reply): Option<WhyReply> =
        answer(layout, Request::Why(WhyParams { test, cargo }), pick, json)?
    else {
        return Ok(exit::OK);
    };
    if !reply.known {
        println!(
            "{}: not recorded yet, so it is affected (it runs as a new test)",
            reply.id
        );
        return Ok(exit::OK);
    }
    println!(
        "{} ({}, last {} in run {})",
        reply.id,
        reply.file,
        reply.last_outcome.map_or("unknown", |o| o.as_str()),
        reply.last_run.unwrap_or(0)
    );
    if reply.affected {
        println!("affected:");
        for r in &reply.reasons {
            println!("    {r}");
        }
    } else {
        println!("not affected: nothing it depends on changed since it last passed");
    }
    println!("depends on {} things:", reply.deps.len());
    for d in &reply.deps {
        println!("    {:<6} {}  [{}]", d.kind, d.target, d.state);
    }
    Ok(exit::OK)
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::{PLUGIN, seconds_words};

    #[test]
    fn interactive_options_keep_the_terminal() {
        let yes = |args: &[&str]| {
            super::interactive(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert!(yes(&["-s"]) && yes(&["-vs"]) && yes(&["-xsv"]) && yes(&["--pdb"]));
        assert!(yes(&["--capture", "no"]) && yes(&["--capture=no"]));
        assert!(
            !yes(&["-v"]) && !yes(&["-ks"]) && !yes(&["-k", "s"]) && !yes(&["--strict-markers"])
        );
    }

    #[test]
    fn saved_time_words() {
        for (secs, words) in [
            (0.0, "0.0s"),
            (0.04, "0.0s"),
            (12.46, "12.5s"),
            (59.96, "1m 0s"),
            (200.0, "3m 20s"),
            (7500.0, "2h 5m"),
            (f64::NAN, "0.0s"),
            (-3.0, "0.0s"),
        ] {
            assert_eq!(seconds_words(secs), words, "{secs}");
        }
    }

    /// A module left out of `PLUGIN` breaks every `tim run` with an import
    /// error, while the plugin's own tests (run from the source tree) pass.
    #[test]
    fn every_module_of_the_plugin_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../python/pytest_tim");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".py"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = PLUGIN.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }
}
