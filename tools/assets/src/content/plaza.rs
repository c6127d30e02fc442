//! The plaza: grass ground, a paved circle with a kerb, four gravel paths,
//! a fountain in the middle, benches, trees and lamps around it, and eight
//! buildings (three designs) facing it. Props are assets with LOD chains,
//! placed as instances.

use crate::dmath::{self, PI, TAU, Vec3, smoothstep};
use crate::glb::Material;
use crate::mesh::{Geometry, Xf};
use crate::noise::{Rng, fbm2, fbm3};

/// A mesh asset: one geometry per material (indices into
/// [`Scene::materials`]).
#[derive(Debug, Clone)]
pub struct Asset {
    pub name: &'static str,
    pub primitives: Vec<(Geometry, usize)>,
}

/// A placed copy of an asset.
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub asset: &'static str,
    pub position: Vec3,
    pub yaw: f64,
    pub scale: f64,
}

#[derive(Debug, Clone)]
pub struct Scene {
    pub materials: Vec<Material>,
    pub assets: Vec<Asset>,
    pub instances: Vec<Instance>,
}

const PAVING_RADIUS: f64 = 17.0;
const PATH_END: f64 = 40.0;
const PATH_WIDTH: f64 = 3.0;

// Material indices, in the order `materials()` makes them.
const GRASS: usize = 0;
const PAVING: usize = 1;
const STONE: usize = 2;
const GRAVEL: usize = 3;
const WATER: usize = 4;
const WOOD: usize = 5;
const IRON: usize = 6;
const BARK: usize = 7;
const LEAVES: usize = 8;
const LAMP_GLASS: usize = 9;
const PLASTER: [usize; 3] = [10, 11, 12];
const ROOF: usize = 13;

fn materials() -> Vec<Material> {
    let mut glass = Material::new("lamp_glass", [1.0, 0.92, 0.75, 1.0], 0.2);
    glass.emissive = [1.0, 0.78, 0.45];
    let mut iron = Material::new("iron", [0.06, 0.06, 0.07, 1.0], 0.45);
    iron.metallic = 0.8;
    let mut water = Material::new("water", [0.16, 0.36, 0.44, 1.0], 0.05);
    water.metallic = 0.1;
    vec![
        Material::new("grass", [1.0; 4], 0.95).textured("textures/grass.ktx2", None),
        Material::new("paving", [1.0; 4], 0.8).textured("textures/paving.ktx2", Some("textures/paving_normal.ktx2")),
        Material::new("stone", [1.0; 4], 0.75).textured("textures/stone.ktx2", None),
        Material::new("gravel", [1.0; 4], 0.95).textured("textures/gravel.ktx2", None),
        water,
        Material::new("wood", [0.5, 0.3, 0.16, 1.0], 0.7),
        iron,
        Material::new("bark", [1.0; 4], 0.9).textured("textures/bark.ktx2", Some("textures/bark_normal.ktx2")),
        Material::new("leaves", [1.0; 4], 0.8).textured("textures/leaves.ktx2", None),
        glass,
        Material::new("plaster_a", [1.0, 0.93, 0.8, 1.0], 0.9).textured("textures/plaster.ktx2", None),
        Material::new("plaster_b", [0.85, 0.9, 1.0, 1.0], 0.9).textured("textures/plaster.ktx2", None),
        Material::new("plaster_c", [1.0, 0.8, 0.72, 1.0], 0.9).textured("textures/plaster.ktx2", None),
        Material::new("roof", [1.0; 4], 0.8).textured("textures/roof.ktx2", None),
    ]
}

/// Ground height: flat where the plaza, paths and buildings are, gentle
/// hills towards the edge.
fn ground_height(x: f64, z: f64) -> f64 {
    let r = (x * x + z * z).sqrt();
    smoothstep(40.0, 50.0, r) * 3.0 * fbm2(x / 12.0, z / 12.0, 3, 5, None)
}

fn ground() -> Geometry {
    let (n, half) = (40, 50.0);
    Geometry::patch(n, n, |i, j| {
        let x = -half + 2.0 * half * f64::from(i) / f64::from(n);
        let z = -half + 2.0 * half * f64::from(j) / f64::from(n);
        ([x, ground_height(x, z), z], [x / 4.0, z / 4.0])
    })
}

