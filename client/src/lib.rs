//! `plaza-client`: the Bevy app, one plugin per concern, composed by
//! [`PlazaClientPlugins`].
//!
//! - [`options`], [`settings`]: flags, environment, the settings file.
//! - [`quality`]: presets → MSAA, shadows, view distance, lights.
//! - [`governor`]: `--preset auto`, stepping quality with the frame times.
//! - [`lod`]: levels of detail by distance, the full-detail budget,
//!   distance culling.
//! - [`culling`]: frustum culling on/off at run time.
//! - [`models`]: where the asset models are, and whether they are there.
//! - [`scene`]: the plaza, the sun and the camera (window or offscreen).
//! - [`render_scale`]: the preset's 3D resolution, and the output camera
//!   the HUD draws on.
//! - [`avatars`]: how avatars look at each level; local walkers.
//! - [`network`]: the network thread (and the embedded server).
//! - [`remote`]: other people's avatars, interpolated.
//! - [`voice`]: voice chat: the scene for the spatial mix, mute, who speaks.
//! - [`player`]: your avatar and the camera that follows it.
//! - [`hud`]: stats, settings, chat, toasts, nameplates (egui).
//! - [`stats`]: what each frame drew, counted.
//! - [`telemetry`]: frame-time reports to the server every 5 s.
//! - [`scenario`]: scripted crowds and camera paths for benchmarks.
//! - [`capture`]: screenshot and JSON frame report for `--frames`.
//! - [`xr`]: VR through OpenXR (`--xr`): the headset, the controllers, the
//!   rig that carries your avatar.

/// Enters a span called `$name` until the end of the enclosing block, for
/// Tracy (docs/profiling.md). Compiled in only with the `tracy` feature:
/// Bevy's log subscriber, installed in every run, records each enabled
/// span (about 0.4 µs in release, 0.8 µs in the dev build, measured here),
/// which per-frame systems should not pay for when nobody is profiling.
/// Bevy's own per-system spans are likewise compiled in only with its
/// `trace` feature.
macro_rules! profile_span {
    ($name:literal) => {
        #[cfg(feature = "tracy")]
        let _profile_span = ::bevy::log::info_span!($name).entered();
    };
}

pub mod avatars;
pub mod capture;
pub mod chat_log;
pub mod culling;
pub mod governor;
pub mod hud;
pub mod lod;
pub mod models;
pub mod network;
pub mod options;
pub mod player;
pub mod quality;
pub mod remote;
pub mod render_scale;
pub mod scenario;
pub mod scene;
pub mod settings;
pub mod stats;
pub mod telemetry;
pub mod voice;
pub mod xr;

use bevy::app::{PluginGroupBuilder, ScheduleRunnerPlugin};
use bevy::prelude::*;
use bevy::window::{ExitCondition, PresentMode};
use bevy::winit::WinitPlugin;
use network::NetworkMode;
use options::ClientOptions;
use plaza_shared::quality::PresetChoice;
use scenario::Scenario;
use std::time::Duration;

/// Plaza's own plugins, configured from the options.
pub struct PlazaClientPlugins {
    pub options: ClientOptions,
    pub scenario: Option<Scenario>,
    /// The HUD needs a renderer (egui draws through it).
    pub hud: bool,
    /// The asset folder Bevy loads from (see [`models::asset_dir`]); `None`:
    /// the built-in placeholder plaza and avatars.
    pub asset_dir: Option<std::path::PathBuf>,
}

