//! Culling. Bevy's frustum culling is the base; `--culling off`
//! (`ENABLE_FRUSTUM_CULLING=false`, or the settings panel at run time) opts
//! every mesh out of it with Bevy's own `NoFrustumCulling` marker, and turns
//! off distance culling past the preset's view distance (done by the LOD
//! plugin's `hidden` level), so the worth of both can be measured on the
//! same scene.

use crate::lod::LodConfig;
use bevy::camera::visibility::NoFrustumCulling;
use bevy::prelude::*;

#[derive(Resource, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CullingConfig {
    pub enabled: bool,
}

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum CullingSystems {
    Configure,
}

pub struct CullingPlugin {
    pub enabled: bool,
}

impl Plugin for CullingPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(CullingConfig { enabled: self.enabled }).add_systems(
            PostUpdate,
            (switch_frustum_culling, mark_new_meshes)
                .chain()
                .in_set(CullingSystems::Configure)
                .before(bevy::camera::visibility::VisibilitySystems::CheckVisibility),
        );
    }
}

/// A switch at run time: every mesh in or out of frustum culling, and the
/// LOD plugin's distance culling with it.
fn switch_frustum_culling(
    config: Res<CullingConfig>,
    lod: Option<ResMut<LodConfig>>,
    mut commands: Commands,
    marked: Query<Entity, (With<Mesh3d>, With<NoFrustumCulling>)>,
    unmarked: Query<Entity, (With<Mesh3d>, Without<NoFrustumCulling>)>,
) {
    if !config.is_changed() || config.is_added() {
        return;
    }
    profile_span!("culling_switch");
    if let Some(mut lod) = lod {
        lod.distance_culling = config.enabled;
    }
    if config.enabled {
        for entity in &marked {
            commands.entity(entity).remove::<NoFrustumCulling>();
        }
    } else {
        for entity in &unmarked {
            commands.entity(entity).insert(NoFrustumCulling);
        }
    }
}

fn mark_new_meshes(config: Res<CullingConfig>, mut commands: Commands, meshes: Query<Entity, (Added<Mesh3d>, Without<NoFrustumCulling>)>) {
    if config.enabled {
        return;
    }
    profile_span!("culling_mark");
    for entity in &meshes {
        commands.entity(entity).insert(NoFrustumCulling);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(app: &mut App) -> usize {
        app.world_mut().query::<&NoFrustumCulling>().iter(app.world()).count()
    }

    fn app(enabled: bool) -> App {
        let mut app = App::new();
        app.add_plugins(MinimalPlugins).add_plugins(CullingPlugin { enabled });
        app.world_mut().spawn(Mesh3d::default());
        app.world_mut().spawn(Mesh3d::default());
        app.update();
        app
    }

    #[test]
    fn culling_off_opts_every_mesh_out_and_switches_at_run_time() {
        assert_eq!(marked(&mut app(true)), 0);
        let mut app = app(false);
        assert_eq!(marked(&mut app), 2);
        app.world_mut().resource_mut::<CullingConfig>().enabled = true;
        app.update();
        assert_eq!(marked(&mut app), 0, "switched on: back in");
        app.world_mut().resource_mut::<CullingConfig>().enabled = false;
        app.world_mut().spawn(Mesh3d::default());
        app.update();
        assert_eq!(marked(&mut app), 3, "switched off: all out, new ones too");
    }
}
