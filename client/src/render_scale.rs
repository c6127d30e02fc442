//! Render scale: the preset's 3D resolution relative to the output.
//!
//! Two cameras. The scene camera ([`MainCamera`]) draws the plaza; an output
//! camera draws on the window (or the offscreen image) after it, and the
//! HUD lives on the output camera, so it stays sharp whatever the scale.
//!
//! The scene camera draws into an image of the output's size times the
//! scale, and the output camera shows that image on a full-view quad,
//! filtered up. Fewer pixels shaded is the point: on a fill-bound GPU (or
//! lavapipe) 0.75 shades 56% of the pixels. At scale 1 the same path costs
//! one full-screen copy; drawing the scene straight to the output and the
//! HUD over it from a second camera doesn't compose in Bevy when the two
//! cameras' MSAA differ (the second one's buffer never sees the first's
//! frame: the HUD smeared across frames on lavapipe).
//!
//! The image is remade when the scale or the output size changes (a preset
//! switch, a window resize).

use crate::quality::{ActiveQuality, MainCamera};
use crate::scene::OffscreenTarget;
use bevy::asset::RenderAssetUsages;
use bevy::camera::visibility::RenderLayers;
use bevy::camera::{RenderTarget, ScalingMode};
use bevy::core_pipeline::tonemapping::Tonemapping;
use bevy::prelude::*;
use bevy::render::render_resource::TextureFormat;
use bevy::render::view::Msaa;
use bevy::window::PrimaryWindow;

/// The camera that draws on the real output (and hosts the HUD).
#[derive(Component, Debug, Default)]
pub struct OutputCamera;

/// The quad that shows the scaled scene on the output.
#[derive(Component, Debug, Default)]
pub struct ScaledSceneQuad;

/// The output camera and the quad see only this layer.
pub const OUTPUT_LAYER: usize = 1;

/// The scene image now in use.
#[derive(Resource, Debug, Default, Clone)]
pub struct ScaledScene {
    pub image: Option<Handle<Image>>,
    /// Output size and scale it was made for.
    pub made_for: Option<(UVec2, u32)>,
}

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum RenderScaleSystems {
    Apply,
}

pub struct RenderScalePlugin;

impl Plugin for RenderScalePlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<ScaledScene>()
            .add_systems(Startup, spawn_output.after(crate::scene::SceneSystems::Spawn))
            .add_systems(PostUpdate, apply_render_scale.in_set(RenderScaleSystems::Apply).before(bevy::camera::CameraUpdateSystems));
    }
}

/// The scaled size for an output of `size` at `scale`: at least 1×1.
pub fn scaled_size(size: UVec2, scale: f32) -> UVec2 {
    let scale = if scale.is_finite() { scale.clamp(0.1, 1.0) } else { 1.0 };
    (size.as_vec2() * scale).round().as_uvec2().max(UVec2::ONE)
}

fn spawn_output(mut commands: Commands, offscreen: Option<Res<OffscreenTarget>>, mut meshes: ResMut<Assets<Mesh>>, mut materials: ResMut<Assets<StandardMaterial>>) {
    let mut camera = commands.spawn((
        Camera3d::default(),
        // After the scene camera, which draws into the scaled image.
        Camera { order: 1, ..default() },
        OutputCamera,
        Msaa::Off,
        Tonemapping::None,
        RenderLayers::layer(OUTPUT_LAYER),
        Projection::Orthographic(OrthographicProjection { scaling_mode: ScalingMode::Fixed { width: 1.0, height: 1.0 }, ..OrthographicProjection::default_3d() }),
        Transform::from_xyz(0.0, 0.0, 1.0).looking_at(Vec3::ZERO, Vec3::Y),
    ));
    if let Some(target) = &offscreen {
        camera.insert(RenderTarget::Image(target.image.clone().into()));
    }
    commands.spawn((
        Mesh3d(meshes.add(Rectangle::new(1.0, 1.0))),
        MeshMaterial3d(materials.add(StandardMaterial { unlit: true, ..default() })),
        RenderLayers::layer(OUTPUT_LAYER),
        Visibility::Hidden,
        ScaledSceneQuad,
    ));
}

#[allow(clippy::too_many_arguments)]
fn apply_render_scale(
    quality: Res<ActiveQuality>,
    offscreen: Option<Res<OffscreenTarget>>,
    windows: Query<&Window, With<PrimaryWindow>>,
    mut state: ResMut<ScaledScene>,
    mut images: ResMut<Assets<Image>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
    mut commands: Commands,
    scene_camera: Query<Entity, With<MainCamera>>,
    output_camera: Query<(), (With<OutputCamera>, Without<MainCamera>)>,
    mut quad: Query<(&mut Visibility, &MeshMaterial3d<StandardMaterial>), With<ScaledSceneQuad>>,
) {
    let output = match (&offscreen, windows.single()) {
        (Some(t), _) => UVec2::new(t.size.0, t.size.1),
        (None, Ok(w)) => UVec2::new(w.physical_width(), w.physical_height()),
        (None, Err(_)) => return,
    };
    if output.x == 0 || output.y == 0 {
        return; // minimised
    }
    let scale = quality.settings.render_scale;
    let key = (output, (if scale.is_finite() { scale.clamp(0.1, 1.0) } else { 1.0 } * 1000.0).round() as u32);
    if state.made_for == Some(key) {
        return;
    }
    let (Ok(scene), Ok(()), Ok((mut quad_visibility, quad_material))) = (scene_camera.single(), output_camera.single(), quad.single_mut()) else { return };
    state.made_for = Some(key);
    let size = scaled_size(output, scale);
    let mut image = Image::new_target_texture(size.x, size.y, TextureFormat::Rgba8UnormSrgb, None);
    image.asset_usage = RenderAssetUsages::default();
    let handle = images.add(image);
    commands.entity(scene).insert(RenderTarget::Image(handle.clone().into()));
    if let Some(mut material) = materials.get_mut(&quad_material.0) {
        material.base_color_texture = Some(handle.clone());
    }
    *quad_visibility = Visibility::Inherited;
    state.image = Some(handle);
    info!(scale, width = size.x, height = size.y, "render scale: scene drawn smaller and filtered up");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_sizes_round_and_never_vanish() {
        assert_eq!(scaled_size(UVec2::new(1280, 720), 0.75), UVec2::new(960, 540));
        assert_eq!(scaled_size(UVec2::new(1280, 720), 1.0), UVec2::new(1280, 720));
        assert_eq!(scaled_size(UVec2::new(3, 3), 0.01), UVec2::new(1, 1), "clamped to 0.1, at least a pixel");
        assert_eq!(scaled_size(UVec2::new(100, 100), f32::NAN), UVec2::new(100, 100));
    }
}
