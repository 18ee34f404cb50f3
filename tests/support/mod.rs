//! Test support: real projects in temp dirs, real `tim`/`timd` processes,
//! each with its own runtime directory, never the user's.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const TIM: &str = env!("CARGO_BIN_EXE_tim");
pub const TIMD: &str = env!("CARGO_BIN_EXE_timd");

/// Upper bound for waiting on an event that should come in milliseconds. It
/// only turns a hang into a failure; no test passes by waiting for it.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Project {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub runtime: PathBuf,
    env: Vec<(String, String)>,
}

impl Project {
    /// An empty project: a root with `.git` (so it is a root and
    /// `.gitignore` applies) and a private runtime directory.
    pub fn new() -> Project {
        let dir = tempfile::Builder::new()
            .prefix("tim-it-")
            .tempdir()
            .unwrap();
        let base = dir.path().canonicalize().unwrap();
        let root = base.join("proj");
        std::fs::create_dir_all(root.join(".git")).unwrap();
        Project {
            _dir: dir,
            root,
            runtime: base.join("run"),
            env: Vec::new(),
        }
    }

    pub fn with_files(files: &[(&str, &str)]) -> Project {
        let p = Project::new();
        for (path, text) in files {
            p.write(path, text);
        }
        p
    }

    /// Sets an environment variable for every later tim/timd this project runs.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn remove(&self, rel: &str) {
        let p = self.path(rel);
        if p.is_dir() {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            std::fs::remove_file(p).unwrap();
        }
    }

    pub fn rename(&self, from: &str, to: &str) {
        let to = self.path(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::rename(self.path(from), to).unwrap();
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.root)
            .env("TIM_RUNTIME_DIR", &self.runtime)
            .env_remove("TIM_LOG")
            .env_remove("TIM_IDLE_TIMEOUT")
            .env_remove("TIM_TEST_PROTOCOL")
            .env("TIM_DAEMON", TIMD);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// A `tim` command in the project root, with this project's environment.
    pub fn tim_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(TIM);
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    pub fn tim(&self, args: &[&str]) -> Output {
        self.tim_cmd(args).output().unwrap()
    }

    /// Runs tim and requires success; returns stdout.
    pub fn tim_ok(&self, args: &[&str]) -> String {
        let out = self.tim(args);
        assert!(
            out.status.success(),
            "tim {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn tim_json(&self, args: &[&str]) -> Value {
        let text = self.tim_ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("tim {args:?}: {e}: {text}"))
    }

    pub fn status(&self) -> Value {
        self.tim_json(&["status", "--json"])
    }

    pub fn clock(&self) -> String {
        self.status()["clock"].as_str().unwrap().to_owned()
    }

    /// `tim changes --since CLOCK` as `(kind, path)` pairs, and the new clock.
    pub fn changes_since(&self, clock: &str) -> (Vec<(String, String)>, String) {
        let v = self.tim_json(&["changes", "--since", clock, "--json"]);
        assert_eq!(v["fresh_instance"], false, "unexpected fresh instance: {v}");
        let files = v["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["kind"].as_str().unwrap().to_owned(),
                    f["path"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        (files, v["clock"].as_str().unwrap().to_owned())
    }

    /// `timd --foreground` as a child of the test.
    pub fn spawn_foreground_daemon(&self) -> Child {
        self.command(TIMD)
            .args(["--foreground", "--root"])
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn daemon_info(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.path(".tim/daemon.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon_info()
            .and_then(|i| i["pid"].as_u64())
            .map(|p| p as u32)
    }

    pub fn socket(&self) -> PathBuf {
        PathBuf::from(
            self.daemon_info().expect("daemon.json")["socket"]
                .as_str()
                .unwrap(),
        )
    }

    /// Every live `timd` process serving this root.
    pub fn daemon_processes(&self) -> Vec<u32> {
        let root = self.root.display().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_timd = args.first().is_some_and(|a| a.ends_with("timd"));
            if is_timd && args.contains(&root) && !is_zombie(pid) {
                found.push(pid);
            }
        }
        found
    }

    pub fn raw(&self) -> RawClient {
        RawClient::connect(&self.socket())
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        // Never leave a daemon behind, whatever the test did.
        for pid in self.daemon_processes() {
            kill(pid, libc::SIGKILL);
        }
    }
}

pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

pub fn kill(pid: u32, signal: i32) {
    // SAFETY: sending a signal to a pid has no memory-safety implications.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Waits for a child to exit, failing the test after [`PATIENCE`].
pub fn wait_exit(mut child: Child) -> (std::process::ExitStatus, String) {
    let mut stderr = child.stderr.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stderr.as_mut() {
            let _ = std::io::Read::read_to_string(s, &mut text);
        }
        let status = child.wait();
        let _ = tx.send((status, text));
    });
    let (status, text) = rx
        .recv_timeout(PATIENCE)
        .expect("the process did not exit in time");
    (status.unwrap(), text)
}

/// Waits until a process that is not our child is gone, by watching its
/// `/proc` entry through inotify-free means: the daemon's lock. A process
/// holding `lock` exclusively is alive; acquiring it blocks until it exits.
pub fn wait_lock_free(lock: &Path) {
    let file = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock)
        .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = file.lock();
        // Release before reporting: the caller's next step may be a process
        // that must find the lock free.
        drop(file);
        let _ = tx.send(r.is_ok());
    });
    assert!(
        rx.recv_timeout(PATIENCE)
            .expect("the daemon did not exit in time"),
        "locking failed"
    );
}

