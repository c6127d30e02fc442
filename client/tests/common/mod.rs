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

/// A server that stops (drains) and comes back on the same port with the
/// same config: the same token secret, and the same store when the config
/// names one. A restart, as a player sees it.
pub struct RestartableServer {
    pub addr: SocketAddr,
    config: plaza_server::ServerConfig,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<Result<(), plaza_server::RunError>>>,
}

impl RestartableServer {
    pub async fn start(config: plaza_server::ServerConfig) -> RestartableServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut server = RestartableServer { addr: listener.local_addr().unwrap(), config, stop: None, running: None };
        server.serve(listener);
        server
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drains it; returns once it has stopped.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = self.running.take() {
            let _ = running.await;
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self.stop = Some(stop);
        self.running = Some(tokio::spawn(plaza_server::run(self.config.clone(), listener, async {
            let _ = stopped.await;
        })));
    }
}
