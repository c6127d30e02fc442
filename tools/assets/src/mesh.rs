//! Triangle meshes and the procedural builders the content is made from.
//!
//! Every builder makes a *patch*: a grid of vertices whose normals are smooth
//! within the patch. Hard edges come from separate patches (a box is six).
//! Triangles are counter-clockwise seen from outside (glTF's front faces).

use std::collections::BTreeMap;

use crate::dmath::{self, Vec3};

#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C)]
pub struct Vertex {
    pub pos: [f32; 3],
    pub normal: [f32; 3],
    pub uv: [f32; 2],
}

impl meshopt::DecodePosition for Vertex {
    fn decode_position(&self) -> [f32; 3] {
        self.pos
    }
}

/// An indexed triangle list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Geometry {
    pub vertices: Vec<Vertex>,
    pub indices: Vec<u32>,
}

/// Scale, then rotate about +Y (radians, counter-clockwise seen from above),
/// then translate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Xf {
    pub scale: Vec3,
    pub yaw: f64,
    pub translate: Vec3,
}

impl Xf {
    pub const IDENTITY: Xf = Xf { scale: [1.0; 3], yaw: 0.0, translate: [0.0; 3] };

    pub fn at(x: f64, y: f64, z: f64) -> Xf {
        Xf { translate: [x, y, z], ..Xf::IDENTITY }
    }

    pub fn yaw(mut self, yaw: f64) -> Xf {
        self.yaw = yaw;
        self
    }

    pub fn scaled(mut self, s: Vec3) -> Xf {
        self.scale = s;
        self
    }

    fn rotate(&self, v: Vec3) -> Vec3 {
        let (s, c) = dmath::sin_cos(self.yaw);
        [c * v[0] + s * v[2], v[1], -s * v[0] + c * v[2]]
    }

    pub fn point(&self, p: Vec3) -> Vec3 {
        let scaled = [p[0] * self.scale[0], p[1] * self.scale[1], p[2] * self.scale[2]];
        dmath::add(self.rotate(scaled), self.translate)
    }

    /// Normals go through the inverse transpose: divide by the scale.
    pub fn normal(&self, n: Vec3) -> Vec3 {
        dmath::normalize(self.rotate([n[0] / self.scale[0], n[1] / self.scale[1], n[2] / self.scale[2]]))
    }
}

fn to_f32(v: Vec3) -> [f32; 3] {
    v.map(|c| c as f32)
}

fn to_f64(v: [f32; 3]) -> Vec3 {
    v.map(f64::from)
}

impl Geometry {
    pub fn triangles(&self) -> usize {
        self.indices.len() / 3
    }

    /// Appends `other` moved by `xf`.
    pub fn append(&mut self, other: &Geometry, xf: Xf) {
        let base = self.vertices.len() as u32;
        self.vertices.extend(other.vertices.iter().map(|v| Vertex {
            pos: to_f32(xf.point(to_f64(v.pos))),
            normal: to_f32(xf.normal(to_f64(v.normal))),
            uv: v.uv,
        }));
        self.indices.extend(other.indices.iter().map(|i| i + base));
    }

    pub fn merged(mut self, other: &Geometry, xf: Xf) -> Geometry {
        self.append(other, xf);
        self
    }

    /// Axis-aligned bounds of the positions: (min, max).
    pub fn bounds(&self) -> ([f32; 3], [f32; 3]) {
        let mut lo = [f32::INFINITY; 3];
        let mut hi = [f32::NEG_INFINITY; 3];
        for v in &self.vertices {
            for k in 0..3 {
                lo[k] = lo[k].min(v.pos[k]);
                hi[k] = hi[k].max(v.pos[k]);
            }
        }
        (lo, hi)
    }

