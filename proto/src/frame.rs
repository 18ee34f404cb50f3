//! Framing: one JSON object per line, UTF-8, `\n`-terminated, at most
//! [`MAX_FRAME_BYTES`] bytes including the newline.
//!
//! Decoding happens in two steps so errors can be precise: the line is read
//! into a generic envelope (`id`, `type`, `data`, `warnings`), then `data` is
//! decoded according to `type`. An unknown `type` is therefore reported as
//! such instead of as a JSON error.

use crate::message::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{self, BufRead};

/// The largest frame either side accepts, newline included.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct Envelope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not a JSON object with a string `type`: {0}")]
    InvalidFrame(serde_json::Error),
    #[error("frame has no `id`")]
    MissingId,
    #[error("unknown {direction} type `{kind}`")]
    UnknownType {
        direction: &'static str,
        kind: String,
        id: Option<u64>,
    },
    #[error("invalid `{kind}` data: {source}")]
    InvalidData {
        kind: String,
        id: Option<u64>,
        source: serde_json::Error,
    },
}

impl DecodeError {
    /// The request id, when the envelope was readable, so the error response
    /// can be matched to its request.
    pub fn id(&self) -> Option<u64> {
        match self {
            DecodeError::InvalidFrame(_) | DecodeError::MissingId => None,
            DecodeError::UnknownType { id, .. } | DecodeError::InvalidData { id, .. } => *id,
        }
    }

    /// The error code a daemon answers this with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::InvalidFrame(_) | DecodeError::MissingId => ErrorCode::InvalidFrame,
            DecodeError::UnknownType { .. } => ErrorCode::UnknownRequest,
            DecodeError::InvalidData { .. } => ErrorCode::InvalidRequest,
        }
    }
}

fn data<T: Serialize>(value: &T) -> Value {
    // Serializing these plain structs to a `Value` cannot fail: they hold no
    // maps with non-string keys and no custom serializers.
    serde_json::to_value(value).expect("message types serialize to JSON")
}

fn parse<T: for<'de> Deserialize<'de>>(env: Envelope) -> Result<T, DecodeError> {
    // An absent `data` means "all defaults" for requests without fields.
    let value = match env.data {
        Value::Null => Value::Object(Default::default()),
        v => v,
    };
    serde_json::from_value(value).map_err(|source| DecodeError::InvalidData {
        kind: env.kind,
        id: env.id,
        source,
    })
}

fn to_line(env: &Envelope) -> Vec<u8> {
    let mut line = serde_json::to_vec(env).expect("envelope serializes to JSON");
    line.push(b'\n');
    line
}

/// Encodes a request as one line, newline included.
pub fn encode_request(frame: &RequestFrame) -> Vec<u8> {
    let data = match &frame.request {
        Request::Hello(x) => data(x),
        Request::Status(x) => data(x),
        Request::Changes(x) => data(x),
        Request::Subscribe(x) => data(x),
        Request::Shutdown(x) => data(x),
        Request::BeginRun(x) => data(x),
        Request::Select(x) => data(x),
        Request::Record(x) => data(x),
        Request::EndRun(x) => data(x),
        Request::Affected(x) => data(x),
        Request::Why(x) => data(x),
        Request::Stats(x) => data(x),
        Request::ImportResults(x) => data(x),
        Request::Audit(x) => data(x),
        Request::CacheGet(x) => data(x),
        Request::CachePut(x) => data(x),
        Request::CacheAbandon(x) => data(x),
        Request::CacheStats(x) => data(x),
        Request::CacheGc(x) => data(x),
        Request::CacheExport(x) => data(x),
        Request::CacheImport(x) => data(x),
        Request::CargoRecord(x) => data(x),
    };
    to_line(&Envelope {
        id: Some(frame.id),
        kind: frame.request.type_name().to_owned(),
        data,
        warnings: Vec::new(),
    })
}

