//! Other people's avatars, from the server's room state.
//!
//! `joined` (on join or resume) replaces the set; each delta adds, removes
//! and moves avatars. Poses are not applied as they arrive: each avatar
//! keeps a short [`SnapshotBuffer`] stamped with the server's tick time, and
//! is drawn [`INTERPOLATION_DELAY`] in the past, interpolating between the
//! two snapshots around that moment. Network jitter up to that delay is
//! invisible; a longer gap holds the last pose (no guessing ahead).
//!
//! The tick clock: tick `n` happened at `n / 20` s server time. The offset
//! to local time is the smallest `local arrival − tick time` seen (the
//! least-delayed delta), creeping up slowly so it follows clock drift and a
//! path that got slower for good.

use crate::avatars::{AvatarAssets, spawn_avatar};
use crate::network::RoomUpdate;
use bevy::platform::collections::HashMap;
use bevy::prelude::*;
use plaza_shared::limits::TICK_HZ;
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
}

pub struct RemotePlugin;

impl Plugin for RemotePlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<RemoteAvatars>()
            .init_resource::<TickClock>()
            .add_systems(Update, (apply_room_updates.in_set(RemoteSystems::Apply), interpolate.in_set(RemoteSystems::Interpolate)).chain());
    }
}

/// Avatars spawned during this run of [`apply_room_updates`]: their
/// `RemoteAvatar` is inserted at the end, since a spawned entity is not in
/// the queries until the commands apply. Several updates can arrive in one
/// frame (a slow frame, a resume) and name the same avatar twice.
type Fresh = HashMap<AvatarId, SnapshotBuffer>;

fn upsert(commands: &mut Commands, assets: &AvatarAssets, avatars: &mut RemoteAvatars, remote: &mut Query<&mut RemoteAvatar>, fresh: &mut Fresh, info: &AvatarInfo, t: f64) {
    let snapshot = Snapshot::from_pose(t, &info.pose);
    if push(avatars, remote, fresh, info.id, snapshot) {
        return;
    }
    let transform = Transform::from_translation(snapshot.position).with_rotation(snapshot.rotation);
    let entity = spawn_avatar(commands, assets, info.id, &info.name, transform);
    commands.entity(entity).insert(RemoteUser(info.user.clone()));
    fresh.insert(info.id, SnapshotBuffer::with(snapshot));
    avatars.by_id.insert(info.id, entity);
}

/// Adds a snapshot to a known avatar's buffer; false if it isn't known.
fn push(avatars: &RemoteAvatars, remote: &mut Query<&mut RemoteAvatar>, fresh: &mut Fresh, id: AvatarId, snapshot: Snapshot) -> bool {
    if let Some(buffer) = fresh.get_mut(&id) {
        buffer.push(snapshot);
        return true;
    }
    if let Some(entity) = avatars.by_id.get(&id)
        && let Ok(mut avatar) = remote.get_mut(*entity)
    {
        avatar.buffer.push(snapshot);
        return true;
    }
    false
}

fn apply_room_updates(
    mut commands: Commands,
    mut updates: MessageReader<RoomUpdate>,
    assets: Option<Res<AvatarAssets>>,
    time: Res<Time<Real>>,
    mut clock: ResMut<TickClock>,
    mut avatars: ResMut<RemoteAvatars>,
    mut remote: Query<&mut RemoteAvatar>,
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
                    push(&avatars, &mut remote, &mut fresh, pose.id, Snapshot::from_pose(t, &pose.pose));
                }
            }
        }
    }
    for (id, buffer) in fresh {
        if let Some(entity) = avatars.by_id.get(&id) {
            commands.entity(*entity).insert(RemoteAvatar { id, buffer });
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
