//! Quality presets: turns the active [`PresetSettings`] into camera, light
//! and shadow settings whenever it changes (so a switch at run time needs no
//! restart).

use bevy::camera::Projection;
use bevy::light::{CascadeShadowConfig, CascadeShadowConfigBuilder, DirectionalLightShadowMap};
use bevy::prelude::*;
use bevy::render::render_resource::TextureFormat;
use bevy::render::renderer::RenderAdapter;
use bevy::render::view::Msaa;
use plaza_shared::quality::{PresetChoice, PresetSettings, QualityPreset};

/// The preset in force.
#[derive(Resource, Debug, Clone, Copy, PartialEq)]
pub struct ActiveQuality {
    /// What the user asked for.
    pub choice: PresetChoice,
    /// What is applied now.
    pub settings: PresetSettings,
    /// The adaptive governor's extra LOD bias (1.0 = the preset's own; lower
    /// switches to coarser levels sooner).
    pub bias_scale: f32,
}

impl ActiveQuality {
    pub fn new(choice: PresetChoice) -> Self {
        // `auto` starts from medium, the safe middle for unknown hardware;
        // the governor climbs from there within seconds when it can.
        let preset = match choice {
            PresetChoice::Fixed(p) => p,
            PresetChoice::Auto => QualityPreset::Medium,
        };
        ActiveQuality { choice, settings: preset.settings(), bias_scale: 1.0 }
    }

    /// The LOD bias in force: the preset's times the governor's.
    pub fn lod_bias(&self) -> f32 {
        self.settings.lod_bias * self.bias_scale
    }

    /// Switches to a choice the user made (panel, hotkey): a fixed preset
    /// applies at once; auto starts the governor from the current preset.
    pub fn choose(&mut self, choice: PresetChoice) {
        self.choice = choice;
        if let PresetChoice::Fixed(p) = choice {
            self.settings = p.settings();
            self.bias_scale = 1.0;
        }
    }
}

/// The main 3D camera, the one presets apply to.
#[derive(Component, Debug, Default)]
pub struct MainCamera;

/// A headset eye's camera (0 left, 1 right): presets apply to it as to the
/// main camera. The OpenXR runtime sets its projection.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq)]
pub struct EyeCamera(pub u32);

/// Lamps and other optional point lights: presets switch off the ones past
/// `max_lights`, counting in [`OptionalLight::rank`] order.
#[derive(Component, Debug)]
pub struct OptionalLight {
    pub rank: u32,
}

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum QualitySystems {
    Apply,
}

pub struct QualityPlugin {
    pub choice: PresetChoice,
}

impl Plugin for QualityPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(ActiveQuality::new(self.choice))
            .configure_sets(PostUpdate, QualitySystems::Apply.before(bevy::camera::visibility::VisibilitySystems::CheckVisibility))
            .add_systems(PostUpdate, apply_quality.in_set(QualitySystems::Apply));
    }
}

type PresetCamera<'a> = (&'a mut Msaa, &'a mut Projection);
/// The cameras presets apply to (and stats count): the main one and a
/// headset's eyes.
pub type PresetCameras = Or<(With<MainCamera>, With<EyeCamera>)>;
type LampParts<'a> = (&'a OptionalLight, &'a mut PointLight, &'a mut Visibility);
/// Cameras and lamps spawned since the last run.
type Newcomers = Or<(Added<MainCamera>, Added<EyeCamera>, Added<OptionalLight>)>;

/// The sample count to use for `requested`: the highest the adapter
/// supports at or below it for the colour and depth formats the main pass
/// uses (lavapipe, for one, has 4× but not 2×), so a preset never asks the
/// GPU for something it can't do.
pub fn supported_msaa(adapter: Option<&RenderAdapter>, requested: u32) -> u32 {
    let Some(adapter) = adapter else { return requested };
    let formats = [TextureFormat::Rgba8UnormSrgb, TextureFormat::Bgra8UnormSrgb, TextureFormat::Rgba16Float, TextureFormat::Depth32Float];
    let flags: Vec<_> = formats.iter().map(|f| adapter.get_texture_format_features(*f).flags).collect();
    [8, 4, 2].into_iter().filter(|&n| n <= requested).find(|&n| flags.iter().all(|f| f.sample_count_supported(n))).unwrap_or(1)
}

