//! Scenes shared by Plaza's benchmarks.

use plaza_shared::messages::{AvatarPose, Delta, ServerMessage};
use plaza_shared::pose::{Pose, Transform};

/// A delta in which every avatar of a full 40-user room moved: `vr` of them
/// VR users (head and hands), the rest desktop users.
pub fn room_delta(avatars: u32, vr: u32) -> ServerMessage {
    let avatars = (0..avatars)
        .map(|id| {
            let a = id as f32 * 0.61;
            let p = [a.cos() * (5.0 + id as f32), 0.0, a.sin() * (5.0 + id as f32)];
            let r = [0.0, (a / 2.0).sin(), 0.0, (a / 2.0).cos()];
            let limb = |dx: f32, dy: f32| Transform { p: [p[0] + dx, p[1] + dy, p[2]], r: [0.1, 0.2, 0.05, 0.97] };
            let is_vr = id < vr;
            AvatarPose {
                id,
                t: Some(1_700_000_000_000 + u64::from(id)),
                pose: Pose {
                    p,
                    r,
                    head: is_vr.then(|| limb(0.0, 1.65)),
                    hands: is_vr.then(|| [limb(-0.3, 1.1), limb(0.3, 1.1)]),
                },
            }
        })
        .collect();
    ServerMessage::Delta(Delta { tick: 1_234_567, avatars, joined: vec![], left: vec![] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_valid_poses() {
        let ServerMessage::Delta(d) = room_delta(40, 8) else { unreachable!() };
        assert_eq!(d.avatars.len(), 40);
        assert_eq!(d.avatars.iter().filter(|a| a.pose.head.is_some()).count(), 8);
        for a in &d.avatars {
            // Quaternions here are only nearly unit; validation allows ±10%.
            a.pose.validate().unwrap();
        }
    }
}
