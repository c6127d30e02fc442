//! VR through OpenXR (`--xr`): the headset's eyes see the plaza, the
//! controllers walk and turn, and others see your head and hands.
//!
//! - [`probe`] asks the OpenXR loader for a runtime and a headset before
//!   the app is built. Without one the client starts the desktop view and
//!   says why (a toast and a log line), as the contract promises.
//! - [`XrPlugin`] (only when the probe found a headset) adds the rig:
//!   - the tracking root (the play area) stands where the player is;
//!     the left stick walks it along where you look, the right stick turns
//!     it in 30° snaps about your head (smooth turning makes people sick);
//!   - your avatar's root is the floor under your head, facing where your
//!     head faces; the pose carries the head and both controllers' grips
//!     (world space), so others see you look and wave;
//!   - the desktop window's camera mirrors your head, so LOD, culling and
//!     the spatial voice mix work from where you are, and a person beside
//!     you sees what you see (with the HUD on top);
//!   - your own body is hidden in the headset (it would fill your view);
//!     small blocks show where your hands are.
//! - A session that ends (headset off, runtime quit) hands the keyboard
//!   and the third-person camera back until it starts again.
//!
//! - [`wrist`]: a panel on your left wrist with what the HUD says (the
//!   HUD is on the desktop window, which you can't see in the headset).
//!
//! Quality presets reach the eye cameras as they reach the main one
//! ([`crate::quality::EyeCamera`]); `--preset auto` (the default in VR)
//! steers by the 72 fps target.

use crate::lod::Lod;
use crate::network::{Notice, Toast};
use crate::player::{LocalLimbs, LocalPlayer, PlayerControl, PlayerSystems, START, WALK_SPEED};
use crate::quality::{EyeCamera, MainCamera};
use crate::voice::VoiceInfo;
use bevy::camera::visibility::RenderLayers;
use bevy::prelude::*;
use bevy_mod_openxr::action_binding::{OxrSendActionBindings, OxrSuggestActionBinding};
use bevy_mod_openxr::action_set_attaching::OxrAttachActionSet;
use bevy_mod_openxr::action_set_syncing::{OxrActionSetSyncSet, OxrSyncActionSet};
use bevy_mod_openxr::openxr_session_running;
use bevy_mod_openxr::resources::OxrInstance;
use bevy_mod_openxr::session::OxrSession;
use bevy_mod_xr::camera::XrCamera;
use bevy_mod_xr::session::{XrSessionCreated, XrState, XrTrackingRoot};
use plaza_shared::lod::LodLevel;
use plaza_shared::pose::Pose;
use std::borrow::Cow;

pub mod probe;
pub mod wrist;

pub use probe::{XrRuntime, XrUnavailable, probe};

/// A stick inside this is at rest (worn sticks drift).
const DEAD_ZONE: f32 = 0.2;
/// One snap turn.
pub const SNAP_TURN: f32 = std::f32::consts::PI / 6.0;
/// The right stick snaps past this and re-arms inside [`SNAP_REARM`], so
/// one flick is one turn however long it is held.
const SNAP_AT: f32 = 0.7;
const SNAP_REARM: f32 = 0.3;

/// Where VR stands, for the HUD and the systems here.
#[derive(Resource, Debug, Clone, PartialEq, Eq, Default)]
pub enum Headset {
    /// `--xr` was not given.
    #[default]
    Off,
    /// `--xr`, but no headset: the desktop view, and why.
    Unavailable(String),
    /// A headset is there; its session is not running (starting, or the
    /// headset is off your head).
    Waiting { runtime: String },
    /// You are in the headset.
    Worn { runtime: String },
}

impl Headset {
    pub fn worn(&self) -> bool {
        matches!(self, Headset::Worn { .. })
    }

    /// The HUD's line; none on the desktop.
    pub fn line(&self, mirror: bool) -> Option<String> {
        match self {
            Headset::Off => None,
            Headset::Unavailable(_) => Some("VR: no headset (desktop view)".into()),
            Headset::Waiting { runtime } => Some(format!("VR: waiting for the headset ({runtime})")),
            Headset::Worn { runtime } => Some(format!("VR: in the headset ({runtime}) · counts are the left eye's{}", if mirror { " · this window mirrors it" } else { "" })),
        }
    }
}

