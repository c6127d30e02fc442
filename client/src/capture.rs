//! Frame capture for headless runs and benchmarks: counts frames, records
//! frame times, and after `--frames N` writes the screenshot and the JSON
//! frame report (the contract's keys), then exits.
//!
//! Counts are exact for what the main camera (in VR, the left eye) saw in
//! the measured frames
//! (see [`crate::stats`]), averaged: `visible` is the meshes in the camera's
//! `VisibleEntities` (after frustum and distance culling), `culled` the
//! other meshes; `triangles` sums the index (or vertex) counts of visible
//! meshes; `draw_calls` is the number of visible mesh instances the main
//! pass draws (shadow passes are not counted); `avatars_by_lod` counts
//! avatars per LOD level, `props_by_lod` the visible prop meshes per level
//! (`lod0` … `lod3`; the ground, which is always `lod0`, is not a prop).
//!
//! Frames count only once the renderer has compiled every pipeline it asked
//! for (Bevy compiles them in the background, and until then frames come out
//! blank: on lavapipe, for a few dozen frames) and, with a server, once the
//! client is in its room (or [`CONNECT_WAIT`] has passed), so the report
//! and screenshot show the room's avatars.

use crate::network::{ConnectionInfo, ConnectionStatus};
use crate::quality::ActiveQuality;
use crate::scene::OffscreenTarget;
use crate::stats::FrameStats;
use bevy::app::AppExit;
use bevy::prelude::*;
use bevy::render::render_resource::PipelineCache;
use bevy::render::renderer::RenderAdapterInfo;
use bevy::render::view::screenshot::{Screenshot, ScreenshotCaptured};
use bevy::render::{Render, RenderApp, RenderSystems};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long to wait for the room before measuring anyway.
pub const CONNECT_WAIT: Duration = Duration::from_secs(15);

pub struct CapturePlugin {
    pub frames: u32,
    pub screenshot: Option<PathBuf>,
    pub report: Option<PathBuf>,
}

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum CaptureSystems {
    Measure,
}

/// Frames before this fraction of the run are warm-up (shader compilation,
/// first uploads) and left out of the timings.
const WARMUP_FRACTION: f32 = 0.2;
/// How long to wait for the screenshot after the last frame before failing.
const SCREENSHOT_WAIT_FRAMES: u32 = 300;
/// Frames to wait for pipelines before measuring anyway (with a warning).
const PIPELINE_WAIT_FRAMES: u32 = 2_000;
/// Pipelines count as ready once none is waiting and their number held for
/// this many render frames (new ones are requested as things come into view).
const STABLE_RENDER_FRAMES: u32 = 3;

/// Set by the render world once every requested pipeline is compiled.
#[derive(Resource, Clone, Default)]
pub struct PipelinesReady(Arc<AtomicBool>);

