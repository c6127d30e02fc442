//! Other people's avatars, from the server's room state.
//!
//! `joined` (on join or resume) replaces the set; each delta adds, removes
//! and moves avatars. Poses are not applied as they arrive: each avatar
//! keeps a short [`SnapshotBuffer`] stamped with the server's tick time, and
//! is drawn [`INTERPOLATION_DELAY`] in the past, interpolating between the
//! two snapshots around that moment. Network jitter up to that delay is
//! invisible; a longer gap holds the last pose (no guessing ahead).
//!
//! A VR user's pose also carries their head and hands (world space). Those
//! avatars get [`TrackedLimbs`]: the limbs relative to the avatar's root,
//! buffered and interpolated the same way, placed on the avatar's head and
//! hand parts after LOD has picked their meshes. Desktop avatars carry no
//! limbs and pay nothing for them.
//!
//! The tick clock: tick `n` happened at `n / 20` s server time. The offset
//! to local time is the smallest `local arrival − tick time` seen (the
//! least-delayed delta), creeping up slowly so it follows clock drift and a
//! path that got slower for good.

use crate::avatars::{AvatarAssets, AvatarParts, spawn_avatar};
use crate::lod::{Lod, LodSystems};
use crate::network::RoomUpdate;
use bevy::platform::collections::HashMap;
use bevy::prelude::*;
use plaza_shared::limits::TICK_HZ;
use plaza_shared::lod::LodLevel;
use plaza_shared::messages::{AvatarId, AvatarInfo};
use plaza_shared::pose::Pose;

/// How far in the past remote avatars are drawn: two ticks.
pub const INTERPOLATION_DELAY: f64 = 0.1;
/// Snapshots kept per avatar: 0.2 s at 20 Hz, twice the interpolation
/// delay. Small on purpose: this runs for every avatar every frame.
const SNAPSHOTS: usize = 4;
/// The clock offset may grow this fast (s per s) when deltas arrive later.
const OFFSET_CREEP: f64 = 0.01;

/// One pose at one server time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub t: f64,
    pub position: Vec3,
    pub rotation: Quat,
}

impl Snapshot {
    pub fn from_pose(t: f64, pose: &Pose) -> Snapshot {
        let rotation = Quat::from_array(pose.r);
        let rotation = if rotation.is_finite() && rotation.length_squared() > 0.0 { rotation.normalize() } else { Quat::IDENTITY };
        Snapshot { t, position: Vec3::from_array(pose.p), rotation }
    }
}

/// The last few snapshots of one avatar, oldest first.
#[derive(Debug, Clone)]
pub struct SnapshotBuffer {
    snapshots: [Snapshot; SNAPSHOTS],
    len: usize,
}

impl Default for SnapshotBuffer {
    fn default() -> Self {
        SnapshotBuffer { snapshots: [Snapshot { t: 0.0, position: Vec3::ZERO, rotation: Quat::IDENTITY }; SNAPSHOTS], len: 0 }
    }
}

impl SnapshotBuffer {
    pub fn with(snapshot: Snapshot) -> SnapshotBuffer {
        let mut b = SnapshotBuffer::default();
        b.push(snapshot);
        b
    }

    /// Adds a snapshot; one not newer than the newest is ignored (a late
    /// duplicate or a resync of a pose we have).
    pub fn push(&mut self, s: Snapshot) {
        if self.len > 0 && s.t <= self.snapshots[self.len - 1].t {
            return;
        }
        if self.len == SNAPSHOTS {
            self.snapshots.rotate_left(1);
            self.len -= 1;
        }
        self.snapshots[self.len] = s;
        self.len += 1;
    }


    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pose at time `t`: interpolated between the snapshots around it,
    /// the oldest before them, the newest after them.
    ///
    /// Rotations use normalised lerp, not slerp: snapshots 50 ms apart
    /// differ by small angles, where the two agree to well under a degree,
    /// and nlerp costs a fraction (this runs for every avatar every frame).
    pub fn sample(&self, t: f64) -> Option<(Vec3, Quat)> {
        let snaps = &self.snapshots[..self.len];
        let first = snaps.first()?;
        if t <= first.t {
            return Some((first.position, first.rotation));
        }
        for pair in snaps.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if t < b.t {
                let k = ((t - a.t) / (b.t - a.t)) as f32;
                // Take the short way round.
                let to = if a.rotation.dot(b.rotation) < 0.0 { -b.rotation } else { b.rotation };
                return Some((a.position.lerp(b.position, k), a.rotation.lerp(to, k).normalize()));
            }
        }
        let last = snaps.last()?;
        Some((last.position, last.rotation))
    }
}

