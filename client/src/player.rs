//! The player's own avatar and the camera that follows it.
//!
//! Keyboard: W/S or ↑/↓ walk, A/D or ←/→ turn, Q/E step sideways, Shift
//! runs. Mouse: hold the right button and move to turn. The camera follows
//! behind and above. The pose goes to the server at most 20 times a second
//! (the tick rate; the protocol allows 30), and only when it changed.
//! Nothing moves while the HUD has the keyboard (typing in chat).

use crate::avatars::{AvatarAssets, spawn_avatar};
use crate::network::NetLink;
use crate::quality::MainCamera;
use bevy::input::mouse::AccumulatedMouseMotion;
use bevy::prelude::*;
use plaza_shared::pose::Pose;

/// Where the player starts: south of the fountain, facing it.
pub const START: Vec3 = Vec3::new(0.0, 0.0, 18.0);
/// Walking speed (m/s), on the keyboard and with a VR stick pushed all the way.
pub const WALK_SPEED: f32 = 1.6;
const RUN_SPEED: f32 = 4.0;
const TURN_SPEED: f32 = 1.8;
const MOUSE_TURN: f32 = 0.004;
/// The camera sits this far behind and above the avatar's feet.
const CAMERA_BACK: f32 = 6.5;
const CAMERA_UP: f32 = 3.4;
/// At most this many poses a second go to the server.
pub const POSE_HZ: u32 = 20;

#[derive(Component, Debug, Clone, Copy)]
pub struct LocalPlayer {
    pub yaw: f32,
}

/// In VR: your head and hands in world space, sent with the pose
/// ([`crate::xr`] keeps them; none on the desktop).
#[derive(Component, Debug, Clone, Copy, Default, PartialEq)]
pub struct LocalLimbs {
    pub head: Option<plaza_shared::pose::Transform>,
    pub hands: Option<[plaza_shared::pose::Transform; 2]>,
}

/// Whether the player's input drives the avatar (off while typing, and in
/// scenarios and headless runs where a script drives the camera).
#[derive(Resource, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayerControl {
    pub keyboard: bool,
    /// The camera follows the player (off when a scenario flies it).
    pub follow_camera: bool,
    /// A HUD text field has the keyboard.
    pub typing: bool,
}

impl Default for PlayerControl {
    fn default() -> Self {
        PlayerControl { keyboard: true, follow_camera: true, typing: false }
    }
}

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum PlayerSystems {
    Move,
    Camera,
    SendPose,
}

pub struct PlayerPlugin {
    /// Spawn the player's avatar (not when offline walkers fill the scene
    /// for a benchmark).
    pub spawn: bool,
}

impl Plugin for PlayerPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<PlayerControl>().add_systems(Update, (walk.in_set(PlayerSystems::Move), follow.in_set(PlayerSystems::Camera), send_pose.in_set(PlayerSystems::SendPose)).chain());
        if self.spawn {
            app.add_systems(Startup, spawn_player);
        }
    }
}

fn spawn_player(mut commands: Commands, assets: Res<AvatarAssets>) {
    let yaw = 0.0; // facing -z: the fountain
    let avatar = spawn_avatar(&mut commands, &assets, 0, "You", Transform::from_translation(START).with_rotation(Quat::from_rotation_y(yaw)));
    commands.entity(avatar).insert(LocalPlayer { yaw });
}

/// Walking and turning from the keyboard and mouse, for this frame.
pub fn steer(keys: &ButtonInput<KeyCode>, mouse_dx: f32, dt: f32, player: &mut LocalPlayer, transform: &mut Transform) {
    let pressed = |a: KeyCode, b: KeyCode| keys.pressed(a) || keys.pressed(b);
    let mut turn = 0.0;
    if pressed(KeyCode::KeyA, KeyCode::ArrowLeft) {
        turn += TURN_SPEED * dt;
    }
    if pressed(KeyCode::KeyD, KeyCode::ArrowRight) {
        turn -= TURN_SPEED * dt;
    }
    player.yaw += turn - mouse_dx * MOUSE_TURN;
    let forward = Quat::from_rotation_y(player.yaw) * Vec3::NEG_Z;
    let right = Quat::from_rotation_y(player.yaw) * Vec3::X;
    let mut step = Vec3::ZERO;
    if pressed(KeyCode::KeyW, KeyCode::ArrowUp) {
        step += forward;
    }
    if pressed(KeyCode::KeyS, KeyCode::ArrowDown) {
        step -= forward;
    }
    if keys.pressed(KeyCode::KeyE) {
        step += right;
    }
    if keys.pressed(KeyCode::KeyQ) {
        step -= right;
    }
    let speed = if pressed(KeyCode::ShiftLeft, KeyCode::ShiftRight) { RUN_SPEED } else { WALK_SPEED };
    transform.translation += step.normalize_or_zero() * speed * dt;
    // Stay inside the world the protocol can express.
    let limit = plaza_shared::limits::WORLD_HALF_EXTENT_M - 1.0;
    transform.translation = transform.translation.clamp(Vec3::splat(-limit), Vec3::splat(limit));
    transform.rotation = Quat::from_rotation_y(player.yaw);
}

