//! A TCP stream that knows when the kernel received what it last read.
//!
//! On this 2-core box the load tool shares the CPU with the server, and
//! when the machine is busy a simulated user may read a delta well after it
//! reached its socket. A real client reads on its own device. Each read
//! here asks for the kernel's receive time of its bytes (`SO_TIMESTAMPNS`,
//! handed back with `recvmsg`), so a run can tell how much of a pose's
//! latency is the load tool being late to read (docs/load.md, "Latency at
//! the socket").

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use std::io::{self, IoSliceMut, Write};
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct StampedStream {
    io: AsyncFd<std::net::TcpStream>,
    /// Receive time (µs since the Unix epoch) of the newest bytes read, when
    /// the kernel gave one.
    arrived_us: Option<u64>,
    cmsg: Vec<u8>,
}

impl StampedStream {
    /// Wraps a connected stream: no Nagle, receive timestamps on.
    pub fn new(stream: tokio::net::TcpStream) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        // Stays non-blocking, as AsyncFd needs.
        let stream = stream.into_std()?;
        setsockopt(&stream, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)?;
        // `AsyncFd::new` is deprecated because a `T` whose descriptor it
        // doesn't own could have it closed while registered; a TcpStream
        // owns its descriptor, and the AsyncFd owns the TcpStream.
        #[allow(deprecated)]
        let io = AsyncFd::new(stream)?;
        Ok(StampedStream { io, arrived_us: None, cmsg: nix::cmsg_space!(nix::sys::time::TimeSpec) })
    }

    /// When the bytes of the newest read reached the socket. A frame handed
    /// out after a read was completed by it or an earlier one, so this is
    /// never earlier than the frame's true arrival. `None` before the first
    /// stamped read (the kernel turns stamping on a moment after it is asked).
    pub fn arrived_us(&self) -> Option<u64> {
        self.arrived_us
    }
}

impl AsyncRead for StampedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.io.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let len = unfilled.len();
            let cmsg = &mut this.cmsg;
            let read = guard.try_io(|io| {
                let mut iov = [IoSliceMut::new(unfilled)];
                let msg = recvmsg::<()>(std::os::fd::AsRawFd::as_raw_fd(io.get_ref()), &mut iov, Some(cmsg), MsgFlags::empty()).map_err(io::Error::from)?;
                let mut stamp = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmTimestampns(t) = c {
                            stamp = Some((t.tv_sec() as u64).saturating_mul(1_000_000) + (t.tv_nsec() as u64) / 1_000);
                        }
                    }
                }
                Ok((msg.bytes, stamp))
            });
            match read {
                Ok(Ok((n, stamp))) => {
                    if n > 0 && stamp.is_some() {
                        this.arrived_us = stamp;
                    }
                    // As tokio's TcpStream does: a short read drained the
                    // socket, so wait for the next readiness instead of
                    // paying a syscall to hear "would block".
                    if n > 0 && n < len {
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for StampedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.io.poll_write_ready(cx))?;
            match guard.try_io(|io| io.get_ref().write(buf)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(())) // no buffer of our own
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match self.io.get_ref().shutdown(Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
            _ => Ok(()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_and_writes_and_stamps_each_read_with_the_kernels_receive_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let mut ours = StampedStream::new(client.unwrap()).unwrap();
        let (mut peer, _) = accepted.unwrap();
        // Stamping is switched on in the kernel a moment after it is asked
        // for; keep sending until a read carries a stamp.
        let mut stamped = None;
        for _ in 0..100 {
            peer.write_all(b"ping").await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            let read_at = crate::user::unix_us();
            let mut buf = [0u8; 16];
            let n = ours.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"ping");
            if let Some(at) = ours.arrived_us() {
                stamped = Some((at, read_at));
                break;
            }
        }
        let (arrived, read_at) = stamped.expect("no read carried a receive timestamp");
        // It arrived before we read it, by about the 30 ms we slept.
        assert!(arrived <= read_at, "arrived {arrived} after read {read_at}");
        assert!(read_at - arrived >= 20_000, "stamp only {} µs before the read", read_at - arrived);
        assert!(read_at - arrived < 5_000_000);

        ours.write_all(b"pong").await.unwrap();
        let mut back = [0u8; 4];
        peer.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong");
        ours.shutdown().await.unwrap();
        assert_eq!(peer.read(&mut back).await.unwrap(), 0, "shutdown ends our side");
    }
}
