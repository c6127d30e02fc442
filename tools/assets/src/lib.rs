//! `plaza-assets`: makes, compresses, checks and reports Plaza's assets.
//!
//! - [`make`]: procedural avatars and plaza scene as .glb with meshoptimizer
//!   LOD chains and avatar impostors, KTX2 textures (Basis UASTC + zstd,
//!   mips), synthesized WAV audio and the shipped shaders, byte-for-byte
//!   reproducible.
//! - [`check`]: validates every .glb, .ktx2 and .wgsl, naming each file and
//!   reason.
//! - [`report`]: triangles per level, disk size and GPU memory, written to
//!   docs/assets.md, which also documents the naming convention the client
//!   follows.

pub mod audio;
pub mod check;
pub mod content;
pub mod dmath;
pub mod glb;
pub mod impostor;
pub mod inspect;
pub mod ktx;
pub mod lod;
pub mod make;
pub mod mesh;
pub mod noise;
pub mod progress;
pub mod report;
pub mod texture;

use std::path::{Path, PathBuf};

/// The repository root: the nearest folder at or above `start` whose
/// Cargo.toml declares a `[workspace]`; `start` itself when there is none.
pub fn repo_root(start: &Path) -> PathBuf {
    start
        .ancestors()
        .find(|d| std::fs::read_to_string(d.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]")))
        .unwrap_or(start)
        .to_path_buf()
}

/// `f` over `items` on every core, results in the order of `items`. The
/// jobs are independent (each encoder is single-threaded), so the output
/// doesn't depend on how they were spread.
pub fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(items.len()).max(1);
    let mut slots: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || items.iter().enumerate().skip(t).step_by(threads).map(|(i, item)| (i, f(item))).collect::<Vec<_>>()))
            .collect();
        for h in handles {
            match h.join() {
                Ok(done) => {
                    for (i, r) in done {
                        slots[i] = Some(r);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    slots.into_iter().flatten().collect()
}
