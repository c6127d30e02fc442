//! What the simulated users speak on their WebSocket: Plaza's own
//! subprotocols, or socket.io v4 carrying Plaza's JSON messages (the
//! baseline peers in `tools/peers/socketio`, for side-by-side numbers).
//!
//! socket.io over its WebSocket transport is text packets: engine.io's type
//! digit (`0` open, `2` ping, `3` pong, `4` message), then for messages
//! socket.io's (`0` connect, `2` event): `40` connects to the default
//! namespace and `42["m",{…}]` is the event `m` with one Plaza message.

use plaza_shared::codec::Subprotocol;
use plaza_shared::messages::{ClientMessage, ServerMessage};
use tokio_tungstenite::tungstenite::Message;

/// The event name every Plaza message travels under on socket.io.
const EVENT_PREFIX: &str = "42[\"m\",";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Plaza(Subprotocol),
    SocketIo,
}

/// A frame, read.
#[derive(Debug)]
pub enum Decoded {
    Message(ServerMessage),
    /// Transport housekeeping to answer at once (engine.io's ping).
    Reply(Message),
    /// Transport housekeeping with nothing to do.
    Skip,
    Error(String),
}

impl Wire {
    /// The WebSocket URL for a server at `ws_base` (`ws://host:port`).
    pub fn ws_url(self, ws_base: &str) -> String {
        match self {
            Wire::Plaza(_) => format!("{ws_base}/ws"),
            Wire::SocketIo => format!("{ws_base}/socket.io/?EIO=4&transport=websocket"),
        }
    }

    /// `Sec-WebSocket-Protocol` to ask for, if any.
    pub fn subprotocol(self) -> Option<&'static str> {
        match self {
            Wire::Plaza(p) => Some(p.name()),
            Wire::SocketIo => None,
        }
    }

    /// The name reports use: `bin`, `json` or `socketio`.
    pub fn name(self) -> &'static str {
        match self {
            Wire::Plaza(Subprotocol::Binary) => "bin",
            Wire::Plaza(Subprotocol::Json) => "json",
            Wire::SocketIo => "socketio",
        }
    }

    pub fn encode(self, msg: &ClientMessage) -> Message {
        match self {
            Wire::Plaza(Subprotocol::Binary) => Message::Binary(plaza_shared::codec::binary::encode_client(msg).into()),
            Wire::Plaza(Subprotocol::Json) => Message::Text(plaza_shared::codec::json::encode(msg).into()),
            Wire::SocketIo => {
                let json = plaza_shared::codec::json::encode(msg);
                let mut packet = String::with_capacity(EVENT_PREFIX.len() + json.len() + 1);
                packet.push_str(EVENT_PREFIX);
                packet.push_str(&json);
                packet.push(']');
                Message::Text(packet.into())
            }
        }
    }

    pub fn decode(self, bytes: &[u8]) -> Decoded {
        match self {
            Wire::Plaza(p) => match p.decode_server(bytes) {
                Ok(msg) => Decoded::Message(msg),
                Err(e) => Decoded::Error(e.to_string()),
            },
            Wire::SocketIo => decode_socketio(bytes),
        }
    }
}

fn decode_socketio(bytes: &[u8]) -> Decoded {
    match bytes {
        b"2" => Decoded::Reply(Message::Text("3".into())),
        // Open, connect acknowledgements, pongs, noops.
        [b'0', ..] | [b'4', b'0', ..] | [b'3', ..] | [b'6', ..] => Decoded::Skip,
        _ => {
            // JSON.stringify writes no spaces, so the event's argument is
            // exactly what sits between the prefix and the final `]`.
            let Some(json) = bytes.strip_prefix(EVENT_PREFIX.as_bytes()).and_then(|rest| rest.strip_suffix(b"]")) else {
                let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned();
                return Decoded::Error(format!("not a socket.io event \"m\": {shown:?}"));
            };
            match plaza_shared::codec::json::decode::<ServerMessage>(json) {
                Ok(msg) => Decoded::Message(msg),
                Err(e) => Decoded::Error(e.to_string()),
            }
        }
    }
}

/// socket.io's opening: engine.io's `0{…}`, our `40`, its `40{"sid":…}`.
/// Plaza needs none.
pub async fn handshake<S>(wire: Wire, ws: &mut S) -> Result<(), String>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    if wire != Wire::SocketIo {
        return Ok(());
    }
    let mut opened = false;
    loop {
        let frame = ws.next().await.ok_or("the server closed during the socket.io handshake")?.map_err(|e| e.to_string())?;
        let Message::Text(text) = frame else { continue };
        if text.starts_with('0') && !opened {
            opened = true;
            ws.send(Message::Text("40".into())).await.map_err(|e| e.to_string())?;
        } else if text.starts_with("40") && opened {
            return Ok(());
        } else if text.starts_with("44") {
            return Err(format!("socket.io refused the connection: {text}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plaza_shared::messages::{Ping, ServerMessage};

    #[test]
    fn socketio_events_carry_plaza_json() {
        let Message::Text(packet) = Wire::SocketIo.encode(&ClientMessage::Ping(Ping { t: 17 })) else { panic!("text expected") };
        assert_eq!(packet.as_str(), r#"42["m",{"type":"ping","t":17}]"#);
        let reply = br#"42["m",{"type":"pong","t":17,"server_time":5}]"#;
        match Wire::SocketIo.decode(reply) {
            Decoded::Message(ServerMessage::Pong(p)) => assert_eq!((p.t, p.server_time), (17, 5)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn socketio_pings_are_answered_and_housekeeping_skipped() {
        assert!(matches!(Wire::SocketIo.decode(b"2"), Decoded::Reply(Message::Text(t)) if t.as_str() == "3"));
        assert!(matches!(Wire::SocketIo.decode(br#"0{"sid":"x","pingInterval":25000}"#), Decoded::Skip));
        assert!(matches!(Wire::SocketIo.decode(br#"40{"sid":"y"}"#), Decoded::Skip));
    }

    #[test]
    fn other_socketio_events_are_errors_that_say_what_came() {
        match Wire::SocketIo.decode(br#"42["other",1]"#) {
            Decoded::Error(e) => assert!(e.contains("not a socket.io event"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(Wire::SocketIo.decode(br#"42["m",{"type":"nope"}]"#), Decoded::Error(_)));
    }
}
