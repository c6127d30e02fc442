//! Poses and their quantization for `plaza.v1.bin`.
//!
//! Positions are metres (x, y up, z); rotations unit quaternions `[x, y, z, w]`.
//!
//! Quantization, chosen so a moving desktop avatar costs 10 bytes in a binary
//! delta (1-byte avatar id + 9-byte pose block):
//!
//! | what | encoding | bits | worst-case error |
//! | --- | --- | --- | --- |
//! | root position | each axis over ±1,000 m | 3 × 17 | 0.77 cm |
//! | yaw-only rotation (desktop avatars) | yaw angle | 13 | 0.022° (+0.028° from the yaw-only test) |
//! | any rotation | smallest three | 2 + 3 × 12 | 0.069° |
//! | head/hand position | offset from root, ±4 m | 3 × 10 | 0.40 cm |
//!
//! A rotation is sent as yaw-only when its x and z components are within
//! [`YAW_ONLY_TOLERANCE`] (half a smallest-three step, 1.73e-4) of zero,
//! which is what a desktop avatar always is.
//!
//! Decoding and re-encoding gives the same bytes, so a relay adds no error,
//! except for rotations whose two largest components nearly tie (see
//! [`quantize_rotation`]).

use crate::limits::{LIMB_REACH_M, WORLD_HALF_EXTENT_M};
use serde::{Deserialize, Serialize};

/// A position and a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Transform {
    pub p: [f32; 3],
    pub r: [f32; 4],
}

/// An avatar's pose: its root, and for VR users the head and both hands
/// (in world space, like the root).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pose {
    pub p: [f32; 3],
    pub r: [f32; 4],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Transform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hands: Option<[Transform; 2]>,
}

impl Default for Pose {
    fn default() -> Self {
        Pose { p: [0.0; 3], r: IDENTITY, head: None, hands: None }
    }
}

pub const IDENTITY: [f32; 4] = [0.0, 0.0, 0.0, 1.0];