    /// A grid patch of `nu`×`nv` quads; `f(i, j)` gives the position and UV
    /// of grid point (i, j), 0 <= i <= nu, 0 <= j <= nv. The front face is on
    /// the side of ∂P/∂j × ∂P/∂i. Normals are smooth over the patch (vertices
    /// at the same position share one, so wrapped seams and poles are smooth
    /// too); zero-area triangles (at poles) are left out.
    pub fn patch(nu: u32, nv: u32, f: impl Fn(u32, u32) -> (Vec3, [f64; 2])) -> Geometry {
        let mut points = Vec::with_capacity(((nu + 1) * (nv + 1)) as usize);
        for j in 0..=nv {
            for i in 0..=nu {
                let (p, uv) = f(i, j);
                // + 0.0 turns -0.0 into 0.0: equal positions, equal bits.
                points.push((p.map(|c| c + 0.0), uv));
            }
        }
        let at = |i: u32, j: u32| j * (nu + 1) + i;
        let mut indices = Vec::with_capacity((nu * nv * 6) as usize);
        for j in 0..nv {
            for i in 0..nu {
                let (p00, p10, p01, p11) = (at(i, j), at(i + 1, j), at(i, j + 1), at(i + 1, j + 1));
                for tri in [[p00, p01, p11], [p00, p11, p10]] {
                    let [a, b, c] = tri.map(|k| points[k as usize].0);
                    if a != b && b != c && a != c {
                        indices.extend(tri);
                    }
                }
            }
        }
        let vertices = points
            .iter()
            .map(|(p, uv)| Vertex { pos: to_f32(*p), normal: [0.0; 3], uv: [uv[0] as f32, uv[1] as f32] })
            .collect();
        let mut g = Geometry { vertices, indices };
        g.smooth_normals();
        g.weld();
        g
    }

    /// [`Geometry::patch`], flipped if needed so the average normal points
    /// along `towards`.
    pub fn patch_towards(nu: u32, nv: u32, towards: Vec3, f: impl Fn(u32, u32) -> (Vec3, [f64; 2])) -> Geometry {
        let g = Geometry::patch(nu, nv, &f);
        let facing: f64 = g.vertices.iter().map(|v| dmath::dot(to_f64(v.normal), towards)).sum();
        if facing >= 0.0 { g } else { Geometry::patch(nu, nv, |i, j| f(i, nv - j)) }
    }

    /// A strip between two polylines of equal length, facing `towards` on
    /// average. UV: u along the lines (metres × `uv_scale`), v across.
    pub fn strip(a: &[Vec3], b: &[Vec3], towards: Vec3, uv_scale: f64) -> Geometry {
        let mut arc = vec![0.0];
        for w in a.windows(2) {
            arc.push(arc.last().copied().unwrap_or(0.0) + dmath::length(dmath::sub(w[1], w[0])));
        }
        let width = dmath::length(dmath::sub(b[0], a[0]));
        Geometry::patch_towards(a.len() as u32 - 1, 1, towards, |i, j| {
            let p = if j == 0 { a[i as usize] } else { b[i as usize] };
            (p, [arc[i as usize] * uv_scale, f64::from(j) * width * uv_scale])
        })
    }

    /// A closed profile in the YZ plane extruded along X from `x0` to `x1`,
    /// with flat end caps. UV in metres × `uv_scale`.
    pub fn extrude(profile: &[[f64; 2]], x0: f64, x1: f64, uv_scale: f64) -> Geometry {
        let n = profile.len();
        let area: f64 = (0..n).map(|k| profile[k][0] * profile[(k + 1) % n][1] - profile[(k + 1) % n][0] * profile[k][1]).sum();
        // Clockwise in (y, z) puts the sides' front outside (see `patch`).
        let ring: Vec<[f64; 2]> = if area > 0.0 { profile.iter().rev().copied().collect() } else { profile.to_vec() };
        let mut arc = vec![0.0];
        for k in 0..n {
            let (p, q) = (ring[k], ring[(k + 1) % n]);
            arc.push(arc[k] + ((q[0] - p[0]) * (q[0] - p[0]) + (q[1] - p[1]) * (q[1] - p[1])).sqrt());
        }
        let mut g = Geometry::patch(n as u32, 1, |i, j| {
            let [y, z] = ring[i as usize % n];
            let x = if j == 0 { x0 } else { x1 };
            ([x, y, z], [arc[i as usize] * uv_scale, x * uv_scale])
        });
        let centre = ring.iter().fold([0.0, 0.0], |c, p| [c[0] + p[0] / n as f64, c[1] + p[1] / n as f64]);
        for (x, dir) in [(x0, -1.0), (x1, 1.0)] {
            let cap = Geometry::patch_towards(n as u32, 1, [dir, 0.0, 0.0], |i, j| {
                let [y, z] = if j == 0 { centre } else { ring[i as usize % n] };
                ([x, y, z], [z * uv_scale, y * uv_scale])
            });
            g.append(&cap, Xf::IDENTITY);
        }
        g
    }

