//! The adaptive quality governor behind `--preset auto`.
//!
//! It watches frame times and moves along one ladder of quality steps:
//! each preset at LOD bias ×1.0, then ×0.8, then ×0.65 (coarser levels
//! sooner), then the preset below at ×1.0, and so on. Cheap steps first:
//! a bias step changes only which LOD level things use, a preset step also
//! changes shadows, MSAA and view distance.
//!
//! - **Down** when the slow end of the frame times (the 90th percentile of
//!   the last second) has been over the target for [`DOWN_AFTER`]: one step
//!   at a time, with [`SETTLE`] between steps for the new settings to show
//!   in the frame times.
//! - **Up** when the 90th percentile has stayed under [`HEADROOM`] of the
//!   target for [`UP_AFTER`] (much longer than down: a dropped frame hurts
//!   more than a missing shadow).
//! - **No oscillation.** A step up that has to be undone within
//!   [`FAILED_UP_WINDOW`] marks that step as too expensive: the governor
//!   won't try it again for [`BLOCK_INITIAL`], doubling each time it fails
//!   again, up to [`BLOCK_MAX`]. So at a load that sits between two steps it
//!   settles on the cheaper one and retries the dearer one ever more rarely.
//!
//! The governor is plain data fed with frame times, so tests drive it with
//! synthetic loads; [`GovernorPlugin`] feeds it the real frame times and
//! applies its decisions to [`ActiveQuality`].

use crate::quality::ActiveQuality;
use bevy::prelude::*;
use plaza_shared::quality::{PresetChoice, QualityPreset};
use std::collections::VecDeque;
use std::time::Duration;

/// LOD bias multipliers tried within a preset, finest first.
pub const BIAS_STEPS: [f32; 3] = [1.0, 0.8, 0.65];
/// Over target this long before stepping down.
pub const DOWN_AFTER: Duration = Duration::from_millis(1500);
/// Comfortably under target this long before stepping up.
pub const UP_AFTER: Duration = Duration::from_secs(6);
/// After any change, frame times are not judged for this long.
pub const SETTLE: Duration = Duration::from_millis(1000);
/// "Comfortably under": the 90th percentile below this fraction of the target.
pub const HEADROOM: f32 = 0.7;
/// A step down this soon after a step up means the step up failed.
pub const FAILED_UP_WINDOW: Duration = Duration::from_secs(20);
pub const BLOCK_INITIAL: Duration = Duration::from_secs(30);
pub const BLOCK_MAX: Duration = Duration::from_secs(480);
/// Frame times judged: about the last second.
const WINDOW: Duration = Duration::from_secs(1);

/// One rung of the ladder: a preset and a bias multiplier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub preset: QualityPreset,
    pub bias_scale: f32,
}

/// The ladder, cheapest first.
pub fn ladder() -> Vec<Step> {
    let mut steps = Vec::new();
    for preset in QualityPreset::ALL {
        for &bias_scale in BIAS_STEPS.iter().rev() {
            steps.push(Step { preset, bias_scale });
        }
    }
    steps
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Hold,
    Down(Step),
    Up(Step),
}

#[derive(Debug, Clone)]
pub struct Governor {
    ladder: Vec<Step>,
    /// Index into `ladder`.
    rung: usize,
    target_ms: f32,
    /// (time since start, frame ms) of about the last second.
    frames: VecDeque<(Duration, f32)>,
    now: Duration,
    /// Since when the window has been over target / under headroom.
    over_since: Option<Duration>,
    under_since: Option<Duration>,
    settle_until: Duration,
    /// When the last step up happened, and from which rung.
    last_up: Option<(Duration, usize)>,
    /// Per rung: not tried again before this time; and its current block.
    blocked_until: Vec<Duration>,
    block_for: Vec<Duration>,
    pub changes: u32,
}

impl Governor {
    pub fn new(start: QualityPreset, target_fps: u32) -> Governor {
        let ladder = ladder();
        let rung = ladder.iter().position(|s| s.preset == start && s.bias_scale == 1.0).expect("every preset is on the ladder");
        let n = ladder.len();
        Governor {
            ladder,
            rung,
            target_ms: 1000.0 / target_fps.max(1) as f32,
            frames: VecDeque::new(),
            now: Duration::ZERO,
            over_since: None,
            under_since: None,
            settle_until: SETTLE,
            last_up: None,
            blocked_until: vec![Duration::ZERO; n],
            block_for: vec![BLOCK_INITIAL; n],
            changes: 0,
        }
    }

    pub fn step(&self) -> Step {
        self.ladder[self.rung]
    }

    pub fn target_ms(&self) -> f32 {
        self.target_ms
    }

    /// The 90th percentile of the last second's frame times.
    pub fn p90_ms(&self) -> f32 {
        if self.frames.is_empty() {
            return 0.0;
        }
        let mut v: Vec<f32> = self.frames.iter().map(|f| f.1).collect();
        let k = ((v.len() as f32 * 0.9).ceil() as usize).clamp(1, v.len()) - 1;
        *v.select_nth_unstable_by(k, f32::total_cmp).1
    }

