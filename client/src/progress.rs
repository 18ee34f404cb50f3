//! `tim run`'s progress display. **The only user of indicatif.**
//!
//! The runner reports finished tests on a pipe of its own (the pytest
//! plugin writes JSON lines, at most one every 50 ms, to the descriptor
//! named by `TIM_PROGRESS_FD`), with how long history says they take. The
//! runner's output comes through a second pipe, so that tim decides where
//! each byte goes and the display never cuts into the runner's lines:
//!
//! * **Bar** (stdout and stderr are terminals): a bar with done/total,
//!   failures and an ETA at the bottom; the runner's complete lines scroll
//!   above it, and its unfinished line (pytest's dots) is shown just above
//!   the bar until it ends. pytest sees a pipe, so it is told the terminal's
//!   width (`COLUMNS`) and, unless `NO_COLOR` is set, to keep its colours
//!   (`PY_COLORS=1`).
//! * **Lines** (anything else, e.g. CI logs): the runner's output goes
//!   through untouched, and a plain `tim: ...` line on stderr reports each
//!   tenth of the run, always at the start of a line.
//!
//! The ETA is the expected time of the tests not yet run, from history,
//! scaled by how the run has kept pace with history so far (which also
//! accounts for parallel workers).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The environment variable naming the progress pipe's descriptor.
pub const FD_ENV: &str = "TIM_PROGRESS_FD";

/// How a run shows its progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    Bar,
    Lines,
    /// No display: the runner inherits tim's stdout and stderr.
    Off,
}

impl Display {
    /// The display for this terminal, unless `off`.
    pub fn choose(off: bool) -> Display {
        if off {
            return Display::Off;
        }
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() && !dumb {
            Display::Bar
        } else {
            Display::Lines
        }
    }
}

/// `NO_COLOR` set to anything but the empty string (no-color.org).
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// One line of the progress pipe.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    /// The tests to run are known: how many, and their expected total time
    /// (absent without history).
    Start { tests: u64, seconds: Option<f64> },
    /// Tests finished since the last event: how many, how many failed
    /// (failed, error or xpassed), and their expected seconds.
    Done {
        count: u64,
        #[serde(default)]
        failed: u64,
        #[serde(default)]
        estimate: f64,
    },
}

enum Msg {
    Output(Vec<u8>),
    OutputEnd,
    Event(Event),
    EventsEnd,
    Exited(std::io::Result<ExitStatus>),
}

/// After the runner exits, how long tim still waits for the end of its
/// output, in all: a process the tests left behind may hold the pipe open
/// (and even keep writing) forever.
const AFTER_EXIT: Duration = Duration::from_millis(500);

/// Runs `command` with its output and progress going through `display`
/// (not `Off`); returns its exit status. Ctrl-C is left to the runner (it
/// reaches the whole foreground process group): tim keeps showing its
/// output until it ends.
pub fn run(mut command: Command, display: Display) -> std::io::Result<ExitStatus> {
    let (out_read, out_write) = std::io::pipe()?;
    let (events_read, events_write) = std::io::pipe()?;
    if display == Display::Bar {
        // One pipe for both, so their order survives.
        command.stderr(out_write.try_clone()?);
        if !no_color() {
            command.env("PY_COLORS", "1");
        }
        if let Some(columns) = terminal_columns() {
            command.env("COLUMNS", columns.to_string());
        }
    }
    command.stdout(out_write);
    let fd = events_write.as_raw_fd();
    command.env(FD_ENV, fd.to_string());
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: only fcntl, which is async-signal-safe, between fork and
        // exec: the child keeps the write end across exec (pipes are
        // created close-on-exec).
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = command.spawn()?;
    // The parent's copies of the write ends: only the child's remain, so
    // the reads below end when it (and whatever inherited them) is gone.
    drop(command);
    drop(events_write);
    let _interrupts = IgnoreInterrupts::new();

    let (tx, rx) = mpsc::channel();
    {
        let tx = tx.clone();
        std::thread::spawn(move || forward_output(out_read, &tx));
    }
    {
        let tx = tx.clone();
        std::thread::spawn(move || forward_events(events_read, &tx));
    }
    std::thread::spawn(move || {
        let _ = tx.send(Msg::Exited(child.wait()));
    });

    let mut view = View::new(display);
    let (mut output_open, mut events_open) = (true, true);
    let mut exited = None;
    let mut deadline: Option<std::time::Instant> = None;
    while output_open || events_open || exited.is_none() {
        let msg = if let Some(deadline) = deadline {
            match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                Ok(msg) => msg,
                Err(_) => break,
            }
        } else {
            match rx.recv() {
                Ok(msg) => msg,
                Err(_) => break,
            }
        };
        match msg {
            Msg::Output(bytes) => view.output(&bytes),
            Msg::OutputEnd => output_open = false,
            Msg::Event(event) => view.event(event),
            Msg::EventsEnd => events_open = false,
            Msg::Exited(status) => {
                exited = Some(status);
                deadline = Some(std::time::Instant::now() + AFTER_EXIT);
            }
        }
    }
    view.finish();
    exited.unwrap_or_else(|| Err(std::io::Error::other("lost track of the test runner")))
}