    /// A tube of `radius` with `sides` sides swept along `path` (open ends).
    /// The path must stay in a plane that `side` (a unit vector) is normal to.
    pub fn tube(path: &[Vec3], radius: f64, sides: u32, side: Vec3, uv_scale: f64) -> Geometry {
        let mut arc = vec![0.0];
        for w in path.windows(2) {
            arc.push(arc.last().copied().unwrap_or(0.0) + dmath::length(dmath::sub(w[1], w[0])));
        }
        let last = path.len() - 1;
        Geometry::patch(sides, last as u32, |i, j| {
            let j = j as usize;
            let t = dmath::normalize(dmath::sub(path[(j + 1).min(last)], path[j.saturating_sub(1)]));
            let other = dmath::cross(t, side);
            // Turning from `side` away from `other` puts the front outside.
            let (s, c) = dmath::sin_cos(-dmath::TAU * f64::from(i % sides) / f64::from(sides));
            let offset = dmath::add(dmath::scale(side, c * radius), dmath::scale(other, s * radius));
            (dmath::add(path[j], offset), [f64::from(i) / f64::from(sides), arc[j] * uv_scale])
        })
    }

    /// Merges vertices that are identical in every attribute.
    fn weld(&mut self) {
        let mut seen: BTreeMap<[u32; 8], u32> = BTreeMap::new();
        let mut kept = Vec::with_capacity(self.vertices.len());
        let mut remap = Vec::with_capacity(self.vertices.len());
        for v in &self.vertices {
            let key = [v.pos[0], v.pos[1], v.pos[2], v.normal[0], v.normal[1], v.normal[2], v.uv[0], v.uv[1]].map(f32::to_bits);
            let index = *seen.entry(key).or_insert_with(|| {
                kept.push(*v);
                kept.len() as u32 - 1
            });
            remap.push(index);
        }
        for i in &mut self.indices {
            *i = remap[*i as usize];
        }
        self.vertices = kept;
        self.drop_unused();
    }

    /// Area-weighted vertex normals, shared by vertices at the same position.
    fn smooth_normals(&mut self) {
        let mut by_pos: BTreeMap<[u32; 3], Vec3> = BTreeMap::new();
        let key = |v: &Vertex| v.pos.map(f32::to_bits);
        for tri in self.indices.chunks_exact(3) {
            let [a, b, c] = [0, 1, 2].map(|k| to_f64(self.vertices[tri[k] as usize].pos));
            let n = dmath::cross(dmath::sub(b, a), dmath::sub(c, a));
            for &k in tri {
                let e = by_pos.entry(key(&self.vertices[k as usize])).or_insert([0.0; 3]);
                *e = dmath::add(*e, n);
            }
        }
        for v in &mut self.vertices {
            v.normal = to_f32(dmath::normalize(by_pos.get(&key(v)).copied().unwrap_or([0.0, 1.0, 0.0])));
        }
    }

    /// Removes vertices no triangle uses (pole rows, for example).
    fn drop_unused(&mut self) {
        let mut remap = vec![u32::MAX; self.vertices.len()];
        let mut kept = Vec::with_capacity(self.vertices.len());
        for i in &mut self.indices {
            if remap[*i as usize] == u32::MAX {
                remap[*i as usize] = kept.len() as u32;
                kept.push(self.vertices[*i as usize]);
            }
            *i = remap[*i as usize];
        }
        self.vertices = kept;
    }

