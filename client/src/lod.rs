//! Level of detail and distance culling for avatars and props.
//!
//! Every frame, [`LodSystems::Select`] picks each [`Lod`] entity's level
//! from its distance to the main camera × the LOD bias in force (the
//! preset's times the governor's), with the hysteresis of
//! [`plaza_shared::lod::LodPolicy`]. Past the preset's view distance the
//! level is `hidden` (distance culling), unless `--culling off`. Then the
//! full-detail budget: at most the preset's number of avatars stay `full`,
//! the nearest win, and avatars already full count as 10% nearer so two at
//! nearly the same distance don't trade places every frame.
//! [`LodSystems::Apply`] then swaps meshes only for entities whose level
//! changed.
//!
//! `--lod off` (`ENABLE_LOD=false`) pins everything at full detail (still
//! distance-culled when culling is on).
//!
//! Avatars use their [`AvatarParts`]. Props are different: nothing budgets
//! them and they don't move, so each prop level is its own entity
//! ([`PropLevel`]) with Bevy's `VisibilityRange`, and Bevy picks and
//! cross-fades (dithers) between levels where their ranges overlap by the
//! hysteresis band, instead of popping. [`LodSystems::Select`] only
//! rewrites those ranges when the bias, the view distance or a switch
//! changes.

use crate::avatars::{AvatarAssets, AvatarParts};
use crate::quality::{ActiveQuality, MainCamera};
use bevy::camera::visibility::VisibilityRange;
use bevy::prelude::*;
use plaza_shared::lod::{LodLevel, LodPolicy};

/// An entity's current level and its distance to the camera.
#[derive(Component, Debug, Clone, Copy, PartialEq)]
pub struct Lod {
    pub level: LodLevel,
    pub distance: f32,
    /// Was full after last frame's budget (gets the 10% edge).
    incumbent: bool,
}

impl Lod {
    pub fn new(level: LodLevel) -> Lod {
        Lod { level, distance: 0.0, incumbent: false }
    }
}

/// Full-detail avatars keep their place against newcomers up to this much
/// farther away.
const INCUMBENT_EDGE: f32 = 0.9;

/// Marks avatars: the full-detail budget applies to them.
#[derive(Component, Debug, Clone, Copy, Default)]
pub struct LodAvatar;

/// One level of a prop, drawn within its `VisibilityRange`.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropLevel(pub LodLevel);

/// Where each level of a prop is drawn, `(near, far, fade)` in metres:
/// levels overlap by `fade` on either side of each boundary, where Bevy
/// cross-fades them. `None`: the level is not drawn at all.
pub fn prop_ranges(config: &LodConfig, bias: f32, view: f32) -> [Option<(f32, f32, f32)>; 4] {
    let far_end = if config.distance_culling { view } else { f32::MAX };
    if !config.enabled {
        return [Some((0.0, far_end, 0.0)), None, None, None];
    }
    let b = config.policy.boundaries(bias, view);
    let h = config.policy.hysteresis.clamp(0.0, 0.5);
    std::array::from_fn(|i| {
        let near = if i == 0 { 0.0 } else { b[i - 1] };
        let far = if i == 3 { far_end } else { b[i] };
        (far > near).then_some((near, far, h))
    })
}

fn range_for(near: f32, far: f32, h: f32) -> VisibilityRange {
    let band = |d: f32| if d == f32::MAX || d == 0.0 { d..d } else { d * (1.0 - h)..d * (1.0 + h) };
    VisibilityRange { start_margin: band(near), end_margin: band(far), use_aabb: false }
}

/// The switches and the policy.
#[derive(Resource, Debug, Clone, Copy)]
pub struct LodConfig {
    /// `--lod`: off pins full detail.
    pub enabled: bool,
    /// `--culling`: off never hides by distance.
    pub distance_culling: bool,
    pub policy: LodPolicy,
}

/// How many avatars are at each level (full … hidden), for the HUD and
/// reports.
#[derive(Resource, Debug, Default, Clone, Copy, PartialEq)]
pub struct LodCounts {
    pub avatars: [u32; 5],
    /// Avatars the budget held back from full this frame.
    pub demoted: u32,
}

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum LodSystems {
    Select,
    Apply,
}