/// A flat ring (or disc, `r0` = 0) at height `y`, facing up, with planar
/// UVs (metres / `tile`).
fn ring(r0: f64, r1: f64, y: f64, segments: u32, rings: u32, tile: f64) -> Geometry {
    Geometry::patch_towards(segments, rings, [0.0, 1.0, 0.0], |i, j| {
        let (s, c) = dmath::sin_cos(TAU * f64::from(i % segments) / f64::from(segments));
        let r = r0 + (r1 - r0) * f64::from(j) / f64::from(rings);
        let (x, z) = (r * c, r * s);
        ([x, y, z], [x / tile, z / tile])
    })
}

fn paving() -> Vec<(Geometry, usize)> {
    let slab = ring(0.0, PAVING_RADIUS - 0.3, 0.02, 72, 12, 4.0);
    let kerb = Geometry::lathe_sharp(
        &[[PAVING_RADIUS - 0.3, 0.02], [PAVING_RADIUS - 0.3, 0.1], [PAVING_RADIUS - 0.25, 0.14], [PAVING_RADIUS + 0.05, 0.14], [PAVING_RADIUS + 0.1, 0.1], [PAVING_RADIUS + 0.1, 0.0]]
            .iter()
            .rev()
            .copied()
            .collect::<Vec<_>>(),
        96,
        40.0,
        2.0,
    );
    vec![(slab, PAVING), (kerb, STONE)]
}

/// Four gravel paths from the kerb outwards.
fn paths() -> Geometry {
    let mut g = Geometry::default();
    let len = PATH_END - PAVING_RADIUS;
    let strip = Geometry::patch(2, 24, |i, j| {
        let x = -PATH_WIDTH / 2.0 + PATH_WIDTH * f64::from(i) / 2.0;
        let z = PAVING_RADIUS + len * f64::from(j) / 24.0;
        ([x, 0.015, z], [x / 3.0, z / 3.0])
    });
    for k in 0..4 {
        g.append(&strip, Xf::IDENTITY.yaw(f64::from(k) * PI / 2.0));
    }
    g
}

fn fountain() -> Vec<(Geometry, usize)> {
    // The basin: outer wall, rounded rim, inner wall, floor.
    let mut basin = vec![[3.3, 0.0], [3.3, 0.5]];
    for k in 0..=8 {
        let a = PI * f64::from(k) / 8.0;
        let (s, c) = dmath::sin_cos(a);
        basin.push([3.15 + 0.15 * c, 0.5 + 0.15 * s]);
    }
    basin.extend([[3.0, 0.15], [0.45, 0.15]]);
    // The column and bowl.
    let mut column = vec![[0.45, 0.15], [0.32, 0.6], [0.26, 1.1], [0.5, 1.2], [1.1, 1.3]];
    for k in 0..=6 {
        let (s, c) = dmath::sin_cos(PI * f64::from(k) / 6.0);
        column.push([1.05 + 0.06 * c, 1.3 + 0.06 * s]);
    }
    column.extend([[1.0, 1.3], [0.3, 1.38], [0.2, 1.9]]);
    // A ball on top.
    for k in 0..=8 {
        let a = -PI / 2.0 + PI * f64::from(k) / 8.0;
        let (s, c) = dmath::sin_cos(a);
        column.push([if k == 8 { 0.0 } else { 0.18 * c }, 2.08 + 0.18 * s]);
    }
    let mut stone = Geometry::lathe_sharp(&basin, 64, 12.0, 1.0);
    stone.append(&Geometry::lathe(&column[..5], 48, 4.0, 1.0), Xf::IDENTITY);
    stone.append(&Geometry::lathe(&column[4..column.len() - 9], 48, 4.0, 1.0), Xf::IDENTITY);
    stone.append(&Geometry::lathe(&column[column.len() - 9..], 48, 4.0, 1.0), Xf::IDENTITY);
    let mut water = ring(0.45, 3.0, 0.42, 64, 4, 2.0);
    water.append(&ring(0.3, 1.0, 1.34, 48, 2, 2.0), Xf::IDENTITY);
    vec![(stone, STONE), (water, WATER)]
}

/// A rounded rectangle (w along z, h along y) centred on (y, z), clockwise.
fn rounded_rect(centre: [f64; 2], w: f64, h: f64, r: f64, per_corner: u32) -> Vec<[f64; 2]> {
    let mut out = Vec::new();
    let corners = [(1.0, 1.0), (1.0, -1.0), (-1.0, -1.0), (-1.0, 1.0)];
    for (k, (sy, sz)) in corners.iter().enumerate() {
        let cy = centre[0] + sy * (h / 2.0 - r);
        let cz = centre[1] + sz * (w / 2.0 - r);
        for s in 0..=per_corner {
            let a = PI / 2.0 * (k as f64 + f64::from(s) / f64::from(per_corner));
            let (sn, c) = dmath::sin_cos(-a + PI / 2.0);
            out.push([cy + r * sn, cz + r * c]);
        }
    }
    out
}

