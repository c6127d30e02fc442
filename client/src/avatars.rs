//! What an avatar looks like at each level of detail, and spawning one.
//! Everyone who draws avatars (the network's, the local player, scenario
//! crowds, offline walkers) goes through [`spawn_avatar`], so every avatar
//! has the same parts and the LOD plugin can treat them alike.
//!
//! The looks come from the asset models `models/avatar_0.glb` …
//! `avatar_3.glb` (see docs/assets.md): avatar `i` wears model `i % 4`.
//! Each part (torso, head, both hands) is one entity whose mesh the LOD
//! plugin swaps:
//!
//! | level | torso, head, hands | triangles (avatar_0) |
//! | --- | --- | --- |
//! | full | `avatar_K_*_lod0` | 5,312 |
//! | reduced | `avatar_K_*_lod1` | 3,006 |
//! | low | `avatar_K_*_lod2` | 1,328 |
//! | impostor | `avatar_K_impostor`: a camera-facing card, painted from the model | 2 |
//!
//! (`_lod3` is for props; past low an avatar is a card.) The models face
//! +Z; Plaza's avatars face -Z, so the parts are turned half a turn.
//!
//! Without the models (see [`crate::models`]) the placeholders stand in:
//! a capsule body and a sphere head in eight shirt colours, about 2,000,
//! 500 and 130 triangles, no hands, and a plain coloured card.

use crate::lod::{Lod, LodAvatar};
use crate::models::{AVATAR_MODELS, GlbError, GlbIndex, ModelFiles, avatar_model};
use bevy::gltf::{Gltf, GltfAssetLabel};
use bevy::prelude::*;
use plaza_shared::lod::LodLevel;
use std::path::Path;

/// An avatar in the plaza.
#[derive(Component, Debug, Clone)]
pub struct Avatar {
    pub index: u32,
    pub name: String,
}

/// The avatar's drawn parts, switched by LOD.
#[derive(Component, Debug, Clone, Copy)]
pub struct AvatarParts {
    /// The torso; the impostor card at that level.
    pub body: Entity,
    pub head: Entity,
    /// Left, right (no mesh on the placeholders).
    pub hands: [Entity; 2],
}

/// One avatar look: its meshes per level, materials and where the parts sit.
#[derive(Debug, Clone)]
pub struct AvatarLook {
    /// Full, reduced, low, impostor.
    pub body: [Handle<Mesh>; 4],
    /// Full, reduced, low (impostors have no head).
    pub head: [Handle<Mesh>; 3],
    /// Left and right hand at full, reduced, low; `None`: no hands.
    pub hands: Option<[[Handle<Mesh>; 3]; 2]>,
    pub body_material: Handle<StandardMaterial>,
    /// The impostor card's (unlit).
    pub card_material: Handle<StandardMaterial>,
    pub head_material: Handle<StandardMaterial>,
    pub hands_material: Handle<StandardMaterial>,
    /// Where the parts sit on the avatar (whose front is -Z).
    pub body_at: Transform,
    pub head_at: Transform,
    pub hands_at: [Transform; 2],
}

impl AvatarLook {
    pub fn body(&self, level: LodLevel) -> Option<&Handle<Mesh>> {
        match level {
            LodLevel::Hidden => None,
            l => self.body.get(l as usize),
        }
    }

    pub fn head(&self, level: LodLevel) -> Option<&Handle<Mesh>> {
        self.head.get(level as usize)
    }

    /// `side`: 0 left, 1 right.
    pub fn hand(&self, side: usize, level: LodLevel) -> Option<&Handle<Mesh>> {
        self.hands.as_ref()?.get(side)?.get(level as usize)
    }

    pub fn body_material(&self, level: LodLevel) -> &Handle<StandardMaterial> {
        if level == LodLevel::Impostor { &self.card_material } else { &self.body_material }
    }
}

