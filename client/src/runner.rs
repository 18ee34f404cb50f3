//! The interface between tim's commands (`tim run`, `tim watch`) and a test
//! runner (pytest today; cargo-nextest later). A runner turns "what should
//! run" into a plan by asking the daemon, and a plan into a command; the
//! commands own everything the user sees.

use crate::connect::Connection;
use crate::error::ClientError;
use std::process::{Child, Command};

/// What a run should cover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The tests affected by changes since they last ran.
    Affected,
    /// Every test.
    All,
    /// The tests whose last run failed.
    Failed,
}

/// What to execute, decided before anything starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing needs to run; the line says why.
    Nothing(String),
    Run(RunPlan),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPlan {
    /// Select (deselect what is unaffected) or run every collected test.
    pub select: bool,
    /// Files or test ids to hand the runner; empty: its default discovery.
    pub targets: Vec<String>,
    /// One line: how many tests and why.
    pub summary: String,
    /// One line for after the run (`tim run` prints it): tests run of those
    /// known, and the time saved by not running the others.
    pub footer: Option<String>,
}

pub trait Runner {
    /// Asks the daemon what `scope` means now.
    fn plan(&mut self, conn: &mut Connection, scope: &Scope) -> Result<Plan, ClientError>;

    /// The command that executes `plan`, with the user's extra arguments.
    fn command(&self, plan: &RunPlan, extra: &[String]) -> Result<Command, ClientError>;

    /// tim's exit code for the runner's.
    fn exit_code(&self, plan: &RunPlan, code: i32) -> u8;

    /// The runner's arguments for a `tim watch` run: the user's `extra`,
    /// the watch's name filter, and whatever makes the output compact.
    fn watch_args(&self, extra: &[String], filter: Option<&str>) -> Vec<String>;
}

/// Starts `command` in a process group of its own, so that the whole tree
/// it spawns (xdist workers) can be stopped at once.
pub fn spawn_group(mut command: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
    command.spawn()
}

/// Stops a child started by [`spawn_group`] and everything in its group:
/// SIGTERM, then SIGKILL if it has not exited after `grace`. Reaps it.
pub fn stop_group(child: &mut Child, grace: std::time::Duration) {
    let pgid = child.id() as i32;
    // SAFETY: signalling a process group we created.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if std::time::Instant::now() >= deadline => {
                // SAFETY: as above.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
                let _ = child.wait();
                break;
            }
            // Bounded wait for a process we just told to exit.
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    // Workers that outlived the leader still belong to the group.
    // SAFETY: as above; ESRCH when the group is already gone.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}