fn walk(
    time: Res<Time>,
    control: Res<PlayerControl>,
    keys: Option<Res<ButtonInput<KeyCode>>>,
    buttons: Option<Res<ButtonInput<MouseButton>>>,
    motion: Option<Res<AccumulatedMouseMotion>>,
    mut player: Query<(&mut LocalPlayer, &mut Transform)>,
) {
    let (Some(keys), Ok((mut player, mut transform))) = (keys, player.single_mut()) else { return };
    if !control.keyboard || control.typing {
        return;
    }
    let dragging = buttons.is_some_and(|b| b.pressed(MouseButton::Right));
    let dx = if dragging { motion.map(|m| m.delta.x).unwrap_or(0.0) } else { 0.0 };
    steer(&keys, dx, time.delta_secs(), &mut player, &mut transform);
}

/// Where the camera goes for a player standing at `feet` facing `yaw`.
pub fn camera_for(feet: Vec3, yaw: f32) -> Transform {
    let back = Quat::from_rotation_y(yaw) * Vec3::Z * CAMERA_BACK;
    Transform::from_translation(feet + back + Vec3::Y * CAMERA_UP).looking_at(feet + Vec3::Y * 1.4 - back * 0.5, Vec3::Y)
}

fn follow(control: Res<PlayerControl>, player: Query<(&LocalPlayer, &Transform), Without<MainCamera>>, mut camera: Query<&mut Transform, With<MainCamera>>) {
    if !control.follow_camera {
        return;
    }
    let (Ok((player, feet)), Ok(mut camera)) = (player.single(), camera.single_mut()) else { return };
    let wanted = camera_for(feet.translation, player.yaw);
    if *camera != wanted {
        *camera = wanted;
    }
}

/// Hands the pose to the network thread each frame it changed. The network
/// thread keeps the newest and sends it at most [`POSE_HZ`] a second, just
/// before the room's tick (`plaza_shared::pacing`), so what goes out is at
/// most a frame old when the room takes it.
fn send_pose(link: Option<Res<NetLink>>, player: Query<(&Transform, Option<&LocalLimbs>), With<LocalPlayer>>, mut last: Local<Option<(Transform, LocalLimbs)>>) {
    let (Some(link), Ok((transform, limbs))) = (link, player.single()) else { return };
    let now = (*transform, limbs.copied().unwrap_or_default());
    if *last == Some(now) {
        return;
    }
    let pose = Pose { p: transform.translation.to_array(), r: transform.rotation.to_array(), head: now.1.head, hands: now.1.hands };
    if link.send_pose(pose) {
        *last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w_walks_forward_and_a_turns_left() {
        let mut keys = ButtonInput::<KeyCode>::default();
        let mut player = LocalPlayer { yaw: 0.0 };
        let mut t = Transform::from_translation(START);
        keys.press(KeyCode::KeyW);
        steer(&keys, 0.0, 1.0, &mut player, &mut t);
        assert!((t.translation - (START + Vec3::NEG_Z * WALK_SPEED)).length() < 1e-4, "{}", t.translation);
        keys.release(KeyCode::KeyW);
        keys.press(KeyCode::KeyA);
        steer(&keys, 0.0, 0.5, &mut player, &mut t);
        assert!(player.yaw > 0.0, "turned left (counter-clockwise seen from above)");
        let facing = t.rotation * Vec3::NEG_Z;
        assert!(facing.x < 0.0, "now facing a bit to the left: {facing}");
    }

    #[test]
    fn the_camera_sits_behind_and_above_looking_at_the_player() {
        let c = camera_for(Vec3::ZERO, 0.0);
        assert!(c.translation.z > 0.0 && c.translation.y > 0.0);
        assert!((c.forward().as_vec3()).z < 0.0, "looking toward -z, like the player");
    }

    #[test]
    fn a_pose_is_handed_over_each_frame_it_changed_and_only_then() {
        let mut app = crate::test_support::app();
        let (link, mut input, _events) = NetLink::pair();
        app.insert_resource(link).add_plugins(PlayerPlugin { spawn: false });
        let player = app.world_mut().spawn((LocalPlayer { yaw: 0.0 }, Transform::default())).id();
        app.update();
        assert!(input.pose.has_changed().unwrap() && input.pose.borrow_and_update().is_some(), "the first pose goes out");
        app.update();
        assert!(!input.pose.has_changed().unwrap(), "unchanged: nothing");
        app.world_mut().get_mut::<Transform>(player).unwrap().translation.x = 1.0;
        app.update();
        assert!(input.pose.has_changed().unwrap(), "the change is handed over the same frame");
        assert_eq!(input.pose.borrow_and_update().expect("a pose").p[0], 1.0);
        app.update();
        assert!(!input.pose.has_changed().unwrap(), "unchanged again: nothing");
        assert!(input.commands.try_recv().is_err(), "poses take no command slots");
    }
}
