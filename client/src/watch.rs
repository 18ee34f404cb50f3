//! `tim watch`: after every settled burst of saves, run the tests the
//! change affects, in the user's own environment; keys for the rest.
//!
//! One thread (the loop below) owns the state; everything else — the
//! daemon subscription, the keyboard, signals, the running child — reports
//! to it as an [`Input`] on one channel. Waiting is on that channel, never
//! on time, except for the settle window after a change.

use crate::connect;
use crate::error::{ClientError, exit};
use crate::runner::{Plan, RunPlan, Runner, Scope, spawn_group, stop_group};
use crate::term;
use std::collections::BTreeSet;
use std::process::Child;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};
use tim_proto::layout::Layout;
use tim_proto::{ChangeKind, FileChange, Request, Response, SubscribeParams};

/// Quiet time after the last change before a run starts: editors save
/// several files, or one file several times, within it.
pub const SETTLE: Duration = Duration::from_millis(100);
/// How long a cancelled run gets to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// What to do with a change that arrives while tests run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnChange {
    /// Let the run finish, then run what the change affects.
    Queue,
    /// Stop the run (its whole process group) and start over.
    Restart,
}

pub struct WatchArgs {
    pub on_change: OnChange,
    pub extra: Vec<String>,
}

enum Input {
    Changed {
        files: Vec<FileChange>,
        fresh: bool,
    },
    DaemonLost(String),
    DaemonBack {
        restarted: bool,
    },
    Key(u8),
    /// Run `n` exited (its exit code; `None`: ended by a signal).
    RunDone(u64, Option<i32>),
    Signal,
}

/// What a run is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ask {
    Scope(Scope),
    /// The last plan again (Enter).
    Rerun,
}

/// A connection subscribed to file changes.
fn subscribed(layout: &Layout) -> Result<connect::Connection, ClientError> {
    let mut conn = connect::connect(layout)?;
    match conn.request(Request::Subscribe(SubscribeParams {}))? {
        (Response::Subscribed(_), _) => Ok(conn),
        (other, _) => Err(ClientError::Protocol(format!(
            "`{}` in answer to subscribe",
            other.type_name()
        ))),
    }
}

/// Forwards the changes `first` reports, and keeps a subscription open
/// after it drops by reconnecting (which restarts a daemon that died).
fn subscribe(layout: Layout, first: connect::Connection, tx: Sender<Input>) {
    std::thread::spawn(move || {
        let mut known_pid = first.hello.pid;
        let mut next = Some(first);
        let mut failures = 0u32;
        loop {
            let connection = match next.take() {
                Some(conn) => Ok(conn),
                None => subscribed(&layout).inspect(|conn| {
                    let _ = tx.send(Input::DaemonBack {
                        restarted: conn.hello.pid != known_pid,
                    });
                    known_pid = conn.hello.pid;
                }),
            };
            let result = connection.and_then(|mut conn| {
                failures = 0;
                loop {
                    let frame = conn.next_frame()?;
                    if let Response::FilesChanged(changed) = frame.response
                        && tx
                            .send(Input::Changed {
                                files: changed.files,
                                fresh: changed.fresh_instance,
                            })
                            .is_err()
                    {
                        return Ok(());
                    }
                }
            });
            let message = match result {
                Ok(()) => return,
                Err(e) => e.to_string(),
            };
            if tx.send(Input::DaemonLost(message)).is_err() {
                return;
            }
            // A daemon that cannot start now may start in a moment (a full
            // disk, a lock held by one being killed): back off, bounded.
            failures += 1;
            if failures > 1 {
                std::thread::sleep(Duration::from_millis(200 * u64::from(failures.min(10))));
            }
        }
    });
}

struct Running {
    n: u64,
    child: Child,
    plan: RunPlan,
    started: Instant,
}

struct Watch<'r> {
    runner: &'r mut dyn Runner,
    layout: Layout,
    tx: Sender<Input>,
    args: WatchArgs,
    keys: bool,
    running: Option<Running>,
    runs: u64,
    /// A run to start once the current one is over (queue policy, keys).
    queued: Option<Ask>,
    /// Changes seen since the last run started.
    changed: BTreeSet<(String, &'static str)>,
    settle_until: Option<Instant>,
    /// The last plan run (Enter reruns it).
    last: Option<RunPlan>,
    /// `-k` filter set with `p`.
    filter: Option<String>,
    /// Typing a filter after `p`.
    typing: Option<String>,
}

fn kind_word(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Added => "added",
        ChangeKind::Modified => "modified",
        ChangeKind::Deleted => "deleted",
    }
}

fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Local time needs the time zone database; the hour in UTC is enough
    // to tell runs apart.
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