    /// Feeds one frame's time; says what to do.
    pub fn frame(&mut self, frame: Duration) -> Decision {
        self.now += frame;
        let ms = frame.as_secs_f32() * 1000.0;
        self.frames.push_back((self.now, ms));
        while self.frames.front().is_some_and(|f| self.now - f.0 > WINDOW) {
            self.frames.pop_front();
        }
        if self.now < self.settle_until {
            return Decision::Hold;
        }
        let p90 = self.p90_ms();
        let over = p90 > self.target_ms;
        let under = p90 < self.target_ms * HEADROOM;
        self.over_since = if over { self.over_since.or(Some(self.now)) } else { None };
        self.under_since = if under { self.under_since.or(Some(self.now)) } else { None };

        if self.over_since.is_some_and(|t| self.now - t >= DOWN_AFTER) && self.rung > 0 {
            if let Some((at, from)) = self.last_up
                && self.now - at < FAILED_UP_WINDOW
                && from + 1 == self.rung
            {
                // The last step up didn't hold: block that rung for longer each time.
                let block = self.block_for[self.rung];
                self.blocked_until[self.rung] = self.now + block;
                self.block_for[self.rung] = (block * 2).min(BLOCK_MAX);
            }
            self.last_up = None;
            self.rung -= 1;
            return self.changed(Decision::Down(self.step()));
        }
        if self.under_since.is_some_and(|t| self.now - t >= UP_AFTER) && self.rung + 1 < self.ladder.len() && self.now >= self.blocked_until[self.rung + 1] {
            self.last_up = Some((self.now, self.rung));
            self.rung += 1;
            return self.changed(Decision::Up(self.step()));
        }
        Decision::Hold
    }

    fn changed(&mut self, decision: Decision) -> Decision {
        self.changes += 1;
        self.settle_until = self.now + SETTLE;
        self.over_since = None;
        self.under_since = None;
        // Frames from before the change say nothing about the new settings.
        self.frames.clear();
        decision
    }
}

/// The running governor, present only under `--preset auto`.
#[derive(Resource, Debug)]
pub struct AutoQuality(pub Governor);

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum GovernorSystems {
    Judge,
}

pub struct GovernorPlugin {
    pub target_fps: u32,
}

impl Plugin for GovernorPlugin {
    fn build(&self, app: &mut App) {
        let target_fps = self.target_fps;
        app.add_systems(Update, (follow_choice(target_fps), govern).chain().in_set(GovernorSystems::Judge));
    }
}

/// Starts or stops the governor as the user's choice switches to or from auto.
fn follow_choice(target_fps: u32) -> impl FnMut(Commands, Res<ActiveQuality>, Option<Res<AutoQuality>>) {
    move |mut commands, quality, auto| match (quality.choice, auto.is_some()) {
        (PresetChoice::Auto, false) => {
            commands.insert_resource(AutoQuality(Governor::new(quality.settings.preset, target_fps)));
        }
        (PresetChoice::Fixed(_), true) => commands.remove_resource::<AutoQuality>(),
        _ => {}
    }
}