fn forward_output(mut from: std::io::PipeReader, tx: &mpsc::Sender<Msg>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if tx.send(Msg::Output(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = tx.send(Msg::OutputEnd);
}

fn forward_events(from: std::io::PipeReader, tx: &mpsc::Sender<Msg>) {
    use std::io::BufRead;
    for line in std::io::BufReader::new(from).lines() {
        let Ok(line) = line else { break };
        // A line tim cannot read is no reason to disturb the run.
        if let Ok(event) = serde_json::from_str::<Event>(&line)
            && tx.send(Msg::Event(event)).is_err()
        {
            return;
        }
    }
    let _ = tx.send(Msg::EventsEnd);
}

/// SIGINT and SIGQUIT ignored by tim while it exists: the terminal sends
/// them to the runner too, and the runner decides how to stop.
struct IgnoreInterrupts {
    old: [libc::sighandler_t; 2],
}

impl IgnoreInterrupts {
    fn new() -> IgnoreInterrupts {
        // SAFETY: replacing dispositions with SIG_IGN; restored on drop.
        unsafe {
            IgnoreInterrupts {
                old: [
                    libc::signal(libc::SIGINT, libc::SIG_IGN),
                    libc::signal(libc::SIGQUIT, libc::SIG_IGN),
                ],
            }
        }
    }
}

impl Drop for IgnoreInterrupts {
    fn drop(&mut self) {
        // SAFETY: restoring what `new` replaced.
        unsafe {
            libc::signal(libc::SIGINT, self.old[0]);
            libc::signal(libc::SIGQUIT, self.old[1]);
        }
    }
}

fn terminal_columns() -> Option<u16> {
    // SAFETY: TIOCGWINSZ fills a winsize we own.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        (libc::ioctl(std::io::stderr().as_raw_fd(), libc::TIOCGWINSZ, &mut size) == 0
            && size.ws_col > 0)
            .then_some(size.ws_col)
    }
}

/// Counts and the ETA, apart from how they are shown.
#[derive(Debug, Default)]
struct Tally {
    total: Option<u64>,
    done: u64,
    failed: u64,
    /// Expected seconds of the whole run, from history.
    expected: Option<f64>,
    /// Expected seconds of the tests done so far.
    expected_done: f64,
    started: Option<Instant>,
}

impl Tally {
    fn event(&mut self, event: Event) {
        match event {
            Event::Start { tests, seconds } => {
                self.total = Some(tests);
                self.expected = seconds.filter(|s| s.is_finite() && *s >= 0.0);
                self.started = Some(Instant::now());
            }
            Event::Done {
                count,
                failed,
                estimate,
            } => {
                self.done += count;
                self.failed += failed;
                if estimate.is_finite() && estimate > 0.0 {
                    self.expected_done += estimate;
                }
            }
        }
    }

