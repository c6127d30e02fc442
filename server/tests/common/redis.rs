//! A throwaway Redis server on loopback for tests: Debian's `redis-server`
//! (`tools/setup.sh` installs it) on a free port, nothing saved to disk.
//! Stopped on drop, panics included.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    /// `redis://127.0.0.1:<port>`
    pub url: String,
    port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server didn't start ({e}); run tools/setup.sh"));
        let mut redis = Redis { url: format!("redis://127.0.0.1:{port}"), port, child: Some(child) };
        let started = Instant::now();
        while redis.command(&["PING"]).as_deref() != Some("+PONG") {
            if let Some(status) = redis.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("redis-server exited during startup: {status}");
            }
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not answer within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    /// One command's first reply line (`+PONG`, `$-1`, the value of a
    /// bulk string), or `None` when Redis doesn't answer.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let mut lines = text.split("\r\n");
        let first = lines.next()?.to_owned();
        if first.starts_with('$') && first != "$-1" {
            return lines.next().map(str::to_owned);
        }
        Some(first)
    }

    /// The value at `key`, if there is one.
    pub fn get(&self, key: &str) -> Option<String> {
        self.command(&["GET", key]).filter(|v| v != "$-1")
    }

    /// Stops the server (a Redis that went away).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
