//! In the headset, a panel on your left wrist says what the desktop HUD
//! says: where you are, voice, the latest toasts and the room's chat. The
//! HUD itself is on the desktop window, which you can't see with the
//! headset on. The panel is read-only: typing needs a keyboard, and the
//! desktop window still has one.
//!
//! The panel is an egui context drawn into an image by a camera of its own
//! (bevy_egui's render-to-image), shown on a small unlit plane that rides
//! on the left controller's grip. Both exist once the grip does, and only
//! draw while the headset is worn.

use super::{Grip, Headset};
use crate::hud::{HudState, NOTICE, Tone, WARNING, chat_line};
use crate::network::ConnectionInfo;
use crate::voice::VoiceInfo;
use bevy::asset::RenderAssetUsages;
use bevy::camera::RenderTarget;
use bevy::camera::visibility::RenderLayers;
use bevy::ecs::schedule::ScheduleLabel;
use bevy::light::NotShadowCaster;
use bevy::prelude::*;
use bevy::render::render_resource::{Extent3d, TextureDimension, TextureFormat, TextureUsages};
use bevy_egui::{EguiContext, EguiSchedule, egui};

/// The panel's size on the wrist (m) and in pixels: 20 × 15 cm, 512 × 384.
const PANEL_M: Vec2 = Vec2::new(0.20, 0.15);
const PANEL_PX: UVec2 = UVec2::new(512, 384);
/// egui's zoom on the panel: text big enough to read at arm's length.
const ZOOM: f32 = 1.5;
/// Chat lines on the panel (the newest).
pub const CHAT_LINES: usize = 6;

/// The schedule the wrist's egui context draws in.
#[derive(ScheduleLabel, Debug, Clone, PartialEq, Eq, Hash)]
pub struct WristPass;

/// The plane on the wrist.
#[derive(Component, Debug)]
pub struct WristPanel;

/// The camera that draws the panel's image.
#[derive(Component, Debug)]
pub struct WristCamera;

/// What the panel says, top to bottom: where you are, voice, the toasts,
/// then the newest chat.
pub fn wrist_lines(hud: &HudState, status: String, voice: Option<String>) -> Vec<(Tone, String)> {
    let mut lines = vec![(Tone::Normal, status)];
    lines.extend(voice.map(|v| (Tone::Faint, v)));
    lines.extend(hud.toasts.iter().map(|(_, text)| (Tone::Notice, text.clone())));
    let chat: Vec<_> = hud.chat.lines().collect();
    lines.extend(chat[chat.len().saturating_sub(CHAT_LINES)..].iter().map(|line| chat_line(line)));
    lines
}

pub struct WristPanelPlugin;

impl Plugin for WristPanelPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(Update, (spawn_panel, show_panel).chain()).add_systems(WristPass, draw_panel);
    }
}

/// The panel's image: cleared to transparent, drawn into by its camera.
/// Rgba8UnormSrgb: the format bevy_egui builds its pipeline for an image
/// target with (another one fails validation and quits the app).
fn panel_image() -> Image {
    let size = Extent3d { width: PANEL_PX.x, height: PANEL_PX.y, depth_or_array_layers: 1 };
    let mut image = Image::new_fill(size, TextureDimension::D2, &[0, 0, 0, 0], TextureFormat::Rgba8UnormSrgb, RenderAssetUsages::default());
    image.texture_descriptor.usage |= TextureUsages::RENDER_ATTACHMENT;
    image
}

fn spawn_panel(
    mut commands: Commands,
    grips: Query<(Entity, &Grip), Added<Grip>>,
    existing: Query<(), With<WristPanel>>,
    mut images: ResMut<Assets<Image>>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    let Some((grip, _)) = grips.iter().find(|(_, g)| g.side == 0) else { return };
    if !existing.is_empty() {
        return;
    }
    let image = images.add(panel_image());
    commands.spawn((
        Camera3d::default(),
        // Before the eyes, which show the image this frame.
        Camera { order: -1, is_active: false, clear_color: ClearColorConfig::Custom(Color::NONE), ..default() },
        RenderTarget::Image(image.clone().into()),
        // It draws egui only, no scene.
        RenderLayers::none(),
        EguiSchedule::new(WristPass),
        WristCamera,
        Name::new("wrist panel camera"),
    ));
    let material = materials.add(StandardMaterial { base_color_texture: Some(image), alpha_mode: AlphaMode::Premultiplied, unlit: true, double_sided: true, cull_mode: None, ..default() });
    let panel = commands
        .spawn((
            Mesh3d(meshes.add(Plane3d::new(Vec3::Z, PANEL_M / 2.0).mesh())),
            MeshMaterial3d(material),
            // Above the back of the hand, tipped 45° toward the eyes.
            Transform::from_xyz(0.0, 0.09, 0.08).with_rotation(Quat::from_rotation_x(-std::f32::consts::FRAC_PI_4)),
            Visibility::Hidden,
            NotShadowCaster,
            WristPanel,
            Name::new("wrist panel"),
        ))
        .id();
    commands.entity(grip).add_child(panel);
}

