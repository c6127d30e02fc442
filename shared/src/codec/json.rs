//! `plaza.v1.json`: the messages' serde form, one object per text frame.

use super::{DecodeError, check_size};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub fn encode<T: Serialize>(msg: &T) -> String {
    // Serializing these types cannot fail: no maps with non-string keys, no
    // custom serializers. A failure would be a bug worth a loud panic in tests.
    serde_json::to_string(msg).expect("protocol messages always serialize to JSON")
}

/// Decodes one message. Input over the size limit is refused before parsing.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    check_size(bytes)?;
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))
}
