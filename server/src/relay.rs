//! A socket whose room runs on another instance (crate::bus) is relayed
//! there. Its own instance keeps the socket, the hello, pings and rate
//! limits, and opens a WebSocket to the room's instance as the user (the
//! user's own token, which every instance can check, on the binary
//! subprotocol): it joins or resumes there, passes the room's messages
//! (poses, chat, leave, voice) up, and everything the room sends down. The
//! room's instance sees an ordinary member, so the room keeps one owner:
//! deltas, chat order, resume windows and the voice SFU all stay where the
//! room is.
//!
//! The two instances agree on the session id: the relaying instance asks
//! for its own ([`SESSION`]), signed with the shared token secret so a
//! client can't choose one, so a resume that arrives anywhere names the
//! same seat.

use crate::rooms::{MemberLink, Outbound};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use plaza_shared::codec::binary;
use plaza_shared::messages::{ClientMessage, ServerMessage, Welcome};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upgrade request headers: the session id the relaying instance gave the
/// client, and its signature (crate::auth::TokenKeys::sign_session).
pub const SESSION: &str = "plaza-session";
pub const SESSION_SIG: &str = "plaza-session-sig";
/// Connecting and the owner's first answers; a join waits on them.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
const CLOSE_WAIT: Duration = Duration::from_secs(1);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("can't reach the room's instance at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    /// It answered the upgrade with an HTTP error (full, draining): alive,
    /// so its rooms are not to be taken over.
    #[error("the room's instance at {url} refused the link: HTTP {status}")]
    Refused { url: String, status: u16 },
    #[error("the room's instance at {url} closed the link ({code}: {reason})")]
    Closed { url: String, code: u16, reason: String },
    #[error("the room's instance at {url} answered out of turn: {what}")]
    Protocol { url: String, what: String },
}

impl RelayError {
    /// Its `reason` label (crate::metrics::RELAY_FAILURE_REASONS).
    pub fn reason(&self) -> &'static str {
        match self {
            RelayError::Unreachable { .. } => "unreachable",
            RelayError::Refused { .. } => "refused",
            RelayError::Closed { .. } => "closed",
            RelayError::Protocol { .. } => "protocol",
        }
    }
}

/// How to reach the room's instance, and as whom.
#[derive(Debug)]
pub struct Dial<'a> {
    /// `http://host:port`, as the instance advertised it.
    pub url: &'a str,
    pub token: &'a str,
    /// The room to join (by id), when not resuming.
    pub join: Option<&'a str>,
    /// The session whose seat to take back.
    pub resume: Option<&'a str>,
    /// The session id to use, and its signature.
    pub session: Option<(&'a str, String)>,
}

/// What the owner answered: its welcome and, after a join or a resume
/// that worked, the room's full state (or the join's error).
#[derive(Debug)]
pub struct Answered {
    pub welcome: Welcome,
    /// `joined` after a join or resume that worked; `error` after a join
    /// that didn't; `None` after a resume that found no seat.
    pub next: Option<ServerMessage>,
    ws: Ws,
}

/// Opens the link and reads the owner's first answers; a failure is
/// counted (`plaza_relay_failures_total`).
pub async fn dial(d: Dial<'_>) -> Result<Answered, RelayError> {
    let dialed = dial_once(d).await;
    if let Err(e) = &dialed {
        metrics::counter!(crate::metrics::RELAY_FAILURES, "reason" => e.reason()).increment(1);
    }
    dialed
}

async fn dial_once(d: Dial<'_>) -> Result<Answered, RelayError> {
    let url = d.url.to_owned();
    let unreachable = |cause: String| RelayError::Unreachable { url: url.clone(), cause };
    let ws_url = format!("{}/ws", d.url.replacen("http", "ws", 1));
    let mut request = ws_url.into_client_request().map_err(|e| unreachable(e.to_string()))?;
    let headers = request.headers_mut();
    let mut put = |name: &'static str, value: &str| -> Result<(), RelayError> {
        let value = value.parse().map_err(|_| unreachable(format!("{name} can't be a header value")))?;
        headers.insert(name, value);
        Ok(())
    };
    put("sec-websocket-protocol", plaza_shared::codec::Subprotocol::Binary.name())?;
    let pairs = plaza_shared::upgrade_hello::request_headers(d.token, d.resume, d.join);
    if pairs.is_empty() {
        return Err(unreachable("the token can't travel in a header".into()));
    }
    for (name, value) in pairs {
        put(name, &value)?;
    }
    if let Some((session, sig)) = &d.session {
        put(SESSION, session)?;
        put(SESSION_SIG, sig)?;
    }
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let answered = tokio::time::timeout(DIAL_TIMEOUT, async {
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true).await.map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(response) => RelayError::Refused { url: url.clone(), status: response.status().as_u16() },
            e => unreachable(plaza_shared::errors::with_root_cause(&e)),
        })?;
        let welcome = match next_message(&mut ws, &url).await? {
            ServerMessage::Welcome(w) => w,
            other => return Err(RelayError::Protocol { url: url.clone(), what: format!("{} before welcome", other.type_name()) }),
        };
        // A resume that found no seat gets a new session and nothing more.
        let seat_gone = d.resume.is_some_and(|s| s != welcome.session);
        let next = match d.join.is_some() || d.resume.is_some() {
            true if !seat_gone => Some(next_message(&mut ws, &url).await?),
            _ => None,
        };
        Ok(Answered { welcome, next, ws })
    })
    .await
    .map_err(|_| unreachable(format!("no answer within {} s", DIAL_TIMEOUT.as_secs())))??;
    Ok(answered)
}