/// The controllers' sticks this frame: x right, y forward, each −1..1;
/// and whether the mute button went down this frame.
#[derive(Resource, Debug, Clone, Copy, Default, PartialEq)]
pub struct XrSticks {
    pub walk: Vec2,
    pub turn: Vec2,
    pub mute_pressed: bool,
}

/// A controller grip, located by the runtime (a child of the tracking root).
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grip {
    /// 0 left, 1 right.
    pub side: usize,
}

/// The one flick, one turn rule for the right stick.
#[derive(Resource, Debug, Clone, Copy, Default)]
pub struct SnapTurn {
    armed_off: bool,
}

impl SnapTurn {
    /// The turn (radians, + is left) this stick position asks for now.
    pub fn update(&mut self, x: f32) -> f32 {
        if self.armed_off {
            if x.abs() < SNAP_REARM {
                self.armed_off = false;
            }
            return 0.0;
        }
        if x.abs() > SNAP_AT {
            self.armed_off = true;
            return -x.signum() * SNAP_TURN;
        }
        0.0
    }
}

/// Only the headset's yaw: where it faces on the floor.
pub fn yaw_of(rotation: Quat) -> f32 {
    let forward = rotation * Vec3::NEG_Z;
    if forward.x.abs() < 1e-6 && forward.z.abs() < 1e-6 {
        // Looking straight up or down: take the head's up instead.
        let up = rotation * Vec3::Y;
        return (up.x * forward.y.signum()).atan2(up.z * forward.y.signum());
    }
    (-forward.x).atan2(-forward.z)
}

/// The head between the two eyes.
pub fn head_between(left: &Transform, right: &Transform) -> Transform {
    Transform::from_translation(left.translation.lerp(right.translation, 0.5)).with_rotation(left.rotation.slerp(right.rotation, 0.5))
}

/// Your avatar's root for a head at `head` (world space): the floor under
/// it (the play area's floor), facing where the head faces.
pub fn body_under(head: &Transform, floor: f32) -> Transform {
    Transform::from_xyz(head.translation.x, floor, head.translation.z).with_rotation(Quat::from_rotation_y(yaw_of(head.rotation)))
}

/// Moves the play area by the sticks: walking along where the head looks
/// (flattened), turning in snaps about the head so it stays put.
pub fn steer_rig(root: &mut Transform, head: &Transform, walk: Vec2, turn: f32, dt: f32) {
    let walk = if walk.length() < DEAD_ZONE { Vec2::ZERO } else { walk.clamp_length_max(1.0) };
    let facing = Quat::from_rotation_y(yaw_of(head.rotation));
    let step = facing * Vec3::new(walk.x, 0.0, -walk.y) * WALK_SPEED * dt;
    root.translation += step;
    if turn != 0.0 {
        let pivot = Vec3::new(head.translation.x, root.translation.y, head.translation.z) + step;
        root.rotate_around(pivot, Quat::from_rotation_y(turn));
    }
    // Stay inside the world the protocol can express.
    let limit = plaza_shared::limits::WORLD_HALF_EXTENT_M - 1.0;
    root.translation = root.translation.clamp(Vec3::splat(-limit), Vec3::splat(limit));
}

/// The pose others see: root under the head, the head, and the hands when
/// both are tracked. Limbs beyond the protocol's reach (a tracking glitch)
/// are left out rather than sent and refused.
pub fn limbs_for(body: &Transform, head: &Transform, hands: Option<[Transform; 2]>) -> LocalLimbs {
    let wire = |t: &Transform| plaza_shared::pose::Transform { p: t.translation.to_array(), r: t.rotation.to_array() };
    let pose = Pose { p: body.translation.to_array(), r: body.rotation.to_array(), head: Some(wire(head)), hands: hands.as_ref().map(|h| [wire(&h[0]), wire(&h[1])]) };
    if pose.validate().is_ok() {
        return LocalLimbs { head: pose.head, hands: pose.hands };
    }
    let head_only = Pose { hands: None, ..pose };
    if head_only.validate().is_ok() { LocalLimbs { head: head_only.head, hands: None } } else { LocalLimbs::default() }
}