/// Meshes and materials shared by every avatar.
#[derive(Resource, Debug, Clone)]
pub struct AvatarAssets {
    pub looks: Vec<AvatarLook>,
    /// The model files these came from (empty for the placeholders); if one
    /// fails to load, the placeholders take over.
    pub models: Vec<Handle<Gltf>>,
}

const BODY_Y: f32 = 0.8;
const HEAD_Y: f32 = 1.62;

impl AvatarAssets {
    /// The look of avatar `index`.
    pub fn look(&self, index: u32) -> &AvatarLook {
        &self.looks[index as usize % self.looks.len()]
    }

    pub fn from_models(&self) -> bool {
        !self.models.is_empty()
    }

    /// The built-in shapes: capsule and sphere in eight colours.
    pub fn placeholders(meshes: &mut Assets<Mesh>, materials: &mut Assets<StandardMaterial>) -> AvatarAssets {
        let capsule = |lat, long| Capsule3d::new(0.3, 1.0).mesh().latitudes(lat).longitudes(long).build();
        let sphere = |sectors, stacks| Sphere::new(0.22).mesh().uv(sectors, stacks);
        // The card spans feet to head, centred on the body's origin offset.
        let card = Mesh::from(Rectangle::new(0.75, 1.9)).translated_by(Vec3::new(0.0, 0.95 - BODY_Y, 0.0));
        let body = [meshes.add(capsule(16, 32)), meshes.add(capsule(8, 16)), meshes.add(capsule(4, 8)), meshes.add(card)];
        let head = [meshes.add(sphere(32, 16)), meshes.add(sphere(16, 8)), meshes.add(sphere(8, 4))];
        let skin = materials.add(StandardMaterial { base_color: Color::srgb(0.93, 0.78, 0.65), ..default() });
        let looks = (0..8)
            .map(|i| {
                let colour = Color::hsl(i as f32 * 45.0, 0.65, 0.5);
                AvatarLook {
                    body: body.clone(),
                    head: head.clone(),
                    hands: None,
                    body_material: materials.add(StandardMaterial { base_color: colour, ..default() }),
                    card_material: materials.add(StandardMaterial { base_color: colour, unlit: true, cull_mode: None, ..default() }),
                    head_material: skin.clone(),
                    hands_material: skin.clone(),
                    body_at: Transform::from_xyz(0.0, BODY_Y, 0.0),
                    head_at: Transform::from_xyz(0.0, HEAD_Y, 0.0),
                    hands_at: [Transform::IDENTITY; 2],
                }
            })
            .collect();
        AvatarAssets { looks, models: Vec::new() }
    }

    /// Handles into `models/avatar_K.glb` under `dir`, named by their JSON
    /// (read here, so avatars can be spawned before Bevy has loaded them).
    pub fn from_model_files(server: &AssetServer, dir: &Path) -> Result<AvatarAssets, GlbError> {
        let mut looks = Vec::new();
        let mut models = Vec::new();
        for k in 0..AVATAR_MODELS {
            let file = avatar_model(k);
            let glb = GlbIndex::read(&dir.join(&file))?;
            let missing = |what, name: String| GlbError::Missing { path: file.clone(), what, name };
            let mesh = |name: String| -> Result<(Handle<Mesh>, Option<usize>), GlbError> {
                let (index, material) = glb.mesh(&name).ok_or_else(|| missing("mesh", name))?;
                Ok((server.load(GltfAssetLabel::Primitive { mesh: index, primitive: 0 }.from_asset(file.clone())), material))
            };
            let material = |index: Option<usize>| -> Handle<StandardMaterial> {
                match index {
                    Some(index) => server.load(format!("{file}#{}/std", GltfAssetLabel::Material { index, is_scale_inverted: false })),
                    None => server.load(format!("{file}#{}/std", GltfAssetLabel::DefaultMaterial)),
                }
            };
            let levels = |part: &str| -> Result<([Handle<Mesh>; 3], Handle<StandardMaterial>), GlbError> {
                let l: Vec<_> = (0..3).map(|lod| mesh(format!("avatar_{k}_{part}_lod{lod}"))).collect::<Result<_, _>>()?;
                let m = material(l[0].1);
                Ok(([l[0].0.clone(), l[1].0.clone(), l[2].0.clone()], m))
            };
            // The models face +Z; ours face -Z.
            let turn = Transform::from_rotation(Quat::from_rotation_y(std::f32::consts::PI));
            let at = |part: &str| -> Result<Transform, GlbError> {
                let name = format!("avatar_{k}_{part}");
                glb.node_transform(&name).map(|t| turn * t).ok_or_else(|| missing("node", name))
            };
            let (torso, body_material) = levels("torso")?;
            let (head, head_material) = levels("head")?;
            let (left, hands_material) = levels("hand_l")?;
            let (right, _) = levels("hand_r")?;
            let (card, card_material) = mesh(format!("avatar_{k}_impostor"))?;
            let [t0, t1, t2] = torso;
            looks.push(AvatarLook {
                body: [t0, t1, t2, card],
                head,
                hands: Some([left, right]),
                body_material,
                card_material: material(card_material),
                head_material,
                hands_material,
                body_at: at("torso")?,
                head_at: at("head")?,
                hands_at: [at("hand_l")?, at("hand_r")?],
            });
            models.push(server.load(file));
        }
        Ok(AvatarAssets { looks, models })
    }
}