/// Drawn only while the headset is worn.
fn show_panel(headset: Res<Headset>, mut cameras: Query<&mut Camera, With<WristCamera>>, mut panels: Query<&mut Visibility, With<WristPanel>>) {
    let worn = headset.worn();
    for mut camera in &mut cameras {
        if camera.is_active != worn {
            camera.is_active = worn;
        }
    }
    for mut visibility in &mut panels {
        visibility.set_if_neq(if worn { Visibility::Inherited } else { Visibility::Hidden });
    }
}

fn draw_panel(mut contexts: Query<&mut EguiContext, With<WristCamera>>, hud: Res<HudState>, info: Res<ConnectionInfo>, voice: Option<Res<VoiceInfo>>) {
    let ping = info.rtt.map(|r| format!(" · ping {} ms", r.as_millis())).unwrap_or_default();
    let lines = wrist_lines(&hud, format!("{} · {}{ping}", info.name, info.status.label()), voice.as_ref().and_then(|v| v.line()));
    for mut context in &mut contexts {
        let ctx = context.get_mut();
        ctx.set_zoom_factor(ZOOM);
        let frame = egui::Frame::new().fill(egui::Color32::from_black_alpha(230)).inner_margin(8.0).corner_radius(8.0);
        let size = ctx.content_rect().size();
        egui::Area::new(egui::Id::new("wrist")).fixed_pos(egui::Pos2::ZERO).show(ctx, |ui| {
            ui.set_min_size(size);
            frame.show(ui, |ui| {
                ui.set_min_size(size - egui::vec2(16.0, 16.0));
                for (tone, text) in &lines {
                let text = egui::RichText::new(text);
                ui.label(match tone {
                    // Brighter than egui's grey: it is read on a small, far screen.
                    Tone::Normal => text.color(egui::Color32::from_gray(240)),
                    Tone::Notice => text.color(NOTICE),
                    Tone::Faint => text.color(egui::Color32::from_gray(170)),
                    Tone::Warning => text.color(WARNING),
                });
                }
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_panel_says_where_you_are_then_voice_toasts_and_the_newest_chat() {
        let mut hud = HudState::default();
        hud.toasts.push_back((Duration::ZERO, "Reconnected. Your place in the room was kept.".into()));
        hud.chat.note("You are in garden now.".into());
        for i in 0..10 {
            hud.chat.typed(format!("c{i}"), "You".into(), format!("line {i}"), true);
        }
        hud.chat.failed("c9", "too long".into());
        let lines = wrist_lines(&hud, "Vera · in garden · ping 12 ms".into(), Some("Voice: on · mic on (M mutes)".into()));
        assert_eq!(lines[0], (Tone::Normal, "Vera · in garden · ping 12 ms".into()));
        assert_eq!(lines[1].0, Tone::Faint);
        assert_eq!(lines[2], (Tone::Notice, "Reconnected. Your place in the room was kept.".into()));
        let chat = &lines[3..];
        assert_eq!(chat.len(), CHAT_LINES, "only the newest chat: {chat:?}");
        assert!(chat[0].1.ends_with("line 4"), "{chat:?}");
        assert_eq!(chat[CHAT_LINES - 1].0, Tone::Warning, "the failed one says so");
        assert!(chat[CHAT_LINES - 1].1.contains("not sent: too long"));
        assert_eq!(chat[0].0, Tone::Faint, "not yet acknowledged");
    }

    #[test]
    fn the_panel_rides_the_left_grip_and_draws_only_while_worn() {
        let mut app = crate::test_support::app();
        app.init_asset::<Image>().insert_resource(Headset::Worn { runtime: "Monado".into() }).add_plugins(WristPanelPlugin);
        let right = app.world_mut().spawn((Grip { side: 1 }, Transform::default())).id();
        app.update();
        assert_eq!(app.world_mut().query::<&WristPanel>().iter(app.world()).count(), 0, "no left hand, no panel");
        let left = app.world_mut().spawn((Grip { side: 0 }, Transform::default())).id();
        app.update();
        app.update();
        let (panel, parent, visibility, material) = app.world_mut().query_filtered::<(Entity, &ChildOf, &Visibility, &MeshMaterial3d<StandardMaterial>), With<WristPanel>>().single(app.world()).map(|(e, p, v, m)| (e, p.parent(), *v, m.0.clone())).expect("one panel");
        assert_eq!(parent, left, "on the left wrist, not {right:?}");
        assert_eq!(visibility, Visibility::Inherited);
        let (camera, target) = app.world_mut().query_filtered::<(&Camera, &RenderTarget), With<WristCamera>>().single(app.world()).map(|(c, t)| (c.is_active, t.clone())).expect("one camera");
        assert!(camera);
        let texture = app.world().resource::<Assets<StandardMaterial>>().get(&material).and_then(|m| m.base_color_texture.clone()).expect("a texture");
        assert!(matches!(target, RenderTarget::Image(ref i) if i.handle == texture), "the panel shows what its camera draws");
        app.insert_resource(Headset::Waiting { runtime: "Monado".into() });
        app.update();
        assert_eq!(app.world().get::<Visibility>(panel), Some(&Visibility::Hidden));
        assert!(!app.world_mut().query_filtered::<&Camera, With<WristCamera>>().single(app.world()).unwrap().is_active, "and not drawn");
    }
}
