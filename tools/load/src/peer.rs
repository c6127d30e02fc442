//! The socket.io baseline peer (`tools/peers/socketio/server.js`), started
//! as a child process on 127.0.0.1 and a free port for a ladder's steps.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const START_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{0} is missing; the socket.io peer lives in tools/peers/socketio (pass --peer-dir)")]
    Missing(PathBuf),
    #[error("{0}/node_modules is missing: run `npm ci` there first (Node 18 or newer)")]
    NotInstalled(PathBuf),
    #[error("can't start `node`: {0} (install Node.js 18 or newer; tools/setup.sh does)")]
    Spawn(std::io::Error),
    #[error("the socket.io peer did not say it was listening within {START_WAIT:?}: {0}")]
    NotUp(String),
}

/// How the peer fans out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMode {
    /// Every pose straight to the others, one message each.
    Relay,
    /// The room's changes every 1/20 s, one message to the whole room.
    Batch,
}

impl PeerMode {
    pub fn name(self) -> &'static str {
        match self {
            PeerMode::Relay => "relay",
            PeerMode::Batch => "batch",
        }
    }
}

/// A running peer; killed on drop.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    pub base: String,
}

impl Peer {
    pub fn start(dir: &Path, mode: PeerMode) -> Result<Peer, PeerError> {
        let script = dir.join("server.js");
        if !script.is_file() {
            return Err(PeerError::Missing(script));
        }
        if !dir.join("node_modules").is_dir() {
            return Err(PeerError::NotInstalled(dir.to_path_buf()));
        }
        let mut child = Command::new("node")
            .arg(&script)
            .args(["--port", "0", "--mode", mode.name()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(PeerError::Spawn)?;
        let stdout = child.stdout.take().ok_or_else(|| PeerError::NotUp("no stdout".into()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        // The first line names the port; the rest is drained so the peer
        // never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START_WAIT) {
            Ok(Some(Ok(line))) => line,
            Ok(other) => {
                let _ = child.kill();
                return Err(PeerError::NotUp(format!("it printed {other:?}")));
            }
            Err(_) => {
                let _ = child.kill();
                return Err(PeerError::NotUp("nothing printed".into()));
            }
        };
        let port: u16 = match line.strip_prefix("listening ").and_then(|p| p.trim().parse().ok()) {
            Some(port) => port,
            None => {
                let _ = child.kill();
                return Err(PeerError::NotUp(format!("it printed {line:?}, not `listening <port>`")));
            }
        };
        Ok(Peer { child, base: format!("http://127.0.0.1:{port}") })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
