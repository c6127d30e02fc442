//! Server-side bots (`--bots N`): members without a socket that wander the
//! plaza and chat now and then, so a lone player sees life. They join and
//! move through the same room commands as people, and their chat is stored
//! like anyone's. Every fourth bot is "in VR": its pose carries a head
//! that looks around and hands that swing as it walks, as a headset
//! user's does, so clients show (and the load on the room includes) both
//! kinds of avatar.

use crate::AppState;
use crate::auth::now_unix_ms;
use crate::rooms::{MemberLink, Occupant};
use plaza_shared::pose::Pose;
use std::time::Duration;
use tokio::sync::mpsc;

/// Bots send poses at this rate (clients may send up to 30 Hz).
const POSE_HZ: u64 = 10;
const LINES: [&str; 6] = [
    "lovely evening for a walk",
    "has anyone seen the fountain at night?",
    "hi all!",
    "the benches by the lamps are the best",
    "brb, getting a coffee",
    "this plaza is busy today",
];

/// Where bot `i` is at time `t` (s): its own loop around the fountain.
pub fn bot_pose(i: u32, t: f64) -> Pose {
    let ring = f64::from(i % 5);
    let radius = 8.0 + ring * 4.5;
    let direction = if i.is_multiple_of(2) { 1.0 } else { -1.0 };
    let phase = f64::from(i) * 2.399_963;
    let angle = phase + direction * 1.3 / radius * t;
    let (x, z) = (angle.cos() * radius, angle.sin() * radius);
    // Face along the loop: yaw of the tangent.
    let (tx, tz) = (-angle.sin() * direction, angle.cos() * direction);
    let yaw = (-tx).atan2(-tz);
    let mut pose = Pose { p: [x as f32, 0.0, z as f32], r: [0.0, (yaw / 2.0).sin() as f32, 0.0, (yaw / 2.0).cos() as f32], head: None, hands: None };
    if i % 4 == 3 {
        headset_limbs(&mut pose, yaw, phase + t);
    }
    pose
}

/// Gives a walking pose (root at `pose.p`, facing `yaw`) a simulated
/// headset user's head and hands, in world space like the protocol's: the
/// head 1.65 m up, turning to look about and nodding a little; the hands
/// at the sides, swinging against each other. `t` (s) drives the motion.
/// The bots and the load tool's VR users (`--vr-share`) both use it.
pub fn headset_limbs(pose: &mut Pose, yaw: f64, t: f64) {
    let (sin, cos) = yaw.sin_cos();
    // Body-relative (x right, y up, z back) to world.
    let world = |x: f64, y: f64, z: f64| [pose.p[0] + (x * cos + z * sin) as f32, pose.p[1] + y as f32, pose.p[2] + (-x * sin + z * cos) as f32];
    let look = yaw + 0.6 * (t * 1.9).sin();
    let nod = 0.15 * (t * 1.3).sin();
    // yaw about y, then pitch about x.
    let (sy, cy, sp, cp) = ((look / 2.0).sin(), (look / 2.0).cos(), (nod / 2.0).sin(), (nod / 2.0).cos());
    let head_r = [(cy * sp) as f32, (sy * cp) as f32, (-sy * sp) as f32, (cy * cp) as f32];
    let swing = 0.25 * (t * 4.0).sin();
    let body_r = pose.r;
    pose.head = Some(plaza_shared::pose::Transform { p: world(0.0, 1.65, -0.05), r: head_r });
    pose.hands = Some([
        plaza_shared::pose::Transform { p: world(-0.25, 1.0, -swing), r: body_r },
        plaza_shared::pose::Transform { p: world(0.25, 1.0, swing), r: body_r },
    ]);
}

