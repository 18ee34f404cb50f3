//! Protocol versioning.
//!
//! `major` changes when an existing frame changes meaning or shape in a way an
//! older peer cannot ignore; `minor` grows when a field or request type is
//! added that an older peer may safely not know. A daemon answers every
//! client of its own major version; the *client* decides what to do with a
//! daemon of another version (see [`ProtocolVersion::compatibility`]).

use serde::{Deserialize, Serialize};
use std::fmt;

/// The protocol version this build speaks.
pub const PROTOCOL: ProtocolVersion = ProtocolVersion { major: 1, minor: 4 };

/// Environment variable that overrides the protocol version a binary
/// advertises. It exists so that integration tests can stage version
/// mismatches between two builds of the same code; it is read by `tim` and
/// `timd` alike and is documented as a testing hook only.
pub const PROTOCOL_OVERRIDE_ENV: &str = "TIM_TEST_PROTOCOL";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

/// What a client should do with the daemon it reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compatibility {
    /// Same major version and the daemon is not older: talk to it.
    Compatible,
    /// The daemon speaks an older protocol than the client: replace it with
    /// the client's own daemon.
    DaemonOlder,
    /// The daemon speaks a newer major version: this client cannot talk to it
    /// and must not stop it (a newer `tim` is using it).
    DaemonNewer,
}

impl ProtocolVersion {
    /// The version this process advertises: [`PROTOCOL`], unless
    /// [`PROTOCOL_OVERRIDE_ENV`] holds a `MAJOR.MINOR` value.
    pub fn advertised() -> ProtocolVersion {
        std::env::var(PROTOCOL_OVERRIDE_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(PROTOCOL)
    }

    /// How a client speaking `self` should treat a daemon speaking `daemon`.
    pub fn compatibility(self, daemon: ProtocolVersion) -> Compatibility {
        if daemon.major > self.major {
            Compatibility::DaemonNewer
        } else if daemon < self {
            Compatibility::DaemonOlder
        } else {
            Compatibility::Compatible
        }
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl std::str::FromStr for ProtocolVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (major, minor) = s
            .trim()
            .split_once('.')
            .ok_or_else(|| format!("expected MAJOR.MINOR, got {s:?}"))?;
        let parse = |part: &str| {
            part.parse::<u16>()
                .map_err(|_| format!("expected MAJOR.MINOR, got {s:?}"))
        };
        Ok(ProtocolVersion {
            major: parse(major)?,
            minor: parse(minor)?,
        })
    }
}

/// Compares two dotted release versions (`0.1.10` > `0.1.9`). Parts that are
/// not numbers compare as zero, so a pre-release suffix never makes a build
/// look newer than its release.
pub fn compare_release(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| -> Vec<u64> {
        v.split(['.', '-', '+'])
            .take(3)
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    parts(a).cmp(&parts(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    fn v(s: &str) -> ProtocolVersion {
        s.parse().unwrap()
    }

    #[test]
    fn compatibility_table() {
        let cases = [
            // client, daemon, expected
            ("1.0", "1.0", Compatibility::Compatible),
            ("1.0", "1.3", Compatibility::Compatible),
            ("1.3", "1.0", Compatibility::DaemonOlder),
            ("2.0", "1.9", Compatibility::DaemonOlder),
            ("1.9", "2.0", Compatibility::DaemonNewer),
        ];
        for (client, daemon, expected) in cases {
            assert_eq!(
                v(client).compatibility(v(daemon)),
                expected,
                "client {client} daemon {daemon}"
            );
        }
    }

    #[test]
    fn parse_errors_are_described() {
        assert!(
            "1".parse::<ProtocolVersion>()
                .unwrap_err()
                .contains("MAJOR.MINOR")
        );
        assert!("a.b".parse::<ProtocolVersion>().is_err());
    }

    #[test]
    fn release_order() {
        assert_eq!(compare_release("0.1.10", "0.1.9"), Ordering::Greater);
        assert_eq!(compare_release("0.2.0", "0.2.0"), Ordering::Equal);
        assert_eq!(compare_release("0.2.0-rc.1", "0.2.0"), Ordering::Equal);
        assert_eq!(compare_release("1.0.0", "0.9.9"), Ordering::Greater);
    }
}