/// Spawns an avatar at full detail; the LOD plugin takes it from there.
pub fn spawn_avatar(commands: &mut Commands, assets: &AvatarAssets, index: u32, name: &str, transform: Transform) -> Entity {
    let look = assets.look(index);
    let mut root = commands.spawn((
        Avatar { index, name: name.to_owned() },
        Name::new(format!("avatar {name}")),
        transform,
        Visibility::default(),
        Lod::new(LodLevel::Full),
        LodAvatar,
    ));
    let mut parts = None;
    root.with_children(|a| {
        let body = a.spawn((Mesh3d(look.body[0].clone()), MeshMaterial3d(look.body_material.clone()), look.body_at)).id();
        let head = a.spawn((Mesh3d(look.head[0].clone()), MeshMaterial3d(look.head_material.clone()), look.head_at)).id();
        let hands = [0, 1].map(|side| match look.hand(side, LodLevel::Full) {
            Some(mesh) => a.spawn((Mesh3d(mesh.clone()), MeshMaterial3d(look.hands_material.clone()), look.hands_at[side])).id(),
            None => a.spawn((look.hands_at[side], Visibility::Hidden)).id(),
        });
        parts = Some(AvatarParts { body, head, hands });
    });
    root.insert(parts.expect("children spawned"));
    root.id()
}

/// Walks in a loop: centre, radius, angular speed (rad/s), phase. For
/// offline walkers and scenario crowds.
#[derive(Component, Debug, Clone, Copy)]
pub struct WalkLoop {
    pub center: Vec2,
    pub radius: f32,
    pub speed: f32,
    pub phase: f32,
}

impl WalkLoop {
    /// Deterministic loop for walker `i`, spread over rings 6–30 m out.
    pub fn for_bot(i: u32) -> Self {
        let ring = (i % 5) as f32;
        let golden = i as f32 * 2.399_963; // golden angle: even spread
        let dir = if i.is_multiple_of(2) { 1.0 } else { -1.0 };
        WalkLoop {
            center: Vec2::new(golden.cos(), golden.sin()) * (2.0 + ring),
            radius: 8.0 + ring * 4.5,
            speed: dir * 1.3 / (8.0 + ring * 4.5),
            phase: golden,
        }
    }

    /// A crowd spread over a disc of `radius` metres (scenarios).
    pub fn in_crowd(i: u32, radius: f32) -> Self {
        let golden = i as f32 * 2.399_963;
        let r = radius * ((i as f32 + 0.5) / 256.0).sqrt().fract().max(0.1);
        let dir = if i.is_multiple_of(2) { 1.0 } else { -1.0 };
        let loop_r = 2.0 + (i % 7) as f32;
        WalkLoop { center: Vec2::new(golden.cos(), golden.sin()) * r, radius: loop_r, speed: dir * 1.2 / loop_r, phase: golden }
    }

