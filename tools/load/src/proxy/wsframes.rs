//! WebSocket framing for `--loss-mode message`: one direction's bytes go
//! through a [`FrameFilter`], which passes the HTTP head, then reads frame
//! headers (RFC 6455 §5.2) and leaves out whole data messages when asked to.
//!
//! - The head passes untouched. The stream is WebSocket only after an
//!   upgrade: a request with `Upgrade: websocket` (client side), a `101`
//!   status (server side). Anything else (a plain HTTP exchange, a head
//!   longer than [`HEAD_MAX`]) passes untouched to its end.
//! - A text or binary frame with FIN set (a whole message) is dropped when
//!   the caller's `lose` says so: its header and payload both vanish.
//!   Control frames (close, ping, pong), fragments (FIN clear, and
//!   continuations), compressed frames (RSV1) and reserved opcodes always
//!   pass.
//! - Frames may be split anywhere across reads. Only a frame's header (at
//!   most 14 bytes) is held back until complete; payloads stream through
//!   as they come, so memory stays bounded whatever a frame's length.
//!
//! Masked (client) frames are read the same way; payloads are never looked at.

/// An HTTP head longer than this is not an upgrade we follow: raw from there on.
pub const HEAD_MAX: usize = 16 * 1024;
/// The longest frame header: 2 + 8 (length) + 4 (mask).
const HEADER_MAX: usize = 14;

/// Whose bytes a filter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client's: an HTTP request, then masked frames.
    Client,
    /// The server's: an HTTP response, then frames.
    Server,
}

/// What a filter has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterStats {
    /// Whole data messages (text or binary, FIN set) seen.
    pub messages: u64,
    /// Of those, left out.
    pub dropped: u64,
    /// Control frames (close, ping, pong) passed.
    pub control: u64,
}

#[derive(Debug, Clone)]
enum State {
    /// Reading the HTTP head (kept, to decide what follows).
    Head(Vec<u8>),
    /// Between frames: a header's first `len` bytes.
    Header { buf: [u8; HEADER_MAX], len: usize },
    /// Inside a payload: `left` bytes more, passed or left out.
    Payload { left: u64, keep: bool },
    /// Not WebSocket: everything passes.
    Raw,
}

/// One direction's WebSocket filter.
#[derive(Debug, Clone)]
pub struct FrameFilter {
    side: Side,
    state: State,
    stats: FilterStats,
}

impl FrameFilter {
    /// A filter for a connection from its first byte (HTTP head first).
    pub fn new(side: Side) -> Self {
        FrameFilter { side, state: State::Head(Vec::new()), stats: FilterStats::default() }
    }

    /// A filter for a stream that is already WebSocket frames.
    pub fn frames_only(side: Side) -> Self {
        FrameFilter { side, state: State::Header { buf: [0; HEADER_MAX], len: 0 }, stats: FilterStats::default() }
    }

    pub fn stats(&self) -> FilterStats {
        self.stats
    }

    /// True once the stream is WebSocket frames.
    pub fn is_websocket(&self) -> bool {
        matches!(self.state, State::Header { .. } | State::Payload { .. })
    }