/// A remote avatar: its server id and snapshots. (Kept small: the
/// interpolation reads it for every avatar every frame; the user id lives
/// in [`RemoteUser`].)
#[derive(Component, Debug, Clone)]
pub struct RemoteAvatar {
    pub id: AvatarId,
    pub buffer: SnapshotBuffer,
}

/// The user behind a remote avatar.
#[derive(Component, Debug, Clone)]
pub struct RemoteUser(pub String);

/// A VR avatar's head, left hand and right hand, each relative to the
/// avatar's root (so the root's own interpolation carries them), buffered
/// like the root. A limb the poses stopped carrying goes back to where the
/// avatar's look puts it.
#[derive(Component, Debug, Clone, Default)]
pub struct TrackedLimbs {
    pub limbs: [SnapshotBuffer; 3],
}

impl TrackedLimbs {
    /// The limbs of a pose at server time `t`, relative to its root; `None`
    /// when the pose has none (a desktop user).
    pub fn snapshots(t: f64, pose: &Pose) -> Option<[Option<Snapshot>; 3]> {
        if pose.head.is_none() && pose.hands.is_none() {
            return None;
        }
        let root = Snapshot::from_pose(t, pose);
        let inverse = root.rotation.inverse();
        let relative = |limb: &plaza_shared::pose::Transform| {
            let world = Snapshot::from_pose(t, &Pose { p: limb.p, r: limb.r, head: None, hands: None });
            Snapshot { t, position: inverse * (world.position - root.position), rotation: (inverse * world.rotation).normalize() }
        };
        let hands = pose.hands.as_ref();
        Some([pose.head.as_ref().map(relative), hands.map(|h| relative(&h[0])), hands.map(|h| relative(&h[1]))])
    }

    /// Adds a pose's limbs; true when one the poses carried is gone from
    /// this one (its part goes back to the look's place).
    fn push(&mut self, snapshots: [Option<Snapshot>; 3]) -> bool {
        let mut dropped = false;
        for (buffer, snapshot) in self.limbs.iter_mut().zip(snapshots) {
            match snapshot {
                Some(s) => buffer.push(s),
                None if !buffer.is_empty() => {
                    *buffer = SnapshotBuffer::default();
                    dropped = true;
                }
                None => {}
            }
        }
        dropped
    }
}

/// Avatar id → entity, for the avatars the server told us about.
#[derive(Resource, Debug, Default)]
pub struct RemoteAvatars {
    pub by_id: HashMap<AvatarId, Entity>,
    /// The room (id) they are in: avatar ids are a room's own, so another
    /// room's `joined` starts from none.
    pub room: Option<String>,
}

/// Maps server tick time to local time.
#[derive(Resource, Debug, Default, Clone, Copy)]
pub struct TickClock {
    /// local seconds − server tick seconds, at the least-delayed arrival.
    offset: Option<f64>,
    last_local: f64,
}

impl TickClock {
    pub fn tick_time(tick: u64) -> f64 {
        tick as f64 / f64::from(TICK_HZ)
    }

    /// A tick arrived at local time `local`.
    pub fn observe(&mut self, tick: u64, local: f64) {
        let sample = local - Self::tick_time(tick);
        let crept = self.offset.map(|o| o + OFFSET_CREEP * (local - self.last_local).max(0.0));
        self.offset = Some(crept.map_or(sample, |o| o.min(sample)));
        self.last_local = local;
    }

    /// The server time to draw at local time `local`.
    pub fn render_time(&self, local: f64) -> Option<f64> {
        self.offset.map(|o| local - o - INTERPOLATION_DELAY)
    }

    /// A new room (or a resumed one) starts a new tick count.
    pub fn reset(&mut self) {
        self.offset = None;
    }
}

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum RemoteSystems {
    /// Applies room updates (spawn, despawn, new snapshots).
    Apply,
    /// Moves every remote avatar to its interpolated pose.
    Interpolate,
    /// Places VR avatars' heads and hands (after LOD has set their parts).
    Limbs,
}