/// The controllers' actions, made once per OpenXR instance.
#[derive(Resource)]
struct ControllerActions {
    set: openxr::ActionSet,
    grips: [openxr::Action<openxr::Posef>; 2],
    walk: openxr::Action<openxr::Vector2f>,
    turn: openxr::Action<openxr::Vector2f>,
    mute: openxr::Action<bool>,
}

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum XrSystems {
    /// Reads the sticks (PreUpdate, after the actions sync).
    Input,
    /// Walks and turns the play area (Update, where the desktop walks).
    Steer,
    /// Puts the avatar, the mirror camera and the limbs where the head is
    /// (PostUpdate, after the eyes are located, before LOD looks).
    Follow,
}

/// Whether the desktop window shows the headset's view while it is worn.
/// Off, the window's camera looks at an empty layer (a clear, no scene
/// drawn a third time) and the HUD and chat stay.
#[derive(Resource, Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorWindow(pub bool);

/// The layer nothing is on: the window's camera while the mirror is off.
const NOTHING_LAYER: usize = 31;

/// The rig, for runs where the probe found a headset (see the module docs).
pub struct XrPlugin {
    pub runtime: XrRuntime,
    /// The settings file's `vr_mirror` (default on).
    pub mirror: bool,
}

impl Plugin for XrPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(Headset::Waiting { runtime: self.runtime.runtime.clone() })
            .insert_resource(MirrorWindow(self.mirror))
            .init_resource::<XrSticks>()
            .init_resource::<SnapTurn>()
            .add_plugins(wrist::WristPanelPlugin)
            .add_systems(Startup, (place_play_area, create_actions.run_if(resource_exists::<OxrInstance>)))
            .add_systems(OxrSendActionBindings, suggest_bindings)
            .add_systems(XrSessionCreated, (attach_actions, spawn_grips))
            .add_systems(PreUpdate, (sync_actions.before(OxrActionSetSyncSet), read_sticks.after(OxrActionSetSyncSet).in_set(XrSystems::Input)).run_if(openxr_session_running))
            .add_systems(Update, (track_session, steer.in_set(XrSystems::Steer).in_set(PlayerSystems::Move), mute_button.before(crate::voice::VoiceSystems::Input)).chain())
            .add_systems(
                PostUpdate,
                (mark_eyes, follow_head.in_set(XrSystems::Follow), apply_mirror)
                    .chain()
                    .after(bevy_mod_openxr::render::update_views)
                    .before(crate::lod::LodSystems::Select)
                    .before(TransformSystems::Propagate),
            );
    }
}

/// `--xr` without a headset: says so once, in a toast (the log has it too).
pub struct NoHeadsetPlugin {
    pub reason: String,
}

impl Plugin for NoHeadsetPlugin {
    fn build(&self, app: &mut App) {
        let reason = self.reason.clone();
        app.insert_resource(Headset::Unavailable(reason.clone())).add_systems(Startup, move |mut toasts: MessageWriter<Toast>| {
            toasts.write(Toast(Notice::NoHeadset { reason: reason.clone() }));
        });
    }
}

fn place_play_area(mut root: Query<&mut Transform, With<XrTrackingRoot>>) {
    if let Ok(mut root) = root.single_mut() {
        *root = Transform::from_translation(START);
    }
}

fn create_actions(instance: Res<OxrInstance>, mut commands: Commands) {
    let made = (|| -> openxr::Result<ControllerActions> {
        let set = instance.create_action_set("plaza", "Plaza", 0)?;
        Ok(ControllerActions {
            grips: [set.create_action("left_grip", "Left hand", &[])?, set.create_action("right_grip", "Right hand", &[])?],
            walk: set.create_action("walk", "Walk", &[])?,
            turn: set.create_action("turn", "Turn", &[])?,
            mute: set.create_action("mute", "Mute the microphone", &[])?,
            set,
        })
    })();
    match made {
        Ok(actions) => commands.insert_resource(actions),
        Err(e) => warn!("the controllers' actions could not be made ({e}); the headset works, the controllers won't"),
    }
}

