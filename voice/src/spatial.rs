//! Where a voice seems to come from: its avatar. Distance fades it (full
//! within [`NEAR_M`], then falling as 1/d, to nothing at the SFU's hearing
//! range), and the listener's facing pans it between the ears with equal
//! power, so a voice keeps its loudness as it moves round the listener.

use plaza_shared::voice::HEARING_RANGE_M;

/// Voices nearer than this are at full volume.
pub const NEAR_M: f32 = 2.0;
/// How far a voice pans at most: a little of it stays in the far ear, as
/// it does with real heads (and headphones don't feel like one ear is off).
pub const MAX_PAN: f32 = 0.8;

/// The listener: where the ears are and which way is their right.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Listener {
    pub position: [f32; 3],
    /// A unit vector to the listener's right.
    pub right: [f32; 3],
}

impl Default for Listener {
    fn default() -> Self {
        Listener { position: [0.0; 3], right: [1.0, 0.0, 0.0] }
    }
}

/// Gains for the left and right channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gains {
    pub left: f32,
    pub right: f32,
}

impl Gains {
    /// A voice with no place (its avatar not known yet): centred, quieter.
    pub const UNPLACED: Gains = Gains { left: 0.5, right: 0.5 };
}

/// Loudness at `distance` metres, 0–1.
pub fn attenuation(distance: f32) -> f32 {
    if distance <= NEAR_M {
        return 1.0;
    }
    if distance >= HEARING_RANGE_M {
        return 0.0;
    }
    // 1/d, faded linearly to 0 over the last quarter of the range so a
    // voice does not cut off at its edge.
    let fade_from = HEARING_RANGE_M * 0.75;
    let fade = if distance > fade_from { (HEARING_RANGE_M - distance) / (HEARING_RANGE_M - fade_from) } else { 1.0 };
    NEAR_M / distance * fade
}

/// The gains for a voice at `speaker`.
pub fn gains(listener: &Listener, speaker: [f32; 3]) -> Gains {
    let d = [speaker[0] - listener.position[0], speaker[1] - listener.position[1], speaker[2] - listener.position[2]];
    let distance = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
    let level = attenuation(distance);
    let pan = if distance > 1e-3 {
        let r = listener.right;
        ((d[0] * r[0] + d[1] * r[1] + d[2] * r[2]) / distance).clamp(-MAX_PAN, MAX_PAN)
    } else {
        0.0
    };
    // Equal power: the angle runs from 0 (left) to π/2 (right).
    let angle = (pan + 1.0) * std::f32::consts::FRAC_PI_4;
    Gains { left: level * angle.cos(), right: level * angle.sin() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(x: f32, z: f32) -> [f32; 3] {
        [x, 1.6, z]
    }

    #[test]
    fn a_voice_to_the_right_is_louder_in_the_right_ear_and_the_other_way_round() {
        let me = Listener { position: at(0.0, 0.0), right: [1.0, 0.0, 0.0] };
        let right = gains(&me, at(3.0, 0.0));
        let left = gains(&me, at(-3.0, 0.0));
        assert!(right.right > 2.0 * right.left, "{right:?}");
        assert!(left.left > 2.0 * left.right, "{left:?}");
        assert!((right.right - left.left).abs() < 1e-6, "mirror images");
    }

    #[test]
    fn turning_round_swaps_the_ears() {
        let facing = Listener { position: at(0.0, 0.0), right: [1.0, 0.0, 0.0] };
        let turned = Listener { right: [-1.0, 0.0, 0.0], ..facing };
        let a = gains(&facing, at(4.0, 1.0));
        let b = gains(&turned, at(4.0, 1.0));
        assert!((a.left - b.right).abs() < 1e-6 && (a.right - b.left).abs() < 1e-6);
    }

    #[test]
    fn straight_ahead_is_centred_at_equal_power() {
        let me = Listener { position: at(0.0, 0.0), right: [1.0, 0.0, 0.0] };
        let g = gains(&me, at(0.0, -1.5));
        assert!((g.left - g.right).abs() < 1e-6);
        assert!((g.left * g.left + g.right * g.right - 1.0).abs() < 1e-5, "power 1 within the near distance: {g:?}");
    }

    #[test]
    fn farther_is_quieter_and_past_the_hearing_range_is_silent() {
        let mut last = f32::INFINITY;
        for d in [0.5, 2.0, 4.0, 8.0, 16.0, 24.0, 29.0] {
            let a = attenuation(d);
            assert!(a <= last && a > 0.0, "{d} m: {a}");
            last = a;
        }
        assert_eq!(attenuation(HEARING_RANGE_M), 0.0);
        assert_eq!(attenuation(100.0), 0.0);
        assert_eq!(attenuation(4.0), 0.5, "1/d past the near distance");
    }
}