pub struct RemotePlugin;

impl Plugin for RemotePlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<RemoteAvatars>()
            .init_resource::<TickClock>()
            .add_systems(Update, (apply_room_updates.in_set(RemoteSystems::Apply), interpolate.in_set(RemoteSystems::Interpolate)).chain())
            .add_systems(PostUpdate, place_limbs.in_set(RemoteSystems::Limbs).after(LodSystems::Apply).before(TransformSystems::Propagate));
    }
}

/// Avatars spawned during this run of [`apply_room_updates`]: their
/// `RemoteAvatar` is inserted at the end, since a spawned entity is not in
/// the queries until the commands apply. Several updates can arrive in one
/// frame (a slow frame, a resume) and name the same avatar twice.
/// The same for limbs: avatars whose poses started carrying them.
#[derive(Default)]
struct Fresh {
    roots: HashMap<AvatarId, SnapshotBuffer>,
    limbs: HashMap<AvatarId, TrackedLimbs>,
}

impl Fresh {
    fn remove(&mut self, id: &AvatarId) {
        self.roots.remove(id);
        self.limbs.remove(id);
    }
}

type RemoteQuery<'w, 's> = Query<'w, 's, (&'static mut RemoteAvatar, Option<&'static mut TrackedLimbs>)>;

fn upsert(commands: &mut Commands, assets: &AvatarAssets, avatars: &mut RemoteAvatars, remote: &mut RemoteQuery, fresh: &mut Fresh, info: &AvatarInfo, t: f64) {
    if push(commands, avatars, remote, fresh, info.id, t, &info.pose) {
        return;
    }
    let snapshot = Snapshot::from_pose(t, &info.pose);
    let transform = Transform::from_translation(snapshot.position).with_rotation(snapshot.rotation);
    let entity = spawn_avatar(commands, assets, info.id, &info.name, transform);
    commands.entity(entity).insert(RemoteUser(info.user.clone()));
    fresh.roots.insert(info.id, SnapshotBuffer::with(snapshot));
    if let Some(limbs) = TrackedLimbs::snapshots(t, &info.pose) {
        fresh.limbs.entry(info.id).or_default().push(limbs);
    }
    avatars.by_id.insert(info.id, entity);
}

/// Adds a pose to a known avatar's buffers; false if it isn't known.
fn push(commands: &mut Commands, avatars: &RemoteAvatars, remote: &mut RemoteQuery, fresh: &mut Fresh, id: AvatarId, t: f64, pose: &Pose) -> bool {
    let snapshot = Snapshot::from_pose(t, pose);
    let limbs = TrackedLimbs::snapshots(t, pose);
    if let Some(buffer) = fresh.roots.get_mut(&id) {
        buffer.push(snapshot);
        // Not drawn yet, so nothing to put back.
        match (limbs, fresh.limbs.get_mut(&id)) {
            (Some(limbs), _) => {
                fresh.limbs.entry(id).or_default().push(limbs);
            }
            (None, Some(tracked)) => {
                tracked.push([None; 3]);
            }
            (None, None) => {}
        }
        return true;
    }
    let Some(&entity) = avatars.by_id.get(&id) else { return false };
    let Ok((mut avatar, tracked)) = remote.get_mut(entity) else { return false };
    avatar.buffer.push(snapshot);
    let dropped = match (tracked, limbs) {
        (Some(mut tracked), Some(limbs)) => tracked.push(limbs),
        (None, Some(limbs)) => fresh.limbs.entry(id).or_default().push(limbs),
        (Some(_), None) => {
            // A VR user who went back to the desktop.
            commands.entity(entity).remove::<TrackedLimbs>();
            fresh.limbs.remove(&id);
            true
        }
        (None, None) => fresh.limbs.get_mut(&id).is_some_and(|tracked| tracked.push([None; 3])),
    };
    if dropped {
        reset_parts(commands, entity);
    }
    true
}

/// Puts an avatar's parts back in its look's places: LOD does that when it
/// applies the avatar's level, so this marks the level changed.
fn reset_parts(commands: &mut Commands, entity: Entity) {
    commands.entity(entity).queue(|mut e: EntityWorldMut| {
        if let Some(mut lod) = e.get_mut::<Lod>() {
            lod.set_changed();
        }
    });
}

