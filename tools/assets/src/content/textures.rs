//! The procedural textures: paving, grass, gravel, bark, leaves, stone,
//! plaster, roof tiles, four cloth patterns, a woven-cloth normal map and a
//! face. Every pattern tiles (periodic noise), except the face.

use crate::dmath::{self, PI, TAU, smoothstep};
use crate::noise::hash3;
use crate::texture::{Image, Space, bevel, mix, rgb, shade, stones, tile_noise};

/// A named texture source: written as `textures/<name>.ktx2`.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub space: Space,
    pub image: Image,
}

/// The cloth colours of each avatar: (ground, pattern).
pub const CLOTH: [([u8; 3], [u8; 3]); 4] =
    [([38, 120, 128], [236, 226, 200]), ([200, 48, 52], [245, 240, 232]), ([34, 46, 96], [240, 196, 60]), ([104, 58, 140], [242, 140, 50])];

/// Paving: staggered flagstones, 6 across and 8 down a tile.
fn paving_height(u: f64, v: f64) -> f64 {
    let (edge, _) = stones(u, v, 6, 8, 11);
    bevel(edge - 0.02, 0.06) * (0.85 + 0.15 * tile_noise(u, v, 16, 3, 12))
}

fn paving(u: f64, v: f64) -> [f64; 4] {
    let (edge, id) = stones(u, v, 6, 8, 11);
    let stone = mix(rgb(150, 142, 132), rgb(205, 196, 180), id);
    let grain = 0.82 + 0.3 * tile_noise(u, v, 32, 3, 13);
    let joint = rgb(72, 68, 62);
    mix(joint, shade(stone, grain), bevel(edge - 0.02, 0.03))
}

fn grass(u: f64, v: f64) -> [f64; 4] {
    let patches = tile_noise(u, v, 6, 4, 21);
    let blades = tile_noise(u * 4.0, v, 64, 2, 22);
    let c = mix(rgb(62, 104, 40), rgb(112, 150, 62), patches);
    shade(c, 0.8 + 0.35 * blades)
}

fn gravel(u: f64, v: f64) -> [f64; 4] {
    let x = (u * 256.0) as i64;
    let y = (v * 256.0) as i64;
    let speck = hash3(x, y, 0, 31);
    let pebble = tile_noise(u, v, 48, 2, 32);
    let c = mix(rgb(168, 150, 120), rgb(212, 196, 162), pebble);
    shade(c, 0.85 + 0.25 * speck)
}

/// Bark: vertical ridges.
fn bark_height(u: f64, v: f64) -> f64 {
    let ridges = tile_noise(u, v * 0.25, 12, 3, 41);
    let wobble = tile_noise(u, v, 4, 2, 42);
    let s = dmath::sin(TAU * (u * 12.0 + 1.5 * wobble));
    (0.5 + 0.5 * s) * 0.6 + 0.4 * ridges
}

fn bark(u: f64, v: f64) -> [f64; 4] {
    let h = bark_height(u, v);
    shade(mix(rgb(60, 44, 32), rgb(118, 92, 68), h), 0.9 + 0.2 * tile_noise(u, v, 32, 2, 43))
}

fn leaves(u: f64, v: f64) -> [f64; 4] {
    let clumps = tile_noise(u, v, 8, 3, 51);
    let leaf = tile_noise(u, v, 40, 2, 52);
    let c = mix(rgb(36, 82, 34), rgb(96, 140, 52), clumps);
    shade(c, 0.7 + 0.5 * smoothstep(0.3, 0.7, leaf))
}

fn stone(u: f64, v: f64) -> [f64; 4] {
    let x = (u * 256.0) as i64;
    let y = (v * 256.0) as i64;
    let speck = hash3(x, y, 0, 61);
    let c = mix(rgb(150, 150, 146), rgb(196, 194, 188), tile_noise(u, v, 8, 4, 62));
    if speck > 0.94 { shade(c, 0.55) } else if speck < 0.05 { shade(c, 1.15) } else { c }
}