    /// Appends to `out` what of `input` passes. `lose` is asked once per
    /// whole data message, at its header: `true` leaves it out.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>, lose: &mut impl FnMut() -> bool) {
        while !input.is_empty() {
            match &mut self.state {
                State::Raw => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Head(head) => {
                    let old = head.len();
                    let take = input.len().min(HEAD_MAX - old);
                    head.extend_from_slice(&input[..take]);
                    let from = old.saturating_sub(3);
                    if let Some(p) = find(&head[from..], b"\r\n\r\n") {
                        let end = from + p + 4;
                        let used = end - old;
                        out.extend_from_slice(&input[..used]);
                        input = &input[used..];
                        let upgraded = match self.side {
                            Side::Client => requests_websocket(&head[..end]),
                            Side::Server => switches_protocols(&head[..end]),
                        };
                        self.state = if upgraded { State::Header { buf: [0; HEADER_MAX], len: 0 } } else { State::Raw };
                    } else if head.len() >= HEAD_MAX {
                        self.state = State::Raw;
                    } else {
                        out.extend_from_slice(input);
                        return;
                    }
                }
                State::Header { buf, len } => {
                    let need = header_len(&buf[..*len]);
                    let take = (need - *len).min(input.len());
                    buf[*len..*len + take].copy_from_slice(&input[..take]);
                    *len += take;
                    input = &input[take..];
                    // The length field is known once the first two bytes are.
                    if *len < header_len(&buf[..*len]) {
                        continue;
                    }
                    let (copy, n) = (*buf, *len);
                    let header = &copy[..n];
                    let (fin, rsv1, opcode) = (header[0] & 0x80 != 0, header[0] & 0x40 != 0, header[0] & 0x0F);
                    let keep = match opcode {
                        0x1 | 0x2 if fin && !rsv1 => {
                            self.stats.messages += 1;
                            let dropped = lose();
                            self.stats.dropped += u64::from(dropped);
                            !dropped
                        }
                        0x8..=0xA => {
                            self.stats.control += 1;
                            true
                        }
                        _ => true,
                    };
                    if keep {
                        out.extend_from_slice(header);
                    }
                    let left = payload_len(header);
                    self.state = if left == 0 { State::Header { buf: [0; HEADER_MAX], len: 0 } } else { State::Payload { left, keep } };
                }
                State::Payload { left, keep } => {
                    let n = input.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    if *keep {
                        out.extend_from_slice(&input[..n]);
                    }
                    *left -= n as u64;
                    input = &input[n..];
                    if *left == 0 {
                        self.state = State::Header { buf: [0; HEADER_MAX], len: 0 };
                    }
                }
            }
        }
    }
}

/// The header's full length once its first two bytes are known (2 before).
fn header_len(start: &[u8]) -> usize {
    if start.len() < 2 {
        return 2;
    }
    let ext = match start[1] & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if start[1] & 0x80 != 0 { 4 } else { 0 }
}