    /// Seconds left: what history expects of the tests not yet run, at the
    /// pace the run has kept so far.
    fn eta(&self, elapsed: f64) -> Option<f64> {
        let expected = self.expected?;
        let remaining = (expected - self.expected_done).max(0.0);
        // Too little done to judge the pace: trust history.
        let pace = if self.expected_done >= 0.5 && elapsed > 0.0 {
            (elapsed / self.expected_done).clamp(0.1, 10.0)
        } else {
            1.0
        };
        Some(remaining * pace)
    }

    /// `12/40 tests · 1 failed · about 3.2s left`
    fn summary(&self, elapsed: f64) -> String {
        let mut s = match self.total {
            Some(total) => format!("{}/{total} tests", self.done),
            None => format!("{} tests", self.done),
        };
        if self.failed > 0 {
            s.push_str(&format!(" · {} failed", self.failed));
        }
        if let Some(eta) = self.eta(elapsed)
            && self.total.is_some_and(|t| self.done < t)
        {
            s.push_str(&format!(
                " · about {} left",
                crate::pytest::seconds_words(eta)
            ));
        }
        s
    }
}

struct View {
    display: Display,
    tally: Tally,
    bar: Option<ProgressBar>,
    /// Bar: the runner's current unfinished line, shown above the bar.
    partial: Vec<u8>,
    /// Lines: whether the runner's output is at the start of a line.
    at_line_start: bool,
    /// Lines: how many tests must be done for the next report.
    next_report: u64,
    report_due: bool,
    /// Lines: the "N tests to run" line is still to be printed (the start
    /// came while pytest's output was mid-line; tests may finish before
    /// the line does, and it must still come first).
    start_due: bool,
}

impl View {
    fn new(display: Display) -> View {
        View {
            display,
            tally: Tally::default(),
            bar: None,
            partial: Vec::new(),
            at_line_start: true,
            next_report: 0,
            report_due: false,
            start_due: false,
        }
    }

    fn elapsed(&self) -> f64 {
        self.tally
            .started
            .map_or(0.0, |s| s.elapsed().as_secs_f64())
    }

    fn output(&mut self, bytes: &[u8]) {
        match self.display {
            Display::Bar => {
                self.partial.extend_from_slice(bytes);
                if let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') {
                    let lines: Vec<u8> = self.partial.drain(..=end).collect();
                    self.write_out(&lines);
                }
                self.redraw();
            }
            _ => {
                // A due report goes after the last complete line of the
                // chunk (a pipe delivers many lines at once).
                let split = if self.report_due {
                    bytes.iter().rposition(|&b| b == b'\n').map(|i| i + 1)
                } else {
                    None
                };
                let (lines, rest) = bytes.split_at(split.unwrap_or(0));
                if !lines.is_empty() {
                    write_stdout(lines);
                    self.report();
                }
                write_stdout(rest);
                if let Some(&last) = bytes.last() {
                    self.at_line_start = last == b'\n';
                }
            }
        }
    }

    fn event(&mut self, event: Event) {
        let starting = matches!(event, Event::Start { .. });
        self.tally.event(event);
        match self.display {
            Display::Bar => {
                if starting && self.bar.is_none() {
                    self.bar = Some(new_bar(self.tally.total.unwrap_or(0)));
                }
                self.redraw();
            }
            _ => {
                let total = self.tally.total.unwrap_or(0);
                if starting {
                    self.next_report = total.div_ceil(10).max(1);
                    self.report_due = true;
                    self.start_due = true;
                } else if self.tally.done >= self.next_report && self.tally.done < total {
                    // The next tenth of the run.
                    while self.next_report <= self.tally.done {
                        self.next_report += total.div_ceil(10).max(1);
                    }
                    self.report_due = true;
                }
                if self.report_due && self.at_line_start {
                    self.report();
                }
            }
        }
    }

    /// Lines: one report line on stderr.
    fn report(&mut self) {
        self.report_due = false;
        let _ = std::io::stdout().flush();
        if std::mem::take(&mut self.start_due) {
            let total = self.tally.total.unwrap_or(0);
            match self.tally.expected {
                Some(s) => eprintln!(
                    "tim: {total} tests to run, about {} from history",
                    crate::pytest::seconds_words(s)
                ),
                None => eprintln!("tim: {total} tests to run"),
            }
        }
        if self.tally.done > 0 {
            eprintln!("tim: {}", self.tally.summary(self.elapsed()));
        }
    }

    fn write_out(&self, bytes: &[u8]) {
        match &self.bar {
            Some(bar) => bar.suspend(|| write_stdout(bytes)),
            None => write_stdout(bytes),
        }
    }

    fn redraw(&self) {
        let Some(bar) = &self.bar else { return };
        bar.set_position(self.tally.done);
        bar.set_prefix(self.tally.summary(self.elapsed()));
        let partial = String::from_utf8_lossy(&self.partial);
        let partial = partial.trim_end_matches('\r');
        if partial.is_empty() != bar.message().is_empty() {
            bar.set_style(style(!partial.is_empty()));
        }
        bar.set_message(partial.to_owned());
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            write_stdout(&rest);
            self.at_line_start = rest.last() == Some(&b'\n');
        }
        // A run that stopped early (pytest's summary says the rest).
        let stopped = self.tally.total.is_some_and(|t| self.tally.done < t);
        if self.display == Display::Lines && self.report_due && self.tally.done > 0 && stopped {
            if !self.at_line_start {
                write_stdout(b"\n");
            }
            self.report();
        }
    }
}