fn apply_room_updates(
    mut commands: Commands,
    mut updates: MessageReader<RoomUpdate>,
    assets: Option<Res<AvatarAssets>>,
    time: Res<Time<Real>>,
    mut clock: ResMut<TickClock>,
    mut avatars: ResMut<RemoteAvatars>,
    mut remote: RemoteQuery,
) {
    let Some(assets) = assets else { return };
    profile_span!("remote_apply");
    let local = time.elapsed_secs_f64();
    let mut fresh = Fresh::default();
    for update in updates.read() {
        match update {
            RoomUpdate::Joined(joined) => {
                if avatars.room.as_deref() != Some(joined.room.as_str()) {
                    for (id, entity) in avatars.by_id.drain() {
                        commands.entity(entity).despawn();
                        fresh.remove(&id);
                    }
                    avatars.room = Some(joined.room.clone());
                }
                clock.reset();
                clock.observe(joined.tick, local);
                let t = TickClock::tick_time(joined.tick);
                // The full state: whoever isn't in it is gone.
                let present: bevy::platform::collections::HashSet<AvatarId> = joined.avatars.iter().map(|a| a.id).collect();
                avatars.by_id.retain(|id, entity| {
                    let keep = present.contains(id);
                    if !keep {
                        commands.entity(*entity).despawn();
                        fresh.remove(id);
                    }
                    keep
                });
                for info in &joined.avatars {
                    upsert(&mut commands, &assets, &mut avatars, &mut remote, &mut fresh, info, t);
                }
            }
            RoomUpdate::Delta(delta) => {
                clock.observe(delta.tick, local);
                let t = TickClock::tick_time(delta.tick);
                for id in &delta.left {
                    if let Some(entity) = avatars.by_id.remove(id) {
                        commands.entity(entity).despawn();
                        fresh.remove(id);
                    }
                }
                for info in &delta.joined {
                    upsert(&mut commands, &assets, &mut avatars, &mut remote, &mut fresh, info, t);
                }
                for pose in &delta.avatars {
                    push(&mut commands, &avatars, &mut remote, &mut fresh, pose.id, t, &pose.pose);
                }
            }
        }
    }
    for (id, buffer) in fresh.roots {
        if let Some(entity) = avatars.by_id.get(&id) {
            commands.entity(*entity).insert(RemoteAvatar { id, buffer });
        }
    }
    for (id, limbs) in fresh.limbs {
        if let Some(entity) = avatars.by_id.get(&id) {
            commands.entity(*entity).insert(limbs);
        }
    }
}

fn interpolate(time: Res<Time<Real>>, clock: Res<TickClock>, mut avatars: Query<(&RemoteAvatar, &mut Transform)>) {
    let Some(t) = clock.render_time(time.elapsed_secs_f64()) else { return };
    profile_span!("remote_interpolate");
    avatars.par_iter_mut().for_each(|(avatar, mut transform)| {
        // Written only when it moved: a still avatar stays unchanged for
        // change detection (and for everything downstream of it).
        if let Some((position, rotation)) = avatar.buffer.sample(t)
            && (transform.translation != position || transform.rotation != rotation)
        {
            transform.translation = position;
            transform.rotation = rotation;
        }
    });
}

