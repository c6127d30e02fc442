//! The two subprotocols. Both carry the same [`ClientMessage`] and
//! [`ServerMessage`] values:
//!
//! - [`json`] (`plaza.v1.json`): one JSON object per text frame, tagged by
//!   `"type"`, for bots, browsers and debugging.
//! - [`binary`] (`plaza.v1.bin`): a version byte, a type byte and a compact
//!   body with quantized poses, for the client.
//!
//! Decoding never panics and never allocates more than the frame's own size:
//! every input is either a message or a [`DecodeError`].

pub mod binary;
mod bits;
pub mod json;

use crate::limits::{MAX_MESSAGE_BYTES, SUBPROTOCOL_BINARY, SUBPROTOCOL_JSON};
use crate::messages::{ClientMessage, ServerMessage};

/// Why bytes are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is {len} bytes; at most {max} are allowed")]
    TooLarge { len: usize, max: usize },
    #[error("empty message")]
    Empty,
    #[error("binary format version {actual} is not supported (expected {expected})")]
    UnsupportedVersion { expected: u8, actual: u8 },
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    #[error("message ends early while reading {0}")]
    Truncated(&'static str),
    #[error("bad {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("{0} bytes left over after the message")]
    TrailingBytes(usize),
    #[error("bad JSON message: {0}")]
    Json(String),
}

/// A WebSocket subprotocol Plaza speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subprotocol {
    Binary,
    Json,
}

impl Subprotocol {
    pub const ALL: [Subprotocol; 2] = [Subprotocol::Binary, Subprotocol::Json];

    pub fn name(self) -> &'static str {
        match self {
            Subprotocol::Binary => SUBPROTOCOL_BINARY,
            Subprotocol::Json => SUBPROTOCOL_JSON,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Subprotocol::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn encode_client(self, msg: &ClientMessage) -> Vec<u8> {
        match self {
            Subprotocol::Binary => binary::encode_client(msg),
            Subprotocol::Json => json::encode(msg).into_bytes(),
        }
    }

    pub fn encode_server(self, msg: &ServerMessage) -> Vec<u8> {
        match self {
            Subprotocol::Binary => binary::encode_server(msg),
            Subprotocol::Json => json::encode(msg).into_bytes(),
        }
    }

    pub fn decode_client(self, bytes: &[u8]) -> Result<ClientMessage, DecodeError> {
        match self {
            Subprotocol::Binary => binary::decode_client(bytes),
            Subprotocol::Json => json::decode(bytes),
        }
    }

    pub fn decode_server(self, bytes: &[u8]) -> Result<ServerMessage, DecodeError> {
        match self {
            Subprotocol::Binary => binary::decode_server(bytes),
            Subprotocol::Json => json::decode(bytes),
        }
    }
}

pub(crate) fn check_size(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge { len: bytes.len(), max: MAX_MESSAGE_BYTES });
    }
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(())
}