impl Watch<'_> {
    fn help(&self) -> &'static str {
        if self.keys {
            "a all · f failed · Enter rerun · p filter · c clear · q quit"
        } else {
            "Ctrl-C to stop"
        }
    }

    fn say(&self, line: &str) {
        println!("── {line}");
    }

    fn waiting(&self) {
        let filter = self
            .filter
            .as_ref()
            .map(|f| format!(" (filter: -k {f})"))
            .unwrap_or_default();
        self.say(&format!("waiting for changes{filter} · {}", self.help()));
    }

    fn describe_changes(&mut self) -> String {
        let files: Vec<String> = std::mem::take(&mut self.changed)
            .into_iter()
            .map(|(path, kind)| format!("{path} ({kind})"))
            .collect();
        match files.len() {
            0 => String::new(),
            1..=3 => files.join(", "),
            n => format!("{}, and {} more", files[..3].join(", "), n - 3),
        }
    }

    fn start(&mut self, ask: Ask, why: &str) {
        let scope = match (&ask, &self.last) {
            (Ask::Rerun, Some(_)) => None,
            (Ask::Rerun, None) => Some(Scope::Affected),
            (Ask::Scope(scope), _) => Some(scope.clone()),
        };
        let plan = match scope {
            None => Plan::Run(self.last.clone().expect("checked above")),
            Some(scope) => {
                let planned = connect::connect(&self.layout)
                    .and_then(|mut conn| self.runner.plan(&mut conn, &scope));
                match planned {
                    Ok(plan) => plan,
                    Err(e) => {
                        self.say(&format!("{}: cannot ask the daemon: {e}", clock()));
                        self.waiting();
                        return;
                    }
                }
            }
        };
        let changes = self.describe_changes();
        let prefix = if changes.is_empty() {
            format!("{} · {why}", clock())
        } else {
            format!("{} · {why}: {changes}", clock())
        };
        let plan = match plan {
            Plan::Nothing(line) => {
                self.say(&format!("{prefix} · {}", line.trim_start_matches("tim: ")));
                self.waiting();
                return;
            }
            Plan::Run(plan) => plan,
        };
        self.say(&format!(
            "{prefix} · {}",
            plan.summary.trim_start_matches("tim: ")
        ));
        let extra = self
            .runner
            .watch_args(&self.args.extra, self.filter.as_deref());
        let command = match self.runner.command(&plan, &extra) {
            Ok(mut c) => {
                c.stdin(std::process::Stdio::null());
                c
            }
            Err(e) => {
                self.say(&format!("cannot start the tests: {e}"));
                self.waiting();
                return;
            }
        };
        match spawn_group(command) {
            Ok(child) => {
                let pid = child.id();
                self.runs += 1;
                let n = self.runs;
                self.last = Some(plan.clone());
                self.running = Some(Running {
                    n,
                    child,
                    plan,
                    started: Instant::now(),
                });
                // This thread only learns when the child exits; the loop
                // reaps it.
                let tx = self.tx.clone();
                std::thread::spawn(move || {
                    let code = wait_pid(pid);
                    let _ = tx.send(Input::RunDone(n, code));
                });
            }
            Err(e) => {
                self.say(&format!("cannot start the tests: {e}"));
                self.waiting();
            }
        }
    }

    fn finish(&mut self, n: u64, code: Option<i32>) {
        // A run stopped for a restart reports too; only the current counts.
        if self.running.as_ref().is_none_or(|r| r.n != n) {
            return;
        }
        let Some(mut running) = self.running.take() else {
            return;
        };
        let _ = running.child.try_wait();
        let took = running.started.elapsed().as_secs_f64();
        let verdict = match code.map(|c| self.runner.exit_code(&running.plan, c)) {
            Some(exit::OK) => "passed".to_owned(),
            Some(exit::TESTS_FAILED) => "FAILED".to_owned(),
            Some(exit::INTERRUPTED) => "interrupted".to_owned(),
            Some(c) => format!("ended with exit code {c}"),
            None => "stopped".to_owned(),
        };
        self.say(&format!("{verdict} in {took:.2}s"));
        match self.queued.take() {
            Some(ask) => self.start(ask, "queued"),
            None => self.waiting(),
        }
    }

    /// Starts a run, or, while one runs, queues it or restarts.
    fn request(&mut self, ask: Ask, why: &str, restart: bool) {
        if self.running.is_none() {
            self.start(ask, why);
            return;
        }
        if restart {
            if let Some(mut running) = self.running.take() {
                stop_group(&mut running.child, STOP_GRACE);
                self.say("stopped the running tests to start over");
            }
            self.start(ask, why);
        } else {
            // Changes queue "affected"; a key asked for since wins over it.
            let affected = Ask::Scope(Scope::Affected);
            if self.queued.is_none() || ask != affected {
                self.queued = Some(ask);
            }
            self.say(&format!("{why}: queued until the running tests finish"));
        }
    }

    fn key(&mut self, key: u8) -> bool {
        if let Some(buffer) = &mut self.typing {
            match key {
                b'\n' | b'\r' => {
                    let pattern = std::mem::take(buffer);
                    self.typing = None;
                    println!();
                    self.filter = (!pattern.trim().is_empty()).then(|| pattern.trim().to_owned());
                    self.request(Ask::Scope(Scope::Affected), "filter", false);
                }
                0x1b => {
                    self.typing = None;
                    println!();
                    self.waiting();
                }
                0x7f | 0x08 if buffer.pop().is_some() => print!("\u{8} \u{8}"),
                c if c.is_ascii_graphic() || c == b' ' => {
                    buffer.push(c as char);
                    print!("{}", c as char);
                }
                _ => {}
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
            return true;
        }
        match key {
            b'q' => return false,
            b'a' => self.request(Ask::Scope(Scope::All), "all tests", false),
            b'f' => self.request(Ask::Scope(Scope::Failed), "failed tests", false),
            b'\n' | b'\r' => self.request(Ask::Rerun, "rerun", false),
            b'c' => {
                self.filter = None;
                self.say("filter cleared");
                if self.running.is_none() {
                    self.waiting();
                }
            }
            b'p' => {
                use std::io::Write;
                print!("── filter (a pytest -k expression, Enter to apply, Esc to cancel): ");
                let _ = std::io::stdout().flush();
                self.typing = Some(String::new());
            }
            _ => {}
        }
        true
    }

    fn run(mut self, rx: Receiver<Input>) -> u8 {
        self.start(Ask::Scope(Scope::Affected), "start");
        loop {
            let input = match self.settle_until {
                Some(until) => {
                    match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                        Ok(input) => Some(input),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => return exit::INTERNAL,
                    }
                }
                None => match rx.recv() {
                    Ok(input) => Some(input),
                    Err(_) => return exit::INTERNAL,
                },
            };
            match input {
                None => {
                    self.settle_until = None;
                    let restart = self.args.on_change == OnChange::Restart;
                    self.request(Ask::Scope(Scope::Affected), "changed", restart);
                }
                Some(Input::Changed { files, fresh }) => {
                    if fresh {
                        self.changed
                            .insert(("everything may have changed".into(), "rescan"));
                    }
                    for f in files {
                        self.changed.insert((f.path, kind_word(f.kind)));
                    }
                    self.settle_until = Some(Instant::now() + SETTLE);
                }
                Some(Input::DaemonLost(why)) => {
                    self.say(&format!("lost the daemon ({why}); reconnecting"));
                }
                Some(Input::DaemonBack { restarted }) => {
                    // Changes made while no subscription was open were not
                    // reported: ask what is affected now.
                    if restarted {
                        self.say(
                            "the daemon restarted: anything may have changed until it has rescanned the tree; checking",
                        );
                    } else {
                        self.say("reconnected to the daemon; checking what changed meanwhile");
                    }
                    self.request(Ask::Scope(Scope::Affected), "reconnected", false);
                }
                Some(Input::Key(key)) => {
                    if !self.key(key) {
                        self.stop_child();
                        return exit::OK;
                    }
                }
                Some(Input::RunDone(n, code)) => self.finish(n, code),
                Some(Input::Signal) => {
                    self.stop_child();
                    return exit::INTERRUPTED;
                }
            }
        }
    }

    fn stop_child(&mut self) {
        if let Some(mut running) = self.running.take() {
            stop_group(&mut running.child, STOP_GRACE);
            self.say("stopped the running tests");
        }
    }
}

