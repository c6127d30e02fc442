//! LOD chains with meshoptimizer: each level simplified from the full mesh
//! to a share of its triangles within an error bound, then reordered for the
//! vertex cache and vertex fetch.

use meshopt::SimplifyOptions;

use crate::mesh::Geometry;

/// Levels per chain: `_lod0` (full) to `_lod3`.
pub const LEVELS: usize = 4;

/// Share of the full triangle count each level aims for.
pub const TARGET_RATIO: [f64; LEVELS] = [1.0, 0.5, 0.25, 0.1];

/// The most each level may deviate from the full mesh, as a fraction of the
/// asset's size (meshoptimizer's error: distance moved, roughly). A level
/// stops simplifying at its bound even when it has not reached its target.
pub const MAX_ERROR: [f32; LEVELS] = [0.0, 0.01, 0.025, 0.06];

/// One level: a geometry per primitive (same order as the input) and the
/// error the simplifier reported, relative to the asset's size.
#[derive(Debug, Clone)]
pub struct Level {
    pub primitives: Vec<Geometry>,
    pub error: f32,
}

impl Level {
    pub fn triangles(&self) -> usize {
        self.primitives.iter().map(Geometry::triangles).sum()
    }
}

/// Builds the chain for an asset made of `primitives` (one per material).
/// Each primitive aims at its share of the level's target; when some cannot
/// get there within the error bound (a 4-triangle roof), the largest one
/// makes up the difference if it can. Every level, the full one included,
/// is optimized for the vertex cache and vertex fetch.
pub fn chain(primitives: &[Geometry]) -> Vec<Level> {
    let scale = primitives
        .iter()
        .map(|g| {
            let (lo, hi) = g.bounds();
            (0..3).map(|k| hi[k] - lo[k]).fold(0.0f32, f32::max)
        })
        .fold(0.0f32, f32::max)
        .max(1e-6);
    let full: usize = primitives.iter().map(Geometry::triangles).sum();
    (0..LEVELS)
        .map(|level| {
            if level == 0 {
                let primitives = primitives.iter().map(|g| optimized(&g.indices, g)).collect();
                return Level { primitives, error: 0.0 };
            }
            let goal = (full as f64 * TARGET_RATIO[level]).floor() as usize;
            let target = |g: &Geometry| ((g.triangles() as f64 * TARGET_RATIO[level]).round() as usize).max(1);
            let mut results: Vec<(Vec<u32>, f32)> =
                primitives.iter().map(|g| simplify(g, level, target(g), MAX_ERROR[level] * scale)).collect();
            let total: usize = results.iter().map(|(i, _)| i.len() / 3).sum();
            if total > goal
                && let Some(big) = (0..primitives.len()).max_by_key(|&k| (primitives[k].triangles(), usize::MAX - k))
            {
                let excess = total - goal;
                let have = results[big].0.len() / 3;
                if have > excess + 1 {
                    results[big] = simplify(&primitives[big], level, have - excess, MAX_ERROR[level] * scale);
                }
            }
            let error = results.iter().map(|(_, e)| e / scale).fold(0.0f32, f32::max);
            let primitives = results.iter().zip(primitives).map(|((indices, _), g)| optimized(indices, g)).collect();
            Level { primitives, error }
        })
        .collect()
}

/// Simplifies `g` towards `target` triangles within `max_error` (absolute);
/// the indices and the error reached.
fn simplify(g: &Geometry, level: usize, target: usize, max_error: f32) -> (Vec<u32>, f32) {
    // Small loose parts (window frames) may go from level 2 on; the coarsest
    // level may also collapse across UV seams and hard edges.
    let options = match level {
        1 => SimplifyOptions::ErrorAbsolute,
        2 => SimplifyOptions::ErrorAbsolute | SimplifyOptions::Prune,
        _ => SimplifyOptions::ErrorAbsolute | SimplifyOptions::Prune | SimplifyOptions::Permissive,
    };
    let mut error = 0.0f32;
    let indices = meshopt::simplify_decoder(&g.indices, &g.vertices, target * 3, max_error, options, Some(&mut error));
    (indices, error)
}

/// A compact copy of `g` holding only the triangles in `indices`, in vertex
/// cache order with vertices in first-use order.
fn optimized(indices: &[u32], g: &Geometry) -> Geometry {
    let mut indices = meshopt::optimize_vertex_cache(indices, g.vertices.len());
    let vertices = meshopt::optimize_vertex_fetch(&mut indices, &g.vertices);
    Geometry { vertices, indices }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_smooth_mesh_reaches_every_target() {
        let sphere = Geometry::ellipsoid([1.0, 1.0, 1.0], 48, 24);
        let levels = chain(std::slice::from_ref(&sphere));
        let tris: Vec<usize> = levels.iter().map(Level::triangles).collect();
        assert_eq!(tris[0], sphere.triangles());
        for l in 1..LEVELS {
            assert!(tris[l] < tris[l - 1], "{tris:?}");
            assert!(levels[l].error <= MAX_ERROR[l] + 1e-6, "{l}: {}", levels[l].error);
        }
        assert!(tris[3] * 10 <= tris[0] + 20, "{tris:?}");
    }
}
