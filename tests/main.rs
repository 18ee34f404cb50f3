//! tim's integration tests: one test binary (see client/Cargo.toml), real
//! `tim` and `timd` processes, real sockets and SQLite files, each test in
//! its own temp project with its own runtime directory.

mod support;

mod cache;
mod cargo;
mod history;
mod lifecycle;
mod parallel;
mod progress;
mod protocol;
mod pytest_runs;
mod pytest_selection;
mod store;
mod watch;
mod watcher;
