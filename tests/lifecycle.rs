//! Starting, sharing, replacing and stopping the daemon.

use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Barrier};

#[test]
fn first_command_starts_a_private_daemon() {
    let p = Project::with_files(&[("pkg/a.py", "x = 1\n"), ("pkg/b.py", "y = 2\n")]);
    assert!(p.daemon_processes().is_empty());
    let status = p.status();
    assert_eq!(status["tracked_files"], 2, "{status}");
    assert_eq!(status["root"], p.root.display().to_string());
    assert_eq!(status["watcher"]["mode"], "native");
    assert_eq!(status["last_run"], serde_json::Value::Null);
    let pid = status["pid"].as_u64().unwrap() as u32;
    assert_eq!(p.daemon_processes(), [pid]);
    assert_eq!(p.daemon_pid(), Some(pid));

    // State: .tim with its own .gitignore; runtime dir 0700, socket 0600.
    assert_eq!(
        std::fs::read_to_string(p.path(".tim/.gitignore")).unwrap(),
        "*\n"
    );
    let runtime_mode = std::fs::metadata(&p.runtime).unwrap().permissions().mode();
    assert_eq!(
        runtime_mode & 0o777,
        0o700,
        "runtime dir mode {runtime_mode:o}"
    );
    let socket = p.socket();
    assert!(socket.starts_with(&p.runtime));
    let socket_mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(socket_mode & 0o777, 0o600, "socket mode {socket_mode:o}");

    // A second command reuses the same daemon.
    assert_eq!(p.status()["pid"].as_u64().unwrap() as u32, pid);
    let log = std::fs::read_to_string(p.path(".tim/daemon.log")).unwrap();
    assert!(log.contains("timd starting"), "{log}");
}

#[test]
fn clients_starting_at_once_end_with_one_daemon() {
    let p = Arc::new(Project::with_files(&[("a.py", "")]));
    let n = 6;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let p = p.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut cmd = p.tim_cmd(&["status", "--json"]);
                barrier.wait();
                let out = cmd.output().unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                v["pid"].as_u64().unwrap() as u32
            })
        })
        .collect();
    let pids: Vec<u32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(pids.iter().all(|&pid| pid == pids[0]), "{pids:?}");
    assert_eq!(p.daemon_processes(), [pids[0]]);
}

#[test]
fn idle_daemon_exits_and_a_subscription_keeps_it_alive() {
    let mut p = Project::with_files(&[("a.py", "")]);
    p.env("TIM_IDLE_TIMEOUT", "1s");
    let lock = p.path(".tim/daemon.lock");

    // Nobody asks anything: it exits on its own, cleanly.
    p.tim_ok(&["daemon", "start"]);
    let pid = p.daemon_pid().unwrap();
    wait_lock_free(&lock);
    wait_gone(pid);
    let log = std::fs::read_to_string(p.path(".tim/daemon.log")).unwrap();
    assert!(log.contains("idle timeout reached"), "{log}");
    assert!(!p.path(".tim/daemon.json").exists(), "pid file removed");

    // With a subscription open it stays, and still reports changes, past
    // several idle periods; once the subscriber leaves it exits.
    p.tim_ok(&["daemon", "start"]);
    let pid = p.daemon_pid().unwrap();
    let mut sub = p.raw();
    sub.hello();
    let subscribed = sub.request(2, "subscribe", serde_json::json!({}));
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    // An observation window for a negative property (no idle exit while
    // subscribed); nothing below depends on how long it lasts.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(
        alive(pid),
        "the daemon exited while a subscription was open"
    );
    p.write("b.py", "new");
    let note = sub.recv().expect("a notification");
    assert_eq!(note["type"], "files_changed", "{note}");
    assert_eq!(note["id"], 2);
    assert_eq!(note["data"]["files"][0]["path"], "b.py");
    assert_eq!(note["data"]["files"][0]["kind"], "added");
    drop(sub);
    wait_lock_free(&lock);
    wait_gone(pid);
}

