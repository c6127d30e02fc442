//! `check` passes on what is committed and rejects broken files, naming
//! each file and the reason, without stopping at the first.

mod common;

use std::path::Path;
use std::process::Command;

use common::{TempDir, assets, root};
use plaza_assets::check;

#[test]
fn the_committed_assets_and_shaders_pass() {
    let checked = check::check(&[assets(), root().join("client")]);
    let failures: Vec<String> = checked.failures.iter().map(ToString::to_string).collect();
    assert!(checked.ok(), "plaza-assets check failed:\n{}", failures.join("\n"));
    assert!(checked.count("glb") >= 5, "{:?}", checked.files);
    assert!(checked.count("ktx2") >= 20, "{:?}", checked.files);
    assert!(checked.count("wgsl") >= 1, "{:?}", checked.files);
}

/// A folder with a corrupt .glb, a truncated .ktx2 and a WGSL file with a
/// type error.
fn broken_files() -> TempDir {
    let tmp = TempDir::new("broken");
    let glb = std::fs::read(assets().join("models/avatar_0.glb")).expect("committed avatar");
    let mut corrupt = glb.clone();
    // Point the first accessor at a buffer view too small for it.
    let at = corrupt.windows(14).position(|w| w == b"\"bufferView\":0").expect("an accessor");
    corrupt[at + 13] = b'9';
    std::fs::write(tmp.path().join("corrupt.glb"), &corrupt).expect("write");
    std::fs::write(tmp.path().join("half.glb"), &glb[..glb.len() / 2]).expect("write");
    let ktx2 = std::fs::read(assets().join("models/textures/grass.ktx2")).expect("committed texture");
    std::fs::write(tmp.path().join("grass.ktx2"), &ktx2[..ktx2.len() / 2]).expect("write");
    std::fs::write(tmp.path().join("typo.wgsl"), "fn f() -> f32 {\n    let x: f32 = 1u;\n    return x;\n}\n").expect("write");
    tmp
}

fn reasons(dir: &Path, file: &str) -> Vec<String> {
    check::check(&[dir.to_path_buf()]).failures.into_iter().filter(|f| f.path.ends_with(file)).map(|f| f.reason).collect()
}

#[test]
fn a_corrupt_glb_is_rejected_with_the_reason() {
    let tmp = broken_files();
    let r = reasons(tmp.path(), "corrupt.glb");
    assert!(r.iter().any(|m| m.starts_with("accessor 0 needs") && m.contains("of buffer view 9")), "{r:?}");
    let r = reasons(tmp.path(), "half.glb");
    assert!(r.iter().any(|m| m.starts_with("truncated: the GLB header declares")), "{r:?}");
}

#[test]
fn a_truncated_ktx2_is_rejected_with_the_reason() {
    let tmp = broken_files();
    let r = reasons(tmp.path(), "grass.ktx2");
    assert!(r.len() == 1 && r[0].starts_with("truncated: the level index needs"), "{r:?}");
}

#[test]
fn a_wgsl_type_error_is_rejected_with_the_line() {
    let tmp = broken_files();
    let r = reasons(tmp.path(), "typo.wgsl");
    assert_eq!(r, vec!["invalid WGSL at line 2:9: the type of `x` is expected to be `f32`, but got `u32`".to_owned()]);
}

#[test]
fn the_command_reports_every_bad_file_and_fails() {
    let tmp = broken_files();
    let out = Command::new(env!("CARGO_BIN_EXE_plaza-assets")).arg("check").arg(tmp.path()).output().expect("run plaza-assets");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for file in ["corrupt.glb", "half.glb", "grass.ktx2", "typo.wgsl"] {
        assert!(stdout.lines().any(|l| l.starts_with("FAIL ") && l.contains(file)), "{file} not reported:\n{stdout}");
    }
    assert!(stdout.contains("4 problems in 4 files"), "{stdout}");
}
