//! A hello carried in the WebSocket upgrade request: a connect or a resume
//! takes one round trip less.
//!
//! With the hello in a frame, a socket costs the upgrade's round trip and
//! then the hello's: the server can't say `welcome` (or, for a resume, send
//! the room's state back) before the frame arrives. With it in the upgrade
//! request, the server sends `welcome` (and the state) right behind its
//! `101`. At a 1 s round trip a resume's state is back a second sooner.
//!
//! Optional on both sides. A client asks with `Authorization: Bearer
//! <access token>`, and `Plaza-Resume: <session>` to resume, on the upgrade
//! request. A server that took them as the hello says so with
//! `Plaza-Hello: taken` on its `101`; the client then sends no hello frame.
//! `Plaza-Join: <room>` rides the same way (`Plaza-Join: taken`): the room
//! to join when no seat is resumed, so a first join is in its room with the
//! 101 too, where a join frame could only go after the 101 (a client sends
//! no frame before it). Without those answers (an older server) the client
//! sends its hello and join frames as before. Browsers can't set headers on a WebSocket; they send the
//! frame. The rest is the same either way: a bad token closes with 4001,
//! a resume that finds no seat gets a new `session`.

use crate::limits::PROTOCOL_VERSION;
use crate::messages::{ClientMessage, Hello, Join};

/// The request header with the access token: `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";
/// The request header with the `session` to resume.
pub const RESUME: &str = "plaza-resume";
/// The request header with the room to join when there is no seat to
/// resume (a fresh socket, or a resume that found none).
pub const JOIN: &str = "plaza-join";
/// The response headers that say the server took the hello, and the join,
/// from the request's headers; their value.
pub const TAKEN: &str = "plaza-hello";
pub const JOIN_TAKEN: &str = "plaza-join";
pub const TAKEN_VALUE: &str = "taken";

/// Longest `Plaza-Resume` taken (sessions are 16 characters).
pub const RESUME_MAX_CHARS: usize = 128;

/// The `Authorization` value for `token`.
pub fn authorization(token: &str) -> String {
    format!("Bearer {token}")
}

/// What an upgrade request's headers carry.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderHello {
    pub hello: Hello,
    /// The room to join when no seat is resumed.
    pub join: Option<String>,
}

/// The hello (and join) in an upgrade request's headers. `None` without a
/// `Bearer` `Authorization` header (the hello comes as a frame): another
/// scheme is not ours (a proxy in front may use Basic for itself) and is
/// left alone. An error that says what is wrong and what is allowed when a
/// `Bearer` token, `Plaza-Resume` or `Plaza-Join` is malformed.
pub fn from_headers(authorization: Option<&[u8]>, resume: Option<&[u8]>, join: Option<&[u8]>) -> Result<Option<HeaderHello>, String> {
    let Some(token) = authorization.and_then(|v| std::str::from_utf8(v).ok()).and_then(bearer) else {
        return match (resume, join) {
            (Some(_), _) => Err("Plaza-Resume needs Authorization: Bearer <access token> beside it (or send both in the hello frame)".into()),
            (_, Some(_)) => Err("Plaza-Join needs Authorization: Bearer <access token> beside it (or send the join as a frame after the hello)".into()),
            (None, None) => Ok(None),
        };
    };
    let resume = match resume {
        None => None,
        Some(raw) => {
            let session = std::str::from_utf8(raw).ok().map(str::trim).filter(|s| !s.is_empty() && s.len() <= RESUME_MAX_CHARS && s.bytes().all(|b| b.is_ascii_graphic()));
            Some(session.ok_or_else(|| format!("Plaza-Resume must be the session of an earlier welcome: 1–{RESUME_MAX_CHARS} visible ASCII characters"))?.to_owned())
        }
    };
    let hello = Hello { token: token.to_owned(), protocol: PROTOCOL_VERSION, resume };
    ClientMessage::Hello(hello.clone()).validate().map_err(|e| format!("Authorization: {}", e.message))?;
    let join = match join {
        None => None,
        Some(raw) => {
            let room = std::str::from_utf8(raw).map_err(|_| "Plaza-Join must be a room id or name in UTF-8".to_owned())?.trim().to_owned();
            ClientMessage::Join(Join { room: room.clone() }).validate().map_err(|e| format!("Plaza-Join: {}", e.message))?;
            Some(room)
        }
    };
    Ok(Some(HeaderHello { hello, join }))
}