/// Bindings for the controllers people have: sticks walk and turn, grips
/// are the hands. (Vive wands have trackpads, which report as sticks.)
fn suggest_bindings(actions: Option<Res<ControllerActions>>, mut bindings: MessageWriter<OxrSuggestActionBinding>) {
    let Some(actions) = actions else { return };
    // Profile, the stick, the left hand's button that mutes (Index
    // controllers have no menu button: B, the upper one).
    const PROFILES: [(&str, Option<&str>, &str); 5] = [
        ("/interaction_profiles/oculus/touch_controller", Some("thumbstick"), "menu"),
        ("/interaction_profiles/valve/index_controller", Some("thumbstick"), "b"),
        ("/interaction_profiles/microsoft/motion_controller", Some("thumbstick"), "menu"),
        ("/interaction_profiles/htc/vive_controller", Some("trackpad"), "menu"),
        ("/interaction_profiles/khr/simple_controller", None, "menu"),
    ];
    for (profile, stick, mute) in PROFILES {
        bindings.write(OxrSuggestActionBinding { action: actions.mute.as_raw(), interaction_profile: Cow::Borrowed(profile), bindings: vec![format!("/user/hand/left/input/{mute}/click").into()] });
        for (side, hand) in ["left", "right"].into_iter().enumerate() {
            bindings.write(OxrSuggestActionBinding { action: actions.grips[side].as_raw(), interaction_profile: Cow::Borrowed(profile), bindings: vec![format!("/user/hand/{hand}/input/grip/pose").into()] });
        }
        if let Some(stick) = stick {
            bindings.write(OxrSuggestActionBinding { action: actions.walk.as_raw(), interaction_profile: Cow::Borrowed(profile), bindings: vec![format!("/user/hand/left/input/{stick}").into()] });
            bindings.write(OxrSuggestActionBinding { action: actions.turn.as_raw(), interaction_profile: Cow::Borrowed(profile), bindings: vec![format!("/user/hand/right/input/{stick}").into()] });
        }
    }
}

fn attach_actions(actions: Option<Res<ControllerActions>>, mut attach: MessageWriter<OxrAttachActionSet>) {
    if let Some(actions) = actions {
        attach.write(OxrAttachActionSet(actions.set.clone()));
    }
}

/// A block for each hand, on the grip's space (which makes it a child of
/// the tracking root, moved by the runtime every frame).
fn spawn_grips(actions: Option<Res<ControllerActions>>, session: Res<OxrSession>, mut commands: Commands, mut meshes: ResMut<Assets<Mesh>>, mut materials: ResMut<Assets<StandardMaterial>>) {
    let Some(actions) = actions else { return };
    let mesh = meshes.add(Cuboid::new(0.05, 0.04, 0.12));
    let material = materials.add(StandardMaterial { base_color: Color::srgb(0.85, 0.75, 0.65), ..default() });
    for side in 0..2 {
        match session.create_action_space(&actions.grips[side], openxr::Path::NULL, Isometry3d::IDENTITY) {
            Ok(space) => {
                commands.spawn((space, Grip { side }, Mesh3d(mesh.clone()), MeshMaterial3d(material.clone()), Name::new(if side == 0 { "left grip" } else { "right grip" })));
            }
            Err(e) => warn!(side, "a hand's space could not be made ({e}); others won't see that hand"),
        }
    }
}

fn sync_actions(actions: Option<Res<ControllerActions>>, mut sync: MessageWriter<OxrSyncActionSet>) {
    if let Some(actions) = actions {
        sync.write(OxrSyncActionSet(actions.set.clone()));
    }
}

fn read_sticks(actions: Option<Res<ControllerActions>>, session: Res<OxrSession>, mut sticks: ResMut<XrSticks>) {
    let Some(actions) = actions else { return };
    let read = |action: &openxr::Action<openxr::Vector2f>| match action.state(&session, openxr::Path::NULL) {
        Ok(s) if s.is_active => Vec2::new(s.current_state.x, s.current_state.y),
        _ => Vec2::ZERO,
    };
    // A press, once: down now, and changed since the last sync.
    let mute_pressed = actions.mute.state(&session, openxr::Path::NULL).is_ok_and(|s| s.is_active && s.current_state && s.changed_since_last_sync);
    sticks.set_if_neq(XrSticks { walk: read(&actions.walk), turn: read(&actions.turn), mute_pressed });
}