fn bench() -> Vec<(Geometry, usize)> {
    let mut wood = Geometry::default();
    // Seat slats (front to back) and back slats, 2 m long.
    for (y, z) in [(0.45, 0.18), (0.45, 0.05), (0.45, -0.08), (0.62, -0.2), (0.78, -0.24)] {
        wood.append(&Geometry::extrude(&rounded_rect([y, z], 0.11, 0.035, 0.012, 3), -1.0, 1.0, 1.0), Xf::IDENTITY);
    }
    let mut iron = Geometry::default();
    for x in [-0.85, 0.85] {
        let front = crate::mesh::spline(
            &[[0.0, 0.24], [0.25, 0.22], [0.42, 0.15], [0.43, -0.05], [0.46, -0.2], [0.85, -0.27]],
            4,
        );
        let back = crate::mesh::spline(&[[0.0, -0.24], [0.2, -0.16], [0.43, -0.1]], 4);
        for path in [front, back] {
            let path: Vec<Vec3> = path.iter().map(|[y, z]| [x, *y, *z]).collect();
            iron.append(&Geometry::tube(&path, 0.025, 10, [1.0, 0.0, 0.0], 2.0), Xf::IDENTITY);
        }
    }
    vec![(wood, WOOD), (iron, IRON)]
}

fn tree() -> Vec<(Geometry, usize)> {
    let trunk_profile: Vec<[f64; 2]> =
        (0..=10).map(|k| f64::from(k) / 10.0).map(|t| [0.3 - 0.18 * t + 0.08 * dmath::sq(dmath::sq(1.0 - t)), 3.6 * t]).collect();
    let trunk = Geometry::lathe_with(&trunk_profile, 14, 2.0, 0.5, |theta, p| {
        let wobble = 1.0 + 0.12 * fbm3([theta * 1.5, p[1] * 1.2, 0.0], 2, 3);
        [p[0] * wobble, p[1], p[2] * wobble]
    });
    let mut canopy = Geometry::default();
    let blobs: [(Vec3, f64); 4] = [([0.0, 4.4, 0.0], 1.9), ([0.9, 3.9, 0.5], 1.3), ([-0.8, 4.0, -0.6], 1.4), ([0.1, 5.3, -0.2], 1.3)];
    for (k, (centre, radius)) in blobs.iter().enumerate() {
        let profile: Vec<[f64; 2]> = (0..=14)
            .map(|j| {
                let (s, c) = dmath::sin_cos(-PI / 2.0 + PI * f64::from(j) / 14.0);
                [if c.abs() < 1e-12 { 0.0 } else { c }, s]
            })
            .collect();
        let blob = Geometry::lathe_with(&profile, 24, 3.0, 1.0, |_, p| {
            dmath::scale(p, radius * (0.85 + 0.3 * fbm3(dmath::scale(p, 2.2), 3, 70 + k as u32)))
        });
        canopy.append(&blob, Xf::at(centre[0], centre[1], centre[2]));
    }
    vec![(trunk, BARK), (canopy, LEAVES)]
}

fn lamp() -> Vec<(Geometry, usize)> {
    // A cast-iron post: a moulded foot, a slender shaft, a collar, and a
    // glass globe on top.
    let mut post = vec![[0.0, 0.0], [0.17, 0.0]];
    for k in 0..=8 {
        let t = f64::from(k) / 8.0;
        let (s, c) = dmath::sin_cos(PI / 2.0 * t);
        post.push([0.17 - 0.1 * s + 0.02 * c, 0.02 + 0.45 * t]);
    }
    for k in 1..=6 {
        let t = f64::from(k) / 6.0;
        post.push([0.065 - 0.02 * t, 0.47 + 2.5 * t]);
    }
    for k in 0..=6 {
        let (s, c) = dmath::sin_cos(PI * f64::from(k) / 6.0 - PI / 2.0);
        post.push([0.05 + 0.05 * c, 3.03 + 0.05 * s]);
    }
    post.push([0.0, 3.08]);
    let iron = Geometry::lathe_sharp(&post, 16, 1.0, 1.0);
    let globe: Vec<[f64; 2]> = (0..=12)
        .map(|k| {
            let (s, c) = dmath::sin_cos(-PI / 2.0 + PI * f64::from(k) / 12.0);
            [if k == 0 || k == 12 { 0.0 } else { 0.22 * c }, 3.3 + 0.22 * s]
        })
        .collect();
    let glass = Geometry::lathe(&globe, 20, 1.0, 1.0);
    vec![(iron, IRON), (glass, LAMP_GLASS)]
}

