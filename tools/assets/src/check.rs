//! `plaza-assets check`: validates every .glb, .ktx2 and .wgsl under the
//! given folders and reports every problem with its file; it does not stop
//! at the first.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::inspect;

/// Folders never searched.
const SKIP_DIRS: [&str; 3] = ["target", "node_modules", ".git"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

#[derive(Debug, Default)]
pub struct Checked {
    /// Every file looked at, in order.
    pub files: Vec<PathBuf>,
    pub failures: Vec<Failure>,
}

impl Checked {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn count(&self, ext: &str) -> usize {
        self.files.iter().filter(|f| f.extension().is_some_and(|e| e == ext)).count()
    }
}

/// The kinds of file checked, by extension.
pub const EXTENSIONS: [&str; 3] = ["glb", "ktx2", "wgsl"];

/// Every file with one of [`EXTENSIONS`] under `dir`, sorted. A missing
/// folder has none.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                if !SKIP_DIRS.iter().any(|s| name == *s) {
                    stack.push(path);
                }
            } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e)) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Whether a texture is a normal map (and must be linear): by name.
pub fn is_normal_map(path: &Path) -> bool {
    path.file_stem().and_then(|s| s.to_str()).is_some_and(|s| s.ends_with("normal"))
}

/// Checks one file; the problems, if any.
pub fn check_file(path: &Path) -> Vec<String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return vec![format!("cannot read: {e}")],
    };
    let result = match path.extension().and_then(|e| e.to_str()) {
        Some("glb") => inspect::glb(path, &bytes).map(|_| ()),
        Some("ktx2") => inspect::ktx2(&bytes, is_normal_map(path)).map(|_| ()),
        Some("wgsl") => match String::from_utf8(bytes) {
            Ok(text) => inspect::wgsl(&text),
            Err(_) => Err(vec!["not UTF-8 text".to_owned()]),
        },
        _ => Ok(()),
    };
    result.err().unwrap_or_default()
}

/// Checks everything under `dirs`.
pub fn check(dirs: &[PathBuf]) -> Checked {
    let mut checked = Checked::default();
    let files: Vec<PathBuf> = dirs.iter().flat_map(|d| files_under(d)).collect();
    let bar = crate::progress::bar(files.len() as u64, "checking");
    for path in files {
        bar.inc(1);
        for reason in check_file(&path) {
            tracing::debug!(file = %path.display(), %reason, "check failed");
            checked.failures.push(Failure { path: path.clone(), reason });
        }
        checked.files.push(path);
    }
    bar.finish_and_clear();
    checked
}