/// The mute button flips the microphone, as M does on the desktop (the
/// voice plugin passes it on to the call).
fn mute_button(sticks: Res<XrSticks>, headset: Res<Headset>, voice: Option<ResMut<VoiceInfo>>) {
    let Some(mut voice) = voice else { return };
    if voice.in_headset != headset.worn() {
        voice.in_headset = headset.worn();
    }
    if sticks.mute_pressed && headset.worn() {
        voice.muted = !voice.muted;
        info!(muted = voice.muted, "the mute button");
    }
}

/// Follows the session: in the headset, the rig drives the avatar and the
/// mirror camera; out of it, the keyboard and the third-person camera do.
#[allow(clippy::too_many_arguments)]
fn track_session(
    state: Option<Res<XrState>>,
    mut headset: ResMut<Headset>,
    mut control: ResMut<PlayerControl>,
    mut toasts: MessageWriter<Toast>,
    mut commands: Commands,
    mut player: Query<(Entity, &mut Visibility), With<LocalPlayer>>,
    mut root: Query<&mut Transform, (With<XrTrackingRoot>, Without<LocalPlayer>)>,
    bodies: Query<&Transform, With<LocalPlayer>>,
) {
    if state.as_deref() == Some(&XrState::Unavailable) && !matches!(*headset, Headset::Unavailable(_)) {
        // The probe found a headset but the runtime would not give the
        // renderer a session (bevy_mod_openxr logged the error).
        let reason = "the OpenXR runtime found a headset but could not start Vulkan for it (see the log)".to_string();
        warn!("VR is off: {reason}; showing the desktop view");
        toasts.write(Toast(Notice::NoHeadset { reason: reason.clone() }));
        *headset = Headset::Unavailable(reason);
        return;
    }
    let running = state.as_deref() == Some(&XrState::Running);
    let runtime = match &*headset {
        Headset::Waiting { runtime } | Headset::Worn { runtime } => runtime.clone(),
        _ => return,
    };
    if running == headset.worn() {
        return;
    }
    if running {
        info!(%runtime, "in the headset");
        // The play area starts where the avatar stands, facing its way.
        if let (Ok(mut root), Ok(body)) = (root.single_mut(), bodies.single()) {
            *root = Transform::from_translation(body.translation).with_rotation(body.rotation);
        }
        *headset = Headset::Worn { runtime };
        control.keyboard = false;
        control.follow_camera = false;
        for (entity, mut visibility) in &mut player {
            // Out of LOD's hands while worn: your own body would fill the view.
            commands.entity(entity).remove::<Lod>();
            *visibility = Visibility::Hidden;
        }
    } else {
        info!(%runtime, "out of the headset");
        toasts.write(Toast(Notice::HeadsetOff));
        *headset = Headset::Waiting { runtime };
        control.keyboard = true;
        control.follow_camera = true;
        for (entity, mut visibility) in &mut player {
            commands.entity(entity).insert(Lod::new(LodLevel::Full)).remove::<LocalLimbs>();
            *visibility = Visibility::Inherited;
        }
    }
}

fn steer(
    time: Res<Time>,
    headset: Res<Headset>,
    control: Res<PlayerControl>,
    sticks: Res<XrSticks>,
    mut snap: ResMut<SnapTurn>,
    mut root: Query<&mut Transform, With<XrTrackingRoot>>,
    eyes: Query<(&Transform, &EyeCamera), Without<XrTrackingRoot>>,
) {
    if !headset.worn() || control.typing {
        return;
    }
    let (Ok(mut root), Some(head)) = (root.single_mut(), head_local(&eyes)) else { return };
    let head = *root * head;
    let turn = snap.update(sticks.turn.x);
    steer_rig(&mut root, &head, sticks.walk, turn, time.delta_secs());
}

