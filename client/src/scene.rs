//! The plaza itself, the sun and the camera.
//!
//! The plaza is `models/plaza.glb` (see docs/assets.md): every placed
//! thing is a node named after the instance (`bench_03`) with one child per
//! level (`bench_03_lod0` … `_lod3`). Spawning the scene spawns every
//! level, so once it is in the world [`SceneSystems`]' observer gives each
//! level's meshes a [`PropLevel`] (`_lod0` full, `_lod1` reduced, `_lod2`
//! low, `_lod3` the farthest band): the LOD plugin sets their
//! `VisibilityRange` from the preset's view distance and LOD bias, and Bevy
//! draws and cross-fades the right one. The ground, paving and paths are
//! big and close: they keep `_lod0` only. Each lamp gets a point light
//! (presets switch off those past their light count).
//!
//! Without the model (see [`crate::models`]), or if it fails to load, the
//! built-in placeholder plaza is drawn instead: primitive shapes, with LOD
//! levels for trees, lamps and benches.

use crate::lod::PropLevel;
use crate::models::{ModelFiles, PLAZA_MODEL, lod_of};
use bevy::camera::visibility::VisibilityRange;
use crate::quality::{LAMP_INTENSITY, MainCamera, OptionalLight};
use plaza_shared::lod::LodLevel;
use bevy::asset::RenderAssetUsages;
use bevy::gltf::{Gltf, GltfAssetLabel};
use bevy::light::CascadeShadowConfig;
use bevy::prelude::*;
use bevy::render::render_resource::TextureFormat;
use bevy::world_serialization::WorldInstanceReady;

/// Where the main camera draws when there is no window.
#[derive(Resource, Debug, Clone)]
pub struct OffscreenTarget {
    pub image: Handle<Image>,
    pub size: (u32, u32),
}

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum SceneSystems {
    /// The camera, the sun and the plaza (model or placeholders); the
    /// fallback when the model fails to load.
    Spawn,
}

pub struct ScenePlugin {
    /// `Some(size)`: render offscreen to an image of that size.
    pub offscreen: Option<(u32, u32)>,
}

impl Plugin for ScenePlugin {
    fn build(&self, app: &mut App) {
        if let Some(size) = self.offscreen {
            app.add_systems(PreStartup, move |mut images: ResMut<Assets<Image>>, mut commands: Commands| {
                let mut image = Image::new_target_texture(size.0, size.1, TextureFormat::Rgba8UnormSrgb, None);
                image.asset_usage = RenderAssetUsages::default();
                commands.insert_resource(OffscreenTarget { image: images.add(image), size });
            });
        }
        app.insert_resource(ClearColor(Color::srgb(0.62, 0.76, 0.92)))
            .insert_resource(GlobalAmbientLight { color: Color::WHITE, brightness: 400.0, ..default() })
            .add_plugins(SceneTypesPlugin)
            .add_systems(Startup, (spawn_camera, spawn_sun, spawn_plaza).in_set(SceneSystems::Spawn))
            .add_systems(Update, fall_back_when_the_model_fails.in_set(SceneSystems::Spawn));
    }
}

/// The scene camera. Where it draws (the scaled scene image) is the render
/// scale plugin's business.
///
/// It is also where lights' shadow levels of detail are measured from.
/// Without the marker Bevy takes the camera that draws to the window,
/// which is the render scale's output camera (a quad at the origin), or,
/// headless, any camera with a warning.
fn spawn_camera(mut commands: Commands) {
    commands.spawn((
        Camera3d::default(),
        MainCamera,
        bevy::camera::ShadowLodOrigin,
        Projection::Perspective(PerspectiveProjection { fov: 60f32.to_radians(), ..default() }),
        crate::player::camera_for(crate::player::START, 0.0),
    ));
}

/// Lamp positions around the fountain; their rank decides which stay lit
/// under presets with fewer lights.
const LAMP_RING_RADIUS: f32 = 14.0;
const LAMPS: u32 = 12;

/// Registers the component types a glTF scene holds. Spawning a
/// `WorldAsset` copies its entities by reflection, and this build leaves
/// out Bevy's `reflect_auto_register` feature (to keep the feature list
/// short), so the types are named here; a missing one panics at spawn
/// naming the type.
struct SceneTypesPlugin;