pub struct LodPlugin {
    pub enabled: bool,
    pub distance_culling: bool,
}

impl Plugin for LodPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(LodConfig { enabled: self.enabled, distance_culling: self.distance_culling, policy: LodPolicy::default() })
            .init_resource::<LodCounts>()
            .configure_sets(PostUpdate, (LodSystems::Select, LodSystems::Apply).chain().before(bevy::camera::visibility::VisibilitySystems::CheckVisibility).before(TransformSystems::Propagate))
            .add_systems(PostUpdate, ((select_levels, update_prop_ranges).in_set(LodSystems::Select), apply_avatar_levels.in_set(LodSystems::Apply)));
    }
}

/// Where the main camera is (its local transform: cameras are not parented
/// here, and this runs before transform propagation).
fn camera_position(camera: &Query<&Transform, With<MainCamera>>) -> Option<Vec3> {
    camera.iter().next().map(|t| t.translation)
}

/// Entities are positioned by their own transform (avatars are
/// roots), so no propagated transform is needed.
/// Per thread during selection: full-detail candidates (distance key,
/// entity) and avatars per level.
type PerThread = bevy::utils::Parallel<(Vec<(f32, Entity)>, [u32; 5])>;

#[allow(clippy::too_many_arguments)]
fn select_levels(
    config: Res<LodConfig>,
    quality: Res<ActiveQuality>,
    camera: Query<&Transform, With<MainCamera>>,
    mut things: Query<(Entity, &Transform, &mut Lod, Has<LodAvatar>)>,
    mut counts: ResMut<LodCounts>,
    mut full: Local<Vec<(f32, Entity)>>,
    mut locals: Local<PerThread>,
) {
    profile_span!("lod_select");
    let Some(eye) = camera_position(&camera) else { return };
    let view = quality.settings.view_distance_m;
    let policy = config.policy;
    let bounds = policy.boundaries(quality.lod_bias(), view);
    let (enabled, culling) = (config.enabled, config.distance_culling);
    let shared = &*locals;
    // One thread-local lookup per batch, not per entity.
    things.par_iter_mut().for_each_init(|| shared.borrow_local_mut(), |local, (entity, transform, mut lod, avatar)| {
        let distance = transform.translation.distance(eye);
        let mut level = if enabled {
            policy.select_within(&bounds, distance, Some(lod.level))
        } else if distance >= view {
            LodLevel::Hidden
        } else {
            LodLevel::Full
        };
        if !culling && level == LodLevel::Hidden {
            level = if enabled { LodLevel::Impostor } else { LodLevel::Full };
        }
        let incumbent = lod.level == LodLevel::Full;
        // Only touch what changed, so Apply's change filter stays narrow.
        if lod.level != level {
            lod.level = level;
        }
        let quiet = lod.bypass_change_detection();
        quiet.distance = distance;
        quiet.incumbent = incumbent;
        if avatar {
            if level == LodLevel::Full {
                let key = if incumbent { distance * INCUMBENT_EDGE } else { distance };
                local.0.push((key, entity));
            }
            local.1[level as usize] += 1;
        }
    });

    // The budget: the nearest avatars keep full detail.
    let budget = quality.settings.full_detail_avatars as usize;
    full.clear();
    let mut tally = LodCounts::default();
    for local in locals.iter_mut() {
        full.append(&mut local.0);
        for (sum, n) in tally.avatars.iter_mut().zip(std::mem::take(&mut local.1)) {
            *sum += n;
        }
    }
    if enabled && full.len() > budget {
        full.select_nth_unstable_by(budget, |a, b| a.0.total_cmp(&b.0));
        for &(_, entity) in &full[budget..] {
            if let Ok((_, _, mut lod, _)) = things.get_mut(entity) {
                lod.level = LodLevel::Reduced;
                tally.demoted += 1;
            }
        }
        tally.avatars[LodLevel::Full as usize] -= tally.demoted;
        tally.avatars[LodLevel::Reduced as usize] += tally.demoted;
    }
    counts.set_if_neq(tally);
}