fn write_stdout(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (`tim run | head`) must not stop the run.
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}

fn new_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(style(false));
    // The ETA and the elapsed pace change without events.
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// The bar's look; with `partial`, the runner's unfinished line above it.
fn style(partial: bool) -> ProgressStyle {
    let bar = if no_color() {
        "{bar:30}"
    } else {
        "{bar:30.green/blue}"
    };
    let template = if partial {
        format!("{{wide_msg}}\n{bar} {{prefix}}")
    } else {
        format!("{bar} {{prefix}}")
    };
    ProgressStyle::with_template(&template)
        .expect("a valid template")
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_and_unknown_lines_do_not() {
        assert_eq!(
            serde_json::from_str::<Event>(r#"{"event":"start","tests":3,"seconds":1.5}"#).unwrap(),
            Event::Start {
                tests: 3,
                seconds: Some(1.5)
            }
        );
        assert_eq!(
            serde_json::from_str::<Event>(
                r#"{"event":"done","count":3,"failed":1,"estimate":0.5}"#
            )
            .unwrap(),
            Event::Done {
                count: 3,
                failed: 1,
                estimate: 0.5
            }
        );
        assert!(serde_json::from_str::<Event>(r#"{"event":"later"}"#).is_err());
    }

    #[test]
    fn the_eta_follows_history_then_the_runs_pace() {
        let mut t = Tally::default();
        t.event(Event::Start {
            tests: 4,
            seconds: Some(8.0),
        });
        assert_eq!(t.eta(0.0), Some(8.0), "nothing done: history alone");
        t.event(Event::Done {
            count: 2,
            failed: 0,
            estimate: 4.0,
        });
        // Half of the expected time done in a quarter of it: twice as fast.
        assert_eq!(t.eta(2.0), Some(2.0));
        t.event(Event::Done {
            count: 1,
            failed: 1,
            estimate: 2.0,
        });
        assert_eq!(t.failed, 1);
        assert_eq!(t.summary(3.0), "3/4 tests · 1 failed · about 1.0s left");
        let mut unknown = Tally::default();
        unknown.event(Event::Start {
            tests: 2,
            seconds: None,
        });
        assert_eq!(unknown.eta(1.0), None);
        assert_eq!(unknown.summary(1.0), "0/2 tests");
    }
}