/// `room` as a `Plaza-Join` value, when it can be one as it is: visible
/// ASCII and spaces. Other names go in a join frame.
pub fn join_header_value(room: &str) -> Option<&str> {
    (!room.is_empty() && header_safe(room) && room.trim() == room).then_some(room)
}

/// Whether `value` goes in a header as it is (visible ASCII and spaces).
fn header_safe(value: &str) -> bool {
    value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

/// The headers a client adds to its upgrade request: the hello (`token`,
/// and `resume` to take a seat back) and the room to `join` when no seat
/// is resumed. Both of the hello or neither: a token or session that
/// can't be a header value goes in the hello frame instead. The room only
/// when it can be one as it is ([`join_header_value`]).
pub fn request_headers(token: &str, resume: Option<&str>, join: Option<&str>) -> Vec<(&'static str, String)> {
    if !header_safe(token) || !resume.is_none_or(header_safe) {
        return Vec::new();
    }
    let mut headers = vec![(AUTHORIZATION, authorization(token))];
    headers.extend(resume.map(|session| (RESUME, session.to_owned())));
    headers.extend(join.and_then(join_header_value).map(|room| (JOIN, room.to_owned())));
    headers
}

/// What the server took from the upgrade request's headers, as its 101
/// says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Taken {
    /// The hello: send no hello frame.
    pub hello: bool,
    /// The join: send no join frame; the server joins when no seat is
    /// resumed.
    pub join: bool,
}

impl Taken {
    /// Read from the 101's headers (`header` gives a header's value by name).
    pub fn from_response<'a>(header: impl Fn(&str) -> Option<&'a [u8]>) -> Taken {
        let said = |name: &str| header(name) == Some(TAKEN_VALUE.as_bytes());
        Taken { hello: said(TAKEN), join: said(JOIN_TAKEN) }
    }
}

