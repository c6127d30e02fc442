//! The CI ladder: two tiny steps against Plaza and both socket.io peers
//! (Node, installed by `make peers`, which `make test` runs first). Checks
//! delivery, the reports and that every target ran; not speed.

use std::path::PathBuf;
use std::process::Command;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn a_tiny_ladder_climbs_every_target_and_loses_nothing() {
    let peer_dir = repo_root().join("tools/peers/socketio");
    assert!(
        peer_dir.join("node_modules").is_dir(),
        "{}/node_modules is missing: run `make peers` (npm ci) first; `make test` does",
        peer_dir.display()
    );
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("plaza-load-ladder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let output = Command::new(env!("CARGO_BIN_EXE_plaza-load"))
        .args(["ladder", "--steps", "4,8", "--users-per-room", "4", "--rate", "10", "--step-duration", "3", "--ramp", "0.5", "--quiet"])
        .arg("--peer-dir")
        .arg(&peer_dir)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("plaza-load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status.code());
    let ladder: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("ladder.json")).expect("ladder.json")).expect("JSON");
    let steps = ladder["steps"].as_array().expect("steps");
    for target in ["plaza", "socketio-relay", "socketio-batch"] {
        let mine: Vec<_> = steps.iter().filter(|s| s["target"] == target).collect();
        assert_eq!(mine.len(), 2, "{target} ran both steps:\n{stdout}");
        for s in mine {
            assert_eq!(s["lost"], 0, "{target}: {s}");
            assert_eq!(s["misrouted"], 0, "{target}: {s}");
            assert_eq!(s["errors"], 0, "{target}: {s}");
            assert_eq!(s["passed"], true, "{target}: {s}");
            let users = s["users"].as_u64().expect("users");
            let step_report = out.join(target).join(users.to_string()).join("result.json");
            let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&step_report).expect("a step's result.json")).expect("JSON");
            assert_eq!(r["users_joined"], users, "{target}: everyone got in");
            assert!(r["received"].as_u64().unwrap_or(0) > 0, "{target}: poses arrived");
            let expected_protocol = if target == "plaza" { "bin" } else { "socketio" };
            assert_eq!(r["protocol"], expected_protocol);
        }
    }
    // The rungs interleave in time (every target's 4-user step before any
    // 8-user step); the report lists them target by target.
    let rungs: Vec<u64> = stdout
        .lines()
        .filter(|l| l.contains(" users  p99 "))
        .filter_map(|l| l.split_whitespace().nth(3).and_then(|u| u.parse().ok()))
        .collect();
    assert_eq!(rungs, [4, 4, 4, 8, 8, 8], "step lines in the order they ran:\n{stdout}");
    let order: Vec<&str> = steps.iter().filter_map(|s| s["target"].as_str()).collect();
    assert_eq!(order, ["plaza", "plaza", "socketio-relay", "socketio-relay", "socketio-batch", "socketio-batch"]);
    assert_eq!(ladder["capacity"].as_array().map(Vec::len), Some(3));
    // The ratio at each limit, 30 ms to 150 ms, in the JSON and printed.
    assert_eq!(ladder["by_limit"].as_array().map(Vec::len), Some(5), "{}", ladder["by_limit"]);
    assert!(stdout.contains("the ratio by p99 limit: 30 ms "), "{stdout}");
    let html = std::fs::read_to_string(out.join("ladder.html")).expect("ladder.html");
    assert!(html.contains("<svg") && html.contains("socketio-batch"));
}

/// `--repeat 2`: each step runs twice, each run's reports in a folder of
/// its own, and the step reads the median of its runs.
#[test]
fn a_repeated_ladder_runs_each_step_twice_and_reads_the_median() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("plaza-load-ladder-repeat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let output = Command::new(env!("CARGO_BIN_EXE_plaza-load"))
        .args(["ladder", "--targets", "plaza", "--steps", "4", "--users-per-room", "4", "--rate", "10", "--step-duration", "2", "--ramp", "0.5", "--repeat", "2", "--quiet"])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("plaza-load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}", output.status.code(), String::from_utf8_lossy(&output.stderr));
    let ladder: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("ladder.json")).expect("ladder.json")).expect("JSON");
    assert_eq!(ladder["repeat"], 2);
    let steps = ladder["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "one step, from two runs: {steps:?}");
    let runs: Vec<f64> = steps[0]["runs_p99_ms"].as_array().expect("runs_p99_ms").iter().filter_map(|v| v.as_f64()).collect();
    assert_eq!(runs.len(), 2);
    let median = (runs[0] + runs[1]) / 2.0;
    assert!((steps[0]["p99_ms"].as_f64().unwrap() - median).abs() < 1e-9, "p99 is the median of {runs:?}: {}", steps[0]);
    assert_eq!(steps[0]["lost"], 0);
    for run in ["run-1", "run-2"] {
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("plaza/4").join(run).join("result.json")).expect("each run's result.json")).expect("JSON");
        assert_eq!(r["users_joined"], 4);
    }
    assert!(stdout.contains("(run 1 of 2)") && stdout.contains("(run 2 of 2)") && stdout.contains("(median of 2 runs)"), "{stdout}");
    let html = std::fs::read_to_string(out.join("ladder.html")).expect("ladder.html");
    assert!(html.contains("p99 of each run"), "the report shows every run");
}