/// An arched window frame on a wall facing +Z at z = 0: jambs and sill as
/// boxes, the arch as a curved strip; the window itself is painted in the
/// plaster texture (1.0 m wide, sill at 1.0 m, arch springing at 2.3 m).
fn window_frame(x: f64, y: f64) -> Geometry {
    let (depth, bar) = (0.06, 0.08);
    let mut g = Geometry::cuboid([x - 0.6, y - 0.06, 0.0], [x + 0.6, y, 0.14], 1.0, 1.0);
    // The jambs reach 2 cm into the arch without sharing its vertices: each
    // piece is its own small component, which the coarsest level prunes.
    for side in [-1.0, 1.0] {
        let cx = x + side * (0.5 + bar / 2.0);
        g.append(&Geometry::cuboid([cx - bar / 2.0, y, 0.0], [cx + bar / 2.0, y + 1.32, depth], 1.0, 1.0), Xf::IDENTITY);
    }
    let arc = |r: f64, z: f64| -> Vec<Vec3> {
        (0..=12)
            .map(|k| {
                let (s, c) = dmath::sin_cos(PI * f64::from(k) / 12.0);
                [x + r * c, y + 1.3 + r * s, z]
            })
            .collect()
    };
    let (inner, outer) = (0.5, 0.5 + bar);
    g.append(&Geometry::strip(&arc(inner, depth), &arc(outer, depth), [0.0, 0.0, 1.0], 1.0), Xf::IDENTITY);
    g.append(&Geometry::strip(&arc(outer, 0.0), &arc(outer, depth), [0.0, 1.0, 0.0], 1.0), Xf::IDENTITY);
    g.append(&Geometry::strip(&arc(inner, 0.0), &arc(inner, depth), [0.0, -1.0, 0.0], 1.0), Xf::IDENTITY);
    g
}

/// A facade facing +Z at z = 0, `bays` × `floors` tiles of 3 m × 3.5 m,
/// centred on x = 0: the wall (one plaster tile per bay and floor) and the
/// window frames.
fn facade(bays: u32, floors: u32) -> (Geometry, Geometry) {
    let w = 3.0 * f64::from(bays);
    let wall = Geometry::patch_towards(bays, floors, [0.0, 0.0, 1.0], |i, j| {
        ([-w / 2.0 + 3.0 * f64::from(i), 3.5 * f64::from(j), 0.0], [f64::from(i), f64::from(floors) - f64::from(j)])
    });
    let mut frames = Geometry::default();
    for f in 0..floors {
        for b in 0..bays {
            frames.append(&window_frame(-w / 2.0 + 3.0 * (f64::from(b) + 0.5), 3.5 * f64::from(f) + 1.0), Xf::IDENTITY);
        }
    }
    (wall, frames)
}

