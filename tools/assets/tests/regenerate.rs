//! `make` is deterministic and the committed assets are what it makes:
//! regenerating into a fresh folder gives the same bytes, file for file.

mod common;

use std::path::PathBuf;

use common::{TempDir, assets};
use plaza_assets::make::{self, AUDIO_DIR, MODELS_DIR, TEXTURES_DIR};

/// Files directly in `dir` (relative to `base`), sorted.
fn files_in(base: &std::path::Path, dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(base.join(dir))
        .map(|d| d.flatten().filter(|e| e.path().is_file()).map(|e| dir.join(e.file_name())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn regenerating_gives_the_committed_bytes() {
    let tmp = TempDir::new("regenerate");
    let made = make::make(tmp.path()).expect("make");
    let committed = assets();
    let mut problems = Vec::new();
    for (rel, _) in &made.files {
        match std::fs::read(committed.join(rel)) {
            Ok(old) => {
                let new = std::fs::read(tmp.path().join(rel)).expect("read what make wrote");
                if old != new {
                    problems.push(format!("{} differs ({} bytes committed, {} made)", rel.display(), old.len(), new.len()));
                }
            }
            Err(_) => problems.push(format!("{} is made but not committed", rel.display())),
        }
    }
    let owned = [PathBuf::from(MODELS_DIR), PathBuf::from(MODELS_DIR).join(TEXTURES_DIR), PathBuf::from(AUDIO_DIR)];
    for dir in owned {
        for rel in files_in(&committed, &dir) {
            if !made.files.iter().any(|(f, _)| *f == rel) {
                problems.push(format!("{} is committed but no longer made", rel.display()));
            }
        }
    }
    assert!(problems.is_empty(), "assets/ is not what `make` makes now; run `make assets` and commit:\n{}", problems.join("\n"));
}

#[test]
fn committed_assets_stay_small() {
    let total: u64 = plaza_assets::check::files_under(&assets())
        .iter()
        .chain(files_in(&assets(), &PathBuf::from(AUDIO_DIR)).iter().map(|r| assets().join(r)).collect::<Vec<_>>().iter())
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(total > 0, "no assets found");
    assert!(total < 20 * 1024 * 1024, "assets take {total} bytes, over 20 MiB");
}
