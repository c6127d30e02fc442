//! Which build this is: the crate's version and the commit it was built
//! from. The commit comes from `PLAZA_BUILD_COMMIT` at compile time (the
//! Dockerfile and `make stack` pass `git rev-parse --short=12 HEAD`);
//! builds without it say `unknown`. An environment variable rather than a
//! build script that runs git: a commit then rebuilds nothing by itself.

use std::sync::OnceLock;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub const COMMIT: &str = match option_env!("PLAZA_BUILD_COMMIT") {
    Some(commit) if !commit.is_empty() => commit,
    _ => "unknown",
};

/// `0.1.0 (commit 1a2b3c4d5e6f)`, for `--version`.
pub fn long_version() -> &'static str {
    static LONG: OnceLock<String> = OnceLock::new();
    LONG.get_or_init(|| format!("{VERSION} (commit {COMMIT})"))
}
