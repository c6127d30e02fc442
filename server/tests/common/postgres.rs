//! A throwaway PostgreSQL server on loopback for tests: Debian's binaries
//! (`tools/setup.sh` installs them), a fresh cluster in a temp dir, trust
//! auth, a free port, its socket in the temp dir. Stopped and removed on
//! drop, panics included.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    /// `postgres://postgres@127.0.0.1:<port>/postgres`
    pub url: String,
    port: u16,
    bin: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

/// The newest `/usr/lib/postgresql/<version>/bin`, or `PLAZA_PG_BIN`.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PLAZA_PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!("PostgreSQL's server binaries are not installed (no /usr/lib/postgresql/*/bin/postgres); run tools/setup.sh or set PLAZA_PG_BIN")
    })
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// PostgreSQL refuses to run as root: run it as the `postgres` user then.
fn command(bin: &Path, program: &str, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!("plaza-pg-{}-{}", std::process::id(), free_port()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status().unwrap();
            assert!(status.success(), "chown of {} to postgres failed", dir.display());
        }
        let data = dir.join("data");
        let init = command(&bin, "initdb", as_postgres)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(init.status.success(), "initdb failed: {}", String::from_utf8_lossy(&init.stderr));
        let port = free_port();
        let child = command(&bin, "postgres", as_postgres)
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(&dir)
            // A test database: durability of the cluster itself is not under test.
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut pg = Postgres { url: format!("postgres://postgres@127.0.0.1:{port}/postgres"), port, bin: bin.clone(), dir, child: Some(child) };
        let started = Instant::now();
        loop {
            let ready = Command::new(bin.join("pg_isready")).args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"]).stdout(Stdio::null()).status();
            if ready.is_ok_and(|s| s.success()) {
                break;
            }
            if let Some(status) = pg.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("postgres exited during startup: {status}");
            }
            assert!(started.elapsed() < Duration::from_secs(30), "postgres did not accept connections within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }
}

impl Postgres {
    /// The first column of the first row `sql` returns, through psql.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-At", "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT to the postmaster itself (the child may be runuser):
            // immediate shutdown.
            let pid = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok().and_then(|s| s.lines().next().map(str::to_owned));
            let _ = Command::new("kill").args(["-QUIT", &pid.unwrap_or_else(|| child.id().to_string())]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
