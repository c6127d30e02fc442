//! Frame-timing telemetry (`--telemetry`, `ENABLE_TELEMETRY`): every frame's
//! wall-clock time goes into a [`FrameAggregator`]; every
//! [`REPORT_INTERVAL_SECS`] of frames the interval becomes a
//! [`TelemetryReport`] (percentiles, buckets, 1%-low, frames over the
//! platform's budget, the preset in effect, the adapter, avatars drawn) and
//! is handed to the network thread, which posts it
//! ([`crate::network::telemetry`]).
//!
//! A frame never waits for this: the hand-off is a `try_send` on a queue of
//! [`crate::network::telemetry::QUEUE`] reports. When the queue is full (the
//! network is behind) the report is dropped here and counted, and the count
//! goes into the next report that makes it into the queue.

use crate::avatars::AvatarParts;
use crate::network::TelemetryOutbox;
use crate::quality::ActiveQuality;
use crate::stats::{FrameStats, StatsSystems};
use bevy::camera::visibility::ViewVisibility;
use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use bevy::render::renderer::RenderAdapterInfo;
use plaza_shared::quality::Platform;
use plaza_shared::telemetry::{FrameAggregator, REPORT_INTERVAL_SECS};

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum TelemetrySystems {
    /// Records the frame and, when an interval is full, hands its report
    /// to the network (Last, after [`StatsSystems::Count`] measured it).
    Record,
}

/// The interval being collected, and what was dropped before it.
#[derive(Resource, Debug)]
pub struct TelemetryState {
    pub aggregator: FrameAggregator,
    /// Reports dropped here (queue full) since one was last handed over.
    pub dropped: u64,
    /// Reports handed to the network so far.
    pub handed: u64,
}

pub struct TelemetryPlugin {
    /// `--telemetry on/off`; off adds nothing at all.
    pub enabled: bool,
    pub platform: Platform,
}

impl Plugin for TelemetryPlugin {
    fn build(&self, app: &mut App) {
        if !self.enabled {
            return;
        }
        app.insert_resource(TelemetryState { aggregator: FrameAggregator::new(self.platform), dropped: 0, handed: 0 })
            .configure_sets(Last, TelemetrySystems::Record.after(StatsSystems::Count))
            .add_systems(Last, record.in_set(TelemetrySystems::Record));
    }
}

/// Avatars the main pass drew: those with any part in view.
#[derive(SystemParam)]
pub struct VisibleAvatars<'w, 's> {
    avatars: Query<'w, 's, &'static AvatarParts>,
    views: Query<'w, 's, &'static ViewVisibility>,
}

impl VisibleAvatars<'_, '_> {
    pub fn count(&self) -> u32 {
        let seen = |e: Entity| self.views.get(e).is_ok_and(|v| v.get());
        self.avatars.iter().filter(|p| seen(p.body) || seen(p.head) || p.hands.iter().any(|&h| seen(h))).count() as u32
    }
}