impl PluginGroup for PlazaClientPlugins {
    fn build(self) -> PluginGroupBuilder {
        let o = self.options;
        // Scenarios are offline and deterministic; so is --offline.
        let mode = if self.scenario.is_some() || o.offline {
            NetworkMode::Offline
        } else if let Some(server) = &o.server {
            NetworkMode::Remote { server: server.clone() }
        } else {
            NetworkMode::Embedded { bots: o.bots() }
        };
        // Offline without a scenario: local walkers stand in for the bots.
        let walkers = if matches!(mode, NetworkMode::Offline) && self.scenario.is_none() { o.bots() } else { 0 };
        let mut group = PluginGroupBuilder::start::<Self>();
        if let Some(dir) = self.asset_dir {
            group = group.add(models::ModelsPlugin { dir });
        }
        group = group
            .add(quality::QualityPlugin { choice: o.preset_choice() })
            .add(governor::GovernorPlugin { target_fps: o.platform().target_fps() })
            .add(lod::LodPlugin { enabled: o.lod_on(), distance_culling: o.culling_on() })
            .add(culling::CullingPlugin { enabled: o.culling_on() })
            .add(scene::ScenePlugin { offscreen: o.headless.then_some(o.resolution) })
            .add(render_scale::RenderScalePlugin)
            .add(avatars::AvatarsPlugin { walkers })
            .add(network::NetworkPlugin { mode, room: o.room.clone(), name: o.display_name(), telemetry: o.telemetry_on(), voice: o.voice() })
            .add(voice::VoicePlugin)
            .add(remote::RemotePlugin)
            .add(player::PlayerPlugin { spawn: self.scenario.is_none() })
            .add(stats::StatsPlugin)
            .add(telemetry::TelemetryPlugin { enabled: o.telemetry_on(), platform: o.platform() });
        if self.hud {
            group = group.add(hud::HudPlugin);
        }
        if let Some(scenario) = self.scenario {
            group = group.add(scenario::ScenarioPlugin { scenario });
        }
        if let Some(frames) = o.frames {
            group = group.add(capture::CapturePlugin { frames, screenshot: o.screenshot.clone(), report: o.report.clone() });
        }
        group
    }
}

/// The whole app: Bevy's plugins (windowed or headless) and Plaza's.
pub fn build_app(options: ClientOptions, scenario: Option<Scenario>, settings: settings::SettingsFile) -> App {
    let mut app = App::new();
    // Under `auto` the governor needs frame times that show headroom, which
    // vsync would hide (every frame would take exactly one refresh).
    let present_mode = if options.preset_choice() == PresetChoice::Auto { PresentMode::AutoNoVsync } else { PresentMode::AutoVsync };
    let window = WindowPlugin {
        primary_window: (!options.headless).then(|| Window {
            title: "Plaza".into(),
            resolution: bevy::window::WindowResolution::new(options.resolution.0, options.resolution.1),
            present_mode,
            ..default()
        }),
        exit_condition: if options.headless { ExitCondition::DontExit } else { ExitCondition::OnPrimaryClosed },
        ..default()
    };
    // The embedded server logs every bot's join at info; the client's own
    // lines matter more here. RUST_LOG overrides this.
    let log = bevy::log::LogPlugin { filter: "info,plaza_server=warn,wgpu=error,naga=warn".into(), ..default() };
    let asset_dir = models::asset_dir();
    let assets = AssetPlugin { file_path: asset_dir.to_string_lossy().into_owned(), ..default() };
    let defaults = DefaultPlugins.set(window).set(log).set(assets);
    // Asked before the renderer starts: with a headset the renderer is the
    // OpenXR runtime's, without one it is the desktop's.
    let headset = (options.xr && !options.headless).then(xr::probe);
    if options.headless {
        app.add_plugins((defaults.disable::<WinitPlugin>(), ScheduleRunnerPlugin::run_loop(Duration::ZERO)));
    } else if let Some(Ok(_)) = &headset {
        let init = bevy_mod_openxr::init::OxrInitPlugin {
            app_info: bevy_mod_openxr::types::AppInfo { name: "Plaza".into(), version: bevy_mod_openxr::types::Version(0, 1, 0) },
            ..default()
        };
        app.add_plugins(bevy_mod_openxr::add_xr_plugins(defaults).set(init));
    } else {
        app.add_plugins(defaults);
    }
    match headset {
        Some(Ok(runtime)) => {
            info!(runtime = %runtime.runtime, headset = %runtime.headset, "starting in VR");
            app.add_plugins(xr::XrPlugin { runtime, mirror: settings.settings.vr_mirror.unwrap_or(true) });
        }
        Some(Err(why)) => {
            warn!("VR is off: {why}; starting the desktop view (VR presets and the 72 fps target still apply)");
            app.add_plugins(xr::NoHeadsetPlugin { reason: why.to_string() });
        }
        None if options.xr => info!("--xr has no headset to show in a --headless run; rendering the desktop view offscreen"),
        None => {}
    }
    app.insert_resource(settings);
    app.add_plugins(PlazaClientPlugins { options, scenario, hud: true, asset_dir: Some(asset_dir) });
    app
}

/// What ECS tests start from: no window, no renderer.
#[cfg(test)]
pub(crate) mod test_support {
    use bevy::prelude::*;

    pub fn app() -> App {
        let mut app = App::new();
        app.add_plugins((MinimalPlugins, AssetPlugin::default(), TransformPlugin)).init_asset::<Mesh>().init_asset::<StandardMaterial>();
        app
    }
}