impl Plugin for SceneTypesPlugin {
    fn build(&self, app: &mut App) {
        use bevy::camera::primitives::Aabb;
        use bevy::camera::visibility::VisibilityClass;
        use bevy::gltf::{GltfExtras, GltfMaterialExtras, GltfMaterialName, GltfMeshExtras, GltfMeshName, GltfSceneExtras, GltfSceneName};
        app.register_type::<Transform>()
            .register_type::<GlobalTransform>()
            .register_type::<bevy::transform::components::TransformTreeChanged>()
            .register_type::<Name>()
            .register_type::<Visibility>()
            .register_type::<InheritedVisibility>()
            .register_type::<ViewVisibility>()
            .register_type::<VisibilityClass>()
            .register_type::<ChildOf>()
            .register_type::<Children>()
            .register_type::<Mesh3d>()
            .register_type::<MeshMaterial3d<StandardMaterial>>()
            .register_type::<Aabb>()
            .register_type::<GltfExtras>()
            .register_type::<GltfMeshExtras>()
            .register_type::<GltfMaterialExtras>()
            .register_type::<GltfMeshName>()
            .register_type::<GltfMaterialName>()
            .register_type::<GltfSceneExtras>()
            .register_type::<GltfSceneName>();
    }
}

/// Meshes of these instances keep their `_lod0` level only.
const ALWAYS_FULL: [&str; 3] = ["ground_", "paving_", "paths_"];
/// Height of the light in a lamp's glass (the model's lamps are 3.5 m).
const LAMP_LIGHT_Y: f32 = 3.3;

/// The plaza model while it is in use.
#[derive(Resource, Debug, Clone)]
pub struct PlazaModel {
    /// The entity the scene is spawned under.
    pub root: Entity,
    pub file: Handle<Gltf>,
}

fn spawn_sun(mut commands: Commands) {
    commands.spawn((
        DirectionalLight { illuminance: 9_000.0, shadow_maps_enabled: true, ..default() },
        CascadeShadowConfig::default(),
        Transform::from_xyz(30.0, 50.0, 20.0).looking_at(Vec3::ZERO, Vec3::Y),
    ));
}

fn spawn_plaza(
    mut commands: Commands,
    files: Option<Res<ModelFiles>>,
    server: Option<Res<AssetServer>>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    match (files, server) {
        (Some(files), Some(server)) if files.plaza => {
            let scene = server.load(GltfAssetLabel::Scene(0).from_asset(PLAZA_MODEL));
            let root = commands.spawn((WorldAssetRoot(scene), Name::new("plaza model"))).observe(prepare_levels).id();
            commands.insert_resource(PlazaModel { root, file: server.load(PLAZA_MODEL) });
        }
        _ => spawn_placeholder_plaza(&mut commands, &mut meshes, &mut materials),
    }
}

/// Once the scene is spawned: LOD levels for the props' meshes, `_lod0`
/// only for the ground, lights in the lamps.
fn prepare_levels(
    ready: On<WorldInstanceReady>,
    mut commands: Commands,
    children: Query<&Children>,
    names: Query<&Name>,
    parents: Query<&ChildOf>,
    with_mesh: Query<(), With<Mesh3d>>,
) {
    let (mut props, mut lamps) = (0, 0);
    for entity in children.iter_descendants(ready.entity) {
        if with_mesh.contains(entity) {
            // A primitive of a `<instance>_lod<N>` node.
            let Some((instance, level)) = parents.get(entity).ok().and_then(|p| names.get(p.parent()).ok()).and_then(|n| lod_of(n.as_str()).map(|(i, l)| (i.to_owned(), l))) else { continue };
            if ALWAYS_FULL.iter().any(|p| instance.starts_with(p)) {
                if level > 0 {
                    commands.entity(entity).despawn();
                }
                continue;
            }
            commands.entity(entity).insert((PropLevel(LodLevel::ALL[level as usize]), VisibilityRange::abrupt(0.0, 0.0)));
            props += 1;
        } else if let Ok(name) = names.get(entity)
            && let Some(rank) = name.as_str().strip_prefix("lamp_").and_then(|n| n.parse::<u32>().ok())
        {
            commands.entity(entity).with_child((
                PointLight { intensity: LAMP_INTENSITY, range: 12.0, color: Color::srgb(1.0, 0.85, 0.6), ..default() },
                OptionalLight { rank },
                Transform::from_xyz(0.0, LAMP_LIGHT_Y, 0.0),
            ));
            lamps += 1;
        }
    }
    info!(level_meshes = props, lamps, "plaza model ready");
}

