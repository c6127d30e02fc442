//! Impostors: a small software rasterizer that paints an asset's full
//! mesh, seen from the front (+Z) with orthographic projection and simple
//! baked lighting, into an RGBA texture with alpha. The client draws it on a
//! camera-facing quad far away.

use crate::dmath;
use crate::mesh::Geometry;
use crate::texture::{Image, Space, decode_srgb, encode_srgb};

/// A mesh to paint and how it looks: the material's base colour factor
/// (linear RGBA) and base colour texture.
#[derive(Debug, Clone, Copy)]
pub struct Shaded<'a> {
    pub geometry: &'a Geometry,
    pub factor: [f32; 4],
    pub texture: Option<&'a Image>,
}

/// The world rectangle painted: x from `origin[0]` rightwards, y from
/// `origin[1]` upwards, `size` metres.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub origin: [f64; 2],
    pub size: [f64; 2],
}

const LIGHT: [f64; 3] = [0.36, 0.72, 0.6];
const SUPERSAMPLE: u32 = 2;

fn sample(img: &Image, uv: [f64; 2]) -> [f64; 3] {
    let x = ((uv[0].rem_euclid(1.0) * f64::from(img.width)) as u32).min(img.width - 1);
    let y = ((uv[1].rem_euclid(1.0) * f64::from(img.height)) as u32).min(img.height - 1);
    let c = img.get(x, y);
    [decode_srgb(c[0]), decode_srgb(c[1]), decode_srgb(c[2])]
}

/// Paints `parts` into a `width`×`height` image of `view`.
pub fn render(parts: &[Shaded<'_>], view: View, width: u32, height: u32) -> Image {
    let (w, h) = (width * SUPERSAMPLE, height * SUPERSAMPLE);
    let mut img = Image::new(w, h);
    let mut depth = vec![f64::NEG_INFINITY; (w * h) as usize];
    let light = dmath::normalize(LIGHT);
    let to_px = |p: [f32; 3]| {
        [
            (f64::from(p[0]) - view.origin[0]) / view.size[0] * f64::from(w),
            (view.origin[1] + view.size[1] - f64::from(p[1])) / view.size[1] * f64::from(h),
            f64::from(p[2]),
        ]
    };
    for part in parts {
        let g = part.geometry;
        for tri in g.indices.chunks_exact(3) {
            let v = [0, 1, 2].map(|k| &g.vertices[tri[k] as usize]);
            let p = v.map(|v| to_px(v.pos));
            let area = (p[1][0] - p[0][0]) * (p[2][1] - p[0][1]) - (p[2][0] - p[0][0]) * (p[1][1] - p[0][1]);
            if area.abs() < 1e-12 {
                continue;
            }
            let x0 = p.iter().map(|q| q[0]).fold(f64::INFINITY, f64::min).floor().max(0.0) as u32;
            let x1 = p.iter().map(|q| q[0]).fold(f64::NEG_INFINITY, f64::max).ceil().min(f64::from(w)) as u32;
            let y0 = p.iter().map(|q| q[1]).fold(f64::INFINITY, f64::min).floor().max(0.0) as u32;
            let y1 = p.iter().map(|q| q[1]).fold(f64::NEG_INFINITY, f64::max).ceil().min(f64::from(h)) as u32;
            for y in y0..y1 {
                for x in x0..x1 {
                    let (px, py) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
                    let edge = |a: [f64; 3], b: [f64; 3]| ((b[0] - a[0]) * (py - a[1]) - (px - a[0]) * (b[1] - a[1])) / area;
                    let bary = [edge(p[1], p[2]), edge(p[2], p[0]), edge(p[0], p[1])];
                    if bary.iter().any(|&b| b < 0.0) {
                        continue;
                    }
                    let z = bary[0] * p[0][2] + bary[1] * p[1][2] + bary[2] * p[2][2];
                    let i = (y * w + x) as usize;
                    if z <= depth[i] {
                        continue;
                    }
                    depth[i] = z;
                    let lerp3 = |f: &dyn Fn(usize) -> f64| bary[0] * f(0) + bary[1] * f(1) + bary[2] * f(2);
                    let n = dmath::normalize([0, 1, 2].map(|k| lerp3(&|j| f64::from(v[j].normal[k]))));
                    let uv = [lerp3(&|j| f64::from(v[j].uv[0])), lerp3(&|j| f64::from(v[j].uv[1]))];
                    let albedo = part.texture.map_or([1.0; 3], |t| sample(t, uv));
                    let lit = 0.35 + 0.75 * dmath::dot(n, light).max(0.0);
                    let c = [0, 1, 2].map(|k| encode_srgb(albedo[k] * f64::from(part.factor[k]) * lit));
                    img.set(x, y, [c[0], c[1], c[2], 255]);
                }
            }
        }
    }
    let mut out = img.half(Space::Srgb);
    dilate(&mut out, 4);
    out
}

/// Gives transparent texels the colour of an opaque neighbour (`passes`
/// texels deep), so filtering at the silhouette doesn't pull in black.
fn dilate(img: &mut Image, passes: u32) {
    for _ in 0..passes {
        let src = img.clone();
        for y in 0..img.height {
            for x in 0..img.width {
                let c = src.get(x, y);
                if c[3] != 0 || c[..3] != [0, 0, 0] {
                    continue;
                }
                let neighbours = [(-1i64, 0i64), (1, 0), (0, -1), (0, 1)];
                let found = neighbours.iter().find_map(|(dx, dy)| {
                    let (nx, ny) = (i64::from(x) + dx, i64::from(y) + dy);
                    if nx < 0 || ny < 0 || nx >= i64::from(img.width) || ny >= i64::from(img.height) {
                        return None;
                    }
                    let c = src.get(nx as u32, ny as u32);
                    (c[3] != 0 || c[..3] != [0, 0, 0]).then_some(c)
                });
                if let Some(c) = found {
                    img.set(x, y, [c[0], c[1], c[2], 0]);
                }
            }
        }
    }
}

/// The camera-facing quad the impostor texture goes on: `view`'s rectangle
/// in the XY plane, facing +Z, UV (0,0) at the top left.
pub fn quad(view: View) -> Geometry {
    let [x0, y0] = view.origin;
    let [x1, y1] = [x0 + view.size[0], y0 + view.size[1]];
    let vertex = |x: f64, y: f64, u: f32, v: f32| crate::mesh::Vertex {
        pos: [x as f32, y as f32, 0.0],
        normal: [0.0, 0.0, 1.0],
        uv: [u, v],
    };
    Geometry {
        vertices: vec![vertex(x0, y1, 0.0, 0.0), vertex(x0, y0, 0.0, 1.0), vertex(x1, y0, 1.0, 1.0), vertex(x1, y1, 1.0, 0.0)],
        indices: vec![0, 1, 2, 0, 2, 3],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paints_a_sphere_as_a_disc() {
        let sphere = Geometry::ellipsoid([1.0, 1.0, 1.0], 32, 16);
        let view = View { origin: [-1.0, -1.0], size: [2.0, 2.0] };
        let img = render(&[Shaded { geometry: &sphere, factor: [1.0; 4], texture: None }], view, 32, 32);
        assert_eq!(img.get(16, 16)[3], 255, "centre covered");
        assert_eq!(img.get(0, 0)[3], 0, "corner empty");
        // Lit from the upper right: brighter there than lower left.
        assert!(img.get(22, 10)[0] > img.get(10, 22)[0]);
    }
}