/// Rewrites prop levels' visibility ranges when the bias, view distance or
/// a switch changed, and sets up new ones.
fn update_prop_ranges(
    config: Res<LodConfig>,
    quality: Res<ActiveQuality>,
    mut levels: Query<(&PropLevel, &mut VisibilityRange, &mut Visibility)>,
    added: Query<(), Added<PropLevel>>,
) {
    if !config.is_changed() && !quality.is_changed() && added.is_empty() {
        return;
    }
    profile_span!("lod_prop_ranges");
    let ranges = prop_ranges(&config, quality.lod_bias(), quality.settings.view_distance_m);
    for (level, mut range, mut visibility) in &mut levels {
        match ranges[level.0 as usize] {
            Some((near, far, h)) => {
                range.set_if_neq(range_for(near, far, h));
                visibility.set_if_neq(Visibility::Inherited);
            }
            None => {
                visibility.set_if_neq(Visibility::Hidden);
            }
        }
    }
}

/// The parts' components, each its own query: a part may lack one (a
/// head without its own `Visibility` yet, say) without the others failing.
type PartMeshes<'w, 's> = Query<'w, 's, &'static mut Mesh3d, Without<AvatarParts>>;
type PartMaterials<'w, 's> = Query<'w, 's, &'static mut MeshMaterial3d<StandardMaterial>, Without<AvatarParts>>;
type PartVisibility<'w, 's> = Query<'w, 's, &'static mut Visibility, Without<AvatarParts>>;
type PartTransforms<'w, 's> = Query<'w, 's, &'static mut Transform, Without<AvatarParts>>;

