//! Avatars. For now, local placeholder bots: a body and a head each, walking
//! their own loops around the fountain. Network-driven avatars replace them
//! when the client connects to a server.

use bevy::prelude::*;

/// An avatar in the plaza.
#[derive(Component, Debug, Clone)]
pub struct Avatar {
    pub index: u32,
}

/// Walks in a loop: centre, radius, angular speed (rad/s), phase.
#[derive(Component, Debug, Clone, Copy)]
pub struct WalkLoop {
    pub center: Vec2,
    pub radius: f32,
    pub speed: f32,
    pub phase: f32,
}

impl WalkLoop {
    /// Deterministic loop for bot `i`, spread over rings 6–30 m out.
    pub fn for_bot(i: u32) -> Self {
        let ring = (i % 5) as f32;
        let golden = i as f32 * 2.399_963; // golden angle: even spread
        let dir = if i % 2 == 0 { 1.0 } else { -1.0 };
        WalkLoop {
            center: Vec2::new(golden.cos(), golden.sin()) * (2.0 + ring),
            radius: 8.0 + ring * 4.5,
            speed: dir * 1.3 / (8.0 + ring * 4.5),
            phase: golden,
        }
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
    Move,
}

pub struct AvatarsPlugin {
    pub bots: u32,
}

impl Plugin for AvatarsPlugin {
    fn build(&self, app: &mut App) {
        let bots = self.bots;
        app.add_systems(Startup, move |commands: Commands, meshes: ResMut<Assets<Mesh>>, materials: ResMut<Assets<StandardMaterial>>| {
            spawn_bots(bots, commands, meshes, materials)
        })
        .add_systems(Update, walk.in_set(AvatarSystems::Move));
    }
}

fn spawn_bots(
    count: u32,
    mut commands: Commands,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    let body = meshes.add(Capsule3d::new(0.3, 1.0).mesh().latitudes(12).longitudes(24));
    let head = meshes.add(Sphere::new(0.22).mesh().uv(24, 12));
    let skin = materials.add(StandardMaterial { base_color: Color::srgb(0.93, 0.78, 0.65), ..default() });
    let shirts: Vec<_> = (0..8)
        .map(|i| materials.add(StandardMaterial { base_color: Color::hsl(i as f32 * 45.0, 0.65, 0.5), ..default() }))
        .collect();
    for i in 0..count {
        let walk = WalkLoop::for_bot(i);
        let (pos, yaw) = walk.at(0.0);
        commands
            .spawn((
                Avatar { index: i },
                walk,
                Name::new(format!("bot {i}")),
                Transform::from_translation(pos).with_rotation(Quat::from_rotation_y(yaw)),
                Visibility::default(),
            ))
            .with_children(|a| {
                a.spawn((Mesh3d(body.clone()), MeshMaterial3d(shirts[i as usize % shirts.len()].clone()), Transform::from_xyz(0.0, 0.8, 0.0)));
                a.spawn((Mesh3d(head.clone()), MeshMaterial3d(skin.clone()), Transform::from_xyz(0.0, 1.62, 0.0)));
            });
    }
}

fn walk(time: Res<Time>, mut bots: Query<(&WalkLoop, &mut Transform), With<Avatar>>) {
    let t = time.elapsed_secs();
    for (walk, mut transform) in &mut bots {
        let (pos, yaw) = walk.at(t);
        transform.translation = pos;
        transform.rotation = Quat::from_rotation_y(yaw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bots_walk_their_loops_and_face_where_they_go() {
        let w = WalkLoop::for_bot(3);
        let (a, yaw) = w.at(0.0);
        let (b, _) = w.at(0.1);
        let heading = (b - a).normalize();
        let facing = Quat::from_rotation_y(yaw) * Vec3::NEG_Z;
        assert!(heading.dot(facing) > 0.99, "heading {heading} facing {facing}");
        assert!(((a.xz() - w.center).length() - w.radius).abs() < 1e-3);
    }

    #[test]
    fn spawned_bots_move_each_update() {
        let mut app = App::new();
        app.add_plugins((MinimalPlugins, AssetPlugin::default()))
            .init_asset::<Mesh>()
            .init_asset::<StandardMaterial>()
            .add_plugins(AvatarsPlugin { bots: 5 });
        app.update();
        let before: Vec<Vec3> = app.world_mut().query_filtered::<&Transform, With<Avatar>>().iter(app.world()).map(|t| t.translation).collect();
        assert_eq!(before.len(), 5);
        std::thread::sleep(Duration::from_millis(30));
        app.update();
        let after: Vec<Vec3> = app.world_mut().query_filtered::<&Transform, With<Avatar>>().iter(app.world()).map(|t| t.translation).collect();
        assert!(before.iter().zip(&after).all(|(a, b)| a.distance(*b) > 0.0), "every bot moved");
    }
}
