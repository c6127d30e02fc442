//! What the last frame drew, counted exactly: meshes the main camera saw
//! (after frustum and distance culling), the others, their triangles, and
//! frame timing. The HUD shows it; the capture plugin averages it into the
//! frame report.

use crate::lod::{LodCounts, PropLevel};
use crate::quality::{EyeCamera, PresetCameras};
use bevy::camera::visibility::VisibleEntities;
use bevy::mesh::{Indices, PrimitiveTopology};
use bevy::prelude::*;
use std::any::TypeId;

#[derive(Resource, Debug, Default, Clone, Copy, PartialEq)]
pub struct FrameStats {
    /// Mesh entities the main camera drew.
    pub visible: u64,
    /// Mesh entities it didn't (outside the frustum, hidden, too far).
    pub culled: u64,
    pub triangles: u64,
    /// Draw calls of the main pass: one per visible mesh instance (shadow
    /// passes are not counted).
    pub draw_calls: u64,
    /// Avatars at full, reduced, low, impostor, hidden.
    pub avatars_by_lod: [u32; 5],
    /// Visible prop meshes per level (`_lod0` … `_lod3`); a prop in a
    /// cross-fade band counts at both levels.
    pub props_by_lod: [u32; 4],
    /// This frame's wall-clock time (measured here, not from `Time`, which
    /// a scenario's fixed time step replaces), and a smoothed one for display.
    pub frame_ms: f32,
    pub smoothed_ms: f32,
}

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum StatsSystems {
    Count,
}

pub struct StatsPlugin;

impl Plugin for StatsPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<FrameStats>().add_systems(Last, count.in_set(StatsSystems::Count));
    }
}

pub fn triangles_of(mesh: &Mesh) -> u64 {
    let primitives = match mesh.indices() {
        Some(Indices::U16(i)) => i.len(),
        Some(Indices::U32(i)) => i.len(),
        None => mesh.count_vertices(),
    } as u64;
    match mesh.primitive_topology() {
        PrimitiveTopology::TriangleList => primitives / 3,
        PrimitiveTopology::TriangleStrip => primitives.saturating_sub(2),
        _ => 0,
    }
}

fn count(
    mut last: Local<Option<std::time::Instant>>,
    meshes: Res<Assets<Mesh>>,
    all_meshes: Query<&Mesh3d, Without<crate::render_scale::ScaledSceneQuad>>,
    cameras: Query<(&VisibleEntities, Option<&EyeCamera>), PresetCameras>,
    prop_levels: Query<&PropLevel>,
    lod: Option<Res<LodCounts>>,
    mut stats: ResMut<FrameStats>,
) {
    profile_span!("frame_stats");
    let mut s = FrameStats::default();
    // In VR, what the left eye drew (the right sees about the same; the
    // window's mirror may be off); otherwise the main camera's.
    let left_eye = cameras.iter().find(|(_, eye)| *eye == Some(&EyeCamera(0))).map(|(v, _)| v);
    let main = cameras.iter().find(|(_, eye)| eye.is_none()).map(|(v, _)| v);
    if let Some(visible) = left_eye.or(main) {
        for entity in visible.iter(TypeId::of::<Mesh3d>()) {
            if let Ok(mesh) = all_meshes.get(*entity) {
                s.visible += 1;
                s.draw_calls += 1;
                s.triangles += meshes.get(&mesh.0).map(triangles_of).unwrap_or(0);
                if let Ok(level) = prop_levels.get(*entity)
                    && let Some(n) = s.props_by_lod.get_mut(level.0 as usize)
                {
                    *n += 1;
                }
            }
        }
    }
    s.culled = (all_meshes.iter().len() as u64).saturating_sub(s.visible);
    s.avatars_by_lod = lod.map(|l| l.avatars).unwrap_or_default();
    let now = std::time::Instant::now();
    s.frame_ms = last.map(|l| (now - l).as_secs_f32() * 1000.0).unwrap_or(0.0);
    *last = Some(now);
    s.smoothed_ms = if stats.smoothed_ms > 0.0 { stats.smoothed_ms * 0.95 + s.frame_ms * 0.05 } else { s.frame_ms };
    *stats = s;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triangles_count_indices_or_vertices() {
        let cube = Mesh::from(Cuboid::new(1.0, 1.0, 1.0));
        assert_eq!(triangles_of(&cube), 12);
        let plane = Plane3d::default().mesh().size(1.0, 1.0).build();
        assert_eq!(triangles_of(&plane), 2);
    }
}
