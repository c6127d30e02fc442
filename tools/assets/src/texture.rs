//! RGBA8 images, the procedural patterns the textures are painted with, and
//! mip chains (filtered in linear light for colour, renormalized for normal
//! maps).

use std::sync::OnceLock;

use crate::dmath::{self, lerp, smoothstep};
use crate::noise::{fbm2, hash3};

/// What the texels mean, which decides filtering and the KTX2 transfer
/// function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Colour, sRGB-encoded.
    Srgb,
    /// A tangent-space normal map, kept linear.
    Normal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub rgba: Vec<u8>,
}

/// Mip levels stop once the smaller side is 4 texels: every level is then
/// whole 4×4 blocks, so a UASTC texture transcoded to BC7 or ASTC 4×4 takes
/// exactly one byte per texel.
pub const MIP_SMALLEST: u32 = 4;

pub fn mip_count(width: u32, height: u32) -> u32 {
    let mut n = 1;
    let (mut w, mut h) = (width, height);
    while w.min(h) / 2 >= MIP_SMALLEST {
        w /= 2;
        h /= 2;
        n += 1;
    }
    n
}

fn srgb_to_linear_lut() -> &'static [f32; 256] {
    static LUT: OnceLock<[f32; 256]> = OnceLock::new();
    LUT.get_or_init(|| std::array::from_fn(|i| dmath::srgb_to_linear(i as f64 / 255.0) as f32))
}

const LINEAR_STEPS: usize = 1 << 14;

fn linear_to_srgb_lut() -> &'static [u8] {
    static LUT: OnceLock<Vec<u8>> = OnceLock::new();
    LUT.get_or_init(|| {
        (0..=LINEAR_STEPS)
            .map(|i| (dmath::linear_to_srgb(i as f64 / LINEAR_STEPS as f64) * 255.0).round() as u8)
            .collect()
    })
}

/// Linear light in 0..=1 to an sRGB byte.
pub fn encode_srgb(linear: f64) -> u8 {
    linear_to_srgb_lut()[(linear.clamp(0.0, 1.0) * LINEAR_STEPS as f64).round() as usize]
}

/// An sRGB byte to linear light.
pub fn decode_srgb(byte: u8) -> f64 {
    f64::from(srgb_to_linear_lut()[byte as usize])
}

/// A unit-range value to a byte.
pub fn unorm(v: f64) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

impl Image {
    pub fn new(width: u32, height: u32) -> Image {
        Image { width, height, rgba: vec![0; (width * height * 4) as usize] }
    }

    /// Paints every texel with `f(u, v)` in sRGB-encoded 0..=1 RGBA, u and v
    /// at texel centres in 0..1.
    pub fn from_fn(width: u32, height: u32, f: impl Fn(f64, f64) -> [f64; 4]) -> Image {
        let mut img = Image::new(width, height);
        for y in 0..height {
            for x in 0..width {
                let c = f((f64::from(x) + 0.5) / f64::from(width), (f64::from(y) + 0.5) / f64::from(height));
                img.set(x, y, c.map(unorm));
            }
        }
        img
    }

    pub fn get(&self, x: u32, y: u32) -> [u8; 4] {
        let i = ((y * self.width + x) * 4) as usize;
        [self.rgba[i], self.rgba[i + 1], self.rgba[i + 2], self.rgba[i + 3]]
    }

    pub fn set(&mut self, x: u32, y: u32, c: [u8; 4]) {
        let i = ((y * self.width + x) * 4) as usize;
        self.rgba[i..i + 4].copy_from_slice(&c);
    }

    pub fn has_alpha(&self) -> bool {
        self.rgba.chunks_exact(4).any(|p| p[3] != 255)
    }

    /// Half the size: 2×2 boxes averaged in linear light (colour) or as
    /// vectors renormalized (normal maps). Colour is weighted by alpha so
    /// transparent texels don't bleed into edges.
    pub fn half(&self, space: Space) -> Image {
        let (w, h) = ((self.width / 2).max(1), (self.height / 2).max(1));
        let mut out = Image::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let taps = [(0, 0), (1, 0), (0, 1), (1, 1)]
                    .map(|(dx, dy)| self.get((2 * x + dx).min(self.width - 1), (2 * y + dy).min(self.height - 1)));
                out.set(x, y, average(&taps, space));
            }
        }
        out
    }

    /// This image and its mips down to [`MIP_SMALLEST`].
    pub fn mip_chain(self, space: Space) -> Vec<Image> {
        let n = mip_count(self.width, self.height);
        let mut levels = vec![self];
        for _ in 1..n {
            let next = levels.last().map(|l| l.half(space)).unwrap_or_else(|| unreachable!());
            levels.push(next);
        }
        levels
    }

    /// Tangent-space normal map from a height field `h(u, v)` in 0..=1
    /// (wrapping), `strength` = height in texels for a step of 1.0.
    pub fn normal_map(width: u32, height: u32, strength: f64, h: impl Fn(f64, f64) -> f64) -> Image {
        let heights: Vec<f64> = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x, y)))
            .map(|(x, y)| h((f64::from(x) + 0.5) / f64::from(width), (f64::from(y) + 0.5) / f64::from(height)))
            .collect();
        let at = |x: i64, y: i64| {
            heights[(y.rem_euclid(i64::from(height)) * i64::from(width) + x.rem_euclid(i64::from(width))) as usize]
        };
        let mut img = Image::new(width, height);
        for y in 0..i64::from(height) {
            for x in 0..i64::from(width) {
                let dx = (at(x + 1, y) - at(x - 1, y)) * 0.5 * strength;
                let dy = (at(x, y + 1) - at(x, y - 1)) * 0.5 * strength;
                // +Y is up the image (green up, as glTF expects).
                let n = dmath::normalize([-dx, dy, 1.0]);
                img.set(x as u32, y as u32, [unorm(n[0] * 0.5 + 0.5), unorm(n[1] * 0.5 + 0.5), unorm(n[2] * 0.5 + 0.5), 255]);
            }
        }
        img
    }
}

