//! What an idle socket in a room costs the server's heap. The load issue
//! asks for at most 30 KB of RSS per connection; it read 17.6 KB in
//! session 9 and had crept to 40 KB by session 24 unnoticed: each message
//! handler's future (the store's, the room's, the SFU's, kilobytes each)
//! had become part of every socket's task, 97 KB of future per socket.
//! This counts the heap itself, which is exact where RSS is noisy: live
//! bytes through a counting allocator, before and after 150 sockets join.
//! Its own binary: the allocator is the process's.
// A counting allocator is a `GlobalAlloc`, an unsafe trait; it forwards to
// `System` and counts.
#![allow(unsafe_code)]

mod common;

use common::TestServer;
use plaza_shared::upgrade_hello;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes allocated and not yet freed, process-wide.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is passed to `System` unchanged; only a counter moves.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SOCKETS: usize = 150;
/// The heap an idle socket in a room of 150 may hold on the server.
/// Measured (session 24, debug and release alike) at 18.0 KB: the socket's
/// two tasks (5.7 KB), its session's future (2.3 KB), tungstenite's write
/// buffer, grown to the room's state (about 3 KB here), and its read buffer
/// (1 KB), two queues (1.6 KB), the room's member. Before the message
/// handlers' futures were boxed it was 38.7 KB in a debug build, and the
/// release build's socket future alone was 97 KB.
const MAX_BYTES_PER_SOCKET: isize = 24 * 1024;

/// A socket that upgrades with the hello and the join in its headers, as
/// the client does, then only drains what the server sends: the client
/// side holds a TCP stream and nothing else on the heap.
async fn joined_socket(server: &TestServer, token: &str, room: &str) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: plaza.v1.bin\r\n",
        server.addr
    );
    for (name, value) in upgrade_hello::request_headers(token, None, Some(room)) {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 512];
    let n = tcp.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head[..n]));
    tcp
}

/// Reads whatever has arrived on every socket, without waiting.
fn drain(sockets: &[tokio::net::TcpStream]) {
    let mut sink = [0u8; 4096];
    for s in sockets {
        while matches!(s.try_read(&mut sink), Ok(n) if n > 0) {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_socket_in_a_room_holds_little_of_the_servers_heap() {
    let server = TestServer::start().await;
    let token = server.token("mem").await;
    let (status, _, body) = server.http("POST", "/api/v1/rooms", r#"{"name":"mem","capacity":200}"#, &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(status, 201, "{body}");
    // Warm up: one socket in and out, so what is made once (the room, lazy
    // statics, the runtime's buffers) is made before counting.
    let first = joined_socket(&server, &token, "mem").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drain(std::slice::from_ref(&first));

    let before = LIVE.load(Ordering::Relaxed);
    let mut sockets = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        sockets.push(joined_socket(&server, &token, "mem").await);
        drain(&sockets);
    }
    // Everyone in, and every join's delta sent and read.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.room_users("mem").await != Some(SOCKETS as u64 + 1) {
        assert!(tokio::time::Instant::now() < deadline, "not all {SOCKETS} joined: {:?}", server.room_users("mem").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drain(&sockets);
    }
    let after = LIVE.load(Ordering::Relaxed);
    let per_socket = (after - before) / SOCKETS as isize;
    eprintln!("heap per idle socket in a room: {per_socket} bytes ({SOCKETS} sockets; {before} → {after} bytes live)");
    assert!(per_socket <= MAX_BYTES_PER_SOCKET, "{per_socket} bytes of heap per socket (at most {MAX_BYTES_PER_SOCKET})");
    assert!(per_socket > 1024, "{per_socket} bytes per socket: the sockets are not being counted");
    drop(sockets);
}