fn record(
    stats: Option<Res<FrameStats>>,
    time: Res<Time<Real>>,
    quality: Res<ActiveQuality>,
    adapter: Option<Res<RenderAdapterInfo>>,
    outbox: Option<Res<TelemetryOutbox>>,
    avatars: VisibleAvatars,
    mut state: ResMut<TelemetryState>,
) {
    profile_span!("telemetry");
    // No network (offline, or it failed to start): nowhere to send.
    let Some(outbox) = outbox else { return };
    // The frame's wall-clock time as the stats measured it (a scenario's
    // fixed step replaces `Time`'s delta); the real clock without them.
    let frame_ms = stats.map(|s| f64::from(s.frame_ms)).unwrap_or_else(|| time.delta_secs_f64() * 1000.0);
    // The first frame has no previous one to measure from.
    if frame_ms <= 0.0 {
        return;
    }
    state.aggregator.record(frame_ms);
    if !state.aggregator.due() {
        return;
    }
    let adapter = adapter.map(|a| format!("{} ({:?})", a.name, a.backend)).unwrap_or_else(|| "unknown".into());
    let dropped = state.dropped;
    // What auto chose, never "auto": the report says what the frames ran at.
    let Some(report) = state.aggregator.take(quality.settings.preset, &adapter, avatars.count(), dropped) else { return };
    if outbox.try_send(report) {
        state.dropped = 0;
        state.handed += 1;
    } else {
        // This one, and the drops it was carrying.
        state.dropped = dropped.saturating_add(1);
        debug!(dropped = state.dropped, interval_s = REPORT_INTERVAL_SECS, "telemetry queue full; report dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plaza_shared::quality::{PresetChoice, QualityPreset};
    use plaza_shared::telemetry::{TelemetryReport, bucket_of};

    /// 31.25 ms is exact in binary: 160 frames are exactly 5 s.
    const FRAME_MS: f32 = 31.25;
    const FRAMES_PER_REPORT: usize = 160;

    fn app(enabled: bool) -> (App, tokio::sync::mpsc::Receiver<TelemetryReport>) {
        let mut app = App::new();
        // The user chose auto; the governor has settled on low.
        let mut quality = ActiveQuality::new(PresetChoice::Auto);
        quality.settings = QualityPreset::Low.settings();
        let (outbox, reports) = TelemetryOutbox::pair();
        app.add_plugins(MinimalPlugins)
            .insert_resource(quality)
            .insert_resource(outbox)
            .insert_resource(FrameStats { frame_ms: FRAME_MS, ..default() })
            .add_plugins(TelemetryPlugin { enabled, platform: Platform::Desktop });
        (app, reports)
    }

    fn frames(app: &mut App, n: usize) {
        for _ in 0..n {
            app.update();
        }
    }

    #[test]
    fn five_seconds_of_frames_hand_over_one_report_at_the_preset_auto_chose() {
        let (mut app, mut reports) = app(true);
        frames(&mut app, FRAMES_PER_REPORT - 1);
        assert!(reports.try_recv().is_err(), "under 5 s of frames: nothing yet");
        frames(&mut app, 1);
        let report = reports.try_recv().expect("5 s of frames make a report");
        assert_eq!(report.frames, FRAMES_PER_REPORT as u64);
        assert_eq!(report.preset, QualityPreset::Low, "the preset in effect, not the choice (auto)");
        assert_eq!(report.platform, Platform::Desktop);
        assert_eq!(report.frame_ms.p50, f64::from(FRAME_MS));
        assert_eq!(report.over_budget, FRAMES_PER_REPORT as u64, "31 ms frames all miss 60 fps");
        assert_eq!(report.bucket_counts[bucket_of(f64::from(FRAME_MS))], FRAMES_PER_REPORT as u64);
        assert_eq!(report.adapter, "unknown", "no renderer here");
        assert_eq!(report.dropped_reports, 0);
        assert!(report.clone().validate().is_ok());
        frames(&mut app, 1);
        assert!(reports.try_recv().is_err(), "the next interval starts empty");
    }

    #[test]
    fn a_full_queue_drops_the_report_and_the_next_one_says_so() {
        let (mut app, mut reports) = app(true);
        // Nobody drains: the queue takes 4, the 5th and 6th are dropped.
        frames(&mut app, FRAMES_PER_REPORT * 6);
        let state = app.world().resource::<TelemetryState>();
        assert_eq!((state.handed, state.dropped), (4, 2));
        for _ in 0..4 {
            assert_eq!(reports.try_recv().unwrap().dropped_reports, 0);
        }
        frames(&mut app, FRAMES_PER_REPORT);
        assert_eq!(reports.try_recv().unwrap().dropped_reports, 2, "the two dropped reports are told");
        assert_eq!(app.world().resource::<TelemetryState>().dropped, 0, "and the count starts again");
    }

    #[test]
    fn telemetry_off_collects_and_sends_nothing() {
        let (mut app, mut reports) = app(false);
        frames(&mut app, FRAMES_PER_REPORT * 2);
        assert!(!app.world().contains_resource::<TelemetryState>());
        assert!(reports.try_recv().is_err());
    }
}