/// The model failed to load: the placeholders, once.
fn fall_back_when_the_model_fails(
    mut commands: Commands,
    model: Option<Res<PlazaModel>>,
    server: Res<AssetServer>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    let Some(model) = model else { return };
    if !server.load_state(&model.file).is_failed() {
        return;
    }
    warn!(model = PLAZA_MODEL, "the plaza model failed to load; drawing the placeholder plaza instead");
    commands.entity(model.root).despawn();
    commands.remove_resource::<PlazaModel>();
    spawn_placeholder_plaza(&mut commands, &mut meshes, &mut materials);
}

/// The built-in plaza: primitive shapes, LOD levels for lamps, benches and
/// trees.
fn spawn_placeholder_plaza(commands: &mut Commands, meshes: &mut Assets<Mesh>, materials: &mut Assets<StandardMaterial>) {
    let mut mat = |r: f32, g: f32, b: f32, rough: f32| {
        materials.add(StandardMaterial { base_color: Color::srgb(r, g, b), perceptual_roughness: rough, ..default() })
    };
    let grass = mat(0.33, 0.52, 0.28, 0.95);
    let stone = mat(0.72, 0.70, 0.66, 0.8);
    let wood = mat(0.45, 0.30, 0.18, 0.9);
    let leaves = mat(0.20, 0.45, 0.22, 0.9);
    let water = mat(0.25, 0.50, 0.80, 0.1);
    let metal = mat(0.15, 0.15, 0.17, 0.4);
    let walls = [mat(0.85, 0.78, 0.66, 0.9), mat(0.74, 0.56, 0.48, 0.9), mat(0.80, 0.82, 0.86, 0.9)];

    commands.spawn((
        Mesh3d(meshes.add(Plane3d::default().mesh().size(160.0, 160.0))),
        MeshMaterial3d(grass),
        Name::new("ground"),
    ));
    // Paths: a cross through the plaza and a ring around the fountain.
    for (size, pos) in [((4.0, 120.0), Vec3::ZERO), ((120.0, 4.0), Vec3::ZERO)] {
        commands.spawn((
            Mesh3d(meshes.add(Cuboid::new(size.0, 0.04, size.1))),
            MeshMaterial3d(stone.clone()),
            Transform::from_translation(pos + Vec3::Y * 0.02),
        ));
    }
    commands.spawn((
        Mesh3d(meshes.add(Annulus::new(8.0, 11.0).mesh().resolution(64))),
        MeshMaterial3d(stone.clone()),
        Transform::from_xyz(0.0, 0.03, 0.0).with_rotation(Quat::from_rotation_x(-std::f32::consts::FRAC_PI_2)),
    ));
    // Fountain.
    commands.spawn((
        Mesh3d(meshes.add(Cylinder::new(4.0, 0.8))),
        MeshMaterial3d(stone.clone()),
        Transform::from_xyz(0.0, 0.4, 0.0),
    ));
    commands.spawn((
        Mesh3d(meshes.add(Cylinder::new(3.6, 0.1))),
        MeshMaterial3d(water),
        Transform::from_xyz(0.0, 0.78, 0.0),
    ));
    commands.spawn((
        Mesh3d(meshes.add(Cylinder::new(0.4, 2.4))),
        MeshMaterial3d(stone.clone()),
        Transform::from_xyz(0.0, 1.2, 0.0),
    ));
    // Props with LOD levels: full, reduced, low, impostor (None: not drawn).
    // One entity per level; the LOD plugin sets their visibility ranges.
    let lod_prop = |commands: &mut Commands, levels: [Option<Handle<Mesh>>; 4], material: Handle<StandardMaterial>, transform: Transform| {
        for (level, mesh) in LodLevel::ALL.iter().zip(levels) {
            if let Some(mesh) = mesh {
                commands.spawn((Mesh3d(mesh), MeshMaterial3d(material.clone()), transform, PropLevel(*level), VisibilityRange::abrupt(0.0, 0.0)));
            }
        }
    };
    let cylinder = |meshes: &mut Assets<Mesh>, r: f32, h: f32, res: u32| meshes.add(Cylinder::new(r, h).mesh().resolution(res).build());
    let ico = |meshes: &mut Assets<Mesh>, r: f32, n: u32| meshes.add(Sphere::new(r).mesh().ico(n).expect("small icosphere"));

    // Lamps with benches beside them.
    let pole = [Some(cylinder(meshes, 0.08, 4.0, 16)), Some(cylinder(meshes, 0.08, 4.0, 8)), Some(cylinder(meshes, 0.08, 4.0, 4)), Some(cylinder(meshes, 0.08, 4.0, 3))];
    let globe = [Some(ico(meshes, 0.3, 3)), Some(ico(meshes, 0.3, 2)), Some(ico(meshes, 0.3, 1)), None];
    let seat_mesh = meshes.add(Cuboid::new(2.0, 0.12, 0.6));
    let seat = [Some(seat_mesh.clone()), Some(seat_mesh.clone()), Some(seat_mesh.clone()), Some(seat_mesh)];
    let leg_mesh = meshes.add(Cuboid::new(0.1, 0.45, 0.5));
    let leg = [Some(leg_mesh.clone()), Some(leg_mesh), None, None];
    let globe_glow = materials.add(StandardMaterial { emissive: LinearRgba::rgb(6.0, 5.0, 3.0), ..default() });
    for i in 0..LAMPS {
        let angle = i as f32 / LAMPS as f32 * std::f32::consts::TAU;
        let at = Vec3::new(angle.cos(), 0.0, angle.sin()) * LAMP_RING_RADIUS;
        lod_prop(commands, pole.clone(), metal.clone(), Transform::from_translation(at + Vec3::Y * 2.0));
        lod_prop(commands, globe.clone(), globe_glow.clone(), Transform::from_translation(at + Vec3::Y * 4.1));
        commands.spawn((
            PointLight { intensity: LAMP_INTENSITY, range: 12.0, color: Color::srgb(1.0, 0.85, 0.6), ..default() },
            OptionalLight { rank: i },
            Transform::from_translation(at + Vec3::Y * 3.9),
        ));
        // Bench parts are placed as roots (LOD measures their own distance).
        let bench_at = at * 1.12;
        let facing = Transform::from_translation(bench_at).looking_at(Vec3::ZERO, Vec3::Y).rotation;
        let place = |local: Vec3| Transform::from_translation(bench_at + facing * local).with_rotation(facing);
        lod_prop(commands, seat.clone(), wood.clone(), place(Vec3::new(0.0, 0.5, 0.0)));
        for x in [-0.85, 0.85] {
            lod_prop(commands, leg.clone(), metal.clone(), place(Vec3::new(x, 0.225, 0.0)));
        }
    }
    // Trees in a loose ring.
    let trunk = [Some(cylinder(meshes, 0.25, 3.0, 24)), Some(cylinder(meshes, 0.25, 3.0, 12)), Some(cylinder(meshes, 0.25, 3.0, 6)), Some(cylinder(meshes, 0.25, 3.0, 4))];
    let crown = [Some(ico(meshes, 1.8, 4)), Some(ico(meshes, 1.8, 3)), Some(ico(meshes, 1.8, 1)), Some(ico(meshes, 1.8, 0))];
    for i in 0..16 {
        let angle = (i as f32 + 0.5) / 16.0 * std::f32::consts::TAU;
        let r = 24.0 + (i % 3) as f32 * 3.0;
        let at = Vec3::new(angle.cos() * r, 0.0, angle.sin() * r);
        lod_prop(commands, trunk.clone(), wood.clone(), Transform::from_translation(at + Vec3::Y * 1.5));
        lod_prop(commands, crown.clone(), leaves.clone(), Transform::from_translation(at + Vec3::Y * 4.2));
    }
    // Buildings around the square.
    for i in 0..12 {
        let angle = i as f32 / 12.0 * std::f32::consts::TAU;
        let at = Vec3::new(angle.cos(), 0.0, angle.sin()) * 55.0;
        let height = 8.0 + (i * 7 % 5) as f32 * 3.0;
        commands.spawn((
            Mesh3d(meshes.add(Cuboid::new(14.0, height, 10.0))),
            MeshMaterial3d(walls[i % walls.len()].clone()),
            Transform::from_translation(at + Vec3::Y * height / 2.0).looking_at(Vec3::new(0.0, height / 2.0, 0.0), Vec3::Y),
        ));
    }
}
