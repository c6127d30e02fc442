//! The level-of-detail policy, as data and pure functions.
//!
//! Each avatar and prop is drawn at one of five levels, picked from its
//! distance to the camera scaled by the preset's LOD bias:
//!
//! | level | base distance (bias 1.0) |
//! | --- | --- |
//! | full | under 10 m |
//! | reduced | 10–25 m |
//! | low | 25–50 m |
//! | impostor | 50 m to the view distance |
//! | hidden | past the view distance |
//!
//! Hysteresis: a thing switches to a coarser level only once it is
//! `hysteresis` (a fraction) past the boundary, and back to a finer one only
//! once it is that fraction inside it, so an avatar standing on a boundary
//! doesn't flicker. The view distance is not scaled by the bias: it is the
//! preset's own.
//!
//! Budget: at most `full_detail_avatars` avatars are full; the nearest win,
//! the others drop to reduced.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LodLevel {
    Full,
    Reduced,
    Low,
    Impostor,
    Hidden,
}

impl LodLevel {
    pub const ALL: [LodLevel; 5] = [LodLevel::Full, LodLevel::Reduced, LodLevel::Low, LodLevel::Impostor, LodLevel::Hidden];

    pub fn as_str(self) -> &'static str {
        match self {
            LodLevel::Full => "full",
            LodLevel::Reduced => "reduced",
            LodLevel::Low => "low",
            LodLevel::Impostor => "impostor",
            LodLevel::Hidden => "hidden",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LodPolicy {
    /// Upper distance (m, at bias 1.0) of full, reduced and low.
    pub base_distances_m: [f32; 3],
    /// Fraction of a boundary's distance to pass before switching.
    pub hysteresis: f32,
}

impl Default for LodPolicy {
    fn default() -> Self {
        LodPolicy { base_distances_m: [10.0, 25.0, 50.0], hysteresis: 0.1 }
    }
}

impl LodPolicy {
    /// The boundaries between consecutive levels, in metres.
    pub fn boundaries(&self, bias: f32, view_distance_m: f32) -> [f32; 4] {
        let bias = if bias.is_finite() && bias > 0.0 { bias } else { 1.0 };
        let [a, b, c] = self.base_distances_m.map(|d| (d * bias).min(view_distance_m));
        [a, b, c, view_distance_m]
    }

    /// The level for something `distance_m` away, given the level it has now.
    pub fn select(&self, distance_m: f32, bias: f32, view_distance_m: f32, current: Option<LodLevel>) -> LodLevel {
        self.select_within(&self.boundaries(bias, view_distance_m), distance_m, current)
    }

    /// [`LodPolicy::select`] with the boundaries worked out once, for
    /// callers that pick levels for many things a frame.
    pub fn select_within(&self, bounds: &[f32; 4], distance_m: f32, current: Option<LodLevel>) -> LodLevel {
        let distance = if distance_m.is_nan() { f32::INFINITY } else { distance_m };
        let plain = bounds.iter().position(|&b| distance < b).unwrap_or(4);
        let Some(current) = current else { return LodLevel::ALL[plain] };
        let cur = current.index();
        let h = self.hysteresis.clamp(0.0, 0.5);
        // Stay unless we're clearly past the boundary on either side.
        let lower_edge = if cur == 0 { 0.0 } else { bounds[cur - 1] * (1.0 - h) };
        let upper_edge = if cur == 4 { f32::INFINITY } else { bounds[cur] * (1.0 + h) };
        if distance >= lower_edge && distance < upper_edge { current } else { LodLevel::ALL[plain] }
    }
}

/// Keeps at most `budget` avatars at full detail: the nearest win, the rest
/// drop to reduced. `avatars` is (distance, level) pairs; levels are updated
/// in place. Returns how many were demoted.
pub fn apply_full_detail_budget(avatars: &mut [(f32, LodLevel)], budget: usize) -> usize {
    let full = avatars.iter().filter(|(_, l)| *l == LodLevel::Full).count();
    if full <= budget {
        return 0;
    }
    let mut order: Vec<usize> = (0..avatars.len()).filter(|&i| avatars[i].1 == LodLevel::Full).collect();
    order.sort_by(|&a, &b| avatars[a].0.total_cmp(&avatars[b].0));
    for &i in &order[budget..] {
        avatars[i].1 = LodLevel::Reduced;
    }
    full - budget
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIEW: f32 = 200.0;

    #[test]
    fn levels_follow_distance_at_bias_one() {
        let p = LodPolicy::default();
        let at = |d| p.select(d, 1.0, VIEW, None);
        assert_eq!(at(0.0), LodLevel::Full);
        assert_eq!(at(9.9), LodLevel::Full);
        assert_eq!(at(10.0), LodLevel::Reduced);
        assert_eq!(at(30.0), LodLevel::Low);
        assert_eq!(at(60.0), LodLevel::Impostor);
        assert_eq!(at(200.0), LodLevel::Hidden);
        assert_eq!(at(f32::NAN), LodLevel::Hidden);
    }

    #[test]
    fn bias_scales_distances_but_not_the_view_distance() {
        let p = LodPolicy::default();
        assert_eq!(p.select(8.0, 0.5, VIEW, None), LodLevel::Reduced);
        assert_eq!(p.select(14.0, 1.5, VIEW, None), LodLevel::Full);
        assert_eq!(p.select(190.0, 4.0, VIEW, None), LodLevel::Low);
        assert_eq!(p.select(201.0, 4.0, VIEW, None), LodLevel::Hidden);
    }

    #[test]
    fn hysteresis_holds_a_level_near_a_boundary() {
        let p = LodPolicy::default();
        // Walking out: full holds until 11 m (10 m + 10%).
        assert_eq!(p.select(10.5, 1.0, VIEW, Some(LodLevel::Full)), LodLevel::Full);
        assert_eq!(p.select(11.0, 1.0, VIEW, Some(LodLevel::Full)), LodLevel::Reduced);
        // Walking in: reduced holds until 9 m.
        assert_eq!(p.select(9.5, 1.0, VIEW, Some(LodLevel::Reduced)), LodLevel::Reduced);
        assert_eq!(p.select(8.9, 1.0, VIEW, Some(LodLevel::Reduced)), LodLevel::Full);
        // A big jump goes straight to the right level.
        assert_eq!(p.select(150.0, 1.0, VIEW, Some(LodLevel::Full)), LodLevel::Impostor);
    }

    #[test]
    fn jitter_around_a_boundary_never_flickers() {
        let p = LodPolicy::default();
        let mut level = p.select(10.0, 1.0, VIEW, None);
        let mut switches = 0;
        for i in 0..1000 {
            let d = 10.0 + if i % 2 == 0 { 0.6 } else { -0.6 };
            let next = p.select(d, 1.0, VIEW, Some(level));
            switches += usize::from(next != level);
            level = next;
        }
        assert_eq!(switches, 0);
    }

    #[test]
    fn budget_keeps_the_nearest_at_full() {
        let mut avatars = vec![(5.0, LodLevel::Full), (1.0, LodLevel::Full), (3.0, LodLevel::Full), (20.0, LodLevel::Low)];
        assert_eq!(apply_full_detail_budget(&mut avatars, 2), 1);
        assert_eq!(avatars[0].1, LodLevel::Reduced);
        assert_eq!(avatars[1].1, LodLevel::Full);
        assert_eq!(avatars[2].1, LodLevel::Full);
        assert_eq!(avatars[3].1, LodLevel::Low);
        assert_eq!(apply_full_detail_budget(&mut avatars, 2), 0);
    }
}