fn govern(time: Res<Time<Real>>, stats: Option<Res<crate::stats::FrameStats>>, auto: Option<ResMut<AutoQuality>>, mut quality: ResMut<ActiveQuality>) {
    let Some(mut auto) = auto else { return };
    profile_span!("governor");
    // The last frame's wall-clock time (a scenario's fixed step replaces `Time`).
    let frame = stats.map(|s| std::time::Duration::from_secs_f32(s.frame_ms / 1000.0)).filter(|d| !d.is_zero()).unwrap_or(time.delta());
    // Read before the frame: a step clears the window it was decided on.
    let p90_ms = auto.0.p90_ms();
    let decision = auto.0.frame(frame);
    if let Decision::Down(step) | Decision::Up(step) = decision {
        info!(?decision, p90_ms, target_ms = auto.0.target_ms(), "auto quality");
        quality.settings = step.preset.settings();
        quality.bias_scale = step.bias_scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic machine: each preset costs this much at bias ×1.0;
    /// coarser LOD saves up to 45% of it.
    fn smooth(step: Step) -> f32 {
        let preset = match step.preset {
            QualityPreset::Low => 6.0,
            QualityPreset::Medium => 10.0,
            QualityPreset::High => 15.0,
            QualityPreset::Ultra => 24.0,
        };
        preset * (0.55 + 0.45 * step.bias_scale)
    }

    /// A machine where ultra's shadows are very dear: from high ×1.0 the
    /// next rung up costs more than twice as much.
    fn jumpy(step: Step) -> f32 {
        if step.preset == QualityPreset::Ultra { 40.0 * (0.55 + 0.45 * step.bias_scale) } else { smooth(step) }
    }

    /// Runs `seconds` of frames at `load` on `machine`; returns the rungs
    /// visited and the seconds spent on each.
    fn run(g: &mut Governor, machine: fn(Step) -> f32, load: f32, seconds: f32) -> Vec<Step> {
        let mut seen = vec![g.step()];
        let mut t = 0.0;
        while t < seconds {
            let ms = machine(g.step()) * load;
            t += ms / 1000.0;
            if let Decision::Down(s) | Decision::Up(s) = g.frame(Duration::from_secs_f32(ms / 1000.0)) {
                seen.push(s);
            }
        }
        seen
    }

    fn ups(seen: &[Step], machine: fn(Step) -> f32) -> usize {
        seen.windows(2).filter(|w| machine(w[1]) > machine(w[0])).count()
    }

    #[test]
    fn the_ladder_goes_from_cheap_to_dear() {
        let l = ladder();
        assert_eq!(l.len(), 12);
        assert_eq!(l[0], Step { preset: QualityPreset::Low, bias_scale: 0.65 });
        assert_eq!(l[11], Step { preset: QualityPreset::Ultra, bias_scale: 1.0 });
        assert!(l.windows(2).all(|w| smooth(w[0]) < smooth(w[1])));
    }

    #[test]
    fn steps_down_one_rung_at_a_time_and_settles_where_the_target_is_met() {
        let mut g = Governor::new(QualityPreset::Ultra, 60);
        let seen = run(&mut g, smooth, 1.0, 30.0);
        assert!(seen.len() > 1, "ultra at 24 ms misses 16.7 ms: it stepped down");
        assert!(seen.windows(2).all(|w| smooth(w[1]) < smooth(w[0])), "only down: {seen:?}");
        assert_eq!(g.step(), Step { preset: QualityPreset::High, bias_scale: 1.0 }, "the dearest rung that fits");
        let changes = g.changes;
        run(&mut g, smooth, 1.0, 600.0);
        assert_eq!(g.changes, changes, "and stays there: high at 15 ms has no headroom to try ultra");
    }

    #[test]
    fn steps_back_up_when_the_load_goes_away() {
        let mut g = Governor::new(QualityPreset::High, 60);
        run(&mut g, smooth, 4.0, 60.0);
        assert_eq!(g.step(), ladder()[0], "four times the load: all the way down");
        run(&mut g, smooth, 0.3, 200.0);
        assert_eq!(g.step(), Step { preset: QualityPreset::Ultra, bias_scale: 1.0 }, "a light load: back up to the top");
    }

    #[test]
    fn a_rung_that_keeps_failing_is_tried_ever_more_rarely() {
        // At load 0.7, high ×1.0 takes 10.5 ms: headroom (under 11.7 ms).
        // The next rung, ultra ×0.65, takes 23 ms: a miss. Without the
        // block the governor would flip between them every ~8 s.
        let mut g = Governor::new(QualityPreset::High, 60);
        let seen = run(&mut g, jumpy, 0.7, 1200.0);
        let tries = ups(&seen, jumpy);
        // Blocks of 30, 60, 120, 240, 480, 480 s: at most 7 tries in 20 min.
        assert!((1..=7).contains(&tries), "{tries} tries up in 20 minutes: {seen:?}");
        assert_eq!(g.step(), Step { preset: QualityPreset::High, bias_scale: 1.0 }, "it lives on the rung that fits");
    }

    #[test]
    fn hitches_do_not_step_down() {
        let mut g = Governor::new(QualityPreset::High, 60);
        for i in 0..3000 {
            // One 100 ms hitch every 2 s (an asset load, a big message).
            let ms = if i % 120 == 0 { 100.0 } else { 12.0 };
            assert_eq!(g.frame(Duration::from_secs_f32(ms / 1000.0)), Decision::Hold, "frame {i}");
        }
    }

    #[test]
    fn the_plugin_applies_its_steps_and_stops_when_a_fixed_preset_is_chosen() {
        let mut app = App::new();
        app.add_plugins(MinimalPlugins).insert_resource(ActiveQuality::new(PresetChoice::Auto)).add_plugins(GovernorPlugin { target_fps: 60 });
        app.update();
        assert!(app.world().contains_resource::<AutoQuality>());
        // Feed it a slow machine directly (real frame times here are tiny).
        for _ in 0..400 {
            let decision = app.world_mut().resource_mut::<AutoQuality>().0.frame(Duration::from_millis(40));
            if let Decision::Down(step) = decision {
                let mut q = app.world_mut().resource_mut::<ActiveQuality>();
                q.settings = step.preset.settings();
                q.bias_scale = step.bias_scale;
            }
        }
        assert!(app.world().resource::<AutoQuality>().0.changes >= 2);
        app.world_mut().resource_mut::<ActiveQuality>().choice = PresetChoice::Fixed(QualityPreset::High);
        app.update();
        assert!(!app.world().contains_resource::<AutoQuality>(), "a fixed choice stops the governor");
    }
}