    /// A surface of revolution about +Y. `profile` is a list of (radius, y)
    /// points walked with the outside on the right (bottom to top for a
    /// wall); the surface is smooth along it. UV: u goes `u_repeat` times
    /// around, v is arc length along the profile times `v_scale`.
    /// `radial(θ, point)` may reshape each point (noise, ellipses).
    pub fn lathe_with(
        profile: &[[f64; 2]],
        segments: u32,
        u_repeat: f64,
        v_scale: f64,
        radial: impl Fn(f64, Vec3) -> Vec3,
    ) -> Geometry {
        let mut arc = vec![0.0];
        for w in profile.windows(2) {
            let d = (dmath::sq(w[1][0] - w[0][0]) + dmath::sq(w[1][1] - w[0][1])).sqrt();
            arc.push(arc.last().copied().unwrap_or(0.0) + d);
        }
        let nv = profile.len() as u32 - 1;
        Geometry::patch(segments, nv, |i, j| {
            let theta = dmath::TAU * f64::from(i % segments) / f64::from(segments);
            let [r, y] = profile[j as usize];
            let (s, c) = dmath::sin_cos(theta);
            // θ turns from +X towards +Z, which puts ∂P/∂j × ∂P/∂i outside.
            let p = radial(theta, [r * c, y, r * s]);
            (p, [u_repeat * f64::from(i) / f64::from(segments), arc[j as usize] * v_scale])
        })
    }

    pub fn lathe(profile: &[[f64; 2]], segments: u32, u_repeat: f64, v_scale: f64) -> Geometry {
        Geometry::lathe_with(profile, segments, u_repeat, v_scale, |_, p| p)
    }

    /// Like [`Geometry::lathe`], but with a hard edge wherever the profile
    /// turns by more than 40°.
    pub fn lathe_sharp(profile: &[[f64; 2]], segments: u32, u_repeat: f64, v_scale: f64) -> Geometry {
        let mut out = Geometry::default();
        let mut start = 0;
        for k in 1..profile.len() {
            let last = k == profile.len() - 1;
            let turns = !last && {
                let d0 = [profile[k][0] - profile[k - 1][0], profile[k][1] - profile[k - 1][1]];
                let d1 = [profile[k + 1][0] - profile[k][0], profile[k + 1][1] - profile[k][1]];
                let cos = (d0[0] * d1[0] + d0[1] * d1[1])
                    / ((dmath::sq(d0[0]) + dmath::sq(d0[1])).sqrt() * (dmath::sq(d1[0]) + dmath::sq(d1[1])).sqrt());
                cos < 0.766
            };
            if turns || last {
                out.append(&Geometry::lathe(&profile[start..=k], segments, u_repeat, v_scale), Xf::IDENTITY);
                start = k;
            }
        }
        out
    }

    /// An ellipsoid centred on the origin with the given radii.
    pub fn ellipsoid(radii: Vec3, segments: u32, rings: u32) -> Geometry {
        let profile: Vec<[f64; 2]> = (0..=rings)
            .map(|j| {
                let a = -dmath::PI / 2.0 + dmath::PI * f64::from(j) / f64::from(rings);
                let (s, c) = dmath::sin_cos(a);
                // Exactly zero at the poles, so they close.
                [if c.abs() < 1e-12 { 0.0 } else { c }, s]
            })
            .collect();
        let g = Geometry::lathe(&profile, segments, 1.0, 1.0 / dmath::PI);
        Geometry::default().merged(&g, Xf::IDENTITY.scaled(radii))
    }

    /// A flat rectangle facing `normal` (a unit axis vector), `size` = (width
    /// along u, height along v), subdivided `nu`×`nv`, centred on `centre`.
    /// UVs are in metres times `uv_scale`.
    pub fn quad(centre: Vec3, normal: Vec3, up: Vec3, size: [f64; 2], n: [u32; 2], uv_scale: f64) -> Geometry {
        // u = up × n and v = u × n = -up: then ∂P/∂j × ∂P/∂i = v × u = n,
        // and v (image rows) runs down the face, so textures stand upright.
        let u_axis = dmath::normalize(dmath::cross(up, normal));
        let v_axis = dmath::cross(u_axis, normal);
        Geometry::patch(n[0], n[1], |i, j| {
            let s = size[0] * (f64::from(i) / f64::from(n[0]) - 0.5);
            let t = size[1] * (f64::from(j) / f64::from(n[1]) - 0.5);
            let p = dmath::add(centre, dmath::add(dmath::scale(u_axis, s), dmath::scale(v_axis, t)));
            (p, [(s + size[0] * 0.5) * uv_scale, (t + size[1] * 0.5) * uv_scale])
        })
    }