/// A hand-driven protocol client, for frames `tim` would never send.
pub struct RawClient {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl RawClient {
    pub fn connect(socket: &Path) -> RawClient {
        let stream = UnixStream::connect(socket).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        RawClient { stream, reader }
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send(&mut self, frame: &Value) {
        let mut line = serde_json::to_vec(frame).unwrap();
        line.push(b'\n');
        self.stream.write_all(&line).unwrap();
    }

    /// The next frame, or `None` when the daemon closed the connection.
    pub fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("reading from the daemon: {e}"),
        }
    }

    pub fn hello(&mut self) -> Value {
        self.send(&serde_json::json!({
            "id": 1, "type": "hello",
            "data": {"protocol": {"major": 1, "minor": 0}, "client": "test", "client_version": "0"}
        }));
        let reply = self.recv().expect("hello answered");
        assert_eq!(reply["type"], "hello", "{reply}");
        reply
    }

    pub fn request(&mut self, id: u64, kind: &str, data: Value) -> Value {
        self.send(&serde_json::json!({"id": id, "type": kind, "data": data}));
        self.recv().expect("an answer")
    }
}

/// Waits until process `pid` (not necessarily our child) has exited, on the
/// kernel's exit notification (a pidfd becomes readable), failing the test
/// after [`PATIENCE`].
pub fn wait_gone(pid: u32) {
    // SAFETY: plain syscalls on integers and a pollfd we own.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) as libc::c_int;
        if fd < 0 {
            // ESRCH: already gone (and reaped).
            return;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ready = libc::poll(&mut pfd, 1, PATIENCE.as_millis() as libc::c_int);
        libc::close(fd);
        assert_eq!(ready, 1, "process {pid} did not exit in time");
    }
}

/// The Python interpreter (with pytest installed) the pytest tests use:
/// `$TIM_TEST_PYTHON`, which `scripts/test` sets up.
pub fn test_python() -> String {
    std::env::var("TIM_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "the pytest integration tests need a Python with pytest: run scripts/test, \
             or set TIM_TEST_PYTHON=/path/to/venv/bin/python"
        )
    })
}

/// A Python >= 3.12 with pytest, where the plugin records with
/// `sys.monitoring`: `$TIM_TEST_PYTHON_MONITORING`, which `scripts/test`
/// sets up (`scripts/python313`).
pub fn test_python_monitoring() -> String {
    std::env::var("TIM_TEST_PYTHON_MONITORING").unwrap_or_else(|_| {
        panic!(
            "the sys.monitoring tests need a Python >= 3.12 with pytest: run scripts/test, \
             or set TIM_TEST_PYTHON_MONITORING (scripts/python313 prints one)"
        )
    })
}

/// A child process whose output arrives line by line on a channel, so a
/// test can wait for the line it expects (the event), with [`PATIENCE`] as
/// the only timeout.
pub struct Lines {
    pub child: Child,
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
    /// Where keys go (a pty's master side, or the child's stdin).
    input: Option<Box<dyn Write + Send>>,
}

