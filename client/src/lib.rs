//! `plaza-client`: the Bevy app, one plugin per concern, composed by
//! [`PlazaClientPlugins`].
//!
//! - [`quality`]: presets → MSAA, shadows, view distance, lights.
//! - [`culling`]: frustum culling on/off (Bevy's culling is the base).
//! - [`scene`]: the plaza, the sun and the camera (window or offscreen).
//! - [`avatars`]: avatars (placeholder bots for now).
//! - [`capture`]: frame timing, screenshot and JSON report for `--frames`.
//! - [`options`]: flags and environment variables.

pub mod avatars;
pub mod capture;
pub mod culling;
pub mod options;
pub mod quality;
pub mod scene;

use bevy::app::{PluginGroupBuilder, ScheduleRunnerPlugin};
use bevy::prelude::*;
use bevy::window::ExitCondition;
use bevy::winit::WinitPlugin;
use options::ClientOptions;
use std::time::Duration;

/// Plaza's own plugins, configured from the options.
pub struct PlazaClientPlugins {
    pub options: ClientOptions,
}

impl PluginGroup for PlazaClientPlugins {
    fn build(self) -> PluginGroupBuilder {
        let o = self.options;
        let mut group = PluginGroupBuilder::start::<Self>()
            .add(quality::QualityPlugin { choice: o.preset_choice() })
            .add(culling::CullingPlugin { frustum: o.culling.is_on() })
            .add(scene::ScenePlugin { offscreen: o.headless.then_some(o.resolution) })
            .add(avatars::AvatarsPlugin { bots: o.bots });
        if let Some(frames) = o.frames {
            group = group.add(capture::CapturePlugin { frames, screenshot: o.screenshot.clone(), report: o.report.clone() });
        }
        group
    }
}

/// The whole app: Bevy's plugins (windowed or headless) and Plaza's.
pub fn build_app(options: ClientOptions) -> App {
    let mut app = App::new();
    let window = WindowPlugin {
        primary_window: (!options.headless).then(|| Window {
            title: "Plaza".into(),
            resolution: bevy::window::WindowResolution::new(options.resolution.0, options.resolution.1),
            ..default()
        }),
        exit_condition: if options.headless { ExitCondition::DontExit } else { ExitCondition::OnPrimaryClosed },
        ..default()
    };
    let defaults = DefaultPlugins.set(window);
    if options.headless {
        app.add_plugins((defaults.disable::<WinitPlugin>(), ScheduleRunnerPlugin::run_loop(Duration::ZERO)));
    } else {
        app.add_plugins(defaults);
    }
    app.add_plugins(PlazaClientPlugins { options });
    app
}