    /// An axis-aligned box from `lo` to `hi`, each face subdivided into
    /// cells of about `cell` metres, UVs in metres times `uv_scale`.
    pub fn cuboid(lo: Vec3, hi: Vec3, cell: f64, uv_scale: f64) -> Geometry {
        let c = dmath::scale(dmath::add(lo, hi), 0.5);
        let d = dmath::sub(hi, lo);
        let n = |len: f64| ((len / cell).ceil() as u32).max(1);
        let mut g = Geometry::default();
        let faces: [(Vec3, Vec3, [f64; 2], f64); 6] = [
            ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [d[2], d[1]], d[0]),
            ([-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [d[2], d[1]], d[0]),
            ([0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [d[0], d[1]], d[2]),
            ([0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [d[0], d[1]], d[2]),
            ([0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [d[0], d[2]], d[1]),
            ([0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [d[0], d[2]], d[1]),
        ];
        for (normal, up, size, depth) in faces {
            let centre = dmath::add(c, dmath::scale(normal, depth * 0.5));
            g.append(&Geometry::quad(centre, normal, up, size, [n(size[0]), n(size[1])], uv_scale), Xf::IDENTITY);
        }
        g
    }
}

/// A Catmull-Rom spline through `keys`, `per` samples per span, keys
/// included.
pub fn spline(keys: &[[f64; 2]], per: u32) -> Vec<[f64; 2]> {
    let mut out = Vec::new();
    for i in 0..keys.len() - 1 {
        let p0 = keys[i.saturating_sub(1)];
        let (p1, p2) = (keys[i], keys[i + 1]);
        let p3 = keys[(i + 2).min(keys.len() - 1)];
        for s in 0..per {
            let t = f64::from(s) / f64::from(per);
            let (t2, t3) = (t * t, t * t * t);
            let c = |k: usize| {
                0.5 * (2.0 * p1[k]
                    + (-p0[k] + p2[k]) * t
                    + (2.0 * p0[k] - 5.0 * p1[k] + 4.0 * p2[k] - p3[k]) * t2
                    + (-p0[k] + 3.0 * p1[k] - 3.0 * p2[k] + p3[k]) * t3)
            };
            out.push([c(0), c(1)]);
        }
    }
    out.extend(keys.last());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signed volume by the divergence theorem: positive when every
    /// triangle faces out.
    fn volume(g: &Geometry) -> f64 {
        g.indices
            .chunks_exact(3)
            .map(|t| {
                let [a, b, c] = [0, 1, 2].map(|k| to_f64(g.vertices[t[k] as usize].pos));
                dmath::dot(a, dmath::cross(b, c)) / 6.0
            })
            .sum()
    }

    #[test]
    fn closed_shapes_face_outwards() {
        let b = Geometry::cuboid([0.0; 3], [1.0, 2.0, 3.0], 0.5, 1.0);
        assert!((volume(&b) - 6.0).abs() < 1e-4, "{}", volume(&b));
        let s = Geometry::ellipsoid([1.0; 3], 32, 16);
        assert!((volume(&s) - 4.0 / 3.0 * dmath::PI).abs() < 0.1, "{}", volume(&s));
        let cyl = Geometry::lathe_sharp(&[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], 48, 1.0, 1.0);
        assert!((volume(&cyl) - dmath::PI).abs() < 0.02, "{}", volume(&cyl));
        // Normals point away from the centre of a sphere.
        assert!(s.vertices.iter().all(|v| dmath::dot(to_f64(v.pos), to_f64(v.normal)) > 0.9));
    }

    #[test]
    fn transforms_move_points_and_normals() {
        let xf = Xf::at(1.0, 2.0, 3.0).yaw(dmath::PI / 2.0).scaled([2.0, 1.0, 1.0]);
        let p = xf.point([1.0, 0.0, 0.0]);
        assert!((p[0] - 1.0).abs() < 1e-12 && (p[2] - 1.0).abs() < 1e-12, "{p:?}");
        let n = xf.normal([1.0, 0.0, 0.0]);
        assert!((n[2] + 1.0).abs() < 1e-12, "{n:?}");
    }
}
