//! Every WebSocket message of the contract, as Rust types.
//!
//! Field names are exactly the contract's: these types *are* `plaza.v1.json`
//! through serde (tagged by `"type"`). `plaza.v1.bin` carries the same values
//! (see [`crate::codec::binary`]). Unknown JSON fields are ignored so that
//! newer servers and clients can add fields.

use crate::limits::{CHAT_ID_MAX_CHARS, CHAT_TEXT_MAX_CHARS, NAME_MAX_CHARS, ROOM_NAME_MAX_CHARS};
use crate::pose::{Pose, PoseError};
use serde::{Deserialize, Serialize};

/// A room-local avatar number, chosen by the server; small so it packs into
/// one byte in binary deltas.
pub type AvatarId = u32;

/// Client to server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Hello(Hello),
    Join(Join),
    Leave,
    Pose(PoseUpdate),
    Chat(ChatSend),
    Ping(Ping),
    Refresh(Refresh),
    Voice(Voice),
}

/// Server to client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Welcome(Welcome),
    Joined(Joined),
    Delta(Delta),
    Chat(ChatMessage),
    ChatAck(ChatAck),
    Pong(Pong),
    TokenExpiring(TokenExpiring),
    Error(ErrorMessage),
    Voice(Voice),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub token: String,
    pub protocol: u32,
    #[serde(default)]
    pub resume: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Join {
    /// A room id or name; a name no room has yet creates the room.
    pub room: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoseUpdate {
    /// The client's clock, ms.
    pub t: u64,
    #[serde(flatten)]
    pub pose: Pose,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatSend {
    /// The client's own message id (1–64 chars), echoed in `chat_ack` and `chat`.
    pub id: String,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    pub t: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refresh {
    pub token: String,
}

/// WebRTC signaling between a client and the SFU: an opaque JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Voice {
    pub signal: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub user_id: String,
    pub session: String,
    /// Server clock, ms since the Unix epoch.
    pub server_time: u64,
    pub tick_hz: u32,
}

/// The room's full state, others only: a member never receives its own avatar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    /// The room's id.
    pub room: String,
    pub room_name: String,
    /// The receiver's own avatar id in this room.
    pub you: AvatarId,
    pub tick: u64,
    pub avatars: Vec<AvatarInfo>,
}

/// An avatar as first seen: who it is and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AvatarInfo {
    pub id: AvatarId,
    /// The user behind the avatar (matches `chat.from`).
    #[serde(default)]
    pub user: String,
    pub name: String,
    #[serde(flatten)]
    pub pose: Pose,
}

/// One avatar's new pose in a delta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AvatarPose {
    pub id: AvatarId,
    /// The sender's clock when it sent this pose, when the server relays it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<u64>,
    #[serde(flatten)]
    pub pose: Pose,
}

/// What changed in a room since the previous tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub tick: u64,
    #[serde(default)]
    pub avatars: Vec<AvatarPose>,
    #[serde(default)]
    pub joined: Vec<AvatarInfo>,
    #[serde(default)]
    pub left: Vec<AvatarId>,
}

/// One room as `GET /api/v1/rooms` lists it (and `POST` answers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    pub id: String,
    pub name: String,
    /// Members now.
    pub users: u32,
    pub capacity: u32,
}

impl RoomSummary {
    pub fn is_full(&self) -> bool {
        self.users >= self.capacity
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The sender's own message id.
    pub id: String,
    pub room: String,
    /// The sender's user id, stamped by the server.
    pub from: String,
    pub name: String,
    pub text: String,
    /// Server clock when stored, ms since the Unix epoch.
    pub ts: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatAck {
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The `t` of the ping, echoed.
    pub t: u64,
    pub server_time: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenExpiring {
    pub in_s: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorMessage {
    pub code: ErrorCode,
    pub message: String,
}

/// `error.code`. Clients must accept codes they don't know ([`ErrorCode::Unknown`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadMessage,
    NotInRoom,
    RoomFull,
    RoomNotFound,
    RateLimited,
    TooLong,
    BadHello,
    Unauthorized,
    Internal,
    /// Voice can't start: the SFU is off or at its peer limit.
    VoiceUnavailable,
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadMessage,
        ErrorCode::NotInRoom,
        ErrorCode::RoomFull,
        ErrorCode::RoomNotFound,
        ErrorCode::RateLimited,
        ErrorCode::TooLong,
        ErrorCode::BadHello,
        ErrorCode::Unauthorized,
        ErrorCode::Internal,
        ErrorCode::VoiceUnavailable,
        ErrorCode::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::RoomNotFound => "room_not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLong => "too_long",
            ErrorCode::BadHello => "bad_hello",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Internal => "internal",
            ErrorCode::VoiceUnavailable => "voice_unavailable",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// A message that decoded but breaks a rule of the contract; the server
/// answers it with an `error` of [`ValidationError::code`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub code: ErrorCode,
    pub message: String,
}

impl ValidationError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ValidationError { code, message: message.into() }
    }
}

impl From<PoseError> for ValidationError {
    fn from(e: PoseError) -> Self {
        ValidationError::new(ErrorCode::BadMessage, format!("bad pose: {e}"))
    }
}

fn check_len(field: &str, value: &str, max: usize, code: ErrorCode) -> Result<(), ValidationError> {
    let chars = value.chars().count();
    if chars == 0 {
        return Err(ValidationError::new(ErrorCode::BadMessage, format!("{field} is empty; it must have 1–{max} characters")));
    }
    if chars > max {
        return Err(ValidationError::new(code, format!("{field} has {chars} characters; at most {max} are allowed")));
    }
    Ok(())
}

impl ClientMessage {
    /// Every [`ClientMessage::type_name`], for what needs the whole set up
    /// front (the server's metric labels, registered at zero).
    pub const TYPE_NAMES: [&'static str; 8] = ["hello", "join", "leave", "pose", "chat", "ping", "refresh", "voice"];

    /// The contract's `type` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::Hello(_) => "hello",
            ClientMessage::Join(_) => "join",
            ClientMessage::Leave => "leave",
            ClientMessage::Pose(_) => "pose",
            ClientMessage::Chat(_) => "chat",
            ClientMessage::Ping(_) => "ping",
            ClientMessage::Refresh(_) => "refresh",
            ClientMessage::Voice(_) => "voice",
        }
    }

