//! What an avatar looks like at each level of detail, and spawning one.
//! Everyone who draws avatars (the network's, the local player, scenario
//! crowds, offline walkers) goes through [`spawn_avatar`], so every avatar
//! has the same parts and the LOD plugin can treat them alike.
//!
//! Levels (placeholder shapes until the asset pipeline ships real meshes):
//!
//! | level | body | head | triangles |
//! | --- | --- | --- | --- |
//! | full | capsule 16×32 | sphere 32×16 | about 2,000 |
//! | reduced | capsule 8×16 | sphere 16×8 | about 500 |
//! | low | capsule 4×8 | sphere 8×4 | about 130 |
//! | impostor | a camera-facing card | — | 2 |

use crate::lod::{Lod, LodAvatar};
use bevy::prelude::*;
use plaza_shared::lod::LodLevel;

/// An avatar in the plaza.
#[derive(Component, Debug, Clone)]
pub struct Avatar {
    pub index: u32,
    pub name: String,
}

/// The avatar's drawn parts, switched by LOD.
#[derive(Component, Debug, Clone, Copy)]
pub struct AvatarParts {
    pub body: Entity,
    pub head: Entity,
}

/// Meshes and materials shared by every avatar.
#[derive(Resource, Debug, Clone)]
pub struct AvatarAssets {
    /// Full, reduced, low, impostor.
    pub bodies: [Handle<Mesh>; 4],
    /// Full, reduced, low (impostors have no head).
    pub heads: [Handle<Mesh>; 3],
    pub skin: Handle<StandardMaterial>,
    pub shirts: Vec<Handle<StandardMaterial>>,
    /// Impostor cards: one per shirt colour, unlit so they read from afar.
    pub cards: Vec<Handle<StandardMaterial>>,
}

const BODY_Y: f32 = 0.8;
const HEAD_Y: f32 = 1.62;

impl AvatarAssets {
    pub fn new(meshes: &mut Assets<Mesh>, materials: &mut Assets<StandardMaterial>) -> AvatarAssets {
        let capsule = |lat, long| Capsule3d::new(0.3, 1.0).mesh().latitudes(lat).longitudes(long).build();
        let sphere = |sectors, stacks| Sphere::new(0.22).mesh().uv(sectors, stacks);
        // The card spans feet to head, centred on the body's origin offset.
        let card = Mesh::from(Rectangle::new(0.75, 1.9)).translated_by(Vec3::new(0.0, 0.95 - BODY_Y, 0.0));
        let bodies = [meshes.add(capsule(16, 32)), meshes.add(capsule(8, 16)), meshes.add(capsule(4, 8)), meshes.add(card)];
        let heads = [meshes.add(sphere(32, 16)), meshes.add(sphere(16, 8)), meshes.add(sphere(8, 4))];
        let skin = materials.add(StandardMaterial { base_color: Color::srgb(0.93, 0.78, 0.65), ..default() });
        let colours: Vec<Color> = (0..8).map(|i| Color::hsl(i as f32 * 45.0, 0.65, 0.5)).collect();
        let shirts = colours.iter().map(|&c| materials.add(StandardMaterial { base_color: c, ..default() })).collect();
        let cards = colours.iter().map(|&c| materials.add(StandardMaterial { base_color: c, unlit: true, cull_mode: None, ..default() })).collect();
        AvatarAssets { bodies, heads, skin, shirts, cards }
    }

    pub fn body(&self, level: LodLevel) -> Option<&Handle<Mesh>> {
        match level {
            LodLevel::Hidden => None,
            l => self.bodies.get(l as usize),
        }
    }

    pub fn head(&self, level: LodLevel) -> Option<&Handle<Mesh>> {
        self.heads.get(level as usize)
    }
}

/// Spawns an avatar at full detail; the LOD plugin takes it from there.
pub fn spawn_avatar(commands: &mut Commands, assets: &AvatarAssets, index: u32, name: &str, transform: Transform) -> Entity {
    let shirt = assets.shirts[index as usize % assets.shirts.len()].clone();
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
        let body = a.spawn((Mesh3d(assets.bodies[0].clone()), MeshMaterial3d(shirt), Transform::from_xyz(0.0, BODY_Y, 0.0))).id();
        let head = a.spawn((Mesh3d(assets.heads[0].clone()), MeshMaterial3d(assets.skin.clone()), Transform::from_xyz(0.0, HEAD_Y, 0.0))).id();
        parts = Some(AvatarParts { body, head });
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
        app.add_systems(PreStartup, |mut commands: Commands, mut meshes: ResMut<Assets<Mesh>>, mut materials: ResMut<Assets<StandardMaterial>>| {
            commands.insert_resource(AvatarAssets::new(&mut meshes, &mut materials));
        })
        .add_systems(Startup, move |mut commands: Commands, assets: Res<AvatarAssets>| spawn_walkers(&mut commands, &assets, walkers, WalkLoop::for_bot))
        .add_systems(Update, walk.in_set(AvatarSystems::Walk))
        .add_systems(PostUpdate, face_cards_to_camera.in_set(AvatarSystems::Billboard).after(crate::lod::LodSystems::Apply).before(TransformSystems::Propagate));
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
        let a = AvatarAssets::new(&mut meshes, &mut materials);
        let tris = |h: &Handle<Mesh>| crate::stats::triangles_of(meshes.get(h).unwrap());
        let levels: Vec<u64> = (0..4).map(|i| tris(&a.bodies[i]) + a.heads.get(i).map(tris).unwrap_or(0)).collect();
        assert!(levels.windows(2).all(|w| w[1] * 3 < w[0]), "each level well under the last: {levels:?}");
        assert_eq!(levels[3], 2, "the impostor is one card");
    }
}
