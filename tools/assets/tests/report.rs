//! What the report measures from the committed assets meets the issue's
//! bar, and docs/assets.md is the report of what is committed.

mod common;

use common::{assets, root};
use plaza_assets::lod::LEVELS;
use plaza_assets::report::Report;

fn report() -> Report {
    Report::build(&assets()).expect("report on the committed assets")
}

#[test]
fn lod_chains_reach_a_tenth_of_the_triangles() {
    let r = report();
    assert!(r.chains().count() >= 10, "too few chains");
    for (model, chain) in r.chains() {
        let t = &chain.triangles;
        assert_eq!(t.len(), LEVELS, "{} in {}", chain.asset, model.file);
        assert!(t.windows(2).all(|w| w[1] < w[0]), "{}: {t:?}", chain.asset);
        assert!(t[LEVELS - 1] * 10 <= t[0], "{}: last level {} of {} triangles", chain.asset, t[LEVELS - 1], t[0]);
    }
    let impostors: usize = r.models.iter().map(|m| m.impostors.len()).sum();
    assert_eq!(impostors, plaza_assets::content::avatars::COUNT);
}

#[test]
fn ktx2_textures_take_a_quarter_of_rgba8() {
    let r = report();
    assert!(!r.textures.is_empty());
    for t in &r.textures {
        assert!(t.info.gpu_bytes * 4 <= t.rgba8_bytes(), "{}: {} vs {}", t.file, t.info.gpu_bytes, t.rgba8_bytes());
        assert!(t.info.levels > 1, "{} has no mips", t.file);
    }
    assert!(r.ktx2_gpu_bytes() * 4 <= r.rgba8_bytes());
}

#[test]
fn docs_assets_md_is_the_current_report() {
    let committed = std::fs::read_to_string(root().join("docs/assets.md")).unwrap_or_default();
    assert!(committed == report().markdown(), "docs/assets.md is out of date: run `make assets` (or `plaza-assets report`)");
}