/// Why a pose is not acceptable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PoseError {
    #[error("{what} has a non-finite number")]
    NotFinite { what: &'static str },
    #[error("{what} is outside the world (each axis must be within ±{limit} m)")]
    OutOfWorld { what: &'static str, limit: f32 },
    #[error("{what} is more than {limit} m from the avatar on some axis")]
    OutOfReach { what: &'static str, limit: f32 },
    #[error("{what} rotation is not a unit quaternion (length {length})")]
    NotUnit { what: &'static str, length: f32 },
}

impl Pose {
    /// Checks that the pose is finite, in the world, with limbs within reach
    /// and rotations of (nearly) unit length. Encoders assume a valid pose
    /// and clamp anything outside these bounds.
    pub fn validate(&self) -> Result<(), PoseError> {
        check_position("position", self.p)?;
        check_rotation("avatar", self.r)?;
        let limbs = self.head.iter().map(|t| ("head", t)).chain(
            self.hands.iter().flat_map(|h| [("left hand", &h[0]), ("right hand", &h[1])]),
        );
        for (what, limb) in limbs {
            check_position(what, limb.p)?;
            check_rotation(what, limb.r)?;
            for axis in 0..3 {
                if (limb.p[axis] - self.p[axis]).abs() > LIMB_REACH_M {
                    return Err(PoseError::OutOfReach { what, limit: LIMB_REACH_M });
                }
            }
        }
        Ok(())
    }

    /// The pose as the binary codec delivers it: what a receiver sees.
    pub fn quantized(&self) -> Pose {
        let p = dequantize_position(quantize_position(self.p));
        let r = dequantize_rotation(quantize_rotation(self.r));
        let limb = |t: &Transform| Transform {
            p: dequantize_offset(p, quantize_offset(t.p, p)),
            r: dequantize_rotation(quantize_rotation(t.r)),
        };
        Pose {
            p,
            r,
            head: self.head.as_ref().map(limb),
            hands: self.hands.as_ref().map(|h| [limb(&h[0]), limb(&h[1])]),
        }
    }
}

fn check_position(what: &'static str, p: [f32; 3]) -> Result<(), PoseError> {
    if p.iter().any(|v| !v.is_finite()) {
        return Err(PoseError::NotFinite { what });
    }
    if p.iter().any(|v| v.abs() > WORLD_HALF_EXTENT_M) {
        return Err(PoseError::OutOfWorld { what, limit: WORLD_HALF_EXTENT_M });
    }
    Ok(())
}

fn check_rotation(what: &'static str, r: [f32; 4]) -> Result<(), PoseError> {
    if r.iter().any(|v| !v.is_finite()) {
        return Err(PoseError::NotFinite { what });
    }
    let length = r.iter().map(|v| v * v).sum::<f32>().sqrt();
    if !(0.9..=1.1).contains(&length) {
        return Err(PoseError::NotUnit { what, length });
    }
    Ok(())
}

// ---- positions ------------------------------------------------------------

pub const POSITION_BITS: u32 = 17;
// An even number of intervals, so 0 (ground level, the origin) is exact.
const POSITION_STEPS: f64 = ((1u64 << POSITION_BITS) - 2) as f64;
pub const OFFSET_BITS: u32 = 10;
const OFFSET_STEPS: f64 = ((1u64 << OFFSET_BITS) - 2) as f64;

fn quantize_range(v: f32, half_extent: f32, steps: f64) -> u32 {
    let v = if v.is_finite() { f64::from(v) } else { 0.0 };
    let half = f64::from(half_extent);
    let unit = ((v.clamp(-half, half) + half) / (2.0 * half)).clamp(0.0, 1.0);
    (unit * steps).round() as u32
}

fn dequantize_range(q: u32, half_extent: f32, steps: f64) -> f32 {
    let half = f64::from(half_extent);
    (f64::from(q) / steps * 2.0 * half - half) as f32
}

/// A world position as three 17-bit integers (clamped to the world).
pub fn quantize_position(p: [f32; 3]) -> [u32; 3] {
    p.map(|v| quantize_range(v, WORLD_HALF_EXTENT_M, POSITION_STEPS))
}

pub fn dequantize_position(q: [u32; 3]) -> [f32; 3] {
    q.map(|v| dequantize_range(v.min(POSITION_STEPS as u32), WORLD_HALF_EXTENT_M, POSITION_STEPS))
}

/// A limb position as three 10-bit offsets from the (dequantized) root.
pub fn quantize_offset(p: [f32; 3], root: [f32; 3]) -> [u32; 3] {
    [0, 1, 2].map(|i| quantize_range(p[i] - root[i], LIMB_REACH_M, OFFSET_STEPS))
}

pub fn dequantize_offset(root: [f32; 3], q: [u32; 3]) -> [f32; 3] {
    [0, 1, 2].map(|i| root[i] + dequantize_range(q[i].min(OFFSET_STEPS as u32), LIMB_REACH_M, OFFSET_STEPS))
}

// ---- rotations --------------------------------------------------------------

pub const YAW_BITS: u32 = 13;
pub const COMPONENT_BITS: u32 = 12;
const COMPONENT_STEPS: f64 = ((1u64 << COMPONENT_BITS) - 2) as f64;
/// x and z may be this far from zero for a rotation to go as yaw-only
/// (dropping them turns it by at most 2·√2·tolerance rad ≈ 0.028°).
pub const YAW_ONLY_TOLERANCE: f32 = (std::f64::consts::SQRT_2 / COMPONENT_STEPS / 2.0) as f32;

/// A quantized rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizedRotation {
    /// A rotation about the vertical axis: yaw in 1/8192 turns.
    Yaw(u32),
    /// Smallest three: which component is dropped (0..4, the largest or a
    /// near-tie of it) and the other three, each 12 bits over ±1/√2, in
    /// x, y, z, w order.
    SmallestThree { largest: u8, rest: [u32; 3] },
}

fn normalized(r: [f32; 4]) -> [f64; 4] {
    let r = r.map(|v| if v.is_finite() { f64::from(v) } else { 0.0 });
    let len = r.iter().map(|v| v * v).sum::<f64>().sqrt();
    if len < 1e-9 {
        [0.0, 0.0, 0.0, 1.0]
    } else {
        r.map(|v| v / len)
    }
}

fn largest_index(q: &[f64; 4]) -> usize {
    (0..4).max_by(|&a, &b| q[a].abs().total_cmp(&q[b].abs())).unwrap_or(3)
}

fn smallest_three(q: &[f64; 4], drop: usize) -> QuantizedRotation {
    // q and -q are the same rotation: make the dropped component positive.
    let sign = if q[drop] < 0.0 { -1.0 } else { 1.0 };
    let half = std::f64::consts::FRAC_1_SQRT_2;
    let mut rest = [0u32; 3];
    for (slot, i) in (0..4).filter(|&i| i != drop).enumerate() {
        let unit = ((sign * q[i]).clamp(-half, half) + half) / (2.0 * half);
        rest[slot] = (unit * COMPONENT_STEPS).round() as u32;
    }
    QuantizedRotation::SmallestThree { largest: drop as u8, rest }
}

/// Quantizes a rotation. The result is a fixpoint (quantizing what it
/// decodes to gives the same code, so a relay that decodes and re-encodes
/// adds no error) except when the two largest components nearly tie: then
/// the decoded rotation may drop the other one, which costs at most one more
/// quantization step. Yaw-only is used exactly when smallest three would code
/// x and z as zero, so the two encodings never flip.
pub fn quantize_rotation(r: [f32; 4]) -> QuantizedRotation {
    let q = normalized(r);
    let tol = f64::from(YAW_ONLY_TOLERANCE);
    if q[0].abs() < tol && q[2].abs() < tol {
        let turns = (2.0 * q[1].atan2(q[3])) / std::f64::consts::TAU;
        let steps = f64::from(1u32 << YAW_BITS);
        let yaw = ((turns.rem_euclid(1.0)) * steps).round() as u32 % (1 << YAW_BITS);
        return QuantizedRotation::Yaw(yaw);
    }
    let first = smallest_three(&q, largest_index(&q));
    let seen = normalized(dequantize_rotation(first));
    let again = largest_index(&seen);
    if smallest_three(&seen, again) == first {
        return first;
    }
    let second = smallest_three(&q, again);
    let seen = normalized(dequantize_rotation(second));
    if smallest_three(&seen, largest_index(&seen)) == second { second } else { first }
}

pub fn dequantize_rotation(q: QuantizedRotation) -> [f32; 4] {
    match q {
        QuantizedRotation::Yaw(yaw) => {
            let angle = f64::from(yaw % (1 << YAW_BITS)) / f64::from(1u32 << YAW_BITS)
                * std::f64::consts::TAU;
            [0.0, (angle / 2.0).sin() as f32, 0.0, (angle / 2.0).cos() as f32]
        }
        QuantizedRotation::SmallestThree { largest, rest } => {
            let half = std::f64::consts::FRAC_1_SQRT_2;
            let largest = usize::from(largest.min(3));
            let mut out = [0.0f64; 4];
            let mut sum = 0.0;
            for (slot, i) in (0..4).filter(|&i| i != largest).enumerate() {
                let unit = f64::from(rest[slot].min(COMPONENT_STEPS as u32)) / COMPONENT_STEPS;
                out[i] = unit * 2.0 * half - half;
                sum += out[i] * out[i];
            }
            out[largest] = (1.0 - sum).max(0.0).sqrt();
            normalized(out.map(|v| v as f32)).map(|v| v as f32)
        }
    }
}

/// The angle in degrees between two rotations (0..=180).
pub fn angle_between_deg(a: [f32; 4], b: [f32; 4]) -> f64 {
    let a = normalized(a);
    let b = normalized(b);
    let dot = (0..4).map(|i| a[i] * b[i]).sum::<f64>().abs().min(1.0);
    (2.0 * dot.acos()).to_degrees()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unit_quaternion() -> impl Strategy<Value = [f32; 4]> {
        prop::array::uniform4(-1.0f32..1.0)
            .prop_filter("non-zero", |q| q.iter().map(|v| v * v).sum::<f32>() > 1e-3)
            .prop_map(|q| {
                let len = q.iter().map(|v| v * v).sum::<f32>().sqrt();
                q.map(|v| v / len)
            })
    }

    fn yaw_quaternion() -> impl Strategy<Value = [f32; 4]> {
        (-10.0f32..10.0).prop_map(|a| [0.0, (a / 2.0).sin(), 0.0, (a / 2.0).cos()])
    }

    proptest! {
        #[test]
        fn position_error_is_at_most_one_centimetre(p in prop::array::uniform3(-1000.0f32..=1000.0)) {
            let back = dequantize_position(quantize_position(p));
            for i in 0..3 {
                prop_assert!((back[i] - p[i]).abs() <= 0.01, "axis {i}: {} -> {}", p[i], back[i]);
            }
        }

        #[test]
        fn any_rotation_error_is_at_most_a_tenth_of_a_degree(r in unit_quaternion()) {
            let back = dequantize_rotation(quantize_rotation(r));
            let err = angle_between_deg(r, back);
            prop_assert!(err <= 0.1, "{r:?} -> {back:?}: {err}°");
        }

        #[test]
        fn quantization_is_a_fixpoint_away_from_ties(r in unit_quaternion(), p in prop::array::uniform3(-1000.0f32..=1000.0), x in -3e-4f32..3e-4) {
            let tied = |r: [f32; 4]| {
                let mut mags: Vec<f64> = normalized(r).iter().map(|v| v.abs()).collect();
                mags.sort_by(f64::total_cmp);
                mags[3] - mags[2] <= 4.0 * std::f64::consts::SQRT_2 / COMPONENT_STEPS
            };
            // Near-yaw rotations never flip between the two encodings.
            let (s, c) = (r[1].atan2(r[3])).sin_cos();
            let near_yaw = [x, s, x * 0.5, c];
            for r in [r, near_yaw] {
                let q = quantize_rotation(r);
                if !tied(r) || matches!(q, QuantizedRotation::Yaw(_)) {
                    prop_assert_eq!(quantize_rotation(dequantize_rotation(q)), q, "{:?}", r);
                }
            }
            let qp = quantize_position(p);
            prop_assert_eq!(quantize_position(dequantize_position(qp)), qp);
        }

        #[test]
        fn re_encoding_a_near_tie_stays_within_bounds(r in unit_quaternion(), i in 0usize..4, j in 0usize..4, nudge in -1e-3f32..1e-3) {
            // Two components of (nearly) equal size: decode → encode may drop
            // the other one, which moves the rotation by at most one more
            // quantization error, never more, however often it is repeated.
            let mut t = r;
            t[j] = t[i] + nudge;
            let mut code = quantize_rotation(t);
            for _ in 0..4 {
                let seen = dequantize_rotation(code);
                let err = angle_between_deg(t, seen);
                prop_assert!(err <= 0.2, "{t:?} drifted {err}°");
                code = quantize_rotation(seen);
            }
            prop_assert!(angle_between_deg(t, dequantize_rotation(code)) <= 0.1);
        }

        #[test]
        fn yaw_rotation_is_compact_and_within_bounds(r in yaw_quaternion()) {
            let q = quantize_rotation(r);
            prop_assert!(matches!(q, QuantizedRotation::Yaw(_)), "{q:?}");
            let err = angle_between_deg(r, dequantize_rotation(q));
            prop_assert!(err <= 0.1, "{err}°");
        }

        #[test]
        fn near_yaw_rotations_stay_within_bounds(yaw in -3.2f32..3.2, x in -1.8e-4f32..1.8e-4, z in -1.8e-4f32..1.8e-4) {
            let (s, c) = (yaw / 2.0).sin_cos();
            let r = [x, s, z, c];
            let err = angle_between_deg(r, dequantize_rotation(quantize_rotation(r)));
            prop_assert!(err <= 0.1, "{err}°");
        }

        #[test]
        fn limb_offsets_error_is_at_most_one_centimetre(
            root in prop::array::uniform3(-990.0f32..990.0),
            off in prop::array::uniform3(-4.0f32..=4.0),
        ) {
            let limb = [0, 1, 2].map(|i| root[i] + off[i]);
            let qroot = dequantize_position(quantize_position(root));
            let back = dequantize_offset(qroot, quantize_offset(limb, qroot));
            for i in 0..3 {
                // Offsets are taken from the root the receiver sees, so only
                // the offset's own error remains.
                prop_assert!((back[i] - limb[i]).abs() <= 0.01, "axis {i}: {} -> {}", limb[i], back[i]);
            }
        }
    }

    #[test]
    fn worst_case_smallest_three_is_within_bounds() {
        // All four components equal: the recomputed one carries the most error.
        let r = [0.5, 0.5, 0.5, 0.5];
        let err = angle_between_deg(r, dequantize_rotation(quantize_rotation(r)));
        assert!(err <= 0.1, "{err}°");
    }

    #[test]
    fn validate_rejects_bad_poses_with_reasons() {
        let ok = Pose::default();
        assert!(ok.validate().is_ok());
        let far = Pose { p: [1000.5, 0.0, 0.0], ..ok };
        assert!(matches!(far.validate(), Err(PoseError::OutOfWorld { .. })));
        let nan = Pose { p: [f32::NAN, 0.0, 0.0], ..ok };
        assert!(matches!(nan.validate(), Err(PoseError::NotFinite { .. })));
        let skew = Pose { r: [0.0, 0.0, 0.0, 2.0], ..ok };
        assert!(matches!(skew.validate(), Err(PoseError::NotUnit { .. })));
        let long_arm = Pose {
            hands: Some([Transform { p: [5.0, 0.0, 0.0], r: IDENTITY }, Transform { p: [0.0; 3], r: IDENTITY }]),
            ..ok
        };
        let err = long_arm.validate().unwrap_err();
        assert!(err.to_string().contains("left hand"), "{err}");
    }

    #[test]
    fn zero_and_identity_are_exact() {
        assert_eq!(dequantize_position(quantize_position([0.0; 3])), [0.0; 3]);
        assert_eq!(dequantize_offset([1.5, 0.0, -2.0], quantize_offset([1.5, 0.0, -2.0], [1.5, 0.0, -2.0])), [1.5, 0.0, -2.0]);
        assert_eq!(dequantize_rotation(quantize_rotation(IDENTITY)), IDENTITY);
        let tilted = [0.0, 0.0, 0.38268343, 0.9238795]; // 45° about z: x, y stay exactly 0
        let back = dequantize_rotation(quantize_rotation(tilted));
        assert_eq!((back[0], back[1]), (0.0, 0.0));
    }

    #[test]
    fn out_of_range_values_clamp_instead_of_wrapping() {
        let back = dequantize_position(quantize_position([5000.0, -5000.0, f32::NAN]));
        assert_eq!(back[0], 1000.0);
        assert_eq!(back[1], -1000.0);
        assert!(back[2].abs() < 0.01);
    }
}
