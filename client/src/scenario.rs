//! `--scenario PATH`: a scripted crowd and camera path, for benchmarks
//! that must see the same thing on every run and every preset.
//!
//! ```toml
//! crowd = 200          # local walkers (no server), 0–10000
//! crowd_radius = 30.0  # metres from the fountain they spread over
//! step_ms = 33.3       # each frame advances the clock this much, whatever it took
//! stats_panel = true   # the HUD's stats panel (false: a clean picture)
//! fov_deg = 60.0       # the camera's vertical field of view, 5–120
//! [[camera]]           # keyframes, linear in between; at least one
//! t = 0.0
//! at = [0.0, 6.0, 40.0]
//! look = [0.0, 1.0, 0.0]
//! ```
//!
//! A scenario runs offline with a fixed time step, so frame N shows the same
//! scene on every run: compare presets frame for frame. With `--frames`,
//! the clock stands still until the renderer has compiled its pipelines
//! (see [`crate::capture`]; how long that takes differs between presets and
//! runs), so measured frame N is the same moment on every run.

use crate::avatars::{AvatarAssets, WalkLoop, spawn_walkers};
use crate::player::PlayerControl;
use crate::quality::MainCamera;
use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keyframe {
    pub t: f32,
    pub at: [f32; 3],
    pub look: [f32; 3],
}

#[derive(Resource, Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub crowd: u32,
    #[serde(default = "default_radius")]
    pub crowd_radius: f32,
    #[serde(default = "default_step")]
    pub step_ms: f32,
    /// Show the HUD's stats panel (off for pictures of the scene).
    #[serde(default = "default_true")]
    pub stats_panel: bool,
    /// The camera's vertical field of view in degrees (a narrow one looks
    /// closely at something far away: LOD still goes by distance).
    #[serde(default = "default_fov")]
    pub fov_deg: f32,
    pub camera: Vec<Keyframe>,
}

fn default_radius() -> f32 {
    30.0
}

fn default_fov() -> f32 {
    60.0
}

fn default_true() -> bool {
    true
}

fn default_step() -> f32 {
    1000.0 / 30.0
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("can't read scenario {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("scenario {path} is not valid: {message}")]
    Invalid { path: String, message: String },
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read { path: shown.clone(), source })?;
        Scenario::parse(&text).map_err(|message| ScenarioError::Invalid { path: shown, message })
    }

    pub fn parse(text: &str) -> Result<Scenario, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        if s.crowd > 10_000 {
            return Err(format!("crowd = {} is too many; allowed 0–10000", s.crowd));
        }
        if !(s.crowd_radius.is_finite() && (1.0..=500.0).contains(&s.crowd_radius)) {
            return Err("crowd_radius must be 1–500 metres".into());
        }
        if !(s.step_ms.is_finite() && (1.0..=1000.0).contains(&s.step_ms)) {
            return Err("step_ms must be 1–1000".into());
        }
        if !(s.fov_deg.is_finite() && (5.0..=120.0).contains(&s.fov_deg)) {
            return Err("fov_deg must be 5–120 degrees".into());
        }
        if s.camera.is_empty() {
            return Err("at least one [[camera]] keyframe is needed".into());
        }
        for (i, k) in s.camera.iter().enumerate() {
            let finite = k.t.is_finite() && k.at.iter().chain(&k.look).all(|v| v.is_finite());
            if !finite || k.t < 0.0 {
                return Err(format!("camera keyframe {} has a negative or non-finite number", i + 1));
            }
            if i > 0 && k.t <= s.camera[i - 1].t {
                return Err(format!("camera keyframe {} has t = {} not after the one before; keyframes go forward in time", i + 1, k.t));
            }
            if Vec3::from_array(k.at).distance(Vec3::from_array(k.look)) < 0.01 {
                return Err(format!("camera keyframe {} looks at where it stands", i + 1));
            }
        }
        Ok(s)
    }

    /// The camera at scenario time `t`.
    pub fn camera_at(&self, t: f32) -> Transform {
        let keys = &self.camera;
        let (at, look) = match keys.iter().position(|k| k.t > t) {
            None => {
                let k = keys.last().expect("validated: not empty");
                (Vec3::from_array(k.at), Vec3::from_array(k.look))
            }
            Some(0) => (Vec3::from_array(keys[0].at), Vec3::from_array(keys[0].look)),
            Some(i) => {
                let (a, b) = (&keys[i - 1], &keys[i]);
                let k = (t - a.t) / (b.t - a.t);
                (Vec3::from_array(a.at).lerp(Vec3::from_array(b.at), k), Vec3::from_array(a.look).lerp(Vec3::from_array(b.look), k))
            }
        };
        Transform::from_translation(at).looking_at(look, Vec3::Y)
    }
}

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScenarioSystems {
    Camera,
}