fn apply_quality(
    quality: Res<ActiveQuality>,
    adapter: Option<Res<RenderAdapter>>,
    mut shadow_map: Option<ResMut<DirectionalLightShadowMap>>,
    mut cameras: Query<PresetCamera, PresetCameras>,
    mut suns: Query<(&mut DirectionalLight, &mut CascadeShadowConfig)>,
    mut lamps: Query<LampParts>,
    newcomers: Query<(), Newcomers>,
) {
    // Also apply to cameras and lights spawned after the last change. (Suns
    // are checked through their `Mut`: an `Added<DirectionalLight>` filter
    // would conflict with the mutable query.)
    let new_sun = suns.iter_mut().any(|(sun, _)| sun.is_added());
    if !quality.is_changed() && newcomers.is_empty() && !new_sun {
        return;
    }
    let s = quality.settings;
    let samples = supported_msaa(adapter.as_deref(), s.msaa_samples);
    if samples != s.msaa_samples {
        info!(requested = s.msaa_samples, using = samples, "this GPU can't do the preset's MSAA; using the nearest it can");
    }
    for (mut msaa, mut projection) in &mut cameras {
        *msaa = msaa_for(samples);
        if let Projection::Perspective(p) = projection.as_mut() {
            p.far = s.view_distance_m;
        }
    }
    if let Some(map) = shadow_map.as_mut()
        && s.shadows.enabled
        && map.size != s.shadows.map_size as usize
    {
        map.size = s.shadows.map_size as usize;
    }
    for (mut sun, mut cascades) in &mut suns {
        sun.shadow_maps_enabled = s.shadows.enabled;
        if s.shadows.enabled {
            *cascades = CascadeShadowConfigBuilder {
                num_cascades: s.shadows.cascades.max(1) as usize,
                maximum_distance: s.shadows.max_distance_m,
                first_cascade_far_bound: (s.shadows.max_distance_m / 4.0).max(1.0),
                ..default()
            }
            .build();
        }
    }
    for (lamp, mut light, mut visibility) in &mut lamps {
        let on = lamp.rank < s.max_lights;
        light.intensity = if on { LAMP_INTENSITY } else { 0.0 };
        *visibility = if on { Visibility::Inherited } else { Visibility::Hidden };
    }
    info!(preset = %s.preset, msaa = s.msaa_samples, shadows = s.shadows.enabled, view_m = s.view_distance_m, "quality applied");
}

pub const LAMP_INTENSITY: f32 = 200_000.0;

fn msaa_for(samples: u32) -> Msaa {
    match samples {
        0 | 1 => Msaa::Off,
        2 => Msaa::Sample2,
        3..=4 => Msaa::Sample4,
        _ => Msaa::Sample8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(choice: PresetChoice) -> App {
        let mut app = App::new();
        app.add_plugins(MinimalPlugins)
            .insert_resource(DirectionalLightShadowMap { size: 512 })
            .add_plugins(QualityPlugin { choice });
        app.world_mut().spawn((MainCamera, Msaa::default(), Projection::Perspective(PerspectiveProjection::default())));
        app.world_mut().spawn((DirectionalLight::default(), CascadeShadowConfig::default()));
        for rank in 0..10 {
            app.world_mut().spawn((OptionalLight { rank }, PointLight::default(), Visibility::Inherited));
        }
        app.update();
        app
    }

    fn lit_lamps(app: &mut App) -> usize {
        let mut q = app.world_mut().query::<(&PointLight, &Visibility)>();
        q.iter(app.world()).filter(|(l, v)| l.intensity > 0.0 && **v != Visibility::Hidden).count()
    }

    fn state(app: &mut App) -> (Msaa, f32, bool, usize) {
        let w = app.world_mut();
        let (msaa, proj) = w.query::<(&Msaa, &Projection)>().single(w).unwrap();
        let far = match proj {
            Projection::Perspective(p) => p.far,
            _ => panic!("perspective camera expected"),
        };
        let msaa = *msaa;
        let shadows = w.query::<&DirectionalLight>().single(w).unwrap().shadow_maps_enabled;
        let map = w.resource::<DirectionalLightShadowMap>().size;
        (msaa, far, shadows, map)
    }

    #[test]
    fn presets_apply_msaa_shadows_view_distance_and_lights() {
        let mut low = app(PresetChoice::Fixed(QualityPreset::Low));
        assert_eq!(state(&mut low), (Msaa::Off, 60.0, false, 512));
        assert_eq!(lit_lamps(&mut low), 0, "low lights no lamps");

        let mut ultra = app(PresetChoice::Fixed(QualityPreset::Ultra));
        assert_eq!(state(&mut ultra), (Msaa::Sample4, 400.0, true, 4096));
        assert_eq!(lit_lamps(&mut ultra), 10);
    }

    #[test]
    fn switching_at_run_time_reapplies_without_a_restart() {
        let mut app = app(PresetChoice::Fixed(QualityPreset::High));
        assert_eq!(state(&mut app), (Msaa::Sample4, 200.0, true, 2048));
        app.world_mut().resource_mut::<ActiveQuality>().settings = QualityPreset::Low.settings();
        app.update();
        assert_eq!(state(&mut app), (Msaa::Off, 60.0, false, 2048));
        assert_eq!(lit_lamps(&mut app), 0);
        let cascades = {
            let w = app.world_mut();
            w.query::<&CascadeShadowConfig>().single(w).unwrap().bounds.len()
        };
        assert_eq!(cascades, 3, "cascades stay as high set them while shadows are off");
    }

    #[test]
    fn auto_starts_from_medium() {
        let mut app = app(PresetChoice::Auto);
        assert_eq!(app.world().resource::<ActiveQuality>().settings.preset, QualityPreset::Medium);
        assert_eq!(state(&mut app).0, Msaa::Sample2);
    }
}
