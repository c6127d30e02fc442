//! The client's per-frame systems at scale: interpolation, LOD selection
//! (with distance culling and the full-detail budget) and LOD application
//! for 10,000 remote avatars, every one of them moving. Criterion times
//! whole `App::update` calls of a schedule that holds only these systems
//! (plus Bevy's minimal plugins), so the number is what they cost a frame.
//!
//! Goal (the client issue): ≤ 0.5 ms a frame.

use bevy::prelude::*;
use criterion::{Criterion, criterion_group, criterion_main};
use plaza_client::avatars::{AvatarAssets, AvatarsPlugin, spawn_avatar};
use plaza_client::lod::LodPlugin;
use plaza_client::network::{NetworkMode, NetworkPlugin};
use plaza_client::quality::{ActiveQuality, MainCamera};
use plaza_client::remote::{RemoteAvatar, RemotePlugin, Snapshot, SnapshotBuffer, TickClock};
use plaza_shared::quality::{PresetChoice, QualityPreset};

fn app(avatars: u32, lod: bool) -> App {
    let mut app = App::new();
    app.add_plugins((MinimalPlugins, AssetPlugin::default()))
        .init_asset::<Mesh>()
        .init_asset::<StandardMaterial>()
        .insert_resource(ActiveQuality::new(PresetChoice::Fixed(QualityPreset::High)))
        .add_plugins((
            AvatarsPlugin { walkers: 0 },
            LodPlugin { enabled: lod, distance_culling: true },
            NetworkPlugin { mode: NetworkMode::Offline, room: "bench".into(), name: "bench".into() },
            RemotePlugin,
        ));
    app.world_mut().spawn((MainCamera, Transform::from_xyz(0.0, 2.0, 0.0)));
    app.update(); // assets
    let assets = app.world().resource::<AvatarAssets>().clone();
    let mut queue = bevy::ecs::world::CommandQueue::default();
    let mut commands = Commands::new(&mut queue, app.world());
    for i in 0..avatars {
        // A disc 300 m across, so every LOD level (and culling) is in play.
        let angle = i as f32 * 2.399_963;
        let r = 150.0 * ((i as f32 + 0.5) / avatars as f32).sqrt();
        let at = Vec3::new(angle.cos() * r, 0.0, angle.sin() * r);
        // Walking 1 m/s in its own direction: the snapshot pair spans
        // the whole run, so every frame interpolates a new position.
        let heading = Vec3::new((angle * 7.0).cos(), 0.0, (angle * 7.0).sin());
        let mut buffer = SnapshotBuffer::default();
        buffer.push(Snapshot { t: 0.0, position: at, rotation: Quat::IDENTITY });
        buffer.push(Snapshot { t: 1.0e5, position: at + heading * 1.0e5, rotation: Quat::from_rotation_y(1.0) });
        let e = spawn_avatar(&mut commands, &assets, i, "bench", Transform::from_translation(at));
        commands.entity(e).insert(RemoteAvatar { id: i, user: String::new(), buffer });
    }
    queue.apply(app.world_mut());
    app.world_mut().resource_mut::<TickClock>().observe(0, 0.0);
    app.update();
    app
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("client_frame");
    for (name, lod) in [("10k_avatars_lod_on", true), ("10k_avatars_lod_off", false)] {
        let mut app = app(10_000, lod);
        group.bench_function(name, |b| b.iter(|| app.update()));
    }
    let mut app = app(0, true);
    group.bench_function("empty_schedule", |b| b.iter(|| app.update()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