/// Plaster, one facade bay (3 m wide, 3.5 m high) per tile, with the bay's
/// window painted in: far away, when the window geometry has been
/// simplified away, the painted one remains.
fn plaster(u: f64, v: f64) -> [f64; 4] {
    let c = shade(rgb(236, 230, 218), 0.9 + 0.12 * tile_noise(u, v, 16, 4, 71));
    // The window: 1.0 m wide, 1.8 m high with a round top, centred, sill at
    // 1.0 m (v runs down the tile: v = 0 is 3.5 m up).
    let x = (u - 0.5) * 3.0;
    let y = (1.0 - v) * 3.5 - 1.0;
    let inside = x.abs() < 0.5 && (y > 0.0 && (y < 1.3 || x * x + (y - 1.3) * (y - 1.3) < 0.25));
    if inside { rgb(46, 56, 72) } else { c }
}

fn roof(u: f64, v: f64) -> [f64; 4] {
    let (edge, id) = stones(u, v, 8, 12, 81);
    let c = mix(rgb(150, 64, 44), rgb(186, 92, 60), id);
    shade(c, 0.6 + 0.4 * bevel(edge, 0.15))
}

fn cloth(k: usize, u: f64, v: f64) -> [f64; 4] {
    let (ground, pattern) = CLOTH[k];
    let (a, b) = (rgb(ground[0], ground[1], ground[2]), rgb(pattern[0], pattern[1], pattern[2]));
    let t = match k {
        // Stripes.
        0 => smoothstep(0.35, 0.4, (0.5 + 0.5 * dmath::sin(TAU * v * 8.0)).min(1.0)) * 0.9,
        // Gingham.
        1 => {
            let s = |x: f64| if (x * 16.0).floor() as i64 % 2 == 0 { 0.5 } else { 0.0 };
            s(u) + s(v)
        }
        // Dots.
        2 => {
            let (fx, fy) = ((u * 12.0).fract() - 0.5, (v * 12.0).fract() - 0.5);
            1.0 - smoothstep(0.18, 0.22, (fx * fx + fy * fy).sqrt())
        }
        // Chevrons.
        _ => {
            let zig = ((u * 8.0).fract() - 0.5).abs();
            smoothstep(0.45, 0.5, (v * 8.0 + zig).fract()) - smoothstep(0.8, 0.85, (v * 8.0 + zig).fract())
        }
    };
    shade(mix(a, b, t.clamp(0.0, 1.0)), 0.92 + 0.12 * tile_noise(u, v, 64, 1, 90 + k as u32))
}

/// A plain weave: warp and weft threads alternating every 4 texels.
fn weave_height(u: f64, v: f64) -> f64 {
    let (x, y) = (u * 64.0, v * 64.0);
    let over = ((x.floor() as i64) + (y.floor() as i64)).rem_euclid(2) == 0;
    let across = if over { x.fract() } else { y.fract() };
    0.5 + 0.5 * dmath::sin(PI * across)
}