fn payload_len(header: &[u8]) -> u64 {
    match header[1] & 0x7F {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => u64::from_be_bytes(header[2..10].try_into().unwrap_or([0; 8])),
        n => u64::from(n),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `HTTP/1.1 101 …`
fn switches_protocols(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    words.next().is_some_and(|v| v.starts_with(b"HTTP/")) && words.next() == Some(b"101")
}

/// A request with an `Upgrade: websocket` header.
fn requests_websocket(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').skip(1).any(|line| {
        let line = String::from_utf8_lossy(line);
        line.split_once(':').is_some_and(|(name, value)| name.trim().eq_ignore_ascii_case("upgrade") && value.trim().eq_ignore_ascii_case("websocket"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;
    const CLOSE: u8 = 0x8;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xA;

    /// One frame as a peer would write it.
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n <= 0xFFFF => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                f.extend_from_slice(&key);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }

    fn payload(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// (frame bytes, is a whole data message) for a mixed stream: short,
    /// 16-bit and 64-bit lengths, control frames between and inside a
    /// fragmented message, empty payloads.
    fn stream(mask: Option<[u8; 4]>) -> Vec<(Vec<u8>, bool)> {
        vec![
            (frame(true, BINARY, &payload(20, 1), mask), true),
            (frame(true, PING, b"p1", mask), false),
            (frame(true, TEXT, b"hello", mask), true),
            (frame(true, BINARY, &payload(300, 2), mask), true),
            (frame(false, TEXT, b"frag-", mask), false),
            (frame(true, PONG, b"", mask), false),
            (frame(true, 0x0, b"ment", mask), false),
            (frame(true, BINARY, &payload(70_000, 3), mask), true),
            (frame(true, BINARY, b"", mask), true),
            (frame(true, TEXT, &payload(125, 4), mask), true),
            (frame(true, BINARY, &payload(126, 5), mask), true),
            (frame(true, CLOSE, &[0x03, 0xE8], mask), false),
        ]
    }

    /// Feeds `input` in pieces of awkward sizes (1, 2, 3, 5, 7, 13, …).
    fn feed_split(filter: &mut FrameFilter, input: &[u8], lose: &mut impl FnMut() -> bool) -> Vec<u8> {
        let sizes = [1, 2, 3, 5, 7, 13, 1, 1, 64, 1447, 9, 2, 4096];
        let mut out = Vec::new();
        let (mut at, mut k) = (0, 0);
        while at < input.len() {
            let n = sizes[k % sizes.len()].min(input.len() - at);
            filter.feed(&input[at..at + n], &mut out, lose);
            at += n;
            k += 1;
        }
        out
    }

    #[test]
    fn exactly_the_dropped_messages_are_missing() {
        for mask in [None, Some([0x12, 0x34, 0x56, 0x78])] {
            let frames = stream(mask);
            let input: Vec<u8> = frames.iter().flat_map(|(f, _)| f.clone()).collect();
            // Drop the 2nd, 4th and 5th whole messages.
            let doomed = [2, 4, 5];
            let mut asked = 0;
            let mut lose = || {
                asked += 1;
                doomed.contains(&asked)
            };
            let mut filter = FrameFilter::frames_only(if mask.is_some() { Side::Client } else { Side::Server });
            let out = feed_split(&mut filter, &input, &mut lose);
            let mut n = 0;
            let expected: Vec<u8> = frames
                .iter()
                .filter(|(_, message)| {
                    n += u32::from(*message);
                    !(*message && doomed.contains(&n))
                })
                .flat_map(|(f, _)| f.clone())
                .collect();
            assert_eq!(out.len(), expected.len());
            assert!(out == expected, "mask {mask:?}: the output differs");
            assert_eq!(filter.stats(), FilterStats { messages: 7, dropped: 3, control: 3 });
        }
    }

    #[test]
    fn control_frames_and_fragments_always_pass() {
        let frames = stream(None);
        let input: Vec<u8> = frames.iter().flat_map(|(f, _)| f.clone()).collect();
        let mut filter = FrameFilter::frames_only(Side::Server);
        let out = feed_split(&mut filter, &input, &mut || true);
        let expected: Vec<u8> = frames.iter().filter(|(_, message)| !message).flat_map(|(f, _)| f.clone()).collect();
        assert!(out == expected);
        assert_eq!(filter.stats(), FilterStats { messages: 7, dropped: 7, control: 3 });
    }

    #[test]
    fn without_loss_the_output_is_the_input() {
        let input: Vec<u8> = stream(Some([9, 8, 7, 6])).into_iter().flat_map(|(f, _)| f).collect();
        let mut filter = FrameFilter::frames_only(Side::Client);
        let out = feed_split(&mut filter, &input, &mut || false);
        assert!(out == input);
        // In one piece too.
        let mut out = Vec::new();
        FrameFilter::frames_only(Side::Client).feed(&input, &mut out, &mut || false);
        assert!(out == input);
    }

    #[test]
    fn the_upgrade_handshake_passes_and_frames_follow_it() {
        let response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n";
        let first = frame(true, BINARY, b"dropped", None);
        let ping = frame(true, PING, b"", None);
        // The first frame arrives in the same read as the end of the head.
        let input = [&response[..], &first, &ping].concat();
        let mut filter = FrameFilter::new(Side::Server);
        let out = feed_split(&mut filter, &input, &mut || true);
        assert!(out == [&response[..], &ping].concat());
        assert!(filter.is_websocket());

        let request = b"GET /ws HTTP/1.1\r\nHost: x\r\nupgrade:  WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: k\r\n\r\n";
        let hello = frame(true, TEXT, b"{\"type\":\"hello\"}", Some([1, 2, 3, 4]));
        let mut filter = FrameFilter::new(Side::Client);
        let mut out = Vec::new();
        filter.feed(&[&request[..], &hello].concat(), &mut out, &mut || false);
        assert!(out == [&request[..], &hello].concat());
        assert_eq!(filter.stats().messages, 1);
    }

    #[test]
    fn plain_http_is_never_touched() {
        // A body that looks like frames, after a response that is no upgrade.
        let body = frame(true, BINARY, b"not a frame", None);
        let response = [&format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes()[..], &body].concat();
        let mut filter = FrameFilter::new(Side::Server);
        assert!(feed_split(&mut filter, &response, &mut || true) == response);
        assert!(!filter.is_websocket());
        assert_eq!(filter.stats(), FilterStats::default());

        let request = [&b"POST /api/v1/auth/guest HTTP/1.1\r\nhost: x\r\ncontent-length: 13\r\n\r\n"[..], &body].concat();
        let mut filter = FrameFilter::new(Side::Client);
        assert!(feed_split(&mut filter, &request, &mut || true) == request);

        // A head that never ends: raw once it is too long, every byte kept.
        let endless = vec![b'a'; HEAD_MAX + 100];
        let mut filter = FrameFilter::new(Side::Server);
        assert!(feed_split(&mut filter, &endless, &mut || true) == endless);
    }
}