#[test]
fn newer_client_replaces_an_older_daemon() {
    let mut p = Project::with_files(&[("a.py", "")]);
    p.env("TIM_TEST_PROTOCOL", "0.9");
    let old = p.status();
    assert_eq!(old["protocol"]["minor"], 9);
    let old_pid = old["pid"].as_u64().unwrap() as u32;

    p.env("TIM_TEST_PROTOCOL", "1.0");
    let out = p.tim(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("replaced the running timd") && stderr.contains("protocol 0.9"),
        "{stderr}"
    );
    let new: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(new["protocol"]["major"], 1);
    assert_eq!(new["protocol"]["minor"], 0);
    assert_ne!(new["pid"].as_u64().unwrap() as u32, old_pid);
    wait_gone(old_pid);
    assert_eq!(p.daemon_processes().len(), 1);
}

#[test]
fn older_client_refuses_a_newer_daemon_and_says_how_to_fix_it() {
    let mut p = Project::with_files(&[("a.py", "")]);
    p.env("TIM_TEST_PROTOCOL", "2.0");
    let pid = p.status()["pid"].as_u64().unwrap() as u32;

    p.env("TIM_TEST_PROTOCOL", "1.0");
    let out = p.tim(&["status"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exit code for an incompatible daemon"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("newer than this tim") && stderr.contains("tim daemon stop"),
        "{stderr}"
    );
    assert!(
        alive(pid),
        "an older client must not stop a newer daemon on its own"
    );

    // The fix it suggests works.
    let stopped = p.tim_ok(&["daemon", "stop"]);
    assert!(stopped.contains(&format!("pid {pid}")), "{stopped}");
    wait_gone(pid);
    assert_eq!(p.status()["protocol"]["major"], 1);
}

#[test]
fn stop_status_and_restart() {
    let p = Project::with_files(&[("a.py", "")]);
    let out = p.tim(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(8), "not running");
    assert!(
        p.daemon_processes().is_empty(),
        "daemon status must not start one"
    );

    let started = p.tim_ok(&["daemon", "start"]);
    let pid = p.daemon_pid().unwrap();
    assert!(started.contains(&pid.to_string()), "{started}");
    let json = p.tim_json(&["daemon", "status", "--json"]);
    assert_eq!(json["running"], true);
    assert_eq!(json["pid"], pid);

    p.tim_ok(&["daemon", "restart"]);
    let new_pid = p.daemon_pid().unwrap();
    assert_ne!(new_pid, pid);
    wait_gone(pid);

    p.tim_ok(&["daemon", "stop"]);
    wait_gone(new_pid);
    assert!(!p.path(".tim/daemon.json").exists());
    assert!(!p.socket_path_exists(), "socket removed on clean stop");
    // The WAL was checkpointed: the database file alone holds the data.
    let wal = p.path(".tim/tim.db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
    let stopped_again = p.tim_ok(&["daemon", "stop"]);
    assert!(
        stopped_again.contains("no daemon is running"),
        "{stopped_again}"
    );
}

#[test]
fn crashed_daemon_leftovers_are_cleaned_up() {
    let p = Project::with_files(&[("a.py", "")]);
    p.tim_ok(&["daemon", "start"]);
    let pid = p.daemon_pid().unwrap();
    let socket = p.socket();
    kill(pid, libc::SIGKILL);
    wait_lock_free(&p.path(".tim/daemon.lock"));
    assert!(socket.exists(), "SIGKILL leaves the socket file behind");
    assert!(p.path(".tim/daemon.json").exists(), "and the pid file");

    let out = p.tim(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(8));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("stale pid file") && text.contains(&pid.to_string()),
        "{text}"
    );
    assert!(!p.path(".tim/daemon.json").exists());

    // The stale socket does not block a new daemon.
    let status = p.status();
    assert_ne!(status["pid"].as_u64().unwrap() as u32, pid);
    assert_eq!(status["tracked_files"], 1);
}

#[test]
fn a_second_daemon_for_the_same_root_refuses_to_start() {
    let p = Project::with_files(&[("a.py", "")]);
    p.tim_ok(&["daemon", "start"]);
    let (status, stderr) = wait_exit(p.spawn_foreground_daemon());
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("already running"), "{stderr}");
    assert_eq!(p.daemon_processes().len(), 1);
}

impl Project {
    fn socket_path_exists(&self) -> bool {
        std::fs::read_dir(&self.runtime)
            .map(|d| {
                d.flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "sock"))
            })
            .unwrap_or(false)
    }
}
