//! Whether a socket's peer can still be reached, read from the kernel's TCP
//! state.
//!
//! A member whose deltas back up is one of two things. A slow reader (an app
//! that froze, a link too thin for the room) still has a TCP stack that
//! acknowledges what arrives, even while its window is shut; the room closes
//! it with 4009 and lets its seat go. A link gone silent (Wi-Fi lost, a cable
//! pulled, a NAT that forgot the flow) acknowledges nothing: data waits,
//! retransmitted, and nothing comes back. Its client notices the silence too
//! (the desktop client after 8 s) and resumes on a new socket, so the seat
//! must still be there: such a member is detached, as a socket that dropped
//! is, not closed. In a 40-user room the backlog reached the 4009 in 7.6 s,
//! before the client's 8 s (docs/benchmarks.md, session 21).
//!
//! The workspace denies `unsafe`; this module is an exception for one
//! `getsockopt(TCP_INFO)`, with its reason beside it.
#![allow(unsafe_code)]

use std::time::Duration;

/// Nothing acknowledged for this long, with data waiting for an
/// acknowledgement: the peer is out of reach. A slow reader's stack answers
/// the window probes; a lossy but live link retransmits within a second or
/// two (at a 1 s round trip, a loss costs a 1.2 s stall). A room closes a
/// slow member after 3 s of full queue and 2 s of skipped ticks, so a
/// silent link has been silent longer than this by then.
pub const SILENT_AFTER: Duration = Duration::from_secs(3);

/// The accepted TCP socket under a WebSocket, by its descriptor number.
/// Requests carry it as an extension (crate::serve); the gateway hands it
/// to the room with the member's link.
///
/// Only the number is kept, not a borrow: the room asks while the socket's
/// writer still holds its queue, and so the socket. If the socket closed
/// in between, the number names nothing (an error: [`Reach::Unknown`]) or,
/// reused, another socket: a wrong answer for a member already on its way
/// out, and never a memory error (the kernel checks the descriptor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSocket {
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fd: i32,
}

/// What the kernel says about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// It acknowledged something lately, or nothing of ours waits for it.
    Answering,
    /// Data waits for an acknowledgement that has not come for this long.
    Silent(Duration),
    /// Not a TCP socket, not Linux, or the question failed.
    Unknown,
}

impl PeerSocket {
    #[cfg(unix)]
    pub fn of(stream: &tokio::net::TcpStream) -> Self {
        use std::os::fd::AsRawFd;
        PeerSocket { fd: stream.as_raw_fd() }
    }

    #[cfg(not(unix))]
    pub fn of(_stream: &tokio::net::TcpStream) -> Self {
        PeerSocket { fd: -1 }
    }

    /// Whether the peer still answers ([`SILENT_AFTER`] decides).
    pub fn reach(&self) -> Reach {
        match self.ack_state() {
            Some((unacked, since_ack)) => classify(unacked, since_ack),
            None => Reach::Unknown,
        }
    }

    /// Segments sent and not yet acknowledged, and the time since the last
    /// acknowledgement came.
    #[cfg(target_os = "linux")]
    fn ack_state(&self) -> Option<(u32, Duration)> {
        // SAFETY: `tcp_info` is plain integers: all-zero is a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `info`, which is
        // that big, and says how many it wrote. The descriptor is only a
        // number to the kernel (see the type's docs).
        let rc = unsafe { libc::getsockopt(self.fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len) };
        // Older kernels fill less; the two fields read here are old ones.
        let needed = std::mem::offset_of!(libc::tcp_info, tcpi_last_ack_recv) + std::mem::size_of::<u32>();
        (rc == 0 && len as usize >= needed).then(|| (info.tcpi_unacked, Duration::from_millis(info.tcpi_last_ack_recv.into())))
    }

    #[cfg(not(target_os = "linux"))]
    fn ack_state(&self) -> Option<(u32, Duration)> {
        None
    }
}

fn classify(unacked: u32, since_ack: Duration) -> Reach {
    if unacked > 0 && since_ack >= SILENT_AFTER { Reach::Silent(since_ack) } else { Reach::Answering }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn silent_only_with_data_waiting_and_no_ack_for_long() {
        assert_eq!(classify(0, Duration::from_secs(60)), Reach::Answering, "a shut window with everything acknowledged is a slow reader");
        assert_eq!(classify(3, Duration::from_millis(2_999)), Reach::Answering);
        assert_eq!(classify(3, SILENT_AFTER), Reach::Silent(SILENT_AFTER));
    }

    /// A live peer on loopback answers: both when it reads, and when it has
    /// stopped reading and its window is shut (a slow reader).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_live_peer_answers_even_when_it_stops_reading() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let mut stream = socket.connect(addr).await.unwrap();
            let mut first = [0u8; 16];
            stream.read_exact(&mut first).await.unwrap();
            // Then it stops reading, and holds the socket open.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let peer = PeerSocket::of(&server);
        server.write_all(&[7u8; 16]).await.unwrap();
        assert_eq!(peer.reach(), Reach::Answering);
        // Fill its window: writes stop completing.
        let chunk = [1u8; 4096];
        while tokio::time::timeout(Duration::from_millis(200), server.write_all(&chunk)).await.is_ok() {}
        assert_eq!(peer.reach(), Reach::Answering, "a shut window is not silence");
        client.abort();
    }

    #[test]
    fn not_a_socket_is_unknown() {
        assert_eq!(PeerSocket { fd: -1 }.reach(), Reach::Unknown);
    }
}