    /// Checks field limits (lengths, pose bounds). Whether the message is
    /// allowed in the socket's current phase is the server's to decide.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            ClientMessage::Hello(h) => check_len("token", &h.token, 4096, ErrorCode::BadHello),
            ClientMessage::Join(j) => check_len("room", &j.room, ROOM_NAME_MAX_CHARS, ErrorCode::TooLong),
            ClientMessage::Pose(p) => Ok(p.pose.validate()?),
            ClientMessage::Chat(c) => {
                check_len("chat id", &c.id, CHAT_ID_MAX_CHARS, ErrorCode::TooLong)?;
                check_len("chat text", &c.text, CHAT_TEXT_MAX_CHARS, ErrorCode::TooLong)
            }
            ClientMessage::Refresh(r) => check_len("token", &r.token, 4096, ErrorCode::BadMessage),
            ClientMessage::Voice(v) if !v.signal.is_object() => {
                Err(ValidationError::new(ErrorCode::BadMessage, "voice signal must be a JSON object"))
            }
            ClientMessage::Leave | ClientMessage::Ping(_) | ClientMessage::Voice(_) => Ok(()),
        }
    }
}

impl ServerMessage {
    /// Every [`ServerMessage::type_name`] (see [`ClientMessage::TYPE_NAMES`]).
    pub const TYPE_NAMES: [&'static str; 9] = ["welcome", "joined", "delta", "chat", "chat_ack", "pong", "token_expiring", "error", "voice"];

    /// The contract's `type` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerMessage::Welcome(_) => "welcome",
            ServerMessage::Joined(_) => "joined",
            ServerMessage::Delta(_) => "delta",
            ServerMessage::Chat(_) => "chat",
            ServerMessage::ChatAck(_) => "chat_ack",
            ServerMessage::Pong(_) => "pong",
            ServerMessage::TokenExpiring(_) => "token_expiring",
            ServerMessage::Error(_) => "error",
            ServerMessage::Voice(_) => "voice",
        }
    }
}

/// Display names: 1–32 characters, no control characters.
pub fn validate_display_name(name: &str) -> Result<(), ValidationError> {
    check_len("name", name, NAME_MAX_CHARS, ErrorCode::TooLong)?;
    if name.chars().any(char::is_control) {
        return Err(ValidationError::new(ErrorCode::BadMessage, "name has control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_limits_match_the_contract() {
        let ok = ClientMessage::Chat(ChatSend { id: "a".into(), text: "x".repeat(500) });
        assert!(ok.validate().is_ok());
        let long = ClientMessage::Chat(ChatSend { id: "a".into(), text: "é".repeat(501) });
        assert_eq!(long.validate().unwrap_err().code, ErrorCode::TooLong);
        let empty = ClientMessage::Chat(ChatSend { id: "a".into(), text: String::new() });
        assert_eq!(empty.validate().unwrap_err().code, ErrorCode::BadMessage);
        let long_id = ClientMessage::Chat(ChatSend { id: "i".repeat(65), text: "hi".into() });
        assert_eq!(long_id.validate().unwrap_err().code, ErrorCode::TooLong);
    }

    #[test]
    fn error_code_names_round_trip_and_unknown_codes_are_accepted() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        assert_eq!(serde_json::from_str::<ErrorCode>("\"brand_new\"").unwrap(), ErrorCode::Unknown);
    }

    #[test]
    fn display_names_reject_control_characters() {
        assert!(validate_display_name("Ada").is_ok());
        assert!(validate_display_name("a\nb").is_err());
        assert!(validate_display_name("").is_err());
    }
}
