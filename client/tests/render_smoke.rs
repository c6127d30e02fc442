//! Render smoke test: the real `plaza` binary renders the plaza offscreen on
//! whatever Vulkan the machine has (Mesa's lavapipe in CI), writes a
//! screenshot and a frame report, and both make sense.
//!
//! Small frame and few frames: lavapipe renders on the CPU.

use std::path::Path;
use std::process::Command;

fn read_png(path: &Path) -> (u32, u32, Vec<u8>, png::ColorType) {
    let file = std::io::BufReader::new(std::fs::File::open(path).expect("screenshot exists"));
    let mut reader = png::Decoder::new(file).read_info().expect("a valid PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size fits")];
    let info = reader.next_frame(&mut buf).expect("one frame");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf, info.color_type)
}

#[test]
fn headless_render_writes_a_screenshot_and_a_sane_report() {
    let dir = std::env::temp_dir().join(format!("plaza-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let shot = dir.join("shot.png");
    let report = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_plaza"))
        .args(["--headless", "--frames", "6", "--resolution", "320x180", "--bots", "24", "--preset", "low"])
        .arg("--screenshot")
        .arg(&shot)
        .arg("--report")
        .arg(&report)
        .env_remove("CLIENT_QUALITY_PRESET")
        .env_remove("PLAZA_SERVER")
        // Never the user's own settings file.
        .env("PLAZA_CONFIG_DIR", &dir)
        .output()
        .expect("plaza runs");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "plaza failed: {}\n{log}", out.status);

    let (w, h, pixels, color) = read_png(&shot);
    assert_eq!((w, h), (320, 180));
    assert_eq!(color, png::ColorType::Rgb);
    // Not blank: the sky, the ground and the avatars give many colours, and
    // the bottom (ground) differs from the top (sky).
    let mut colours: Vec<[u8; 3]> = pixels.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
    let top = colours[..(w as usize * 10)].to_vec();
    let bottom = colours[colours.len() - w as usize * 10..].to_vec();
    colours.sort_unstable();
    colours.dedup();
    assert!(colours.len() > 50, "only {} distinct colours: blank frame?", colours.len());
    let mean = |px: &[[u8; 3]]| px.iter().map(|p| p.iter().map(|&c| f64::from(c)).sum::<f64>()).sum::<f64>() / px.len() as f64;
    assert!((mean(&top) - mean(&bottom)).abs() > 20.0, "sky and ground look the same");

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).expect("report exists")).expect("JSON");
    for key in ["frames", "preset", "resolution", "adapter", "frame_ms", "fps_1pct_low", "entities", "triangles", "draw_calls", "avatars_by_lod"] {
        assert!(report.get(key).is_some(), "report lacks `{key}`: {report}");
    }
    assert_eq!(report["preset"], "low");
    assert_eq!(report["resolution"], serde_json::json!([320, 180]));
    let frames = report["frames"].as_u64().unwrap();
    assert!((1..=6).contains(&frames), "{report}");
    let visible = report["entities"]["visible"].as_u64().unwrap();
    let culled = report["entities"]["culled"].as_u64().unwrap();
    let draws = report["draw_calls"].as_u64().unwrap();
    let triangles = report["triangles"].as_u64().unwrap();
    assert!(visible > 20, "the plaza has more than 20 visible meshes: {report}");
    assert!(culled > 0, "some buildings and bots are behind the camera: {report}");
    assert_eq!(draws, visible, "one draw per visible mesh instance");
    assert!(triangles > visible * 2, "{report}");
    let lod = &report["avatars_by_lod"];
    let avatars: u64 = ["full", "reduced", "low", "impostor", "hidden"].iter().map(|k| lod[k].as_u64().unwrap()).sum();
    // The embedded server's 24 bots, from the network, and your own avatar.
    assert_eq!(report["connection"], "in plaza", "{report}");
    assert_eq!(report["remote_avatars"], 24, "{report}");
    assert!((24..=25).contains(&avatars), "24 bots and you, averaged over frames: {report}");
    let p50 = report["frame_ms"]["p50"].as_f64().unwrap();
    let max = report["frame_ms"]["max"].as_f64().unwrap();
    assert!(p50 > 0.0 && max >= p50, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_exit_2_with_one_clear_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_plaza")).args(["--preset", "extreme"]).env("PLAZA_CONFIG_DIR", std::env::temp_dir()).output().expect("plaza runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--preset") && err.contains("low, medium (or med), high, ultra, auto"), "{err}");
}