/// The head in the play area's space, between the eyes.
fn head_local(eyes: &Query<(&Transform, &EyeCamera), Without<XrTrackingRoot>>) -> Option<Transform> {
    let mut by_eye = [None, None];
    for (t, eye) in eyes {
        if let Some(slot) = by_eye.get_mut(eye.0 as usize) {
            *slot = Some(*t);
        }
    }
    match by_eye {
        [Some(l), Some(r)] => Some(head_between(&l, &r)),
        [Some(one), None] | [None, Some(one)] => Some(one),
        [None, None] => None,
    }
}

/// The eye cameras the runtime made get the presets' settings.
fn mark_eyes(mut commands: Commands, eyes: Query<(Entity, &XrCamera), Without<EyeCamera>>) {
    for (entity, camera) in &eyes {
        commands.entity(entity).insert(EyeCamera(camera.0));
    }
}

/// Puts the avatar under the head, the mirror camera at the head, and the
/// head and hands in the pose.
#[allow(clippy::type_complexity)]
fn follow_head(
    headset: Res<Headset>,
    mut commands: Commands,
    root: Query<&Transform, With<XrTrackingRoot>>,
    eyes: Query<(&Transform, &EyeCamera), Without<XrTrackingRoot>>,
    grips: Query<(&Transform, &Grip, &bevy_mod_xr::spaces::XrSpaceLocationFlags)>,
    mut player: Query<(Entity, &mut Transform, Option<&mut LocalLimbs>), (With<LocalPlayer>, Without<XrTrackingRoot>, Without<EyeCamera>, Without<Grip>, Without<MainCamera>)>,
    mut mirror: Query<&mut Transform, (With<MainCamera>, Without<XrTrackingRoot>, Without<EyeCamera>, Without<Grip>)>,
) {
    if !headset.worn() {
        return;
    }
    let (Ok(root), Some(head)) = (root.single(), head_local(&eyes)) else { return };
    let head = *root * head;
    if let Ok(mut camera) = mirror.single_mut() {
        camera.set_if_neq(head);
    }
    let Ok((entity, mut body, limbs)) = player.single_mut() else { return };
    let under = body_under(&head, root.translation.y);
    body.set_if_neq(under);
    let mut hands = [None, None];
    for (t, grip, flags) in &grips {
        if flags.position_tracked && flags.rotation_tracked {
            hands[grip.side] = Some(*root * *t);
        }
    }
    let hands = match hands {
        [Some(l), Some(r)] => Some([l, r]),
        _ => None,
    };
    let now = limbs_for(&under, &head, hands);
    match limbs {
        Some(mut limbs) => {
            limbs.set_if_neq(now);
        }
        None => {
            commands.entity(entity).insert(now);
        }
    }
}

