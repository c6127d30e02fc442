//! Limits of the wire protocol. Both sides enforce them; the server closes
//! or answers with an `error` when a client exceeds them.

/// Protocol version sent in `hello` and checked before the token.
pub const PROTOCOL_VERSION: u32 = 1;
/// First byte of every `plaza.v1.bin` frame.
pub const BINARY_FORMAT_VERSION: u8 = 1;

/// WebSocket subprotocol names.
pub const SUBPROTOCOL_BINARY: &str = "plaza.v1.bin";
pub const SUBPROTOCOL_JSON: &str = "plaza.v1.json";

/// Largest message (after any decompression); larger closes with 1009.
pub const MAX_MESSAGE_BYTES: usize = 16_384;
/// Chat text, in characters (Unicode scalar values).
pub const CHAT_TEXT_MAX_CHARS: usize = 500;
/// Client chat message id, in characters.
pub const CHAT_ID_MAX_CHARS: usize = 64;
/// Display names, in characters.
pub const NAME_MAX_CHARS: usize = 32;
/// Room names, in characters.
pub const ROOM_NAME_MAX_CHARS: usize = 64;
/// Default and maximum room capacity.
pub const DEFAULT_ROOM_CAPACITY: u32 = 40;
pub const MAX_ROOM_CAPACITY: u32 = 200;

/// The hello must arrive within this many milliseconds of the upgrade.
pub const HELLO_TIMEOUT_MS: u64 = 5_000;
/// The server closes an HTTP connection that sends no whole request head
/// within this long, an idle kept-alive one included. Clients keep pooled
/// connections idle for less ([`HTTP_POOL_IDLE_MS`]), so they don't send a
/// request on one the server is closing.
pub const REQUEST_HEAD_TIMEOUT_MS: u64 = 10_000;
/// How long clients keep an idle pooled HTTP connection.
pub const HTTP_POOL_IDLE_MS: u64 = REQUEST_HEAD_TIMEOUT_MS / 2;
/// How long a room holds the seat of a socket that dropped without a
/// close, for a new socket to resume (`hello.resume`).
pub const RESUME_WINDOW_MS: u64 = 30_000;
/// Room tick rate.
pub const TICK_HZ: u32 = 20;
/// Clients send poses at most this often.
pub const MAX_POSE_HZ: u32 = 30;

/// Per-socket token bucket: sustained rate and burst.
pub const RATE_PER_SECOND: u32 = 60;
pub const RATE_BURST: u32 = 120;
/// Room changes (`join`) a socket may make: this many at once, then one
/// every [`JOIN_EVERY_MS`]. Each tells two rooms of the move; a client
/// hopping between rooms as fast as it may send would flood both.
pub const JOIN_BURST: u32 = 3;
pub const JOIN_EVERY_MS: u64 = 1_000;
/// More than this many messages within [`FLOOD_WINDOW_MS`] closes with 4008.
pub const FLOOD_MESSAGES: u32 = 240;
pub const FLOOD_WINDOW_MS: u64 = 2_000;
/// The Nth invalid message within [`INVALID_WINDOW_MS`] closes with 1008.
pub const INVALID_MESSAGES_BEFORE_CLOSE: u32 = 10;
pub const INVALID_WINDOW_MS: u64 = 60_000;

/// Positions are valid within this many metres of the origin on each axis.
pub const WORLD_HALF_EXTENT_M: f32 = 1_000.0;
/// Head and hands must stay within this many metres of the avatar's root.
pub const LIMB_REACH_M: f32 = 4.0;

/// WebSocket close codes used by Plaza.
pub mod close {
    pub const SERVER_DRAINING: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_LARGE: u16 = 1009;
    pub const BAD_HELLO: u16 = 4000;
    pub const BAD_TOKEN: u16 = 4001;
    pub const RATE_LIMITED: u16 = 4008;
    pub const TOO_SLOW: u16 = 4009;
}

/// Whether an HTTP error status means the server said no for good (a 4xx:
/// a spent refresh token, a bad request), so asking again won't help. A
/// 5xx, 408 (too slow) or 429 (too often) means "not now": try again later.
pub fn refused_for_good(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

/// Why an HTTP request to the server failed: what to tell the user, and
/// whether the server said no for good ([`refused_for_good`]) rather than
/// not answering (down, restarting, 5xx: a later try may work).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFailure {
    pub refused: bool,
    pub message: String,
}

impl RequestFailure {
    /// The server answered with this error status.
    pub fn answered(status: u16, message: String) -> Self {
        RequestFailure { refused: refused_for_good(status), message }
    }

    /// No usable answer: no connection, a timeout, a body that didn't parse.
    pub fn unanswered(message: String) -> Self {
        RequestFailure { refused: false, message }
    }
}

impl std::fmt::Display for RequestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod refused_tests {
    #[test]
    fn only_a_final_4xx_is_refused_for_good() {
        for status in [400, 401, 403, 404] {
            assert!(super::refused_for_good(status), "{status}");
        }
        for status in [200, 408, 429, 500, 502, 503] {
            assert!(!super::refused_for_good(status), "{status}");
        }
    }
}

/// A server at its connection limit answers the WebSocket upgrade (or any
/// request, when out of file descriptors) `503` with this error code and a
/// `Retry-After` in seconds.
pub mod server_full {
    use std::time::Duration;

    /// The `code` of the JSON error.
    pub const CODE: &str = "server_full";
    /// The `Retry-After` the server sends, and what a client assumes when
    /// the header is missing or unreadable.
    pub const RETRY_AFTER_SECS: u64 = 5;
    /// The longest `Retry-After` a client honours: a typo on a server must
    /// not park its clients for hours.
    pub const MAX_RETRY_AFTER_SECS: u64 = 120;

    /// The `code` of a `{"error":{"code","message"}}` body.
    pub fn error_code(body: &[u8]) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        value["error"]["code"].as_str().map(str::to_owned)
    }

    /// The wait a refused upgrade asks for when it is a `503 server_full`
    /// (from its status, `Retry-After` header and body); `None` for any
    /// other answer.
    pub fn wait(status: u16, retry_after: Option<&str>, body: Option<&[u8]>) -> Option<Duration> {
        if status != 503 || body.and_then(error_code).as_deref() != Some(CODE) {
            return None;
        }
        let secs = retry_after.and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(RETRY_AFTER_SECS);
        Some(Duration::from_secs(secs.min(MAX_RETRY_AFTER_SECS)))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn only_a_503_server_full_asks_for_a_wait_and_the_wait_is_bounded() {
            let full = br#"{"error":{"code":"server_full","message":"full"}}"#.as_slice();
            assert_eq!(wait(503, Some("7"), Some(full)), Some(Duration::from_secs(7)));
            assert_eq!(wait(503, None, Some(full)), Some(Duration::from_secs(5)), "missing header");
            assert_eq!(wait(503, Some("soon"), Some(full)), Some(Duration::from_secs(5)), "unreadable header");
            assert_eq!(wait(503, Some("86400"), Some(full)), Some(Duration::from_secs(120)), "capped");
            let draining = br#"{"error":{"code":"draining","message":"full"}}"#.as_slice();
            assert_eq!(wait(503, Some("5"), Some(draining)), None, "draining is not full");
            assert_eq!(wait(500, Some("5"), Some(full)), None);
            assert_eq!(wait(503, Some("5"), None), None);
            assert_eq!(error_code(b"not json"), None);
        }
    }
}