    /// Position and facing (yaw) at time `t`.
    pub fn at(&self, t: f32) -> (Vec3, f32) {
        let a = self.phase + self.speed * t;
        let p = self.center + Vec2::new(a.cos(), a.sin()) * self.radius;
        // Tangent of the circle, in the walking direction.
        let tangent = Vec2::new(-a.sin(), a.cos()) * self.speed.signum();
        (Vec3::new(p.x, 0.0, p.y), (-tangent.x).atan2(-tangent.y))
    }
}

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum AvatarSystems {
    /// Local walkers move.
    Walk,
    /// Impostor cards turn to the camera (after LOD has picked levels).
    Billboard,
}

/// Avatar assets, local walkers and impostor cards.
pub struct AvatarsPlugin {
    /// Local walkers (offline mode; the embedded server has its own bots).
    pub walkers: u32,
}

impl Plugin for AvatarsPlugin {
    fn build(&self, app: &mut App) {
        let walkers = self.walkers;
        app.add_systems(PreStartup, load_avatar_assets.after(crate::models::ModelsSystems::Check))
            .add_systems(Startup, move |mut commands: Commands, assets: Res<AvatarAssets>| spawn_walkers(&mut commands, &assets, walkers, WalkLoop::for_bot))
            .add_systems(Update, (walk.in_set(AvatarSystems::Walk), fall_back_when_models_fail))
            .add_systems(PostUpdate, face_cards_to_camera.in_set(AvatarSystems::Billboard).after(crate::lod::LodSystems::Apply).before(TransformSystems::Propagate));
    }
}

/// The models when [`ModelFiles`] has them, else the placeholders.
fn load_avatar_assets(
    mut commands: Commands,
    files: Option<Res<ModelFiles>>,
    server: Option<Res<AssetServer>>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    let from_models = match (files, server) {
        (Some(files), Some(server)) if files.avatars => match AvatarAssets::from_model_files(&server, &files.dir) {
            Ok(assets) => Some(assets),
            Err(e) => {
                warn!(cause = %e, "avatar models unusable; drawing placeholder avatars");
                None
            }
        },
        _ => None,
    };
    commands.insert_resource(from_models.unwrap_or_else(|| AvatarAssets::placeholders(&mut meshes, &mut materials)));
}

/// A model that fails to load (corrupt, unreadable textures aside): the
/// placeholders take over, and every avatar's level is applied again.
fn fall_back_when_models_fail(
    mut assets: ResMut<AvatarAssets>,
    server: Res<AssetServer>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
    mut avatars: Query<&mut Lod, With<Avatar>>,
) {
    if !assets.from_models() {
        return;
    }
    let Some(failed) = assets.models.iter().find(|m| server.load_state(*m).is_failed()) else { return };
    warn!(model = ?failed.path(), "an avatar model failed to load; drawing placeholder avatars instead");
    *assets = AvatarAssets::placeholders(&mut meshes, &mut materials);
    for mut lod in &mut avatars {
        lod.set_changed();
    }
}

pub fn spawn_walkers(commands: &mut Commands, assets: &AvatarAssets, count: u32, walk: impl Fn(u32) -> WalkLoop) {
    for i in 0..count {
        let w = walk(i);
        let (pos, yaw) = w.at(0.0);
        let avatar = spawn_avatar(commands, assets, i, &format!("Walker {}", i + 1), Transform::from_translation(pos).with_rotation(Quat::from_rotation_y(yaw)));
        commands.entity(avatar).insert(w);
    }
}

