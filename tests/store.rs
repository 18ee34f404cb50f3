//! The SQLite store under crashes, corruption and version skew.

use crate::support::*;

fn sqlite(p: &Project) -> rusqlite::Connection {
    rusqlite::Connection::open(p.path(".tim/tim.db")).unwrap()
}

fn integrity(conn: &rusqlite::Connection) -> String {
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn sigkill_keeps_every_committed_record() {
    let p = Project::new();
    for i in 0..3000 {
        p.write(&format!("pkg{}/m{i}.py", i % 30), &format!("v = {i}\n"));
    }
    // Kill the daemon while its first scan is writing.
    p.tim_ok(&["daemon", "start"]);
    let pid = p.daemon_pid().unwrap();
    kill(pid, libc::SIGKILL);
    wait_gone(pid);
    {
        let conn = sqlite(&p);
        assert_eq!(integrity(&conn), "ok");
    }

    // A new daemon opens the same database and reconciles it with the disk.
    let clock = p.clock();
    assert_eq!(p.status()["tracked_files"], 3000);

    // Everything an answer has reported is committed: kill again, right
    // after the answer, and the records are there.
    p.write("pkg0/m0.py", "v = 'edited'\n");
    p.remove("pkg1/m1.py");
    let (changes, _) = p.changes_since(&clock);
    assert_eq!(
        changes,
        [
            ("modified".into(), "pkg0/m0.py".into()),
            ("deleted".into(), "pkg1/m1.py".into())
        ]
    );
    let pid = p.daemon_pid().unwrap();
    kill(pid, libc::SIGKILL);
    wait_gone(pid);
    {
        let conn = sqlite(&p);
        assert_eq!(integrity(&conn), "ok");
        let hash: Vec<u8> = conn
            .query_row("SELECT hash FROM file WHERE path = 'pkg0/m0.py'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(hash, blake3::hash(b"v = 'edited'\n").as_bytes());
        let deleted: Option<Vec<u8>> = conn
            .query_row("SELECT hash FROM file WHERE path = 'pkg1/m1.py'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(deleted, None, "tombstone committed");
    }
    // The clock survived too: the old clock is still understood.
    let (again, _) = p.changes_since(&clock);
    assert_eq!(again, changes);
}

#[test]
fn a_corrupt_database_is_moved_aside_and_rebuilt() {
    let p = Project::with_files(&[("a.py", "")]);
    std::fs::create_dir_all(p.path(".tim")).unwrap();
    let garbage = b"definitely not SQLite\n".repeat(500);
    std::fs::write(p.path(".tim/tim.db"), &garbage).unwrap();

    let out = p.tim(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("corrupt") && stderr.contains("moved to"),
        "{stderr}"
    );
    let moved: Vec<_> = std::fs::read_dir(p.path(".tim"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("tim.db.corrupt-")
        })
        .collect();
    assert_eq!(moved.len(), 1);
    assert!(
        std::fs::read(moved[0].path()).unwrap() == garbage,
        "the corrupt file is kept as it was"
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["tracked_files"], 1);
    assert!(
        status["warnings"][0].as_str().unwrap().contains("corrupt"),
        "status keeps reporting the repair: {status}"
    );
    assert_eq!(integrity(&sqlite(&p)), "ok");
}

#[test]
fn a_database_from_a_newer_tim_is_refused_and_left_alone() {
    let p = Project::with_files(&[("a.py", "")]);
    std::fs::create_dir_all(p.path(".tim")).unwrap();
    {
        let conn = sqlite(&p);
        conn.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 999;")
            .unwrap();
    }
    let digest = || blake3::hash(&std::fs::read(p.path(".tim/tim.db")).unwrap());
    let before = digest();
    let out = p.tim(&["status"]);
    assert_eq!(out.status.code(), Some(6));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("newer tim") && stderr.contains("schema version 999"),
        "{stderr}"
    );
    assert_eq!(digest(), before, "the database was modified");
    // The daemon that refused it exits on its own.
    for pid in p.daemon_processes() {
        wait_gone(pid);
    }
}