/// Decodes one request line (with or without its newline).
pub fn decode_request(line: &[u8]) -> Result<RequestFrame, DecodeError> {
    let env: Envelope = serde_json::from_slice(line).map_err(DecodeError::InvalidFrame)?;
    let id = env.id;
    let request = match env.kind.as_str() {
        "hello" => Request::Hello(parse(env)?),
        "status" => Request::Status(parse(env)?),
        "changes" => Request::Changes(parse(env)?),
        "subscribe" => Request::Subscribe(parse(env)?),
        "shutdown" => Request::Shutdown(parse(env)?),
        "begin_run" => Request::BeginRun(parse(env)?),
        "select" => Request::Select(parse(env)?),
        "record" => Request::Record(parse(env)?),
        "end_run" => Request::EndRun(parse(env)?),
        "affected" => Request::Affected(parse(env)?),
        "why" => Request::Why(parse(env)?),
        "stats" => Request::Stats(parse(env)?),
        "import_results" => Request::ImportResults(parse(env)?),
        "audit" => Request::Audit(parse(env)?),
        "cache_get" => Request::CacheGet(parse(env)?),
        "cache_put" => Request::CachePut(parse(env)?),
        "cache_abandon" => Request::CacheAbandon(parse(env)?),
        "cache_stats" => Request::CacheStats(parse(env)?),
        "cache_gc" => Request::CacheGc(parse(env)?),
        "cache_export" => Request::CacheExport(parse(env)?),
        "cache_import" => Request::CacheImport(parse(env)?),
        "cargo_record" => Request::CargoRecord(parse(env)?),
        _ => {
            return Err(DecodeError::UnknownType {
                direction: "request",
                kind: env.kind,
                id,
            });
        }
    };
    Ok(RequestFrame {
        id: id.ok_or(DecodeError::MissingId)?,
        request,
    })
}

/// Encodes a response or notification as one line, newline included.
pub fn encode_response(frame: &ResponseFrame) -> Vec<u8> {
    let data = match &frame.response {
        Response::Hello(x) => data(x),
        Response::Status(x) => data(x),
        Response::Changes(x) => data(x),
        Response::Subscribed(x) => data(x),
        Response::FilesChanged(x) => data(x),
        Response::Ok(x) => data(x),
        Response::Error(x) => data(x),
        Response::RunStarted(x) => data(x),
        Response::Selection(x) => data(x),
        Response::Affected(x) => data(x),
        Response::Why(x) => data(x),
        Response::Stats(x) => data(x),
        Response::Audit(x) => data(x),
        Response::CacheEntry(x) => data(x),
        Response::CacheStats(x) => data(x),
        Response::CacheGc(x) => data(x),
        Response::CacheTransfer(x) => data(x),
    };
    to_line(&Envelope {
        id: frame.id,
        kind: frame.response.type_name().to_owned(),
        data,
        warnings: frame.warnings.clone(),
    })
}

