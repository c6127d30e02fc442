//! Seeded randomness for the generators: a small PRNG and value noise built
//! on an integer hash, so the same seed gives the same bits everywhere.

use crate::dmath::{lerp, smoothstep};

/// SplitMix64 (shared with the load tool): places trees, picks colours.
pub use plaza_shared::rng::SplitMix as Rng;

/// A hash of integer lattice coordinates and a seed, in [0, 1).
pub fn hash3(x: i64, y: i64, z: i64, seed: u32) -> f64 {
    let mut h = u64::from(seed).wrapping_mul(0x2545_f491_4f6c_dd1d);
    for v in [x, y, z] {
        h ^= (v as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 32;
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A hash of 2D lattice coordinates and a seed, in [0, 1). Straight-line
/// code: textures call it millions of times, in debug builds too.
pub fn hash2(x: i64, y: i64, seed: u32) -> f64 {
    let mut h = u64::from(seed).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (x as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (y as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    h = (h ^ (h >> 32)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Smooth value noise in [0, 1), period `period` along x and y when given
/// (textures tile seamlessly that way).
pub fn value2(x: f64, y: f64, seed: u32, period: Option<i64>) -> f64 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (tx, ty) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let (mut ix0, mut iy0) = (x0 as i64, y0 as i64);
    let (mut ix1, mut iy1) = (ix0 + 1, iy0 + 1);
    if let Some(p) = period {
        (ix0, iy0, ix1, iy1) = (ix0.rem_euclid(p), iy0.rem_euclid(p), ix1.rem_euclid(p), iy1.rem_euclid(p));
    }
    let (a, b) = (hash2(ix0, iy0, seed), hash2(ix1, iy0, seed));
    let (c, d) = (hash2(ix0, iy1, seed), hash2(ix1, iy1, seed));
    let top = a + (b - a) * tx;
    top + (c + (d - c) * tx - top) * ty
}

/// Smooth value noise in 3D, in [0, 1).
pub fn value3(p: [f64; 3], seed: u32) -> f64 {
    let f = [p[0].floor(), p[1].floor(), p[2].floor()];
    let t = [0, 1, 2].map(|i| smoothstep(0.0, 1.0, p[i] - f[i]));
    let i = f.map(|v| v as i64);
    let h = |dx: i64, dy: i64, dz: i64| hash3(i[0] + dx, i[1] + dy, i[2] + dz, seed);
    let plane = |dz: i64| lerp(lerp(h(0, 0, dz), h(1, 0, dz), t[0]), lerp(h(0, 1, dz), h(1, 1, dz), t[0]), t[1]);
    lerp(plane(0), plane(1), t[2])
}

/// Fractal sum of `octaves` layers of [`value2`], in [0, 1). With a period,
/// `x` and `y` are in units of the first octave's cells and tile every
/// `period` cells.
pub fn fbm2(x: f64, y: f64, octaves: u32, seed: u32, period: Option<i64>) -> f64 {
    let (mut sum, mut amp, mut norm, mut freq) = (0.0, 1.0, 0.0, 1.0);
    for o in 0..octaves {
        let p = period.map(|p| p * freq as i64);
        sum += amp * value2(x * freq, y * freq, seed.wrapping_add(o * 101), p);
        norm += amp;
        amp *= 0.5;
        freq *= 2.0;
    }
    sum / norm
}

/// Fractal 3D value noise in [0, 1).
pub fn fbm3(p: [f64; 3], octaves: u32, seed: u32) -> f64 {
    let (mut sum, mut amp, mut norm, mut freq) = (0.0, 1.0, 0.0, 1.0);
    for o in 0..octaves {
        sum += amp * value3(p.map(|v| v * freq), seed.wrapping_add(o * 101));
        norm += amp;
        amp *= 0.5;
        freq *= 2.0;
    }
    sum / norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_noise_tiles() {
        for i in 0..20 {
            let y = f64::from(i) * 0.37;
            let a = fbm2(0.0, y, 4, 7, Some(8));
            let b = fbm2(8.0, y, 4, 7, Some(8));
            assert!((a - b).abs() < 1e-12, "{a} {b}");
        }
    }
}