pub struct ScenarioPlugin {
    pub scenario: Scenario,
}

impl Plugin for ScenarioPlugin {
    fn build(&self, app: &mut App) {
        let step = Duration::from_secs_f32(self.scenario.step_ms / 1000.0);
        app.insert_resource(self.scenario.clone())
            .insert_resource(TimeUpdateStrategy::ManualDuration(step))
            .insert_resource(PlayerControl { keyboard: false, follow_camera: false, typing: false })
            .add_systems(Startup, (spawn_crowd, show_stats_panel))
            .add_systems(First, hold_the_clock_until_ready.before(bevy::time::TimeSystems))
            .add_systems(Update, fly_camera.in_set(ScenarioSystems::Camera).after(crate::player::PlayerSystems::Camera));
    }
}

fn spawn_crowd(mut commands: Commands, scenario: Res<Scenario>, assets: Res<AvatarAssets>) {
    let radius = scenario.crowd_radius;
    spawn_walkers(&mut commands, &assets, scenario.crowd, |i| WalkLoop::in_crowd(i, radius));
}

/// No time passes while the capture waits for pipelines (the first time:
/// the capture starts counting then, and so does the clock).
fn hold_the_clock_until_ready(scenario: Res<Scenario>, ready: Option<Res<crate::capture::PipelinesReady>>, mut started: Local<bool>, mut strategy: ResMut<TimeUpdateStrategy>) {
    *started = *started || ready.is_none_or(|r| r.get());
    let step = if *started { Duration::from_secs_f32(scenario.step_ms / 1000.0) } else { Duration::ZERO };
    if !matches!(*strategy, TimeUpdateStrategy::ManualDuration(d) if d == step) {
        *strategy = TimeUpdateStrategy::ManualDuration(step);
    }
}

fn show_stats_panel(scenario: Res<Scenario>, hud: Option<ResMut<crate::hud::HudState>>) {
    if let Some(mut hud) = hud {
        hud.stats = scenario.stats_panel;
    }
}

fn fly_camera(time: Res<Time>, scenario: Res<Scenario>, mut camera: Query<(&mut Transform, &mut Projection), With<MainCamera>>) {
    let wanted = scenario.camera_at(time.elapsed_secs());
    let fov = scenario.fov_deg.to_radians();
    for (mut transform, mut projection) in &mut camera {
        *transform = wanted;
        if let Projection::Perspective(p) = projection.as_mut()
            && p.fov != fov
        {
            p.fov = fov;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "crowd = 200\n[[camera]]\nt = 0.0\nat = [0.0, 6.0, 40.0]\nlook = [0.0, 1.0, 0.0]\n[[camera]]\nt = 10.0\nat = [40.0, 6.0, 0.0]\nlook = [0.0, 1.0, 0.0]\n";

    #[test]
    fn parses_and_flies_between_keyframes() {
        let s = Scenario::parse(GOOD).unwrap();
        assert_eq!(s.crowd, 200);
        assert_eq!(s.camera_at(-1.0).translation, Vec3::new(0.0, 6.0, 40.0));
        assert_eq!(s.camera_at(5.0).translation, Vec3::new(20.0, 6.0, 20.0));
        assert_eq!(s.camera_at(99.0).translation, Vec3::new(40.0, 6.0, 0.0));
    }

    #[test]
    fn bad_scenarios_say_what_is_wrong() {
        for (text, expect) in [
            ("crowd = 20000\n[[camera]]\nt=0.0\nat=[0.0,1.0,0.0]\nlook=[1.0,1.0,0.0]", "0–10000"),
            ("crowd = 2", "camera"),
            ("crowd = 2\ncamera = []", "at least one"),
            ("crowdd = 2\n[[camera]]\nt=0.0\nat=[0.0,1.0,0.0]\nlook=[1.0,1.0,0.0]", "crowdd"),
            ("[[camera]]\nt=1.0\nat=[0.0,1.0,0.0]\nlook=[1.0,1.0,0.0]\n[[camera]]\nt=1.0\nat=[0.0,1.0,0.0]\nlook=[1.0,1.0,0.0]", "forward in time"),
            ("[[camera]]\nt=0.0\nat=[0.0,1.0,0.0]\nlook=[0.0,1.0,0.0]", "looks at where it stands"),
            ("fov_deg = 200.0\n[[camera]]\nt=0.0\nat=[0.0,1.0,0.0]\nlook=[1.0,1.0,0.0]", "fov_deg"),
        ] {
            let err = Scenario::parse(text).unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
        }
        let err = Scenario::load(Path::new("/nonexistent/plaza.toml")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/plaza.toml"), "{err}");
    }
}
