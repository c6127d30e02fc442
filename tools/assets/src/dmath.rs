//! Deterministic math: the few transcendental functions the generators need,
//! written out in plain IEEE arithmetic so that the output does not depend on
//! the platform's libm (whose last bits differ between versions). Accurate to
//! about 1e-15, far more than meshes, textures and audio need.

use std::f64::consts::{FRAC_2_PI, FRAC_PI_2, LN_2};

pub use std::f64::consts::{PI, TAU};

// π/2 and ln 2 split in two (fdlibm's constants) so the reductions
// `x - k·π/2` and `x - k·ln 2` lose nothing for the arguments used here.
const PIO2_LO: f64 = 6.123_233_995_736_766e-17;
const LN2_HI: f64 = 6.931_471_803_691_238e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;

/// `(sin x, cos x)`.
pub fn sin_cos(x: f64) -> (f64, f64) {
    let k = (x * FRAC_2_PI).round();
    let r = (x - k * FRAC_PI_2) - k * PIO2_LO;
    let r2 = r * r;
    // Taylor series, |r| <= π/4: the first omitted terms are below 1e-16.
    let mut s = 0.0;
    let mut c = 0.0;
    let mut term_s = r;
    let mut term_c = 1.0;
    for n in 0..9 {
        s += term_s;
        c += term_c;
        let n2 = 2.0 * f64::from(n);
        term_s *= -r2 / ((n2 + 2.0) * (n2 + 3.0));
        term_c *= -r2 / ((n2 + 1.0) * (n2 + 2.0));
    }
    match (k as i64).rem_euclid(4) {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

pub fn sin(x: f64) -> f64 {
    sin_cos(x).0
}

/// `e^x`, for |x| < 700.
pub fn exp(x: f64) -> f64 {
    if x < -700.0 {
        return 0.0;
    }
    let k = (x / LN_2).round();
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut sum = 0.0;
    let mut term = 1.0;
    for n in 1..16 {
        sum += term;
        term *= r / f64::from(n);
    }
    sum * f64::from_bits(((k as i64 + 1023) as u64) << 52)
}

/// Natural logarithm, for x > 0.
pub fn ln(x: f64) -> f64 {
    assert!(x > 0.0 && x.is_finite(), "ln of {x}");
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & !(0x7ff << 52)) | (1023 << 52));
    if x < f64::MIN_POSITIVE {
        // Subnormal: scale up first.
        return ln(x * 18_014_398_509_481_984.0) - 54.0 * LN_2;
    }
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln m = 2·atanh(s), s = (m-1)/(m+1), |s| <= 0.172.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut sum = 0.0;
    let mut power = s;
    for n in 0..12 {
        sum += power / f64::from(2 * n + 1);
        power *= s2;
    }
    2.0 * sum + e as f64 * LN2_HI + e as f64 * LN2_LO
}

/// `x^y` for x >= 0.
pub fn pow(x: f64, y: f64) -> f64 {
    if x == 0.0 {
        return if y == 0.0 { 1.0 } else { 0.0 };
    }
    exp(y * ln(x))
}

/// sRGB-encoded value in 0..=1 to linear light.
pub fn srgb_to_linear(c: f64) -> f64 {
    if c <= 0.04045 { c / 12.92 } else { pow((c + 0.055) / 1.055, 2.4) }
}

/// Linear light in 0..=1 to sRGB encoding.
pub fn linear_to_srgb(c: f64) -> f64 {
    if c <= 0.003_130_8 { c * 12.92 } else { 1.055 * pow(c, 1.0 / 2.4) - 0.055 }
}

/// `x²`, spelled out (`powi` may round differently across builds).
pub fn sq(x: f64) -> f64 {
    x * x
}

pub fn lerp(a: f64, b: f64, t: f64) -> f64 {
    a + (b - a) * t
}

pub fn smoothstep(e0: f64, e1: f64, x: f64) -> f64 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

pub type Vec3 = [f64; 3];

pub fn add(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

pub fn sub(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub fn scale(a: Vec3, s: f64) -> Vec3 {
    [a[0] * s, a[1] * s, a[2] * s]
}

pub fn dot(a: Vec3, b: Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub fn cross(a: Vec3, b: Vec3) -> Vec3 {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

pub fn length(a: Vec3) -> f64 {
    dot(a, a).sqrt()
}

/// `a` scaled to unit length, or +Y when `a` is zero.
pub fn normalize(a: Vec3) -> Vec3 {
    let l = length(a);
    if l > 0.0 { scale(a, 1.0 / l) } else { [0.0, 1.0, 0.0] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libm_closely() {
        for i in -2000..2000 {
            let x = f64::from(i) * 0.0137;
            assert!((sin(x) - x.sin()).abs() < 1e-14, "sin {x}");
            assert!((sin_cos(x).1 - x.cos()).abs() < 1e-14, "cos {x}");
            assert!((exp(x * 0.1) - (x * 0.1).exp()).abs() < 1e-13 * (x * 0.1).exp(), "exp {x}");
            let y = (f64::from(i) + 2001.0) * 0.013;
            assert!((ln(y) - y.ln()).abs() < 1e-14, "ln {y}");
        }
        assert!((pow(0.5, 2.4) - 0.5f64.powf(2.4)).abs() < 1e-14);
        for i in 0..=255 {
            let c = f64::from(i) / 255.0;
            assert!((linear_to_srgb(srgb_to_linear(c)) - c).abs() < 1e-12);
        }
    }
}
