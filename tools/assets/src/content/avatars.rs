//! Avatar bodies: a robed torso, a head with a face, two mitten hands, in
//! four styles (build, skin tone, cloth pattern). Avatars face +Z (glTF's
//! front), stand on y = 0 and are about 1.8 m tall.

use crate::dmath::{self, PI, Vec3};
use crate::glb::Material;
use crate::mesh::{Geometry, Xf};

/// The avatar count: `avatar_0` .. `avatar_3`.
pub const COUNT: usize = 4;

/// Impostor texture size (width, height): the quad is half as wide as high.
pub const IMPOSTOR_SIZE: (u32, u32) = (128, 256);

/// A body part: its own LOD chain, placed at `offset` from the avatar's
/// origin (the head and hands are driven by pose data).
#[derive(Debug, Clone)]
pub struct Part {
    pub name: &'static str,
    pub offset: Vec3,
    pub geometry: Geometry,
    /// Index into [`Avatar::materials`].
    pub material: usize,
}

#[derive(Debug, Clone)]
pub struct Avatar {
    pub name: String,
    pub parts: Vec<Part>,
    pub materials: Vec<Material>,
    /// Texture names (see `content::textures`) of the materials, for the
    /// impostor painter: cloth, skin, hands.
    pub textures: [Option<String>; 3],
}

struct Style {
    /// Radii of the robe: hem, waist, chest, shoulders.
    radii: [f64; 4],
    /// Front-to-back depth of the torso as a share of its width.
    depth: f64,
    height: f64,
    head: Vec3,
    /// Linear skin tint.
    skin: [f32; 4],
}

const STYLES: [Style; COUNT] = [
    Style { radii: [0.24, 0.14, 0.18, 0.2], depth: 0.72, height: 1.0, head: [0.105, 0.125, 0.115], skin: [0.93, 0.72, 0.6, 1.0] },
    Style { radii: [0.28, 0.17, 0.22, 0.245], depth: 0.75, height: 1.0, head: [0.115, 0.128, 0.12], skin: [0.62, 0.42, 0.3, 1.0] },
    Style { radii: [0.3, 0.22, 0.21, 0.21], depth: 0.85, height: 0.96, head: [0.118, 0.122, 0.12], skin: [0.36, 0.22, 0.15, 1.0] },
    Style { radii: [0.22, 0.13, 0.17, 0.2], depth: 0.7, height: 1.06, head: [0.1, 0.13, 0.11], skin: [0.98, 0.8, 0.7, 1.0] },
];

fn torso(s: &Style) -> Geometry {
    let [hem, waist, chest, shoulder] = s.radii;
    let h = s.height;
    let keys = [
        [hem, 0.03],
        [hem * 0.9, 0.35 * h],
        [waist, 0.95 * h],
        [chest, 1.2 * h],
        [shoulder, 1.36 * h],
        [shoulder * 0.75, 1.45 * h],
        [0.06, 1.5 * h],
        [0.055, 1.6 * h],
    ];
    let mut profile = vec![[0.0, 0.03]];
    profile.extend(crate::mesh::spline(&keys, 5));
    profile.push([0.0, 1.6 * h]);
    let depth = s.depth;
    let mut g = Geometry::default();
    // Hard edge only at the hem; the rest is one smooth surface.
    g.append(&Geometry::lathe(&profile[..2], 36, 2.0, 1.0), Xf::IDENTITY);
    g.append(&Geometry::lathe(&profile[1..], 36, 2.0, 1.0), Xf::IDENTITY);
    Geometry::default().merged(&g, Xf::IDENTITY.scaled([1.0, 1.0, depth]))
}

/// The head: an ellipsoid with a nose, UVs as `textures::face` expects.
fn head(s: &Style) -> Geometry {
    let rings = 20;
    let profile: Vec<[f64; 2]> = (0..=rings)
        .map(|j| {
            let a = -PI / 2.0 + PI * f64::from(j) / f64::from(rings);
            let (sn, c) = dmath::sin_cos(a);
            [if c.abs() < 1e-12 { 0.0 } else { c }, sn]
        })
        .collect();
    let unit = Geometry::lathe_with(&profile, 32, 1.0, 1.0 / PI, |theta, p| {
        let lat = p[1].clamp(-1.0, 1.0);
        let d = (theta - PI / 2.0) * (theta - PI / 2.0) + (lat + 0.05) * (lat + 0.05);
        dmath::scale(p, 1.0 + 0.14 * dmath::exp(-d / 0.012))
    });
    Geometry::default().merged(&unit, Xf::IDENTITY.scaled(s.head))
}

/// A mitten: palm facing the body (±X), fingers down, thumb forward.
fn hand(inward: f64) -> Geometry {
    let palm = Geometry::ellipsoid([0.026, 0.065, 0.045], 24, 12);
    let thumb = Geometry::ellipsoid([0.017, 0.034, 0.017], 16, 8);
    palm.merged(&thumb, Xf::at(inward * 0.012, 0.012, 0.038))
}

pub fn avatar(k: usize) -> Avatar {
    let s = &STYLES[k];
    let name = format!("avatar_{k}");
    let materials = vec![
        Material::new(&format!("{name}_cloth"), [1.0; 4], 0.85).textured(&format!("textures/cloth_{k}.ktx2"), Some("textures/cloth_normal.ktx2")),
        Material::new(&format!("{name}_skin"), s.skin, 0.55).textured("textures/face.ktx2", None),
        Material::new(&format!("{name}_hands"), s.skin, 0.6),
    ];
    let head_y = 1.6 * s.height + s.head[1] * 0.75;
    let parts = vec![
        Part { name: "torso", offset: [0.0; 3], geometry: torso(s), material: 0 },
        Part { name: "head", offset: [0.0, head_y, 0.0], geometry: head(s), material: 1 },
        // The avatar faces +Z, so its left is +X.
        Part { name: "hand_l", offset: [s.radii[3] + 0.08, 0.98 * s.height, 0.06], geometry: hand(-1.0), material: 2 },
        Part { name: "hand_r", offset: [-s.radii[3] - 0.08, 0.98 * s.height, 0.06], geometry: hand(1.0), material: 2 },
    ];
    Avatar { name, parts, materials, textures: [Some(format!("cloth_{k}")), Some("face".to_owned()), None] }
}

/// The impostor's rectangle: from the feet to above the head, half as wide
/// as high, centred.
pub fn impostor_view(a: &Avatar) -> crate::impostor::View {
    let top = a
        .parts
        .iter()
        .map(|p| f64::from(p.geometry.bounds().1[1]) + p.offset[1])
        .fold(0.0, f64::max);
    let height = top * 1.03;
    crate::impostor::View { origin: [-height / 4.0, 0.0], size: [height / 2.0, height] }
}