/// The token of a `Bearer` credential (the scheme's case aside), if it is one.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_authorization_is_no_hello_and_a_resume_alone_is_an_error() {
        assert_eq!(from_headers(None, None, None), Ok(None));
        let e = from_headers(None, Some(b"abc"), None).unwrap_err();
        assert!(e.contains("Plaza-Resume needs Authorization"), "{e}");
    }

    #[test]
    fn a_bearer_token_and_a_session_make_the_hello() {
        let got = from_headers(Some(b"Bearer t0k.en"), Some(b"s3ss10n"), Some("Café plaza".as_bytes())).unwrap().unwrap();
        assert_eq!(got.hello, Hello { token: "t0k.en".into(), protocol: PROTOCOL_VERSION, resume: Some("s3ss10n".into()) });
        assert_eq!(got.join.as_deref(), Some("Café plaza"));
        let fresh = from_headers(Some(authorization("abc").as_bytes()), None, None).unwrap().unwrap();
        assert_eq!(fresh.hello.resume, None);
        assert_eq!(fresh.hello.token, "abc");
        assert_eq!(fresh.join, None);
    }

    #[test]
    fn another_scheme_is_not_ours_but_a_resume_beside_it_is_an_error() {
        for other in [&b"Basic dXNlcjpwYXNz"[..], b"\xff\xfe", b"Bearerabc"] {
            assert_eq!(from_headers(Some(other), None, None), Ok(None), "{other:?}");
            let e = from_headers(Some(other), Some(b"s3ss10n"), None).unwrap_err();
            assert!(e.contains("Plaza-Resume needs Authorization: Bearer"), "{e}");
            let e = from_headers(Some(other), None, Some(b"lobby")).unwrap_err();
            assert!(e.contains("Plaza-Join needs Authorization: Bearer"), "{e}");
        }
        assert_eq!(from_headers(Some(b"bearer abc"), None, None).unwrap().unwrap().hello.token, "abc", "the scheme's case doesn't matter");
    }

    #[test]
    fn malformed_headers_say_what_is_allowed() {
        for empty in [&b"Bearer"[..], b"Bearer ", b"bearer   "] {
            let e = from_headers(Some(empty), None, None).unwrap_err();
            assert!(e.contains("empty"), "{empty:?}: {e}");
        }
        let long = format!("Bearer {}", "x".repeat(4097));
        let e = from_headers(Some(long.as_bytes()), None, None).unwrap_err();
        assert!(e.contains("at most 4096"), "{e}");
        for bad in [&b""[..], b"a b", &[b'x'; RESUME_MAX_CHARS + 1]] {
            let e = from_headers(Some(b"Bearer abc"), Some(bad), None).unwrap_err();
            assert!(e.contains("1–128 visible ASCII"), "{bad:?}: {e}");
        }
        let e = from_headers(Some(b"Bearer abc"), None, Some(b"  ")).unwrap_err();
        assert!(e.contains("Plaza-Join: room is empty"), "{e}");
        let long_room = "r".repeat(crate::limits::ROOM_NAME_MAX_CHARS + 1);
        let e = from_headers(Some(b"Bearer abc"), None, Some(long_room.as_bytes())).unwrap_err();
        assert!(e.contains("Plaza-Join: room has"), "{e}");
        let e = from_headers(Some(b"Bearer abc"), None, Some(b"\xff")).unwrap_err();
        assert!(e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn a_client_sends_the_hello_headers_both_or_neither_and_a_plain_room() {
        let names = |h: Vec<(&'static str, String)>| h.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(request_headers("t0k", Some("s3ss"), Some("lobby")), vec![(AUTHORIZATION, "Bearer t0k".to_owned()), (RESUME, "s3ss".to_owned()), (JOIN, "lobby".to_owned())]);
        assert_eq!(names(request_headers("t0k", None, Some("Café"))), vec![AUTHORIZATION], "the room goes as a frame");
        assert_eq!(request_headers("t0k", Some("séance"), Some("lobby")), vec![], "a session that can't be a header: all as frames");
        assert_eq!(request_headers("t\u{1}k", None, None), vec![]);
        // What the client sends, the server reads back.
        let sent = request_headers("t0k", Some("s3ss"), Some("the garden"));
        let get = |name: &str| sent.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_bytes());
        let read = from_headers(get(AUTHORIZATION), get(RESUME), get(JOIN)).unwrap().unwrap();
        assert_eq!((read.hello.token.as_str(), read.hello.resume.as_deref(), read.join.as_deref()), ("t0k", Some("s3ss"), Some("the garden")));
    }

    #[test]
    fn the_101_says_what_was_taken() {
        let taken = |headers: &[(&str, &'static str)]| Taken::from_response(|name| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_bytes()));
        assert_eq!(taken(&[]), Taken::default());
        assert_eq!(taken(&[(TAKEN, TAKEN_VALUE)]), Taken { hello: true, join: false });
        assert_eq!(taken(&[(TAKEN, TAKEN_VALUE), (JOIN_TAKEN, TAKEN_VALUE)]), Taken { hello: true, join: true });
        assert_eq!(taken(&[(TAKEN, "no")]), Taken::default());
    }

    #[test]
    fn only_plain_names_go_in_the_join_header() {
        assert_eq!(join_header_value("load-1"), Some("load-1"));
        assert_eq!(join_header_value("the garden"), Some("the garden"));
        assert_eq!(join_header_value("Café"), None);
        assert_eq!(join_header_value(" padded"), None);
        assert_eq!(join_header_value(""), None);
    }
}