fn walk(time: Res<Time>, mut walkers: Query<(&WalkLoop, &mut Transform), With<Avatar>>) {
    let t = time.elapsed_secs();
    walkers.par_iter_mut().for_each(|(walk, mut transform)| {
        let (pos, yaw) = walk.at(t);
        transform.translation = pos;
        transform.rotation = Quat::from_rotation_y(yaw);
    });
}

/// Impostor cards face the camera (turning about the vertical only).
///
/// Cards are at least 50 m away (times the LOD bias), where the angle to
/// the camera changes slowly: each card turns every [`CARD_TURN_EVERY`]th
/// frame, staggered, plus the frame it became a card. Most of a crowd is
/// impostors, so this is a quarter of the work for no visible difference.
fn face_cards_to_camera(
    frame: Res<bevy::diagnostic::FrameCount>,
    camera: Query<&Transform, (With<crate::quality::MainCamera>, Without<AvatarParts>)>,
    avatars: Query<(Entity, Ref<Lod>, &Transform, &AvatarParts)>,
    mut parts: Query<&mut Transform, (Without<AvatarParts>, Without<crate::quality::MainCamera>)>,
) {
    let Ok(camera) = camera.single() else { return };
    profile_span!("impostor_billboards");
    let eye = camera.translation;
    let phase = frame.0 % CARD_TURN_EVERY;
    for (entity, lod, transform, avatar) in &avatars {
        if lod.level != LodLevel::Impostor || (entity.index_u32() % CARD_TURN_EVERY != phase && !lod.is_changed()) {
            continue;
        }
        let to_eye = eye - transform.translation;
        let yaw = to_eye.x.atan2(to_eye.z);
        if let Ok(mut body) = parts.get_mut(avatar.body) {
            body.rotation = transform.rotation.inverse() * Quat::from_rotation_y(yaw);
        }
    }
}

/// Cards turn to the camera once every this many frames.
pub const CARD_TURN_EVERY: u32 = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn walkers_walk_their_loops_and_face_where_they_go() {
        let w = WalkLoop::for_bot(3);
        let (a, yaw) = w.at(0.0);
        let (b, _) = w.at(0.1);
        let heading = (b - a).normalize();
        let facing = Quat::from_rotation_y(yaw) * Vec3::NEG_Z;
        assert!(heading.dot(facing) > 0.99, "heading {heading} facing {facing}");
        assert!(((a.xz() - w.center).length() - w.radius).abs() < 1e-3);
    }

    #[test]
    fn spawned_walkers_have_parts_and_move_each_update() {
        let mut app = crate::test_support::app();
        app.add_plugins(AvatarsPlugin { walkers: 5 });
        app.update();
        let before: Vec<Vec3> = app.world_mut().query_filtered::<&Transform, With<Avatar>>().iter(app.world()).map(|t| t.translation).collect();
        assert_eq!(before.len(), 5);
        assert_eq!(app.world_mut().query::<&AvatarParts>().iter(app.world()).count(), 5);
        std::thread::sleep(Duration::from_millis(30));
        app.update();
        let after: Vec<Vec3> = app.world_mut().query_filtered::<&Transform, With<Avatar>>().iter(app.world()).map(|t| t.translation).collect();
        assert!(before.iter().zip(&after).all(|(a, b)| a.distance(*b) > 0.0), "every walker moved");
    }

    #[test]
    fn levels_get_coarser() {
        let mut meshes = Assets::<Mesh>::default();
        let mut materials = Assets::<StandardMaterial>::default();
        let a = AvatarAssets::placeholders(&mut meshes, &mut materials);
        let tris = |h: &Handle<Mesh>| crate::stats::triangles_of(meshes.get(h).unwrap());
        let look = a.look(0);
        let levels: Vec<u64> = (0..4).map(|i| tris(&look.body[i]) + look.head.get(i).map(tris).unwrap_or(0)).collect();
        assert!(levels.windows(2).all(|w| w[1] * 3 < w[0]), "each level well under the last: {levels:?}");
        assert_eq!(levels[3], 2, "the impostor is one card");
    }
}