#[test]
fn a_bad_scenario_exits_2_saying_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("plaza-scenario-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "crowd = 99999\n[[camera]]\nt = 0.0\nat = [0.0, 1.0, 0.0]\nlook = [1.0, 1.0, 0.0]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_plaza")).arg("--scenario").arg(&path).env("PLAZA_CONFIG_DIR", &dir).output().expect("plaza runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("bad.toml") && err.contains("0–10000"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `plaza` headless on a scenario at a small size and returns its
/// report and log. `asset_root`: `BEVY_ASSET_ROOT` (an empty folder: no
/// models).
fn run_scenario(name: &str, scenario: &str, asset_root: Option<&Path>) -> (serde_json::Value, String) {
    let dir = std::env::temp_dir().join(format!("plaza-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let report = dir.join("report.json");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(scenario);
    let mut command = Command::new(env!("CARGO_BIN_EXE_plaza"));
    command
        .args(["--headless", "--frames", "3", "--resolution", "160x90", "--preset", "high", "--scenario"])
        .arg(&scenario)
        .arg("--report")
        .arg(&report)
        .env_remove("CLIENT_QUALITY_PRESET")
        .env_remove("ENABLE_LOD")
        .env_remove("ENABLE_FRUSTUM_CULLING")
        .env_remove("BEVY_ASSET_ROOT")
        .env("PLAZA_CONFIG_DIR", &dir);
    if let Some(root) = asset_root {
        command.env("BEVY_ASSET_ROOT", root);
    }
    let out = command.output().expect("plaza runs");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "plaza failed: {}\n{log}", out.status);
    let report = serde_json::from_slice(&std::fs::read(&report).expect("report exists")).expect("JSON");
    let _ = std::fs::remove_dir_all(&dir);
    (report, log)
}

fn counts(report: &serde_json::Value, key: &str, levels: &[&str]) -> Vec<u64> {
    levels.iter().map(|l| report[key][l].as_u64().unwrap_or_else(|| panic!("{key}.{l} in {report}"))).collect()
}

const AVATAR_LEVELS: [&str; 5] = ["full", "reduced", "low", "impostor", "hidden"];
const PROP_LEVELS: [&str; 4] = ["lod0", "lod1", "lod2", "lod3"];

#[test]
fn the_asset_models_switch_lod_levels_with_distance() {
    // Near: 24 walkers within 25 m, those within 10 m at full.
    let (near, log) = run_scenario("lod-near", "lod-near.toml", None);
    assert!(log.contains("loading the plaza and avatars from asset models"), "{log}");
    assert!(!log.contains("placeholder"), "{log}");
    let avatars = counts(&near, "avatars_by_lod", &AVATAR_LEVELS);
    assert!(avatars[0] > 0 && avatars[0] + avatars[1] == 24, "near: full and reduced only: {near}");
    let props = counts(&near, "props_by_lod", &PROP_LEVELS);
    assert!(props[0] > 0 && props[3] == 0, "near: props at lod0, none at lod3: {near}");
    // Far: every walker an impostor card, props at their coarse levels.
    let (far, _) = run_scenario("lod-far", "lod-far.toml", None);
    assert_eq!(counts(&far, "avatars_by_lod", &AVATAR_LEVELS), [0, 0, 0, 24, 0], "{far}");
    let props = counts(&far, "props_by_lod", &PROP_LEVELS);
    assert!(props[0] == 0 && props[1] == 0 && props[3] > 0, "far: props at lod2 and lod3: {far}");
    assert!(near["triangles"].as_u64() > far["triangles"].as_u64(), "far draws fewer triangles than near");
}

#[test]
fn without_asset_models_the_placeholders_are_drawn_with_one_warning() {
    let empty = std::env::temp_dir().join(format!("plaza-no-assets-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let (report, log) = run_scenario("no-assets", "lod-near.toml", Some(&empty));
    assert_eq!(log.matches("asset models not found").count(), 1, "one warning: {log}");
    assert!(log.contains("models/plaza.glb") && log.contains("make assets"), "says what is missing and what to do: {log}");
    let avatars = counts(&report, "avatars_by_lod", &AVATAR_LEVELS);
    assert_eq!(avatars.iter().sum::<u64>(), 24, "the walkers, as placeholders: {report}");
    assert!(report["triangles"].as_u64().unwrap() > 1_000, "something was drawn: {report}");
    let _ = std::fs::remove_dir_all(&empty);
}