/// Decodes one response line (with or without its newline).
pub fn decode_response(line: &[u8]) -> Result<ResponseFrame, DecodeError> {
    let env: Envelope = serde_json::from_slice(line).map_err(DecodeError::InvalidFrame)?;
    let id = env.id;
    let warnings = env.warnings.clone();
    let response = match env.kind.as_str() {
        "hello" => Response::Hello(parse(env)?),
        "status" => Response::Status(parse(env)?),
        "changes" => Response::Changes(parse(env)?),
        "subscribed" => Response::Subscribed(parse(env)?),
        "files_changed" => Response::FilesChanged(parse(env)?),
        "ok" => Response::Ok(parse(env)?),
        "error" => Response::Error(parse(env)?),
        "run_started" => Response::RunStarted(parse(env)?),
        "selection" => Response::Selection(parse(env)?),
        "affected" => Response::Affected(parse(env)?),
        "why" => Response::Why(parse(env)?),
        "stats" => Response::Stats(parse(env)?),
        "audit" => Response::Audit(parse(env)?),
        "cache_entry" => Response::CacheEntry(parse(env)?),
        "cache_stats" => Response::CacheStats(parse(env)?),
        "cache_gc" => Response::CacheGc(parse(env)?),
        "cache_transfer" => Response::CacheTransfer(parse(env)?),
        _ => {
            return Err(DecodeError::UnknownType {
                direction: "response",
                kind: env.kind,
                id,
            });
        }
    };
    Ok(ResponseFrame {
        id,
        response,
        warnings,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("frame larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// Reads newline-delimited frames with a size limit, for blocking streams.
/// The daemon has its own asynchronous reader with the same rules.
pub struct FrameReader<R> {
    inner: R,
    limit: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_limit(inner, MAX_FRAME_BYTES)
    }

    pub fn with_limit(inner: R, limit: usize) -> Self {
        FrameReader {
            inner,
            limit,
            buf: Vec::new(),
        }
    }

    /// The next line without its newline, or `None` at a clean end of
    /// stream. A final line without a newline is returned as a frame.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, ReadError> {
        self.buf.clear();
        loop {
            let available = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if available.is_empty() {
                return Ok(if self.buf.is_empty() {
                    None
                } else {
                    Some(&self.buf)
                });
            }
            let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], Some(i + 1)),
                None => (available, None),
            };
            if self.buf.len() + chunk.len() >= self.limit {
                return Err(ReadError::TooLarge { limit: self.limit });
            }
            self.buf.extend_from_slice(chunk);
            let consumed = done.unwrap_or(chunk.len());
            self.inner.consume(consumed);
            if done.is_some() {
                return Ok(Some(&self.buf));
            }
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::PROTOCOL;

    #[test]
    fn request_round_trip() {
        let frame = RequestFrame {
            id: 3,
            request: Request::Changes(ChangesParams {
                since: Some("c:1:2".into()),
            }),
        };
        let line = encode_request(&frame);
        assert_eq!(*line.last().unwrap(), b'\n');
        assert_eq!(decode_request(&line).unwrap(), frame);
    }

    #[test]
    fn decode_errors_are_precise() {
        let cases: &[(&str, ErrorCode, Option<u64>)] = &[
            ("not json", ErrorCode::InvalidFrame, None),
            ("[1,2]", ErrorCode::InvalidFrame, None),
            (r#"{"id":1}"#, ErrorCode::InvalidFrame, None),
            (
                r#"{"id":4,"type":"bogus"}"#,
                ErrorCode::UnknownRequest,
                Some(4),
            ),
            (
                r#"{"id":5,"type":"hello","data":{"protocol":"x"}}"#,
                ErrorCode::InvalidRequest,
                Some(5),
            ),
            (r#"{"type":"status"}"#, ErrorCode::InvalidFrame, None),
        ];
        for (line, code, id) in cases {
            let err = decode_request(line.as_bytes()).unwrap_err();
            assert_eq!(err.code(), *code, "{line}: {err}");
            assert_eq!(err.id(), *id, "{line}");
        }
    }

    #[test]
    fn missing_data_means_defaults_and_unknown_fields_are_ignored() {
        let frame = decode_request(br#"{"id":1,"type":"status"}"#).unwrap();
        assert_eq!(frame.request, Request::Status(StatusParams {}));
        let frame = decode_request(br#"{"id":1,"type":"status","data":{"later":1}}"#).unwrap();
        assert_eq!(frame.request, Request::Status(StatusParams {}));
    }

    #[test]
    fn reader_splits_lines_and_enforces_the_limit() {
        let input = b"{\"a\":1}\n{\"b\":2}\npartial".to_vec();
        let mut reader = FrameReader::with_limit(&input[..], 64);
        assert_eq!(reader.next_line().unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(reader.next_line().unwrap().unwrap(), b"{\"b\":2}");
        assert_eq!(reader.next_line().unwrap().unwrap(), b"partial");
        assert!(reader.next_line().unwrap().is_none());

        let big = [b'x'; 100];
        let mut reader = FrameReader::with_limit(&big[..], 64);
        assert!(matches!(
            reader.next_line(),
            Err(ReadError::TooLarge { limit: 64 })
        ));
    }

    #[test]
    fn hello_uses_the_protocol_constant() {
        let frame = RequestFrame {
            id: 1,
            request: Request::Hello(Hello {
                protocol: PROTOCOL,
                client: "tim".into(),
                client_version: "0.1.0".into(),
                capabilities: vec![],
            }),
        };
        let text = String::from_utf8(encode_request(&frame)).unwrap();
        let expected = format!(
            r#""protocol":{{"major":{},"minor":{}}}"#,
            PROTOCOL.major, PROTOCOL.minor
        );
        assert!(text.contains(&expected), "{text}");
    }
}