async fn next_message(ws: &mut Ws, url: &str) -> Result<ServerMessage, RelayError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(bytes))) => {
                return binary::decode_server(&bytes).map_err(|e| RelayError::Protocol { url: url.to_owned(), what: e.to_string() });
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                return Err(RelayError::Closed { url: url.to_owned(), code, reason });
            }
            Some(Ok(other)) => return Err(RelayError::Protocol { url: url.to_owned(), what: format!("a {other:?} frame") }),
            Some(Err(e)) => return Err(RelayError::Unreachable { url: url.to_owned(), cause: e.to_string() }),
            None => return Err(RelayError::Unreachable { url: url.to_owned(), cause: "the connection closed".into() }),
        }
    }
}

/// How the link to the room's instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamEnd {
    /// The owner closed it with this code (1001 when it drains).
    Closed(u16),
    /// It dropped without a close frame.
    Dropped,
    /// The socket's own queue closed (its writer stopped).
    ClientGone,
}

/// A live link to the instance running the socket's room.
pub struct Upstream {
    sink: SplitSink<Ws, Message>,
    ended: oneshot::Receiver<UpstreamEnd>,
    forward: tokio::task::JoinHandle<()>,
    /// The owner's instance id.
    pub instance: Arc<str>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("instance", &self.instance).finish_non_exhaustive()
    }
}

impl Answered {
    /// Starts passing what the owner sends to the socket's queue, in the
    /// socket's `protocol`.
    pub fn start(self, instance: Arc<str>, link: &MemberLink, protocol: plaza_shared::codec::Subprotocol) -> Upstream {
        let (sink, stream) = self.ws.split();
        let (ended_tx, ended) = oneshot::channel();
        let outbound = link.outbound.clone();
        let forward = tokio::spawn(async move {
            let _ = ended_tx.send(forward(stream, outbound, protocol == plaza_shared::codec::Subprotocol::Binary).await);
        });
        metrics::gauge!(crate::metrics::WS_RELAYED).increment(1.0);
        Upstream { sink, ended, forward, instance }
    }
}

/// Passes the owner's messages down, waiting for room in the socket's
/// queue: a socket that doesn't keep up backs the link up, and the owner
/// treats that as it treats any slow member. `binary_socket`: deltas, the
/// bulk of it, go down as the owner encoded them (decoding each and
/// encoding it again doubled the relaying instance's cost per user).
async fn forward(mut stream: SplitStream<Ws>, outbound: tokio::sync::mpsc::Sender<Outbound>, binary_socket: bool) -> UpstreamEnd {
    loop {
        let msg = match stream.next().await {
            Some(Ok(Message::Binary(bytes))) if binary_socket && binary::is_delta(&bytes) => {
                if outbound.send(Outbound::Frame(Box::new(bytes))).await.is_err() {
                    return UpstreamEnd::ClientGone;
                }
                continue;
            }
            Some(Ok(Message::Binary(bytes))) => match binary::decode_server(&bytes) {
                // The relaying instance answers the socket's pings and
                // warns of its token's expiry itself.
                Ok(ServerMessage::Pong(_) | ServerMessage::TokenExpiring(_)) => continue,
                Ok(msg) => msg,
                Err(e) => {
                    tracing::warn!(cause = %e, "a relayed message didn't decode; dropped");
                    continue;
                }
            },
            Some(Ok(Message::Close(frame))) => return UpstreamEnd::Closed(frame.map_or(1005, |f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return UpstreamEnd::Dropped,
        };
        if outbound.send(Outbound::Message(Arc::new(msg))).await.is_err() {
            return UpstreamEnd::ClientGone;
        }
    }
}

impl Upstream {
    /// Passes a message up; false when the link is gone (its end is
    /// reported by [`Upstream::ended`]).
    pub async fn send(&mut self, msg: &ClientMessage) -> bool {
        self.sink.send(Message::Binary(binary::encode_client(msg).into())).await.is_ok()
    }

    /// Resolves when the link ends.
    pub async fn ended(&mut self) -> UpstreamEnd {
        (&mut self.ended).await.unwrap_or(UpstreamEnd::Dropped)
    }

    /// Leaves: a close frame, so the owner lets the seat go.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_WAIT, self.sink.close()).await;
        // The owner answers with its close frame, which the forwarder reads.
        let _ = tokio::time::timeout(CLOSE_WAIT, &mut self.forward).await;
        self.forward.abort();
    }

    /// Goes without a close frame, so the owner holds the seat for a
    /// resume (the client's socket dropped, or this instance drains).
    pub fn drop_link(self) {}
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.forward.abort();
        metrics::gauge!(crate::metrics::WS_RELAYED).decrement(1.0);
    }
}
