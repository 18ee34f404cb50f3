//! The stable boundary between `tim`, `timd` and the pytest plugin.
//!
//! Everything that crosses the daemon's socket is defined here: the frame
//! envelope ([`frame`]), the typed requests, responses and notifications
//! ([`message`]) and the protocol version with its compatibility rule
//! ([`version`]). [`layout`] says where a root's state directory and socket
//! live, so every client finds the same daemon.
//!
//! This crate depends on serde and the standard library only: no async
//! runtime, no watcher, no database. The wire format is documented in
//! `docs/protocol.md`; golden frames in `proto/tests/data/` pin it, and the
//! Python plugin's tests read the same files.

pub mod frame;
pub mod layout;
pub mod message;
pub mod version;

pub use frame::{
    DecodeError, FrameReader, MAX_FRAME_BYTES, ReadError, decode_request, decode_response,
    encode_request, encode_response,
};
pub use message::*;
pub use version::{Compatibility, PROTOCOL, ProtocolVersion};
