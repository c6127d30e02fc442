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

/// `threads`: Bevy's task pools; 1 puts everything on this thread, which
/// measures what the systems cost in CPU time without the executor's
/// thread hand-offs (the steadier number on a busy two-core machine).
fn app(avatars: u32, lod: bool, threads: usize) -> App {
    let mut app = App::new();
    let pools = bevy::app::TaskPoolPlugin { task_pool_options: bevy::app::TaskPoolOptions::with_num_threads(threads) };
    app.add_plugins((MinimalPlugins.set(pools), AssetPlugin::default()))
        .init_asset::<Mesh>()
        .init_asset::<StandardMaterial>()
        .insert_resource(ActiveQuality::new(PresetChoice::Fixed(QualityPreset::High)))
        .add_plugins((
            AvatarsPlugin { walkers: 0 },
            LodPlugin { enabled: lod, distance_culling: true },
            NetworkPlugin { mode: NetworkMode::Offline, room: "bench".into(), name: "bench".into(), telemetry: false, voice: None },
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
        commands.entity(e).insert(RemoteAvatar { id: i, buffer });
    }
    queue.apply(app.world_mut());
    app.world_mut().resource_mut::<TickClock>().observe(0, 0.0);
    app.update();
    app
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("client_frame");
    for threads in [1, 2] {
        for (name, avatars, lod) in [("10k_avatars_lod_on", 10_000, true), ("10k_avatars_lod_off", 10_000, false), ("no_avatars", 0, true)] {
            let mut app = app(avatars, lod, threads);
            group.bench_function(format!("{name}/{threads}_threads"), |b| b.iter(|| app.update()));
        }
    }
    // Only the schedules our systems run in (First, for the clock, then
    // PreUpdate, Update, PostUpdate): what they cost a frame, without the
    // rest of App::update.
    // The executor's own cost per system is large on this VM (hundreds of
    // µs for an empty app), so these run single-threaded: the difference
    // between 10k avatars and none is what our systems cost for them.
    for (name, avatars, lod, threads) in [
        ("10k_avatars_lod_on/1_thread", 10_000, true, 1),
        ("10k_avatars_lod_off/1_thread", 10_000, false, 1),
        ("10k_avatars_lod_on/2_threads", 10_000, true, 2),
        ("no_avatars/1_thread", 0, true, 1),
    ] {
        let mut app = app(avatars, lod, threads);
        let single = |s: &mut bevy::ecs::schedule::Schedule| {
            s.set_executor(bevy::ecs::schedule::SingleThreadedExecutor::new());
        };
        app.edit_schedule(First, single).edit_schedule(PreUpdate, single).edit_schedule(Update, single).edit_schedule(PostUpdate, single);
        let world = app.world_mut();
        group.bench_function(format!("our_schedules/{name}"), |b| {
            b.iter(|| {
                world.run_schedule(First);
                world.run_schedule(PreUpdate);
                world.run_schedule(Update);
                world.run_schedule(PostUpdate);
                world.clear_trackers();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