/// Puts VR avatars' heads and hands where their users hold them. Runs
/// after LOD (which puts parts back in the look's places when it switches
/// meshes) and writes only what moved. Impostor cards and hidden avatars
/// have no limbs to place.
fn place_limbs(
    time: Res<Time<Real>>,
    clock: Res<TickClock>,
    avatars: Query<(&TrackedLimbs, &AvatarParts, &Lod)>,
    mut parts: Query<&mut Transform, Without<AvatarParts>>,
) {
    let Some(t) = clock.render_time(time.elapsed_secs_f64()) else { return };
    for (tracked, avatar_parts, lod) in &avatars {
        if matches!(lod.level, LodLevel::Impostor | LodLevel::Hidden) {
            continue;
        }
        let entities = [avatar_parts.head, avatar_parts.hands[0], avatar_parts.hands[1]];
        for (buffer, entity) in tracked.limbs.iter().zip(entities) {
            if let (Some((position, rotation)), Ok(mut transform)) = (buffer.sample(t), parts.get_mut(entity))
                && (transform.translation != position || transform.rotation != rotation)
            {
                transform.translation = position;
                transform.rotation = rotation;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plaza_shared::messages::{AvatarPose, Delta, Joined};

    fn snap(t: f64, x: f32) -> Snapshot {
        Snapshot { t, position: Vec3::new(x, 0.0, 0.0), rotation: Quat::IDENTITY }
    }

    #[test]
    fn samples_interpolate_between_snapshots_and_hold_at_the_ends() {
        let mut b = SnapshotBuffer::default();
        assert_eq!(b.sample(1.0), None);
        b.push(snap(1.0, 0.0));
        b.push(snap(1.05, 1.0));
        b.push(snap(1.10, 3.0));
        assert_eq!(b.sample(0.5).unwrap().0.x, 0.0, "before the first: the first");
        assert!((b.sample(1.025).unwrap().0.x - 0.5).abs() < 1e-4);
        assert!((b.sample(1.075).unwrap().0.x - 2.0).abs() < 1e-4);
        assert_eq!(b.sample(2.0).unwrap().0.x, 3.0, "past the newest: hold it");
        b.push(snap(1.07, 9.0));
        assert_eq!(b.len(), 3, "an older snapshot is ignored");
        for i in 0..20 {
            b.push(snap(2.0 + f64::from(i), i as f32));
        }
        assert_eq!(b.len(), SNAPSHOTS, "bounded");
    }

    #[test]
    fn rotations_interpolate_the_short_way_within_a_fraction_of_a_degree_of_slerp() {
        let mut b = SnapshotBuffer::default();
        // A fast turn: 90° in one tick, far more than anyone turns in 50 ms.
        b.push(Snapshot { t: 0.0, position: Vec3::ZERO, rotation: Quat::IDENTITY });
        b.push(Snapshot { t: 1.0, position: Vec3::ZERO, rotation: Quat::from_rotation_y(std::f32::consts::FRAC_PI_2) });
        for k in [0.25f32, 0.5, 0.75] {
            let (_, r) = b.sample(f64::from(k)).unwrap();
            let slerp = Quat::IDENTITY.slerp(Quat::from_rotation_y(std::f32::consts::FRAC_PI_2), k);
            assert!(r.angle_between(slerp).to_degrees() < 1.5, "k={k}: {}°", r.angle_between(slerp).to_degrees());
        }
        // The same rotation written as -q is not a full turn the long way.
        let mut b = SnapshotBuffer::default();
        b.push(Snapshot { t: 0.0, position: Vec3::ZERO, rotation: Quat::from_rotation_y(0.1) });
        b.push(Snapshot { t: 1.0, position: Vec3::ZERO, rotation: -Quat::from_rotation_y(0.2) });
        let (_, r) = b.sample(0.5).unwrap();
        assert!(r.angle_between(Quat::from_rotation_y(0.15)) < 1e-3);
    }

    #[test]
    fn the_tick_clock_keeps_the_least_delayed_offset_and_creeps() {
        let mut c = TickClock::default();
        c.observe(20, 10.0); // tick time 1.0 → offset 9.0
        c.observe(21, 10.08); // arrived 30 ms later than the best: offset stays 9.0 (+ creep)
        let r = c.render_time(10.1).unwrap();
        assert!((r - (10.1 - 9.0 - INTERPOLATION_DELAY)).abs() < 0.002, "{r}");
        c.observe(22, 10.09); // a faster one: offset drops to 8.99
        assert!((c.render_time(10.1).unwrap() - (10.1 - 8.99 - INTERPOLATION_DELAY)).abs() < 1e-6);
    }

    fn info(id: AvatarId, x: f32) -> AvatarInfo {
        AvatarInfo { id, user: format!("u{id}"), name: format!("n{id}"), pose: Pose { p: [x, 0.0, 0.0], ..Pose::default() } }
    }

    #[test]
    fn room_updates_spawn_move_and_despawn_avatars_drawn_100ms_behind() {
        let mut app = crate::test_support::app();
        app.add_plugins((crate::avatars::AvatarsPlugin { walkers: 0 }, RemotePlugin)).add_message::<RoomUpdate>();
        app.update();
        app.world_mut().write_message(RoomUpdate::Joined(Joined { room: "r".into(), room_name: "plaza".into(), you: 9, tick: 100, avatars: vec![info(1, 0.0), info(2, 5.0)] }));
        app.update();
        assert_eq!(app.world().resource::<RemoteAvatars>().by_id.len(), 2);
        // Avatar 1 walks 1 m per tick for 10 ticks, one delta every 50 ms.
        for k in 1..=10u64 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let delta = Delta { tick: 100 + k, avatars: vec![AvatarPose { id: 1, t: None, pose: Pose { p: [k as f32, 0.0, 0.0], ..Pose::default() } }], joined: vec![], left: if k == 10 { vec![2] } else { vec![] } };
            app.world_mut().write_message(RoomUpdate::Delta(delta));
            app.update();
        }
        let avatars = app.world().resource::<RemoteAvatars>();
        assert_eq!(avatars.by_id.len(), 1, "avatar 2 left");
        let e = avatars.by_id[&1];
        let x = app.world().get::<Transform>(e).unwrap().translation.x;
        // Drawn about 100 ms (2 ticks) behind the newest pose (10), give or take scheduling.
        assert!((6.0..=10.0).contains(&x), "x = {x}");
        // A resync `joined` without avatar 1 removes it.
        app.world_mut().write_message(RoomUpdate::Joined(Joined { room: "r".into(), room_name: "plaza".into(), you: 9, tick: 200, avatars: vec![info(3, 1.0)] }));
        app.update();
        let ids: Vec<AvatarId> = app.world().resource::<RemoteAvatars>().by_id.keys().copied().collect();
        assert_eq!(ids, vec![3]);
    }

    #[test]
    fn another_rooms_joined_replaces_every_avatar_even_under_the_same_ids() {
        let mut app = crate::test_support::app();
        app.add_plugins((crate::avatars::AvatarsPlugin { walkers: 0 }, RemotePlugin)).add_message::<RoomUpdate>();
        app.update();
        app.world_mut().write_message(RoomUpdate::Joined(Joined { room: "r_1".into(), room_name: "lobby".into(), you: 9, tick: 100, avatars: vec![info(1, 0.0), info(2, 5.0)] }));
        app.update();
        let before = app.world().resource::<RemoteAvatars>().by_id[&1];
        // The garden numbers its avatars from 1 too: its 1 is someone else.
        let stranger = AvatarInfo { id: 1, user: "u77".into(), name: "Zoe".into(), pose: Pose { p: [3.0, 0.0, 0.0], ..Pose::default() } };
        app.world_mut().write_message(RoomUpdate::Joined(Joined { room: "r_2".into(), room_name: "garden".into(), you: 4, tick: 7, avatars: vec![stranger] }));
        app.update();
        let avatars = app.world().resource::<RemoteAvatars>();
        assert_eq!((avatars.by_id.len(), avatars.room.as_deref()), (1, Some("r_2")));
        let after = avatars.by_id[&1];
        assert_ne!(after, before, "a new entity for the garden's avatar 1");
        assert!(app.world().get_entity(before).is_err(), "the lobby's avatar 1 is gone");
        assert_eq!(app.world().get::<RemoteUser>(after).map(|u| u.0.as_str()), Some("u77"));
    }

    fn vr_pose(x: f32, yaw: f32, head_y: f32, hand_x: f32) -> Pose {
        let t = |p: [f32; 3]| plaza_shared::pose::Transform { p, r: Quat::from_rotation_x(0.3).to_array() };
        Pose {
            p: [x, 0.0, 0.0],
            r: Quat::from_rotation_y(yaw).to_array(),
            head: Some(t([x, head_y, 0.1])),
            hands: Some([t([x - hand_x, 1.1, 0.3]), t([x + hand_x, 1.1, 0.3])]),
        }
    }

    #[test]
    fn a_vr_avatars_head_and_hands_go_where_its_user_holds_them_and_back_when_they_stop() {
        use crate::quality::{ActiveQuality, MainCamera};
        let mut app = crate::test_support::app();
        app.insert_resource(ActiveQuality::new(plaza_shared::quality::PresetChoice::Fixed(plaza_shared::quality::QualityPreset::High)))
            .add_plugins((crate::avatars::AvatarsPlugin { walkers: 0 }, crate::lod::LodPlugin { enabled: true, distance_culling: true }, RemotePlugin))
            .add_message::<RoomUpdate>();
        app.world_mut().spawn((MainCamera, Transform::from_xyz(0.0, 1.6, 4.0)));
        app.update();
        let vr = AvatarInfo { id: 1, user: "u1".into(), name: "Grace".into(), pose: vr_pose(0.0, 0.0, 1.7, 0.3) };
        app.world_mut().write_message(RoomUpdate::Joined(Joined { room: "r".into(), room_name: "plaza".into(), you: 9, tick: 100, avatars: vec![vr, info(2, 3.0)] }));
        app.update();
        let ids = app.world().resource::<RemoteAvatars>().by_id.clone();
        let (grace, desk) = (ids[&1], ids[&2]);
        assert!(app.world().get::<TrackedLimbs>(grace).is_some(), "a pose with a head makes a tracked avatar");
        assert!(app.world().get::<TrackedLimbs>(desk).is_none(), "a desktop avatar carries no limbs");
        // Grace turns a quarter to her left, walks to x = 1 and raises her
        // head and spreads her hands; the parts follow, relative to her root.
        for k in 1..=8u64 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let pose = vr_pose(1.0, std::f32::consts::FRAC_PI_2, 1.8, 0.5);
            app.world_mut().write_message(RoomUpdate::Delta(Delta { tick: 100 + k, avatars: vec![AvatarPose { id: 1, t: None, pose }], joined: vec![], left: vec![] }));
            app.update();
        }
        app.update();
        let parts = *app.world().get::<AvatarParts>(grace).unwrap();
        let world = |app: &mut App, e: Entity| {
            let root = *app.world().get::<Transform>(grace).unwrap();
            root * *app.world().get::<Transform>(e).unwrap()
        };
        let head = world(&mut app, parts.head);
        assert!(head.translation.distance(Vec3::new(1.0, 1.8, 0.1)) < 0.01, "head where the pose puts it: {}", head.translation);
        assert!(head.rotation.angle_between(Quat::from_rotation_x(0.3)) < 0.01, "and tilted as it is");
        let right = world(&mut app, parts.hands[1]);
        assert!(right.translation.distance(Vec3::new(1.5, 1.1, 0.3)) < 0.01, "right hand: {}", right.translation);
        // Back at a desk: the parts return to the look's places.
        let look = app.world().resource::<AvatarAssets>().look(1).clone();
        for k in 9..=12u64 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let pose = Pose { p: [1.0, 0.0, 0.0], ..Pose::default() };
            app.world_mut().write_message(RoomUpdate::Delta(Delta { tick: 100 + k, avatars: vec![AvatarPose { id: 1, t: None, pose }], joined: vec![], left: vec![] }));
            app.update();
        }
        app.update();
        assert!(app.world().get::<TrackedLimbs>(grace).is_none());
        assert_eq!(app.world().get::<Transform>(parts.head), Some(&look.head_at), "head back on the shoulders");
        assert_eq!(app.world().get::<Transform>(parts.hands[1]), Some(&look.hands_at[1]));
    }

    #[test]
    fn updates_naming_an_avatar_twice_in_one_frame_spawn_it_once() {
        let mut app = crate::test_support::app();
        app.add_plugins((crate::avatars::AvatarsPlugin { walkers: 0 }, RemotePlugin)).add_message::<RoomUpdate>();
        app.update();
        // A slow frame: the join, a resume's join and a delta joining 2 again.
        let joined = |tick| RoomUpdate::Joined(Joined { room: "r".into(), room_name: "plaza".into(), you: 9, tick, avatars: vec![info(1, 0.0), info(2, 5.0)] });
        app.world_mut().write_message(joined(100));
        app.world_mut().write_message(joined(101));
        let moved = AvatarPose { id: 1, t: None, pose: Pose { p: [1.0, 0.0, 0.0], ..Pose::default() } };
        app.world_mut().write_message(RoomUpdate::Delta(Delta { tick: 102, avatars: vec![moved], joined: vec![info(2, 5.0)], left: vec![] }));
        app.update();
        let remote = app.world_mut().query::<&RemoteAvatar>().iter(app.world()).map(|a| (a.id, a.buffer.len())).collect::<HashMap<_, _>>();
        assert_eq!(remote.len(), 2, "one entity each: {remote:?}");
        assert_eq!(remote[&1], 3, "every snapshot kept");
        assert_eq!(app.world_mut().query::<&crate::avatars::Avatar>().iter(app.world()).count(), 2);
    }
}
