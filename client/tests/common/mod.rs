//! What the client's network tests share.

use std::net::SocketAddr;
use tokio::net::TcpListener;

/// A real server on 127.0.0.1 (any free port) until the sender is dropped
/// or sent to.
pub async fn server(config: plaza_server::ServerConfig) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(plaza_server::run(config, listener, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}
