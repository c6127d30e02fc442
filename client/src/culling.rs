//! Culling. Bevy's frustum culling is the base; `--culling off` opts every
//! mesh out of it (with Bevy's own `NoFrustumCulling` marker) so its worth can
//! be measured on the same scene.

use bevy::camera::visibility::NoFrustumCulling;
use bevy::prelude::*;

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum CullingSystems {
    Configure,
}

pub struct CullingPlugin {
    pub frustum: bool,
}

impl Plugin for CullingPlugin {
    fn build(&self, app: &mut App) {
        if !self.frustum {
            app.add_systems(PostUpdate, opt_out_of_frustum_culling.in_set(CullingSystems::Configure).before(bevy::camera::visibility::VisibilitySystems::CheckVisibility));
        }
    }
}

fn opt_out_of_frustum_culling(mut commands: Commands, meshes: Query<Entity, (Added<Mesh3d>, Without<NoFrustumCulling>)>) {
    for entity in &meshes {
        commands.entity(entity).insert(NoFrustumCulling);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(frustum: bool) -> usize {
        let mut app = App::new();
        app.add_plugins(MinimalPlugins).add_plugins(CullingPlugin { frustum });
        app.world_mut().spawn(Mesh3d::default());
        app.world_mut().spawn(Mesh3d::default());
        app.update();
        app.world_mut().query::<&NoFrustumCulling>().iter(app.world()).count()
    }

    #[test]
    fn culling_off_opts_every_mesh_out() {
        assert_eq!(marked(false), 2);
        assert_eq!(marked(true), 0);
    }
}