fn average(taps: &[[u8; 4]; 4], space: Space) -> [u8; 4] {
    match space {
        Space::Srgb => {
            let alpha: f64 = taps.iter().map(|t| f64::from(t[3])).sum();
            let weight = |t: &[u8; 4]| if alpha > 0.0 { f64::from(t[3]) / alpha } else { 0.25 };
            let c = [0, 1, 2].map(|k| encode_srgb(taps.iter().map(|t| decode_srgb(t[k]) * weight(t)).sum()));
            [c[0], c[1], c[2], (alpha / 4.0).round() as u8]
        }
        Space::Normal => {
            let n = [0, 1, 2].map(|k| taps.iter().map(|t| f64::from(t[k]) / 127.5 - 1.0).sum::<f64>());
            let n = dmath::normalize(n);
            [unorm(n[0] * 0.5 + 0.5), unorm(n[1] * 0.5 + 0.5), unorm(n[2] * 0.5 + 0.5), 255]
        }
    }
}

/// An sRGB colour from 0..=255 components, as 0..=1 RGBA.
pub fn rgb(r: u8, g: u8, b: u8) -> [f64; 4] {
    [f64::from(r) / 255.0, f64::from(g) / 255.0, f64::from(b) / 255.0, 1.0]
}

/// Mixes two sRGB-encoded colours (in encoded space: a painter's mix).
pub fn mix(a: [f64; 4], b: [f64; 4], t: f64) -> [f64; 4] {
    [0, 1, 2, 3].map(|k| lerp(a[k], b[k], t))
}

/// Multiplies the colour (not alpha) by `s`.
pub fn shade(c: [f64; 4], s: f64) -> [f64; 4] {
    [c[0] * s, c[1] * s, c[2] * s, c[3]]
}

/// Staggered rectangular stones: for a point in the tile, returns
/// (distance to the nearest joint in stone units, a per-stone random value).
pub fn stones(u: f64, v: f64, cols: u32, rows: u32, seed: u32) -> (f64, f64) {
    let y = v * f64::from(rows);
    let row = y.floor();
    let offset = if (row as i64) % 2 == 0 { 0.0 } else { 0.5 };
    let x = u * f64::from(cols) + offset;
    let col = x.floor();
    let (fx, fy) = (x - col, y - row);
    // Half the stones in a row are split in two lengthways for variety.
    let id = hash3((col as i64).rem_euclid(i64::from(cols)), row as i64, 0, seed);
    let edge = fx.min(1.0 - fx).min(fy.min(1.0 - fy) * f64::from(cols) / f64::from(rows));
    (edge, id)
}

/// A tileable fractal noise helper in texture space: `cells` noise cells
/// across the tile.
pub fn tile_noise(u: f64, v: f64, cells: i64, octaves: u32, seed: u32) -> f64 {
    fbm2(u * cells as f64, v * cells as f64, octaves, seed, Some(cells))
}

/// 0 in joints, rising to 1 over `width` (stone units) inside a stone.
pub fn bevel(edge: f64, width: f64) -> f64 {
    smoothstep(0.0, width, edge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mips_stop_at_four_texels() {
        assert_eq!(mip_count(256, 256), 7); // 256 .. 4
        assert_eq!(mip_count(128, 256), 6); // 128x256 .. 4x8
        let chain = Image::from_fn(16, 8, |_, _| [0.5, 0.5, 0.5, 1.0]).mip_chain(Space::Srgb);
        assert_eq!(chain.iter().map(|i| (i.width, i.height)).collect::<Vec<_>>(), vec![(16, 8), (8, 4)]);
    }

    #[test]
    fn colour_is_filtered_in_linear_light() {
        let mut img = Image::new(2, 2);
        for (x, y, c) in [(0, 0, 0), (1, 0, 255), (0, 1, 0), (1, 1, 255)] {
            img.set(x, y, [c, c, c, 255]);
        }
        // Half black, half white is 0.5 linear, 188 in sRGB, not 128.
        assert_eq!(img.half(Space::Srgb).get(0, 0), [188, 188, 188, 255]);
    }
}