/// The window's camera sees the plaza unless the headset is worn with the
/// mirror off.
fn apply_mirror(headset: Res<Headset>, mirror: Res<MirrorWindow>, mut commands: Commands, camera: Query<(Entity, Has<RenderLayers>), With<MainCamera>>) {
    let blank = headset.worn() && !mirror.0;
    for (entity, layered) in &camera {
        match (blank, layered) {
            (true, false) => {
                commands.entity(entity).insert(RenderLayers::layer(NOTHING_LAYER));
            }
            (false, true) => {
                commands.entity(entity).remove::<RenderLayers>();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaw_follows_where_the_head_looks_on_the_floor() {
        for yaw in [0.0f32, 0.5, -1.2, 3.0] {
            let looking_down = Quat::from_rotation_y(yaw) * Quat::from_rotation_x(-0.6);
            assert!((yaw_of(looking_down) - yaw).abs() < 1e-4, "yaw {yaw}: {}", yaw_of(looking_down));
        }
        // Straight down: the top of the head points the way you face.
        let down = Quat::from_rotation_y(0.7) * Quat::from_rotation_x(-std::f32::consts::FRAC_PI_2);
        assert!((yaw_of(down) - 0.7).abs() < 1e-3, "{}", yaw_of(down));
    }

    #[test]
    fn the_body_stands_under_the_head_on_the_play_areas_floor() {
        let head = Transform::from_xyz(2.0, 1.7, -3.0).with_rotation(Quat::from_rotation_y(1.0) * Quat::from_rotation_x(0.3));
        let body = body_under(&head, 0.0);
        assert_eq!(body.translation, Vec3::new(2.0, 0.0, -3.0));
        assert!(body.rotation.angle_between(Quat::from_rotation_y(1.0)) < 1e-4, "only the yaw");
        let eyes = head_between(&Transform::from_xyz(-0.03, 1.7, 0.0), &Transform::from_xyz(0.03, 1.7, 0.0));
        assert!(eyes.translation.distance(Vec3::new(0.0, 1.7, 0.0)) < 1e-6);
    }

    #[test]
    fn the_left_stick_walks_where_you_look_and_the_right_snaps_once_per_flick() {
        let mut root = Transform::from_xyz(0.0, 0.0, 10.0);
        // Looking left (+90° yaw): forward on the stick goes to -x.
        let head = root * Transform::from_xyz(0.0, 1.7, 0.0).with_rotation(Quat::from_rotation_y(std::f32::consts::FRAC_PI_2));
        steer_rig(&mut root, &head, Vec2::new(0.0, 1.0), 0.0, 1.0);
        assert!(root.translation.distance(Vec3::new(-WALK_SPEED, 0.0, 10.0)) < 1e-4, "{}", root.translation);
        let before = root.translation;
        steer_rig(&mut root, &head, Vec2::new(0.1, 0.15), 0.0, 1.0);
        assert_eq!(root.translation, before, "inside the dead zone: still");

        let mut snap = SnapTurn::default();
        let turns: Vec<f32> = [0.0, 0.8, 0.9, 1.0, 0.5, 0.8, 0.1, -0.9].into_iter().map(|x| snap.update(x)).collect();
        assert_eq!(turns, vec![0.0, -SNAP_TURN, 0.0, 0.0, 0.0, 0.0, 0.0, SNAP_TURN], "one turn per flick; re-armed only near the middle");

        // A turn pivots about the head: the head stays where it was.
        let mut root = Transform::from_xyz(0.0, 0.0, 0.0);
        let head_local = Transform::from_xyz(0.5, 1.7, -0.4);
        let head = root * head_local;
        steer_rig(&mut root, &head, Vec2::ZERO, SNAP_TURN, 0.016);
        let after = root * head_local;
        assert!(Vec2::new(after.translation.x - head.translation.x, after.translation.z - head.translation.z).length() < 1e-4, "head moved to {}", after.translation);
        assert!(root.rotation.angle_between(Quat::from_rotation_y(SNAP_TURN)) < 1e-3, "turned one snap");
    }

    #[test]
    fn limbs_out_of_the_protocols_reach_are_left_out_not_sent() {
        let body = Transform::from_xyz(0.0, 0.0, 0.0);
        let head = Transform::from_xyz(0.0, 1.7, 0.0);
        let hand = |x: f32| Transform::from_xyz(x, 1.0, 0.2);
        let ok = limbs_for(&body, &head, Some([hand(-0.3), hand(0.3)]));
        assert!(ok.head.is_some() && ok.hands.is_some());
        // A controller lost and reported 30 m away: the head still goes.
        let glitch = limbs_for(&body, &head, Some([hand(-0.3), hand(30.0)]));
        assert!(glitch.head.is_some() && glitch.hands.is_none());
        let pose = Pose { p: [0.0; 3], r: Quat::IDENTITY.to_array(), head: glitch.head, hands: glitch.hands };
        assert!(pose.validate().is_ok());
    }

    #[test]
    fn in_the_headset_the_rig_carries_the_avatar_and_out_of_it_the_keyboard_does() {
        use crate::player::PlayerPlugin;
        use bevy::time::TimeUpdateStrategy;
        let mut app = crate::test_support::app();
        app.add_message::<Toast>()
            .init_asset::<Image>()
            .insert_resource(TimeUpdateStrategy::ManualDuration(std::time::Duration::from_millis(200)))
            .add_plugins((XrPlugin { runtime: XrRuntime { runtime: "Monado".into(), headset: "Simulated HMD".into() }, mirror: true }, PlayerPlugin { spawn: false }));
        let root = app.world_mut().spawn(XrTrackingRoot).id();
        let player = app.world_mut().spawn((LocalPlayer { yaw: 0.0 }, Transform::from_translation(START), Visibility::default(), Lod::new(LodLevel::Full))).id();
        let mirror = app.world_mut().spawn((MainCamera, Transform::default())).id();
        // The eyes, 1 m into the play area, looking ahead (-z).
        for (eye, x) in [(0, -0.03), (1, 0.03)] {
            app.world_mut().spawn((EyeCamera(eye), Transform::from_xyz(x, 1.7, -1.0)));
        }
        app.update();
        assert_eq!(app.world().resource::<Headset>(), &Headset::Waiting { runtime: "Monado".into() });
        assert!(app.world().resource::<PlayerControl>().keyboard, "no session yet: the keyboard walks");

        app.insert_resource(XrState::Running);
        app.update();
        app.update();
        assert!(app.world().resource::<Headset>().worn());
        let control = *app.world().resource::<PlayerControl>();
        assert!(!control.keyboard && !control.follow_camera);
        assert_eq!(app.world().get::<Visibility>(player), Some(&Visibility::Hidden), "your own body is hidden in the headset");
        assert!(app.world().get::<Lod>(player).is_none(), "and out of LOD's hands");
        let head = START + Vec3::new(0.0, 1.7, -1.0);
        assert!(app.world().get::<Transform>(mirror).unwrap().translation.distance(head) < 1e-4, "the window mirrors the head");
        let body = *app.world().get::<Transform>(player).unwrap();
        assert!(body.translation.distance(START + Vec3::new(0.0, 0.0, -1.0)) < 1e-4, "the body stands under the head: {}", body.translation);
        let limbs = *app.world().get::<LocalLimbs>(player).expect("limbs");
        assert!(Vec3::from_array(limbs.head.expect("a head").p).distance(head) < 1e-4);
        assert!(limbs.hands.is_none(), "no controllers located: no hands");
        assert!(app.world().get::<RenderLayers>(mirror).is_none(), "the mirror is on by default");
        app.insert_resource(MirrorWindow(false));
        app.update();
        assert_eq!(app.world().get::<RenderLayers>(mirror), Some(&RenderLayers::layer(NOTHING_LAYER)), "mirror off: the window draws no scene");
        app.insert_resource(MirrorWindow(true));
        app.update();
        assert!(app.world().get::<RenderLayers>(mirror).is_none());

        // The left stick forward for one 0.2 s frame: the play area walks 0.32 m along the gaze.
        app.insert_resource(XrSticks { walk: Vec2::Y, ..default() });
        app.update();
        let walked = app.world().get::<Transform>(root).unwrap().translation;
        assert!(walked.distance(START + Vec3::new(0.0, 0.0, -WALK_SPEED * 0.2)) < 1e-3, "{walked}");
        app.insert_resource(XrSticks::default());

        // The left menu button mutes, once per press, and the voice line says which button.
        app.init_resource::<VoiceInfo>();
        app.insert_resource(XrSticks { mute_pressed: true, ..default() });
        app.update();
        app.insert_resource(XrSticks::default());
        app.update();
        let mut voice = app.world().resource::<VoiceInfo>().clone();
        assert!(voice.muted && voice.in_headset, "muted by the button");
        (voice.enabled, voice.status.mic, voice.status.state) = (true, true, crate::network::voice::VoiceState::On);
        assert!(voice.line().is_some_and(|l| l.contains("the left menu button unmutes")), "{:?}", voice.line());

        // The session ends: the keyboard, the camera and the body come back.
        app.insert_resource(XrState::Stopping);
        app.update();
        assert_eq!(app.world().resource::<Headset>(), &Headset::Waiting { runtime: "Monado".into() });
        let control = *app.world().resource::<PlayerControl>();
        assert!(control.keyboard && control.follow_camera);
        assert_eq!(app.world().get::<Visibility>(player), Some(&Visibility::Inherited));
        assert!(app.world().get::<Lod>(player).is_some() && app.world().get::<LocalLimbs>(player).is_none(), "a desktop pose again");
        let toasts: Vec<String> = app.world_mut().resource_mut::<Messages<Toast>>().drain().map(|t| t.0.text()).collect();
        assert!(toasts.iter().any(|t| t.contains("headset session ended")), "{toasts:?}");
    }

}