impl PipelinesReady {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

fn watch_pipelines(cache: Res<PipelineCache>, ready: Res<PipelinesReady>, mut last: Local<(usize, u32)>) {
    let total = cache.pipelines().count();
    let waiting = cache.waiting_pipelines().count();
    let (last_total, stable) = *last;
    let stable = if waiting == 0 && total > 0 && total == last_total { stable + 1 } else { 0 };
    *last = (total, stable);
    ready.0.store(stable >= STABLE_RENDER_FRAMES, Ordering::Relaxed);
}

#[derive(Resource, Debug)]
struct CaptureState {
    frames: u32,
    warmup: u32,
    screenshot: Option<PathBuf>,
    report: Option<PathBuf>,
    frame: u32,
    /// Frames waited for pipelines before counting started.
    waited: u32,
    frame_ms: Vec<f64>,
    sums: Counts,
    measured: u32,
    screenshot_requested: bool,
    screenshot_done: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    visible: u64,
    culled: u64,
    triangles: u64,
    draw_calls: u64,
    avatars_by_lod: [u64; 5],
    props_by_lod: [u64; 4],
}

impl Plugin for CapturePlugin {
    fn build(&self, app: &mut App) {
        let warmup = ((self.frames as f32 * WARMUP_FRACTION) as u32).min(self.frames.saturating_sub(1));
        app.insert_resource(CaptureState {
            frames: self.frames,
            warmup,
            screenshot: self.screenshot.clone(),
            report: self.report.clone(),
            frame: 0,
            waited: 0,
            frame_ms: Vec::with_capacity(self.frames as usize),
            sums: Counts::default(),
            measured: 0,
            screenshot_requested: false,
            screenshot_done: self.screenshot.is_none(),
        })
        .add_systems(Last, measure_frame.in_set(CaptureSystems::Measure).after(crate::stats::StatsSystems::Count));
        let ready = PipelinesReady::default();
        app.insert_resource(ready.clone());
        match app.get_sub_app_mut(RenderApp) {
            Some(render) => {
                render.insert_resource(ready).add_systems(Render, watch_pipelines.in_set(RenderSystems::Cleanup));
            }
            // No renderer (ECS tests): nothing to wait for.
            None => ready.0.store(true, Ordering::Relaxed),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn measure_frame(
    mut state: ResMut<CaptureState>,
    time: Res<Time<Real>>,
    stats: Res<FrameStats>,
    connection: Option<Res<ConnectionInfo>>,
    remote: Option<Res<crate::remote::RemoteAvatars>>,
    ready: Res<PipelinesReady>,
    offscreen: Option<Res<OffscreenTarget>>,
    quality: Res<ActiveQuality>,
    adapter: Option<Res<RenderAdapterInfo>>,
    windows: Query<&Window>,
    mut commands: Commands,
    mut exit: MessageWriter<AppExit>,
) {
    let connecting = connection.as_ref().is_some_and(|c| matches!(c.status, ConnectionStatus::Starting | ConnectionStatus::Connecting | ConnectionStatus::Reconnecting { .. }));
    if state.frame == 0 && connecting && time.elapsed() < CONNECT_WAIT {
        state.waited += 1;
        return;
    }
    if state.frame == 0 && !ready.get() {
        state.waited += 1;
        if state.waited < PIPELINE_WAIT_FRAMES {
            return;
        }
        warn!(frames = state.waited, "pipelines still compiling; measuring anyway");
    }
    if state.frame == 0 {
        info!(frames = state.waited, "pipelines ready; measuring");
    }
    state.frame += 1;
    let frame = state.frame;
    if frame > state.frames {
        if state.screenshot_done {
            let connection = connection.as_ref().map(|c| c.status.label()).unwrap_or_else(|| "none".into());
            let remote = remote.map(|r| r.by_id.len() as u64).unwrap_or(0);
            let written = finish(&state, offscreen.as_deref(), &quality, adapter.as_deref(), &windows, connection, remote);
            exit.write(if written { AppExit::Success } else { AppExit::error() });
        } else if frame > state.frames + SCREENSHOT_WAIT_FRAMES {
            error!(frames = SCREENSHOT_WAIT_FRAMES, "the screenshot never arrived; giving up");
            exit.write(AppExit::error());
        }
        return;
    }
    if frame > state.warmup {
        // Wall clock, from the stats (a scenario's fixed step replaces `Time`).
        state.frame_ms.push(f64::from(stats.frame_ms));
        let s = &mut state.sums;
        s.visible += stats.visible;
        s.culled += stats.culled;
        s.triangles += stats.triangles;
        s.draw_calls += stats.draw_calls;
        for (sum, n) in s.avatars_by_lod.iter_mut().zip(stats.avatars_by_lod) {
            *sum += u64::from(n);
        }
        for (sum, n) in s.props_by_lod.iter_mut().zip(stats.props_by_lod) {
            *sum += u64::from(n);
        }
        state.measured += 1;
    }
    if frame == state.frames
        && !state.screenshot_requested
        && let Some(path) = state.screenshot.clone()
    {
        state.screenshot_requested = true;
        let shot = match &offscreen {
            Some(target) => Screenshot::image(target.image.clone()),
            None => Screenshot::primary_window(),
        };
        commands.spawn(shot).observe(move |captured: On<ScreenshotCaptured>, mut state: ResMut<CaptureState>| {
            save_png(&captured.image, &path);
            state.screenshot_done = true;
        });
    }
}

fn save_png(image: &Image, path: &std::path::Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        error!(path = %dir.display(), cause = %e, "can't create screenshot folder");
        return;
    }
    match image.clone().try_into_dynamic() {
        Ok(dynamic) => match dynamic.to_rgb8().save(path) {
            Ok(()) => info!(path = %path.display(), "screenshot written"),
            Err(e) => error!(path = %path.display(), cause = %e, "can't write screenshot"),
        },
        Err(e) => error!(cause = ?e, "can't convert screenshot"),
    }
}

#[derive(Serialize)]
struct Percentiles {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

#[derive(Serialize)]
struct EntityCounts {
    visible: u64,
    culled: u64,
}

#[derive(Serialize)]
struct AvatarsByLod {
    full: u64,
    reduced: u64,
    low: u64,
    impostor: u64,
    hidden: u64,
}

#[derive(Serialize)]
struct PropsByLod {
    lod0: u64,
    lod1: u64,
    lod2: u64,
    lod3: u64,
}

#[derive(Serialize)]
struct FrameReport {
    frames: u32,
    warmup_frames: u32,
    pipeline_wait_frames: u32,
    preset: String,
    resolution: [u32; 2],
    adapter: String,
    frame_ms: Percentiles,
    fps_1pct_low: f64,
    entities: EntityCounts,
    triangles: u64,
    draw_calls: u64,
    avatars_by_lod: AvatarsByLod,
    props_by_lod: PropsByLod,
    /// The connection when the run ended ("in plaza", "offline", …).
    connection: String,
    /// Avatars the server told us about (others; not yours).
    remote_avatars: u64,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Writes the report, if asked for; false when that failed.
fn finish(state: &CaptureState, offscreen: Option<&OffscreenTarget>, quality: &ActiveQuality, adapter: Option<&RenderAdapterInfo>, windows: &Query<&Window>, connection: String, remote_avatars: u64) -> bool {
    let Some(path) = &state.report else { return true };
    let mut sorted = state.frame_ms.clone();
    sorted.sort_by(f64::total_cmp);
    // 1% low: the average fps of the slowest 1% of frames (at least one).
    let slow = (sorted.len() / 100).max(1).min(sorted.len());
    let slow_ms = sorted.iter().rev().take(slow).sum::<f64>() / slow.max(1) as f64;
    let n = u64::from(state.measured.max(1));
    let avg = |v: u64| (v as f64 / n as f64).round() as u64;
    let resolution = match (offscreen, windows.iter().next()) {
        (Some(t), _) => [t.size.0, t.size.1],
        (None, Some(w)) => [w.physical_width(), w.physical_height()],
        (None, None) => [0, 0],
    };
    let report = FrameReport {
        frames: state.measured,
        warmup_frames: state.warmup,
        pipeline_wait_frames: state.waited,
        preset: quality.settings.preset.to_string(),
        resolution,
        adapter: adapter.map(|a| format!("{} ({:?})", a.name, a.backend)).unwrap_or_else(|| "unknown".into()),
        frame_ms: Percentiles {
            p50: percentile(&sorted, 0.50),
            p95: percentile(&sorted, 0.95),
            p99: percentile(&sorted, 0.99),
            max: sorted.last().copied().unwrap_or(0.0),
        },
        fps_1pct_low: if slow_ms > 0.0 { 1000.0 / slow_ms } else { 0.0 },
        entities: EntityCounts { visible: avg(state.sums.visible), culled: avg(state.sums.culled) },
        triangles: avg(state.sums.triangles),
        draw_calls: avg(state.sums.draw_calls),
        avatars_by_lod: {
            let [full, reduced, low, impostor, hidden] = state.sums.avatars_by_lod.map(avg);
            AvatarsByLod { full, reduced, low, impostor, hidden }
        },
        props_by_lod: {
            let [lod0, lod1, lod2, lod3] = state.sums.props_by_lod.map(avg);
            PropsByLod { lod0, lod1, lod2, lod3 }
        },
        connection,
        remote_avatars,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let json = serde_json::to_string_pretty(&report).expect("report serializes");
    match std::fs::write(path, json) {
        Ok(()) => {
            info!(path = %path.display(), "frame report written");
            true
        }
        Err(e) => {
            error!(path = %path.display(), cause = %e, "can't write frame report");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.95), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