/// Starts `count` bots in `room` (created if needed); they stop when the
/// server starts closing.
/// With `--redis-url`, only where the room runs: bots on another instance
/// would be members of a second copy of it.
pub fn spawn(state: AppState, room: String, count: u32) {
    if count == 0 {
        return;
    }
    tokio::spawn(async move {
        if let Some(bus) = &state.bus {
            let owner = match state.directory.resolve(&room, true).await {
                Ok(handle) => bus.claim(&handle).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match owner {
                Ok(crate::bus::Owner::Here) => {}
                Ok(crate::bus::Owner::There { instance, .. }) => {
                    tracing::warn!(room = %room, instance = %instance, "bots not started: their room runs on another instance (start them there)");
                    return;
                }
                Err(cause) => {
                    tracing::warn!(room = %room, %cause, "bots not started: their room's owner is unknown");
                    return;
                }
            }
        }
        for i in 0..count {
            let state = state.clone();
            let room = room.clone();
            tokio::spawn(async move {
                if let Err(e) = run_bot(state, &room, i).await {
                    tracing::warn!(bot = i, cause = %e, "bot stopped");
                }
            });
        }
    });
}

async fn run_bot(state: AppState, room_name: &str, i: u32) -> Result<(), crate::rooms::JoinError> {
    let room = state.directory.resolve(room_name, true).await?;
    // Bots don't read: drain their queue so the room never sees them slow.
    let (outbound, mut inbox) = mpsc::channel(64);
    let (kick, _kicked) = mpsc::channel(1);
    tokio::spawn(async move { while inbox.recv().await.is_some() {} });
    let user_id = format!("bot_{i}");
    let name = format!("Bot {}", i + 1);
    // Bots have no socket: connection 0 and a session nobody can resume.
    let occupant = Occupant { user_id: user_id.clone(), name: name.clone(), session: format!("bot-{i}").into(), conn: 0 };
    let seat = room.join(occupant, bot_pose(i, 0.0), MemberLink { outbound, kick, peer: None }).await?;
    let started = tokio::time::Instant::now();
    // Staggered over the pose period: bots that all moved at the same
    // instant made every other room tick carry all of them and the next
    // none (10 deltas a second in bursts instead of 20 smooth ones).
    let period = Duration::from_millis(1000 / POSE_HZ);
    let mut ticker = tokio::time::interval_at(started + period.mul_f64(f64::from(i * 37 % 100) / 100.0), period);
    let mut closing = state.closing.clone();
    // Each bot chats every 30–60 s, staggered.
    let mut next_chat = started + Duration::from_secs(30 + u64::from(i * 7 % 30));
    let mut said = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = async { let _ = closing.wait_for(|c| *c).await; } => break,
        }
        let t = started.elapsed().as_secs_f64();
        seat.poses.offer(0, now_unix_ms(), bot_pose(i, t));
        if tokio::time::Instant::now() >= next_chat {
            let text = LINES[(i as usize + said as usize) % LINES.len()];
            let id = format!("{user_id}-{}-{said}", now_unix_ms());
            match state.store.insert_chat(&room.id, &user_id, &name, &id, text, now_unix_ms()).await {
                Ok(stored) => room.chat(stored).await,
                Err(e) => tracing::warn!(bot = i, cause = %e, "bot chat not stored"),
            }
            said += 1;
            next_chat += Duration::from_secs(45);
        }
    }
    room.leave(seat.you, 0).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bots_walk_their_loop_facing_forward_within_the_plaza() {
        for i in 0..24 {
            let a = bot_pose(i, 10.0);
            let b = bot_pose(i, 10.1);
            a.validate().unwrap();
            let (dx, dz) = (b.p[0] - a.p[0], b.p[2] - a.p[2]);
            let yaw = 2.0 * a.r[1].atan2(a.r[3]);
            // Facing is -z rotated by yaw: (-sin, -cos).
            let dot = dx * -yaw.sin() + dz * -yaw.cos();
            assert!(dot > 0.0, "bot {i} walks backwards");
            assert!(a.p[0].hypot(a.p[2]) < 30.0);
        }
    }

    #[test]
    fn every_fourth_bot_wears_a_headset_its_head_above_and_hands_beside_it() {
        for i in 0..24 {
            let a = bot_pose(i, 7.3);
            if i % 4 != 3 {
                assert!(a.head.is_none() && a.hands.is_none(), "bot {i} is on a desktop");
                continue;
            }
            let (head, hands) = (a.head.expect("a head"), a.hands.expect("hands"));
            assert!((head.p[1] - 1.65).abs() < 1e-4 && (head.p[0] - a.p[0]).hypot(head.p[2] - a.p[2]) < 0.1, "bot {i}: head over the root");
            let norm: f32 = head.r.iter().map(|c| c * c).sum();
            assert!((norm - 1.0).abs() < 1e-4, "a unit rotation");
            let apart = (hands[0].p[0] - hands[1].p[0]).hypot(hands[0].p[2] - hands[1].p[2]);
            assert!((0.5..0.9).contains(&apart), "bot {i}: hands {apart} m apart");
            // And they move: a tenth of a second later the head has turned.
            let b = bot_pose(i, 7.4);
            assert_ne!(b.head.unwrap().r, head.r);
        }
    }
}