impl Lines {
    fn reading(
        child: Child,
        reader: impl std::io::Read + Send + 'static,
        input: Option<Box<dyn Write + Send>>,
    ) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = strip_ansi(&String::from_utf8_lossy(&line)).replace('\r', "");
                        if tx.send(text.trim_end_matches('\n').to_owned()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Lines {
            child,
            rx,
            seen: Vec::new(),
            input,
        }
    }

    /// Spawns `cmd` with stdout and stderr merged into one pipe.
    pub fn pipe(mut cmd: Command) -> Lines {
        let (reader, writer) = std::io::pipe().unwrap();
        cmd.stdout(writer.try_clone().unwrap()).stderr(writer);
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().unwrap();
        drop(cmd);
        Lines::reading(child, reader, None)
    }

    /// Spawns `cmd` on a new pseudo-terminal (its controlling terminal), as
    /// if run interactively: keys written with [`Lines::keys`] reach it.
    pub fn pty(mut cmd: Command) -> Lines {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty fills two descriptors we then own.
        unsafe {
            let size = libc::winsize {
                ws_row: 40,
                ws_col: 120,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            assert_eq!(
                libc::openpty(
                    &mut master,
                    &mut slave,
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    &size
                ),
                0
            );
        }
        // SAFETY: fresh descriptors from openpty.
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        let master = unsafe { std::fs::File::from_raw_fd(master) };
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: setsid and TIOCSCTTY are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(cmd);
        let reader = master.try_clone().unwrap();
        Lines::reading(child, reader, Some(Box::new(master)))
    }

    /// Waits for a line containing `needle`; returns it. The lines before
    /// it are kept in `seen`.
    pub fn expect(&mut self, needle: &str) -> String {
        loop {
            match self.rx.recv_timeout(PATIENCE) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The lines seen since `mark` (an index into `seen`).
    pub fn since(&self, mark: usize) -> &[String] {
        &self.seen[mark..]
    }

    pub fn keys(&mut self, bytes: &[u8]) {
        let input = self.input.as_mut().expect("keys need a pty");
        input.write_all(bytes).unwrap();
        input.flush().unwrap();
    }

    /// Waits for the process to exit and its output to end; its status and
    /// every line it printed.
    pub fn finish(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = self.wait_child();
        // The reader ends at the end of the output: then the channel closes.
        while let Ok(line) = self.rx.recv_timeout(PATIENCE) {
            self.seen.push(line);
        }
        (status, std::mem::take(&mut self.seen))
    }

    /// Waits for the process to exit; its status.
    pub fn wait(mut self) -> std::process::ExitStatus {
        self.wait_child()
    }

    fn wait_child(&mut self) -> std::process::ExitStatus {
        let (tx, rx) = mpsc::channel();
        let mut child = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap());
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        rx.recv_timeout(PATIENCE)
            .expect("the process did not exit in time")
            .unwrap()
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        // A failing test must not leave its `tim watch` running (it would
        // restart daemons for a deleted project).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every live process whose working directory is `dir` (to find leftover
/// test runners).
pub fn processes_in(dir: &Path) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd == dir)
            && !is_zombie(pid)
        {
            found.push(pid);
        }
    }
    found
}

/// Removes terminal escape sequences (colors, cursor movement).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
            continue;
        }
        out.push(c);
    }
    out
}

impl Project {
    /// A Python project run with the test interpreter, recorded with
    /// `tim run --all`, which must end with `expected_exit`.
    pub fn recorded_python(files: &[(&str, &str)], expected_exit: i32) -> Project {
        let mut p = Project::with_files(files);
        p.env("TIM_PYTHON", &test_python());
        let out = p.tim(&["run", "--all"]);
        assert_eq!(
            out.status.code(),
            Some(expected_exit),
            "the recording run:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        p
    }
}

/// The files of a `tim affected --json` answer's `collect` list.
/// The ids `tim affected --json` lists.
pub fn affected_ids(p: &Project) -> Vec<String> {
    let v = p.tim_json(&["affected", "--json"]);
    v["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

pub fn collect_files(affected: &Value) -> Vec<String> {
    affected["collect"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["file"].as_str().unwrap().to_owned())
        .collect()
}

/// The dependency targets of a `tim why --json` answer.
pub fn why_targets(why: &Value) -> Vec<String> {
    why["deps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["target"].as_str().unwrap().to_owned())
        .collect()
}
