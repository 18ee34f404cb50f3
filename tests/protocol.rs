//! Frames `tim` would never send: the daemon answers each with a clear error
//! (or closes that one connection) and keeps serving everyone else.

use crate::support::*;
use serde_json::json;

fn started() -> Project {
    let p = Project::with_files(&[("a.py", "")]);
    p.tim_ok(&["daemon", "start"]);
    p
}

fn error_code(frame: &serde_json::Value) -> &str {
    assert_eq!(frame["type"], "error", "{frame}");
    frame["data"]["code"].as_str().unwrap()
}

#[test]
fn malformed_frames_get_errors_and_the_connection_goes_on() {
    let p = started();
    let mut c = p.raw();
    // (frame, expected error code, expected id)
    let cases: &[(&[u8], &str, Option<u64>)] = &[
        (b"this is not json\n", "invalid_frame", None),
        (b"[1, 2, 3]\n", "invalid_frame", None),
        (b"{\"id\": 7}\n", "invalid_frame", None),
    ];
    for (bytes, code, id) in cases {
        c.send_bytes(bytes).unwrap();
        let reply = c.recv().expect("an error answer");
        assert_eq!(
            error_code(&reply),
            *code,
            "{}",
            String::from_utf8_lossy(bytes)
        );
        assert_eq!(reply["id"].as_u64(), *id);
        assert!(!reply["data"]["message"].as_str().unwrap().is_empty());
    }
    // Blank lines are ignored; the connection still works.
    c.send_bytes(b"\n\n").unwrap();
    c.hello();
    let cases = [
        (
            json!({"id": 3, "type": "frobnicate", "data": {}}),
            "unknown_request",
        ),
        (
            json!({"id": 4, "type": "changes", "data": {"since": 12}}),
            "invalid_request",
        ),
        (
            json!({"id": 5, "type": "hello", "data": {"protocol": "one"}}),
            "invalid_request",
        ),
    ];
    for (frame, code) in cases {
        c.send(&frame);
        let reply = c.recv().expect("an error answer");
        assert_eq!(error_code(&reply), code, "{frame}");
        assert_eq!(reply["id"], frame["id"]);
    }
    let unknown = c.request(6, "frobnicate", json!({}));
    let message = unknown["data"]["message"].as_str().unwrap();
    assert!(
        message.contains("frobnicate") && message.contains("status"),
        "{message}"
    );
    let status = c.request(9, "status", json!({}));
    assert_eq!(status["type"], "status", "{status}");
    assert_eq!(status["id"], 9);
}

#[test]
fn a_request_before_hello_is_refused_and_closes_the_connection() {
    let p = started();
    let mut c = p.raw();
    let reply = c.request(1, "status", json!({}));
    assert_eq!(error_code(&reply), "hello_required");
    assert!(c.recv().is_none(), "connection closed");
    assert_eq!(p.status()["tracked_files"], 1, "the daemon still answers");
}

#[test]
fn an_oversized_frame_is_refused_without_harm() {
    let p = started();
    let pid = p.daemon_pid().unwrap();
    let mut c = p.raw();
    c.hello();
    // One byte over the limit, with no newline in sight.
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0;
    let limit = 64 << 20;
    while sent <= limit {
        if c.send_bytes(&chunk).is_err() {
            break; // the daemon may close before reading it all
        }
        sent += chunk.len();
    }
    let reply = c.recv().expect("an error before the close");
    assert_eq!(error_code(&reply), "frame_too_large");
    assert!(c.recv().is_none(), "connection closed");
    let status = p.status();
    assert_eq!(status["pid"].as_u64().unwrap() as u32, pid, "same daemon");
}

#[test]
fn a_client_of_another_major_version_may_only_ask_for_shutdown() {
    let p = started();
    let mut c = p.raw();
    c.send(&json!({"id": 1, "type": "hello", "data": {
        "protocol": {"major": 9, "minor": 0}, "client": "future", "client_version": "9.0.0"}}));
    let hello = c.recv().unwrap();
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["data"]["protocol"]["major"], 1);
    let refused = c.request(2, "status", json!({}));
    assert_eq!(error_code(&refused), "incompatible_protocol");
    let pid = p.daemon_pid().unwrap();
    let ok = c.request(3, "shutdown", json!({"reason": "replaced by a future tim"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    assert!(c.recv().is_none(), "closed once the daemon is gone");
    wait_gone(pid);
    let log = std::fs::read_to_string(p.path(".tim/daemon.log")).unwrap();
    assert!(log.contains("replaced by a future tim"), "{log}");
}

#[test]
fn a_dropped_connection_mid_request_does_not_disturb_the_daemon() {
    let p = started();
    for _ in 0..20 {
        let mut c = p.raw();
        c.hello();
        c.send(&json!({"id": 2, "type": "status", "data": {}}));
        drop(c); // hang up before the answer
    }
    assert_eq!(p.status()["tracked_files"], 1);
}
