//! Server-side bots (`--bots N`): members without a socket that wander the
//! plaza and chat now and then, so a lone player sees life. They join and
//! move through the same room commands as people, and their chat is stored
//! like anyone's.

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
    Pose { p: [x as f32, 0.0, z as f32], r: [0.0, (yaw / 2.0).sin() as f32, 0.0, (yaw / 2.0).cos() as f32], head: None, hands: None }
}

/// Starts `count` bots in `room` (created if needed); they stop when the
/// server starts closing.
pub fn spawn(state: AppState, room: String, count: u32) {
    for i in 0..count {
        let state = state.clone();
        let room = room.clone();
        tokio::spawn(async move {
            if let Err(e) = run_bot(state, &room, i).await {
                tracing::warn!(bot = i, cause = %e, "bot stopped");
            }
        });
    }
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
    let seat = room.join(occupant, bot_pose(i, 0.0), MemberLink { outbound, kick }).await?;
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
}