fn apply_avatar_levels(
    mut commands: Commands,
    assets: Option<Res<AvatarAssets>>,
    mut avatars: Query<(&Lod, &AvatarParts, &mut Visibility, &crate::avatars::Avatar), Changed<Lod>>,
    mut meshes: PartMeshes,
    mut materials: PartMaterials,
    mut visibility: PartVisibility,
    mut transforms: PartTransforms,
) {
    let Some(assets) = assets else { return };
    profile_span!("lod_apply");
    for (lod, parts, mut root_visibility, avatar) in &mut avatars {
        root_visibility.set_if_neq(if lod.level == LodLevel::Hidden { Visibility::Hidden } else { Visibility::Inherited });
        if lod.level == LodLevel::Hidden {
            continue;
        }
        let look = assets.look(avatar.index);
        let card = lod.level == LodLevel::Impostor;
        // Each part: its mesh at this level (none: hidden), material and place.
        let wanted = [
            (parts.body, look.body(lod.level), look.body_material(lod.level), look.body_at),
            (parts.head, look.head(lod.level), &look.head_material, look.head_at),
            (parts.hands[0], look.hand(0, lod.level), &look.hands_material, look.hands_at[0]),
            (parts.hands[1], look.hand(1, lod.level), &look.hands_material, look.hands_at[1]),
        ];
        for (i, (part, mesh, material, at)) in wanted.into_iter().enumerate() {
            if let Some(mesh) = mesh {
                match meshes.get_mut(part) {
                    Ok(mut m) if m.0 != *mesh => m.0 = mesh.clone(),
                    Ok(_) => {}
                    Err(_) => {
                        commands.entity(part).insert(Mesh3d(mesh.clone()));
                    }
                }
                match materials.get_mut(part) {
                    Ok(mut m) if m.0 != *material => m.0 = material.clone(),
                    Ok(_) => {}
                    Err(_) => {
                        commands.entity(part).insert(MeshMaterial3d(material.clone()));
                    }
                }
            }
            if let Ok(mut t) = transforms.get_mut(part) {
                // The card's turn is the billboard's business.
                let rotation = if i == 0 && card { t.rotation } else { at.rotation };
                let place = Transform { rotation, ..at };
                if *t != place {
                    *t = place;
                }
            }
            let shown = if mesh.is_some() { Visibility::Inherited } else { Visibility::Hidden };
            match visibility.get_mut(part) {
                Ok(mut v) => {
                    v.set_if_neq(shown);
                }
                Err(_) => {
                    commands.entity(part).insert(shown);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avatars::{AvatarsPlugin, spawn_avatar};
    use plaza_shared::quality::{PresetChoice, QualityPreset};

    fn app(preset: QualityPreset, enabled: bool, culling: bool) -> App {
        let mut app = crate::test_support::app();
        app.insert_resource(ActiveQuality::new(PresetChoice::Fixed(preset)))
            .add_plugins((AvatarsPlugin { walkers: 0 }, LodPlugin { enabled, distance_culling: culling }));
        app.world_mut().spawn((MainCamera, Transform::default()));
        app.update();
        app
    }

    /// Avatars in a line along -z, at these distances from the camera.
    fn line(app: &mut App, distances: &[f32]) -> Vec<Entity> {
        let assets = app.world().resource::<AvatarAssets>().clone();
        let mut commands_queue = bevy::ecs::world::CommandQueue::default();
        let mut commands = Commands::new(&mut commands_queue, app.world());
        let entities = distances.iter().enumerate().map(|(i, d)| spawn_avatar(&mut commands, &assets, i as u32, "a", Transform::from_xyz(0.0, 0.0, -d))).collect();
        commands_queue.apply(app.world_mut());
        app.update();
        entities
    }

    fn levels(app: &App, entities: &[Entity]) -> Vec<LodLevel> {
        entities.iter().map(|e| app.world().get::<Lod>(*e).unwrap().level).collect()
    }

    fn move_to(app: &mut App, entity: Entity, distance: f32) {
        app.world_mut().get_mut::<Transform>(entity).unwrap().translation.z = -distance;
        app.update();
    }

    #[test]
    fn levels_follow_distance_and_the_preset_bias() {
        use LodLevel::*;
        let mut high = app(QualityPreset::High, true, true);
        let e = line(&mut high, &[5.0, 15.0, 40.0, 120.0, 250.0]);
        assert_eq!(levels(&high, &e), vec![Full, Reduced, Low, Impostor, Hidden]);
        // Low's bias is 0.4 and its view distance 60 m.
        let mut low = app(QualityPreset::Low, true, true);
        let e = line(&mut low, &[3.0, 8.0, 15.0, 40.0, 70.0]);
        assert_eq!(levels(&low, &e), vec![Full, Reduced, Low, Impostor, Hidden]);
    }

    #[test]
    fn hysteresis_holds_a_level_at_a_boundary() {
        let mut app = app(QualityPreset::High, true, true);
        let e = line(&mut app, &[9.0]);
        assert_eq!(levels(&app, &e), vec![LodLevel::Full]);
        move_to(&mut app, e[0], 10.5);
        assert_eq!(levels(&app, &e), vec![LodLevel::Full], "held within 10% past the boundary");
        move_to(&mut app, e[0], 11.5);
        assert_eq!(levels(&app, &e), vec![LodLevel::Reduced]);
        move_to(&mut app, e[0], 9.5);
        assert_eq!(levels(&app, &e), vec![LodLevel::Reduced], "held on the way back too");
    }

    #[test]
    fn the_budget_keeps_the_nearest_at_full() {
        // Low allows 4 full-detail avatars; ten stand within full range.
        let mut app = app(QualityPreset::Low, true, true);
        let distances: Vec<f32> = (0..10).map(|i| 0.3 + i as f32 * 0.35).collect();
        let e = line(&mut app, &distances);
        let l = levels(&app, &e);
        assert_eq!(l[..4], [LodLevel::Full; 4]);
        assert!(l[4..].iter().all(|l| *l == LodLevel::Reduced), "{l:?}");
        let counts = *app.world().resource::<LodCounts>();
        assert_eq!((counts.avatars[0], counts.avatars[1], counts.demoted), (4, 6, 6));
    }

    #[test]
    fn the_budget_does_not_flicker_between_two_at_the_same_distance() {
        let mut app = app(QualityPreset::Low, true, true);
        // Four near ones fill the budget; two more stand almost level at the edge.
        let e = line(&mut app, &[0.5, 0.6, 0.7, 2.0, 2.02, 3.0]);
        let first = levels(&app, &e);
        for i in 0..20 {
            // Jitter the two contenders past each other every frame.
            let (a, b) = if i % 2 == 0 { (2.03, 2.0) } else { (2.0, 2.03) };
            app.world_mut().get_mut::<Transform>(e[3]).unwrap().translation.z = -a;
            app.world_mut().get_mut::<Transform>(e[4]).unwrap().translation.z = -b;
            app.update();
            assert_eq!(levels(&app, &e), first, "frame {i}");
        }
    }

    #[test]
    fn lod_off_pins_full_and_culling_off_never_hides() {
        let mut off = app(QualityPreset::High, false, true);
        let e = line(&mut off, &[5.0, 40.0, 150.0, 250.0]);
        assert_eq!(levels(&off, &e), vec![LodLevel::Full, LodLevel::Full, LodLevel::Full, LodLevel::Hidden], "past the view distance it is still culled");
        let mut no_culling = app(QualityPreset::High, true, false);
        let e = line(&mut no_culling, &[250.0, 900.0]);
        assert_eq!(levels(&no_culling, &e), vec![LodLevel::Impostor, LodLevel::Impostor]);
    }

    #[test]
    fn levels_swap_meshes_and_hide() {
        let mut app = app(QualityPreset::High, true, true);
        let e = line(&mut app, &[5.0])[0];
        let assets = app.world().resource::<AvatarAssets>().clone();
        let look = assets.look(0);
        let parts = *app.world().get::<AvatarParts>(e).unwrap();
        let body = |app: &App| app.world().get::<Mesh3d>(parts.body).unwrap().0.clone();
        assert_eq!(body(&app), look.body[0]);
        move_to(&mut app, e, 120.0);
        assert_eq!(body(&app), look.body[3], "impostor card");
        assert_eq!(app.world().get::<Visibility>(parts.head), Some(&Visibility::Hidden), "no head on a card");
        move_to(&mut app, e, 300.0);
        assert_eq!(app.world().get::<Visibility>(e), Some(&Visibility::Hidden));
        move_to(&mut app, e, 3.0);
        assert_eq!(body(&app), look.body[0]);
        assert_eq!(app.world().get::<Visibility>(e), Some(&Visibility::Inherited));
        assert_eq!(app.world().get::<Visibility>(parts.head), Some(&Visibility::Inherited));
    }

    #[test]
    fn prop_levels_tile_the_distance_with_fade_bands_and_follow_the_switches() {
        let mut config = LodConfig { enabled: true, distance_culling: true, policy: LodPolicy::default() };
        let r = prop_ranges(&config, 1.0, 200.0);
        assert_eq!(r, [Some((0.0, 10.0, 0.1)), Some((10.0, 25.0, 0.1)), Some((25.0, 50.0, 0.1)), Some((50.0, 200.0, 0.1))]);
        let full = range_for(0.0, 10.0, 0.1);
        let reduced = range_for(10.0, 25.0, 0.1);
        assert!(full.is_visible_at_all(9.5) && reduced.is_visible_at_all(9.5), "both drawn in the fade band");
        assert!(!full.is_visible_at_all(11.5) && !reduced.is_visible_at_all(8.5));
        config.enabled = false;
        assert_eq!(prop_ranges(&config, 1.0, 200.0), [Some((0.0, 200.0, 0.0)), None, None, None], "LOD off: full only");
        config.distance_culling = false;
        assert_eq!(prop_ranges(&config, 1.0, 200.0)[0], Some((0.0, f32::MAX, 0.0)), "culling off: no far end");
        let mut app = app(QualityPreset::High, true, true);
        let level = app.world_mut().spawn((PropLevel(LodLevel::Low), VisibilityRange::abrupt(0.0, 0.0), Visibility::default())).id();
        app.update();
        assert!(app.world().get::<VisibilityRange>(level) == Some(&range_for(25.0, 50.0, 0.1)), "low's range, from the preset");
        app.world_mut().resource_mut::<LodConfig>().enabled = false;
        app.update();
        assert_eq!(app.world().get::<Visibility>(level), Some(&Visibility::Hidden));
    }

    #[test]
    fn a_preset_switch_changes_levels_at_once() {
        let mut app = app(QualityPreset::Ultra, true, true);
        let e = line(&mut app, &[12.0, 80.0]);
        assert_eq!(levels(&app, &e), vec![LodLevel::Full, LodLevel::Impostor], "ultra's bias is 1.5");
        app.world_mut().resource_mut::<ActiveQuality>().choose(PresetChoice::Fixed(QualityPreset::Low));
        app.update();
        assert_eq!(levels(&app, &e), vec![LodLevel::Low, LodLevel::Hidden], "low: bias 0.4, view 60 m");
    }
}