/// Building designs: 0 with a dome, 1 with a pyramid roof, 2 with a barrel
/// vault. The front (+Z) faces the plaza.
fn building(kind: usize) -> Vec<(Geometry, usize)> {
    let (front, side, floors) = [(4, 4, 3), (3, 3, 4), (5, 3, 2)][kind];
    let (w, d) = (3.0 * f64::from(front), 3.0 * f64::from(side));
    let h = 3.5 * f64::from(floors);
    let (mut walls, mut stone) = (Geometry::default(), Geometry::default());
    let sides = [(front, 0.0, [0.0, 0.0, d / 2.0]), (side, PI / 2.0, [w / 2.0, 0.0, 0.0]), (front, PI, [0.0, 0.0, -d / 2.0]), (side, 1.5 * PI, [-w / 2.0, 0.0, 0.0])];
    for (bays, yaw, at) in sides {
        let (wall, frames) = facade(bays, floors);
        let xf = Xf::at(at[0], at[1], at[2]).yaw(yaw);
        walls.append(&wall, xf);
        stone.append(&frames, xf);
    }
    let top = h + 0.4;
    stone.append(&Geometry::cuboid([-w / 2.0 - 0.15, h, -d / 2.0 - 0.15], [w / 2.0 + 0.15, top, d / 2.0 + 0.15], 100.0, 1.0), Xf::IDENTITY);
    stone.append(&Geometry::cuboid([-w / 2.0 - 0.08, 0.0, -d / 2.0 - 0.08], [w / 2.0 + 0.08, 0.5, d / 2.0 + 0.08], 100.0, 1.0), Xf::IDENTITY);
    let roof = match kind {
        0 => {
            let r = w.min(d) * 0.3;
            let mut dome = vec![[r, top], [r, top + 1.2]];
            for k in 1..=10 {
                let (s, c) = dmath::sin_cos(PI / 2.0 * f64::from(k) / 10.0);
                dome.push([if k == 10 { 0.0 } else { r * c }, top + 1.2 + r * s]);
            }
            Geometry::lathe_sharp(&dome, 40, 8.0, 0.5)
        }
        1 => {
            let r = (w / 2.0 + 0.15) * std::f64::consts::SQRT_2;
            let pyramid = Geometry::lathe_sharp(&[[r, top], [0.0, top + 0.45 * w]], 4, 4.0, 0.4);
            Geometry::default().merged(&pyramid, Xf::IDENTITY.yaw(PI / 4.0))
        }
        _ => {
            let r = d / 2.0 + 0.15;
            let vault: Vec<[f64; 2]> = (0..=16)
                .map(|k| {
                    let (s, c) = dmath::sin_cos(PI * f64::from(k) / 16.0);
                    [top + r * 0.6 * s, r * c]
                })
                .collect();
            Geometry::extrude(&vault, -w / 2.0 - 0.15, w / 2.0 + 0.15, 0.4)
        }
    };
    vec![(walls, PLASTER[kind]), (stone, STONE), (roof, ROOF)]
}

/// Yaw that turns an asset's front (+Z) towards the centre from angle `a`
/// (radians from +X towards +Z) on a circle.
fn facing_centre(a: f64) -> f64 {
    -a - PI / 2.0
}

fn on_circle(r: f64, a: f64) -> Vec3 {
    let (s, c) = dmath::sin_cos(a);
    [r * c, 0.0, r * s]
}

pub const BUILDINGS: [&str; 3] = ["building_a", "building_b", "building_c"];

pub fn scene() -> Scene {
    let assets = vec![
        Asset { name: "ground", primitives: vec![(ground(), GRASS)] },
        Asset { name: "paving", primitives: paving() },
        Asset { name: "paths", primitives: vec![(paths(), GRAVEL)] },
        Asset { name: "fountain", primitives: fountain() },
        Asset { name: "bench", primitives: bench() },
        Asset { name: "tree", primitives: tree() },
        Asset { name: "lamp", primitives: lamp() },
        Asset { name: BUILDINGS[0], primitives: building(0) },
        Asset { name: BUILDINGS[1], primitives: building(1) },
        Asset { name: BUILDINGS[2], primitives: building(2) },
    ];
    let mut instances = Vec::new();
    let mut place = |asset: &'static str, position: Vec3, yaw: f64, scale: f64| {
        let n = instances.iter().filter(|i: &&Instance| i.asset == asset).count();
        instances.push(Instance { name: format!("{asset}_{n:02}"), asset, position, yaw, scale });
    };
    for single in ["ground", "paving", "paths", "fountain"] {
        place(single, [0.0; 3], 0.0, 1.0);
    }
    let mut rng = Rng::new(2024);
    for k in 0..8 {
        // Between the paths: benches facing the fountain, trees behind them.
        let a = TAU * (f64::from(k) + 0.5) / 8.0;
        place("bench", on_circle(8.5, a), facing_centre(a), 1.0);
        place("tree", on_circle(13.0, a), rng.range(0.0, TAU), rng.range(0.85, 1.15));
        let b = a + rng.range(-0.12, 0.12);
        place("tree", on_circle(22.0 + rng.range(-1.5, 1.5), b), rng.range(0.0, TAU), rng.range(0.9, 1.3));
        place(BUILDINGS[k as usize % 3], on_circle(32.0, a), facing_centre(a), 1.0);
    }
    for k in 0..4 {
        // Lamps on both sides of each path's mouth.
        for side in [-1.0, 1.0] {
            let a = TAU * f64::from(k) / 4.0 + side * 0.11;
            place("lamp", on_circle(PAVING_RADIUS - 1.0, a), 0.0, 1.0);
        }
    }
    Scene { materials: materials(), assets, instances }
}