/// Blocks until process `pid` (our child) exits; its exit code, or `None`
/// when a signal ended it. Uses `waitid` with `WNOWAIT`, so the `Child`
/// owner can still reap it.
fn wait_pid(pid: u32) -> Option<i32> {
    // SAFETY: waitid on our own child with a zeroed siginfo we own.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        loop {
            let r = libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            );
            if r == 0 {
                break;
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return None;
            }
        }
        if info.si_code == libc::CLD_EXITED {
            Some(info.si_status())
        } else {
            None
        }
    }
}

/// `tim watch`.
pub fn watch(layout: &Layout, runner: &mut dyn Runner, args: WatchArgs) -> anyhow::Result<u8> {
    // Subscribed before anything runs, so no save after this is missed (and
    // a daemon that cannot be reached fails the command at once).
    let first = subscribed(layout)?;
    let (tx, rx) = channel();
    let keys = term::KeyMode::enable();
    if keys.is_some() {
        let keys_tx = tx.clone();
        term::read_keys(move |key| keys_tx.send(Input::Key(key)).is_ok());
    }
    let signal_tx = tx.clone();
    term::on_interrupt(move |_| {
        let _ = signal_tx.send(Input::Signal);
    })
    .map_err(|e| ClientError::io("cannot handle Ctrl-C", e))?;
    subscribe(layout.clone(), first, tx.clone());
    let watch = Watch {
        runner,
        layout: layout.clone(),
        tx,
        args,
        keys: keys.is_some(),
        running: None,
        runs: 0,
        queued: None,
        changed: BTreeSet::new(),
        settle_until: None,
        last: None,
        filter: None,
        typing: None,
    };
    let code = watch.run(rx);
    drop(keys);
    Ok(code)
}