/// The face, painted in the head's UV space: u goes around (the front is at
/// u = 0.25), v from the chin pole (0) to the crown (1). Near-white skin:
/// each avatar's material tints it.
fn face(u: f64, v: f64) -> [f64; 4] {
    let theta = u * TAU;
    let lat = v * PI - PI / 2.0;
    let skin = shade(rgb(250, 240, 232), 0.95 + 0.06 * tile_noise(u, v, 24, 2, 101));
    let (dx, dy) = (theta - PI / 2.0, lat);
    // Blush on the cheeks.
    let cheek = |s: f64| {
        let (x, y) = ((dx - s * 0.42) / 0.16, (dy + 0.12) / 0.12);
        1.0 - smoothstep(0.4, 1.0, (x * x + y * y).sqrt())
    };
    let mut c = mix(skin, rgb(240, 170, 160), 0.35 * (cheek(1.0) + cheek(-1.0)));
    for s in [-1.0, 1.0] {
        let (x, y) = ((dx - s * 0.3) / 0.13, (dy - 0.12) / 0.085);
        let r = (x * x + y * y).sqrt();
        if r < 1.0 {
            c = rgb(250, 250, 250);
        }
        if r < 0.62 {
            c = rgb(70, 50, 36);
        }
        if r < 0.3 {
            c = rgb(16, 12, 10);
        }
        let (hx, hy) = (x + 0.2, y - 0.25);
        if (hx * hx + hy * hy).sqrt() < 0.14 {
            c = rgb(255, 255, 255);
        }
        // Brows.
        let (bx, by) = ((dx - s * 0.3) / 0.15, dy - 0.26 - 0.03 * (1.0 - dmath::sq((dx - s * 0.3) / 0.15)));
        if bx.abs() < 1.0 && by.abs() < 0.018 {
            c = rgb(80, 60, 48);
        }
    }
    // A smile.
    let mx = dx / 0.2;
    let my = dy + 0.33 - 0.07 * mx * mx;
    if mx.abs() < 1.0 && my.abs() < 0.018 {
        c = rgb(150, 60, 60);
    }
    c
}

type Painter = Box<dyn Fn(f64, f64) -> [f64; 4] + Sync>;
type HeightField = Box<dyn Fn(f64, f64) -> f64 + Sync>;

/// A texture to paint: name, meaning, size and painter.
pub struct Recipe {
    pub name: String,
    pub space: Space,
    pub size: u32,
    paint: Painter,
    /// For normal maps: the height field and its strength.
    height: Option<(f64, HeightField)>,
}

impl std::fmt::Debug for Recipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipe({})", self.name)
    }
}

impl Recipe {
    fn colour(name: &str, size: u32, paint: impl Fn(f64, f64) -> [f64; 4] + Sync + 'static) -> Recipe {
        Recipe { name: name.to_owned(), space: Space::Srgb, size, paint: Box::new(paint), height: None }
    }

    fn normal(name: &str, size: u32, strength: f64, height: impl Fn(f64, f64) -> f64 + Sync + 'static) -> Recipe {
        let paint = Box::new(|_: f64, _: f64| [0.5, 0.5, 1.0, 1.0]);
        Recipe { name: name.to_owned(), space: Space::Normal, size, paint, height: Some((strength, Box::new(height))) }
    }

    pub fn paint(&self) -> Source {
        let image = match &self.height {
            Some((strength, h)) => Image::normal_map(self.size, self.size, *strength, h),
            None => Image::from_fn(self.size, self.size, &self.paint),
        };
        Source { name: self.name.clone(), space: self.space, image }
    }
}

/// Every texture, in a fixed order.
pub fn recipes() -> Vec<Recipe> {
    let mut out = vec![
        Recipe::colour("paving", 512, paving),
        Recipe::normal("paving_normal", 512, 24.0, paving_height),
        Recipe::colour("grass", 256, grass),
        Recipe::colour("gravel", 256, gravel),
        Recipe::colour("bark", 256, bark),
        Recipe::normal("bark_normal", 256, 6.0, bark_height),
        Recipe::colour("leaves", 256, leaves),
        Recipe::colour("stone", 256, stone),
        Recipe::colour("plaster", 256, plaster),
        Recipe::colour("roof", 256, roof),
    ];
    for k in 0..CLOTH.len() {
        out.push(Recipe::colour(&format!("cloth_{k}"), 256, move |u, v| cloth(k, u, v)));
    }
    out.push(Recipe::normal("cloth_normal", 256, 1.5, weave_height));
    out.push(Recipe::colour("face", 256, face));
    out
}

/// Every texture painted, in the order of [`recipes`].
pub fn all() -> Vec<Source> {
    crate::par_map(&recipes(), Recipe::paint)
}
