//! Golden frames: every file in `tests/data/` decodes into the typed
//! messages and encodes back to the same JSON. The Python plugin's tests read
//! the same files, so the two sides of the protocol cannot drift apart.

use serde_json::Value;
use std::path::Path;
use tim_proto::{decode_request, decode_response, encode_request, encode_response};

fn frames() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/data exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| !p.ends_with("protocol.json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn golden_frames_round_trip() {
    let frames = frames();
    assert!(frames.len() >= 10, "golden frames missing: {frames:?}");
    for (name, bytes) in frames {
        let encoded = if name.starts_with("request.") {
            encode_request(&decode_request(&bytes).unwrap_or_else(|e| panic!("{name}: {e}")))
        } else if name.starts_with("response.") || name.starts_with("notification.") {
            encode_response(&decode_response(&bytes).unwrap_or_else(|e| panic!("{name}: {e}")))
        } else {
            panic!("{name}: golden frames are named request.*, response.* or notification.*");
        };
        assert_eq!(json(&encoded), json(&bytes), "{name} does not round-trip");
        assert!(
            !encoded[..encoded.len() - 1].contains(&b'\n'),
            "{name}: one line"
        );
    }
}

/// `protocol.json` holds the current protocol version; the Python plugin's
/// tests check their side against the same file.
#[test]
fn protocol_version_file_matches() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/protocol.json");
    let v = json(&std::fs::read(path).unwrap());
    assert_eq!(v["major"], tim_proto::PROTOCOL.major);
    assert_eq!(v["minor"], tim_proto::PROTOCOL.minor);
}
