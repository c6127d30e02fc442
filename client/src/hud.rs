//! The HUD and panels (bevy_egui): frame stats, connection, the settings
//! panel, chat, toasts and nameplates.
//!
//! Keys: F1 settings panel, F2 next preset, F3 stats, Enter chat.
//! Preset, LOD and culling changes apply at once (no restart, no reload:
//! see [`crate::quality`]) and are saved to the settings file.

use crate::avatars::Avatar;
use crate::chat_log::ChatLog;
use crate::culling::CullingConfig;
use crate::governor::AutoQuality;
use crate::lod::{Lod, LodConfig};
use crate::network::{ChatUpdate, ConnectionInfo, ConnectionStatus, NetCommand, NetLink, Toast};
use crate::player::{LocalPlayer, PlayerControl};
use crate::quality::{ActiveQuality, MainCamera};
use crate::remote::{RemoteAvatar, RemoteAvatars, RemoteUser};
use crate::settings::MAX_VOICE_VOLUME;
use crate::render_scale::OutputCamera;
use crate::settings::SettingsFile;
use crate::stats::FrameStats;
use crate::voice::VoiceInfo;
use plaza_voice::device_list::AudioDevice;
use bevy::prelude::*;
use bevy_egui::input::EguiWantsInput;
use bevy_egui::{EguiContexts, EguiPrimaryContextPass, egui};
use plaza_shared::lod::LodLevel;
use plaza_shared::quality::{PresetChoice, QualityPreset};
use std::collections::VecDeque;
use std::time::Duration;

/// Nameplates show within this distance.
pub const NAMEPLATE_DISTANCE: f32 = 15.0;
const TOAST_FOR: Duration = Duration::from_secs(6);

#[derive(Resource, Debug)]
pub struct HudState {
    pub stats: bool,
    pub settings: bool,
    pub chat_input: String,
    pub chat: ChatLog,
    /// The room (id) the chat shown is from.
    pub chat_room: Option<String>,
    pub toasts: VecDeque<(Duration, String)>,
    next_chat_id: u64,
    /// The settings panel's last save problem, shown until the next save.
    pub save_error: Option<String>,
    /// The settings panel's "go to a room" field.
    pub room_input: String,
    /// When the room list was last asked for (real time), while the panel
    /// is open.
    pub rooms_asked: Option<Duration>,
    /// The settings panel's name field (filled with the name when it opens).
    pub name_input: String,
}

impl Default for HudState {
    fn default() -> Self {
        HudState { stats: true, settings: false, chat_input: String::new(), chat: ChatLog::default(),
            chat_room: None,
            toasts: VecDeque::new(),
            next_chat_id: 1,
            save_error: None,
            room_input: String::new(),
            rooms_asked: None,
            name_input: String::new(),
        }
    }
}

/// The colour of what went wrong (not saved, not sent, not found).
pub const WARNING: egui::Color32 = egui::Color32::from_rgb(230, 120, 80);
/// The colour of the client's own notes in the chat (and of toasts on the
/// VR wrist panel).
pub const NOTICE: egui::Color32 = egui::Color32::from_rgb(200, 180, 110);

/// How a line is drawn: the chat window and the VR wrist panel each draw
/// the tones their own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Normal,
    /// The client's own notes (and toasts).
    Notice,
    /// Voice, and chat not yet acknowledged.
    Faint,
    /// Chat that could not be sent.
    Warning,
}

/// A chat line's text and tone.
pub fn chat_line(line: &crate::chat_log::ChatLine) -> (Tone, String) {
    let text = format!("{}: {}", line.name, line.text);
    match (&line.failed, line.pending) {
        (Some(reason), _) => (Tone::Warning, format!("{text}  (not sent: {reason})")),
        (None, _) if line.system => (Tone::Notice, text),
        (None, true) => (Tone::Faint, text),
        (None, false) => (Tone::Normal, text),
    }
}

/// How often the settings panel reads the rooms again while it is open.
const ROOMS_EVERY: Duration = Duration::from_secs(5);
/// The chat's lines are at most this tall; less in a short window, where
/// they would otherwise run over the stats panel above them.
const CHAT_LINES_MAX: f32 = 140.0;
/// ... but never less than this (two lines), however short the window.
const CHAT_LINES_MIN: f32 = 36.0;
/// The gap the chat keeps from the stats panel and from the window's edge.
const HUD_GAP: f32 = 8.0;

/// Where the HUD's windows were this frame (stats) and the last (chat), so
/// the chat can fit under the stats panel.
#[derive(Resource, Debug, Default)]
struct HudLayout {
    /// The stats panel's bottom edge, when it is shown.
    stats_bottom: Option<f32>,
    /// The chat window's height less its lines: title, voice line, input,
    /// margins (measured, as fonts and the voice line vary).
    chat_chrome: Option<f32>,
}

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum HudSystems {
    /// Keys, chat and toast bookkeeping (Update).
    Input,
    /// Drawing (bevy_egui's pass).
    Draw,
}

pub struct HudPlugin;

impl Plugin for HudPlugin {
    fn build(&self, app: &mut App) {
        app.add_plugins(bevy_egui::EguiPlugin::default());
        // The HUD goes on the output camera (sharp at any render scale),
        // not on whichever camera came first.
        app.world_mut().resource_mut::<bevy_egui::EguiGlobalSettings>().auto_create_primary_context = false;
        app.add_systems(PostStartup, attach_to_output_camera)
            .init_resource::<HudState>()
            .init_resource::<HudLayout>()
            .add_systems(Update, (hotkeys, collect_chat_and_toasts, follow_focus).in_set(HudSystems::Input))
            .add_systems(EguiPrimaryContextPass, (nameplates, stats_window, settings_window, chat_window, toasts_window).chain().in_set(HudSystems::Draw));
    }
}

fn attach_to_output_camera(mut commands: Commands, cameras: Query<Entity, Added<OutputCamera>>) {
    for camera in &cameras {
        commands.entity(camera).insert((bevy_egui::EguiContext::default(), bevy_egui::PrimaryEguiContext));
    }
}

/// The next preset in F2's cycle: low → medium → high → ultra → auto → low.
pub fn next_choice(choice: PresetChoice) -> PresetChoice {
    match choice {
        PresetChoice::Fixed(p) => p.higher().map(PresetChoice::Fixed).unwrap_or(PresetChoice::Auto),
        PresetChoice::Auto => PresetChoice::Fixed(QualityPreset::Low),
    }
}

impl HudState {
    /// Saves a change to the settings file (if there is one), keeping the
    /// outcome for the panel.
    fn save(&mut self, file: Option<&mut SettingsFile>, change: impl FnOnce(&mut crate::settings::Settings)) {
        if let Some(file) = file {
            self.save_error = file.update(change).err().map(|e| e.to_string());
        }
    }
}

/// Applies a preset choice and saves it.
pub fn choose_preset(choice: PresetChoice, quality: &mut ActiveQuality, file: Option<&mut SettingsFile>, hud: &mut HudState) {
    quality.choose(choice);
    hud.save(file, |s| s.preset = Some(choice));
}

fn hotkeys(
    keys: Option<Res<ButtonInput<KeyCode>>>,
    control: Res<PlayerControl>,
    mut hud: ResMut<HudState>,
    mut quality: ResMut<ActiveQuality>,
    mut file: Option<ResMut<SettingsFile>>,
) {
    let Some(keys) = keys else { return };
    if control.typing {
        return;
    }
    if keys.just_pressed(KeyCode::F1) {
        hud.settings = !hud.settings;
    }
    if keys.just_pressed(KeyCode::F3) {
        hud.stats = !hud.stats;
    }
    if keys.just_pressed(KeyCode::F2) {
        let next = next_choice(quality.choice);
        choose_preset(next, &mut quality, file.as_deref_mut(), &mut hud);
        hud.toasts.push_back((Duration::ZERO, format!("Preset: {next}")));
    }
}

fn collect_chat_and_toasts(time: Res<Time<Real>>, mut hud: ResMut<HudState>, mut chat: MessageReader<ChatUpdate>, mut toasts: MessageReader<Toast>, info: Res<ConnectionInfo>) {
    let now = time.elapsed();
    for toast in toasts.read() {
        hud.toasts.push_back((now, toast.0.text()));
    }
    // Toasts queued with time zero (hotkeys) start now.
    for toast in hud.toasts.iter_mut() {
        if toast.0 == Duration::ZERO {
            toast.0 = now;
        }
    }
    while hud.toasts.front().is_some_and(|t| now.saturating_sub(t.0) > TOAST_FOR) || hud.toasts.len() > 5 {
        hud.toasts.pop_front();
    }
    // Another room: its chat, not the last one's.
    if let ConnectionStatus::InRoom { room, room_name } = &info.status
        && hud.chat_room.as_ref() != Some(room)
    {
        if hud.chat_room.is_some() {
            hud.chat = ChatLog::start_under(format!("You are in {room_name} now."));
        }
        hud.chat_room = Some(room.clone());
    }
    let me = info.user_id.as_deref();
    let here = hud.chat_room.clone();
    let of_here = |m: &plaza_shared::messages::ChatMessage| here.as_ref().is_none_or(|r| *r == m.room);
    for update in chat.read() {
        match update {
            ChatUpdate::Message(m) if !of_here(m) => debug!(room = %m.room, "chat from a room we left; not shown"),
            ChatUpdate::Message(m) => hud.chat.received(m, me),
            ChatUpdate::History(page) => {
                let page: Vec<_> = page.iter().filter(|m| of_here(m)).cloned().collect();
                // Inserted above the newest lines, they could go unseen.
                let missed = hud.chat.history(&page, me).missed;
                if missed > 0 {
                    hud.toasts.push_back((now, format!("{missed} chat message{} while you were away", if missed == 1 { "" } else { "s" })));
                }
            }
            ChatUpdate::HistoryFailed(reason) => hud.chat.note(format!("chat from while you were away could not be read: {reason}")),
            ChatUpdate::Acked(id) => hud.chat.acked(id),
            ChatUpdate::Failed { id, reason } => hud.chat.failed(id, reason.clone()),
        }
    }
}

/// While a text field has the keyboard, the avatar doesn't walk.
fn follow_focus(wants: Option<Res<EguiWantsInput>>, mut control: ResMut<PlayerControl>) {
    let typing = wants.is_some_and(|w| w.wants_any_keyboard_input());
    if control.typing != typing {
        control.typing = typing;
    }
}

fn lod_line(counts: &[u32; 5]) -> String {
    LodLevel::ALL.iter().zip(counts).map(|(l, n)| format!("{} {n}", l.as_str())).collect::<Vec<_>>().join(" · ")
}

#[allow(clippy::too_many_arguments)]
fn stats_window(
    mut contexts: EguiContexts,
    hud: Res<HudState>,
    stats: Res<FrameStats>,
    quality: Res<ActiveQuality>,
    auto: Option<Res<AutoQuality>>,
    info: Res<ConnectionInfo>,
    voice: Option<Res<VoiceInfo>>,
    headset: Option<Res<crate::xr::Headset>>,
    mirror: Option<Res<crate::xr::MirrorWindow>>,
    mut layout: ResMut<HudLayout>,
) -> Result {
    layout.stats_bottom = None;
    if !hud.stats {
        return Ok(());
    }
    let ctx = contexts.ctx_mut()?;
    let shown = egui::Window::new("Plaza").anchor(egui::Align2::LEFT_TOP, [HUD_GAP, HUD_GAP]).resizable(false).collapsible(true).show(ctx, |ui| {
        let ms = stats.smoothed_ms.max(0.001);
        ui.label(format!("{:.0} fps · {:.1} ms", 1000.0 / ms, ms));
        let preset = match (quality.choice, &auto) {
            (PresetChoice::Auto, Some(a)) => format!("auto → {} (LOD ×{:.2}, target {:.1} ms)", quality.settings.preset, quality.bias_scale, a.0.target_ms()),
            _ => quality.settings.preset.to_string(),
        };
        ui.label(format!("preset: {preset}"));
        ui.label(format!("meshes: {} drawn · {} culled", stats.visible, stats.culled));
        ui.label(format!("triangles: {} · draws: {}", stats.triangles, stats.draw_calls));
        ui.label(format!("LOD: {}", lod_line(&stats.avatars_by_lod)));
        let ping = info.rtt.map(|r| format!("{} ms", r.as_millis())).unwrap_or_else(|| "–".into());
        ui.label(format!("{} · ping {ping}", info.status.label()));
        if let Some(q) = voice.as_ref().and_then(|v| v.status.quality) {
            ui.label(format!("voice: {} playing · delay {} ms · {:.1}% missing", q.voices, q.delay_ms, q.missing_pct));
        }
        if let Some(line) = headset.as_deref().and_then(|h| h.line(mirror.as_deref().is_none_or(|m| m.0))) {
            ui.label(line);
        }
        ui.small("F1 settings · F2 preset · F3 stats");
    });
    layout.stats_bottom = shown.map(|s| s.response.rect.bottom());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn settings_window(
    mut contexts: EguiContexts,
    mut hud: ResMut<HudState>,
    mut quality: ResMut<ActiveQuality>,
    mut lod: ResMut<LodConfig>,
    mut culling: ResMut<CullingConfig>,
    mut file: Option<ResMut<SettingsFile>>,
    mut voice: Option<ResMut<VoiceInfo>>,
    people: VoicePeople,
    link: Option<Res<NetLink>>,
    mut info: ResMut<ConnectionInfo>,
    time: Res<Time<Real>>,
    mirror: Option<ResMut<crate::xr::MirrorWindow>>,
) -> Result {
    // The sound devices are listed while the panel is open.
    if let Some(voice) = voice.as_deref_mut().filter(|v| v.devices.want_list != hud.settings) {
        voice.devices.want_list = hud.settings;
    }
    if !hud.settings {
        hud.rooms_asked = None;
        hud.name_input.clear();
        return Ok(());
    }
    if hud.name_input.is_empty() {
        hud.name_input = info.name.clone();
    }
    // The rooms, read when the panel opens, every few seconds while it is
    // open (people come and go), and on Refresh.
    let now = time.elapsed();
    if let Some(link) = &link
        && hud.rooms_asked.is_none_or(|at| now.saturating_sub(at) >= ROOMS_EVERY)
        && link.send(NetCommand::ListRooms)
    {
        hud.rooms_asked = Some(now);
    }
    let ctx = contexts.ctx_mut()?;
    let mut open = true;
    let mut choice = quality.choice;
    let (mut lod_on, mut culling_on) = (lod.enabled, culling.enabled);
    // Taller than the screen (many rooms, many voices) scrolls.
    let room_below = (ctx.content_rect().height() - 100.0).max(200.0);
    egui::Window::new("Settings").open(&mut open).anchor(egui::Align2::CENTER_TOP, [0.0, 40.0]).resizable(false).show(ctx, |ui| {
        egui::ScrollArea::vertical().max_height(room_below).show(ui, |ui| {
            ui.label("Quality preset");
            ui.horizontal(|ui| {
                for p in QualityPreset::ALL {
                    ui.radio_value(&mut choice, PresetChoice::Fixed(p), p.as_str());
                }
                ui.radio_value(&mut choice, PresetChoice::Auto, "auto");
            });
            ui.checkbox(&mut lod_on, "Level of detail by distance");
            ui.checkbox(&mut culling_on, "Culling (frustum and distance)");
            if let Some(mut mirror) = mirror {
                let mut on = mirror.0;
                if ui.checkbox(&mut on, "Show the headset's view in this window").on_hover_text("Off saves drawing the plaza a third time; the HUD and chat stay").changed() {
                    mirror.0 = on;
                    hud.save(file.as_deref_mut(), |s| s.vr_mirror = Some(on));
                }
            }
            if let Some(link) = &link {
                ui.separator();
                if let Some(name) = name_setting(ui, &mut hud, &info) {
                    info!(%name, "going by another name");
                    if link.send(NetCommand::Rename { name: name.clone() }) {
                        hud.save(file.as_deref_mut(), |s| s.name = Some(name.clone()));
                        hud.toasts.push_back((Duration::ZERO, format!("You are {name} now: rejoining the room under it.")));
                        info.name = name;
                    }
                }
                let here: Vec<String> = people.remote.by_id.values().filter_map(|e| people.avatars.get(*e).ok()).map(|(a, _)| a.name.clone()).collect();
                if let Some(room) = room_settings(ui, &mut hud, &info, &here) {
                    info!(%room, "going to another room");
                    link.send(NetCommand::JoinRoom { room });
                    // Their counts change with the move: read them again soon.
                    hud.rooms_asked = None;
                }
            }
            if let Some(voice) = voice.as_deref_mut().filter(|v| v.enabled) {
                ui.separator();
                let change = voice_settings(ui, voice, &people);
                if let Some(volume) = change.volume {
                    hud.save(file.as_deref_mut(), |s| s.voice_volume = Some(volume));
                }
                if let Some(on) = change.mic_cleanup {
                    hud.save(file.as_deref_mut(), |s| s.mic_cleanup = Some(on));
                }
                if let Some(db) = change.mic_gate_db {
                    hud.save(file.as_deref_mut(), |s| s.mic_gate_db = Some(db));
                }
                if let Some(output) = change.audio_out {
                    hud.save(file.as_deref_mut(), |s| s.audio_out = output);
                }
                if let Some(input) = change.audio_in {
                    hud.save(file.as_deref_mut(), |s| s.audio_in = input);
                }
            }
            match (&file, &hud.save_error) {
                (_, Some(e)) => ui.colored_label(WARNING, format!("Not saved: {e}")),
                (Some(f), None) => ui.small(format!("Saved to {}", f.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "nowhere (no config folder)".into()))),
                (None, None) => ui.small("Not saved (no settings file)"),
            };
        });
    });
    if !open {
        hud.settings = false;
    }
    if choice != quality.choice {
        choose_preset(choice, &mut quality, file.as_deref_mut(), &mut hud);
    }
    if lod_on != lod.enabled {
        lod.enabled = lod_on;
        hud.save(file.as_deref_mut(), |s| s.lod = Some(lod_on));
    }
    if culling_on != culling.enabled {
        // The culling plugin carries the switch over to distance culling.
        culling.enabled = culling_on;
        hud.save(file.as_deref_mut(), |s| s.culling = Some(culling_on));
    }
    Ok(())
}

/// Your name: a field and Change. Returns the new name, once changed.
fn name_setting(ui: &mut egui::Ui, hud: &mut HudState, info: &ConnectionInfo) -> Option<String> {
    let wanted = crate::options::parse_name(&hud.name_input);
    let new = wanted.as_ref().ok().filter(|n| **n != info.name).cloned();
    let mut changed = None;
    ui.horizontal(|ui| {
        ui.label("Your name");
        let field = ui.add(egui::TextEdit::singleline(&mut hud.name_input).desired_width(160.0));
        let entered = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        let clicked = ui.add_enabled(new.is_some(), egui::Button::new("Change")).on_hover_text("Others see you leave and come back under the new name; it is saved for next time").clicked();
        if clicked || entered {
            changed = new.clone();
        }
    });
    if let Err(why) = wanted {
        ui.small(why);
    }
    changed
}

/// The room part of the settings panel: where you are, the server's rooms
/// (with a Join for each that has room), and a field to go to a room by
/// name (a new name makes it). Returns the room to go to.
fn room_settings(ui: &mut egui::Ui, hud: &mut HudState, info: &ConnectionInfo, others: &[String]) -> Option<String> {
    let mut go = None;
    let here = match &info.status {
        ConnectionStatus::InRoom { room, .. } => Some(room.as_str()),
        _ => None,
    };
    ui.horizontal(|ui| {
        ui.label(format!("Room: {}", info.status.label()));
        if ui.small_button("Refresh").on_hover_text("Read the rooms again").clicked() {
            hud.rooms_asked = None;
        }
    });
    match &info.rooms {
        None => {
            ui.small("Reading the rooms…");
        }
        Some(Err(e)) => {
            ui.colored_label(WARNING, format!("The rooms could not be read: {e}"));
        }
        Some(Ok(rooms)) if rooms.is_empty() => {
            ui.small("No rooms yet: name one below.");
        }
        Some(Ok(rooms)) => {
            egui::ScrollArea::vertical().max_height(110.0).id_salt("rooms").show(ui, |ui| {
                egui::Grid::new("room_list").striped(true).num_columns(3).show(ui, |ui| {
                    for room in rooms {
                        ui.label(&room.name);
                        ui.label(format!("{} of {}", room.users, room.capacity));
                        let is_here = here == Some(room.id.as_str());
                        let label = if is_here {
                            "you are here"
                        } else if room.is_full() {
                            "full"
                        } else {
                            "Join"
                        };
                        if ui.add_enabled(!is_here && !room.is_full(), egui::Button::new(label).small()).clicked() {
                            go = Some(room.id.clone());
                        }
                        ui.end_row();
                    }
                });
            });
        }
    }
    let mut why_not = None;
    ui.horizontal(|ui| {
        let field = ui.add(egui::TextEdit::singleline(&mut hud.room_input).hint_text("a room's name").desired_width(180.0));
        let wanted = crate::options::parse_room(hud.room_input.trim());
        let entered = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        let clicked = ui.add_enabled(wanted.is_ok(), egui::Button::new("Go")).on_hover_text("Join the room of that name; a name no room has makes a new room").clicked();
        match wanted {
            Ok(room) if clicked || entered => {
                go = Some(room);
                hud.room_input.clear();
            }
            Err(why) if !hud.room_input.is_empty() => why_not = Some(why),
            _ => {}
        }
    });
    if let Some(why) = why_not {
        ui.small(why);
    }
    if matches!(info.status, ConnectionStatus::InRoom { .. }) {
        egui::CollapsingHeader::new(format!("Here now: you and {}", others.len())).id_salt("here_now").show(ui, |ui| {
            ui.label(here_now(&info.name, others));
        });
    }
    go
}

/// A name's sort key: case aside, and runs of digits by their number, so
/// "Bot 2" comes before "Bot 10".
fn natural_key(name: &str) -> Vec<(u8, u64, String)> {
    let mut key = Vec::new();
    let mut chars = name.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_digit() {
            let mut n: u64 = 0;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(u64::from(d));
                chars.next();
            }
            key.push((0, n, String::new()));
        } else {
            let mut text = String::new();
            while let Some(&c) = chars.peek().filter(|c| !c.is_ascii_digit()) {
                text.extend(c.to_lowercase());
                chars.next();
            }
            key.push((1, 0, text));
        }
    }
    key
}

/// Who is in the room, for the panel: you first, then the others by name.
fn here_now(you: &str, others: &[String]) -> String {
    let mut names: Vec<&str> = others.iter().map(String::as_str).collect();
    names.sort_by_cached_key(|n| natural_key(n));
    std::iter::once(format!("{you} (you)")).chain(names.into_iter().map(str::to_owned)).collect::<Vec<_>>().join(", ")
}

/// Who the voice settings can name: the avatars in your listening slots.
#[derive(bevy::ecs::system::SystemParam)]
struct VoicePeople<'w, 's> {
    remote: Res<'w, RemoteAvatars>,
    avatars: Query<'w, 's, (&'static Avatar, Option<&'static RemoteUser>)>,
}

/// What the voice settings changed that is saved.
#[derive(Debug, Default)]
struct VoiceSettingsChange {
    /// The voices' volume, once a change of it is done.
    volume: Option<f32>,
    mic_cleanup: Option<bool>,
    /// The microphone's gate, once a change of it is done.
    mic_gate_db: Option<f32>,
    /// A device chosen (`Some(None)`: back to the system's).
    audio_out: Option<Option<String>>,
    audio_in: Option<Option<String>>,
}

/// The microphone's meter (its level now, green over the gate) and the
/// gate: how loud you must be for your voice to go out. Returns the gate
/// once a change of it is done.
fn mic_meter(ui: &mut egui::Ui, voice: &mut VoiceInfo) -> Option<f32> {
    let (low, high) = (*plaza_voice::level::GATE_DB_RANGE.start(), *plaza_voice::level::GATE_DB_RANGE.end());
    // The meter spans 20 dB below the lowest gate to full scale.
    let floor = low - 20.0;
    let share = |db: f32| ((db - floor) / -floor).clamp(0.0, 1.0);
    if let Some(db) = voice.status.mic_db {
        let over = db >= voice.mic_gate_db;
        let color = if over { egui::Color32::from_rgb(90, 190, 110) } else { egui::Color32::from_gray(110) };
        ui.horizontal(|ui| {
            let response = ui.add(egui::ProgressBar::new(share(db)).desired_width(260.0).fill(color));
            // The gate, as a mark on the bar.
            let x = response.rect.left() + response.rect.width() * share(voice.mic_gate_db);
            ui.painter().vline(x, response.rect.y_range(), egui::Stroke::new(3.0, egui::Color32::from_rgb(240, 200, 80)));
            ui.label(format!("microphone {db:.0} dBFS"));
        });
    }
    let slider = ui
        .add(egui::Slider::new(&mut voice.mic_gate_db, low..=high).step_by(1.0).suffix(" dBFS").text("send my voice above"))
        .on_hover_text("Lower: a quiet voice still goes out. Higher: the room's noise stays in. The yellow mark on the meter is this.");
    (slider.drag_stopped() || (slider.changed() && !slider.dragged())).then_some(voice.mic_gate_db)
}

/// A drop-down of the sound devices `listed` (while they are being listed,
/// only the current one), the system's default first. True when the user
/// picked another.
fn device_choice(ui: &mut egui::Ui, label: &str, current: &mut Option<String>, listed: Option<&[AudioDevice]>) -> bool {
    let name_of = |id: &String| listed.and_then(|l| l.iter().find(|d| &d.id == id)).map_or_else(|| id.clone(), |d| d.name.clone());
    let shown = current.as_ref().map_or_else(|| "System default".to_owned(), name_of);
    let mut changed = false;
    egui::ComboBox::from_label(label).selected_text(shown).width(260.0).truncate().show_ui(ui, |ui| {
        changed |= ui.selectable_value(current, None, "System default").changed();
        match listed {
            None => {
                ui.label("Listing the devices…");
            }
            Some(devices) => {
                for d in devices {
                    changed |= ui.selectable_value(current, Some(d.id.clone()), &d.name).on_hover_text(&d.id).changed();
                }
            }
        }
    });
    changed
}

/// The voice part of the settings panel: your microphone, the voices'
/// volume, and a mute for each voice you can hear.
fn voice_settings(ui: &mut egui::Ui, voice: &mut VoiceInfo, people: &VoicePeople) -> VoiceSettingsChange {
    ui.label("Voice");
    ui.checkbox(&mut voice.muted, "Mute my microphone (M)");
    let cleanup = ui
        .checkbox(&mut voice.mic_cleanup, "Cancel echo and noise, even out loudness")
        .on_hover_text("Takes what your speakers play, and steady noise, out of your microphone, and brings your voice to the loudness everyone else's has. Switch it off for a headset or a sound system that does this itself.");
    let mic_cleanup = cleanup.changed().then_some(voice.mic_cleanup);
    let mic_gate_db = mic_meter(ui, voice);
    // Borrowed apart: the list is read while the choices change, not copied.
    let crate::voice::SoundDevices { choice, state, list, .. } = &mut voice.devices;
    let audio_out = device_choice(ui, "Speakers", &mut choice.output, list.as_ref().map(|l| l.outputs.as_slice())).then(|| choice.output.clone());
    let audio_in = device_choice(ui, "Microphone", &mut choice.input, list.as_ref().map(|l| l.inputs.as_slice())).then(|| choice.input.clone());
    if let Some(pace) = voice.status.speaker_pace {
        ui.colored_label(WARNING, format!("These speakers take sound at {pace:.1}× real time, so voices break up. Pick another device."));
    }
    ui.horizontal(|ui| {
        // The button first: the label is cut to what room is left.
        if ui.small_button("Refresh").on_hover_text("List the devices again (after plugging one in)").clicked() {
            *list = None;
        }
        ui.add(egui::Label::new(egui::RichText::new(format!("Playing: {}", state.description)).small()).truncate()).on_hover_text(&state.description);
    });
    if let Some(problem) = &state.problem {
        ui.colored_label(WARNING, problem);
    }
    let mut percent = (voice.volume * 100.0).round();
    let slider = ui.add(egui::Slider::new(&mut percent, 0.0..=MAX_VOICE_VOLUME * 100.0).suffix("%").text("voices' volume"));
    voice.volume = percent / 100.0;
    let volume = (slider.drag_stopped() || (slider.changed() && !slider.dragged())).then_some(voice.volume);
    // Those in your slots, and those you muted (the SFU keeps them out of
    // your slots, but they must stay here to be unmuted); each user once.
    let in_slots = voice.status.slots.iter().flatten().filter_map(|id| people.remote.by_id.get(id));
    let is_muted = |e: &&Entity| people.avatars.get(**e).ok().and_then(|(_, user)| user).is_some_and(|u| voice.muted_users.contains(&u.0));
    let muted = people.remote.by_id.values().filter(is_muted);
    let (mut heard, mut seen) = (Vec::new(), std::collections::HashSet::new());
    for entity in in_slots.chain(muted) {
        if let Ok((avatar, Some(user))) = people.avatars.get(*entity)
            && seen.insert(user.0.clone())
        {
            heard.push((avatar.name.clone(), user.0.clone()));
        }
    }
    if heard.is_empty() {
        ui.small("Nobody in hearing range has a voice on.");
    }
    for (name, user) in heard {
        ui.horizontal(|ui| {
            let mut muted = voice.muted_users.contains(&user);
            if ui.checkbox(&mut muted, format!("Mute {name}")).changed() {
                if muted {
                    voice.muted_users.insert(user.clone());
                } else {
                    voice.muted_users.remove(&user);
                }
            }
            // Their own volume, on top of everyone's.
            let mut percent = (voice.user_volumes.get(&user).copied().unwrap_or(1.0) * 100.0).round();
            if ui.add_enabled(!muted, egui::Slider::new(&mut percent, 0.0..=MAX_VOICE_VOLUME * 100.0).suffix("%")).changed() {
                if percent == 100.0 {
                    voice.user_volumes.remove(&user);
                } else {
                    voice.user_volumes.insert(user, percent / 100.0);
                }
            }
        });
    }
    VoiceSettingsChange { volume, mic_cleanup, mic_gate_db, audio_out, audio_in }
}

fn chat_window(
    mut contexts: EguiContexts,
    mut hud: ResMut<HudState>,
    link: Option<Res<NetLink>>,
    info: Res<ConnectionInfo>,
    voice: Option<Res<VoiceInfo>>,
    keys: Option<Res<ButtonInput<KeyCode>>>,
    mut layout: ResMut<HudLayout>,
) -> Result {
    let Some(link) = link else { return Ok(()) };
    let ctx = contexts.ctx_mut()?;
    let hud = hud.as_mut();
    let lines_max = chat_lines_height(ctx.content_rect().bottom(), layout.stats_bottom, layout.chat_chrome);
    let mut lines_height = None;
    let shown = egui::Window::new("Chat").anchor(egui::Align2::LEFT_BOTTOM, [HUD_GAP, -HUD_GAP]).default_width(340.0).resizable(false).collapsible(true).show(ctx, |ui| {
        let lines = egui::ScrollArea::vertical().max_height(lines_max).stick_to_bottom(true).show(ui, |ui| {
            for line in hud.chat.lines() {
                match chat_line(line) {
                    (Tone::Warning, text) => ui.colored_label(WARNING, text),
                    (Tone::Notice, text) => ui.colored_label(NOTICE, text),
                    (Tone::Faint, text) => ui.weak(text),
                    (Tone::Normal, text) => ui.label(text),
                };
            }
        });
        lines_height = Some(lines.inner_rect.height());
        if let Some(v) = voice.as_ref()
            && let Some(line) = v.line()
        {
            // Muted, lost or off is worth a glance; on is not.
            let on = v.unavailable.is_none() && !v.muted && !matches!(v.status.state, crate::network::voice::VoiceState::Failed(_));
            let text = egui::RichText::new(line).small();
            ui.label(if on { text } else { text.color(egui::Color32::from_rgb(230, 170, 80)) });
        }
        let input = ui.add(egui::TextEdit::singleline(&mut hud.chat_input).hint_text("Enter to chat").desired_width(320.0).char_limit(plaza_shared::limits::CHAT_TEXT_MAX_CHARS));
        let enter = ui.input(|i| i.key_pressed(egui::Key::Enter));
        if input.lost_focus() && enter {
            let text = hud.chat_input.trim().to_owned();
            if !text.is_empty() {
                let id = format!("c{}", hud.next_chat_id);
                hud.next_chat_id += 1;
                let sent = link.send(NetCommand::Chat { id: id.clone(), text: text.clone() });
                hud.chat.typed(id, "You".to_owned(), text, sent);
                hud.chat_input.clear();
            }
        } else if !input.has_focus() && keys.is_some_and(|k| k.just_pressed(KeyCode::Enter)) && matches!(info.status, ConnectionStatus::InRoom { .. }) {
            input.request_focus();
        }
    });
    if let (Some(window), Some(lines)) = (shown, lines_height) {
        layout.chat_chrome = Some(window.response.rect.height() - lines);
    }
    Ok(())
}

/// How tall the chat's lines may be: [`CHAT_LINES_MAX`], less what it takes
/// to keep the chat window (anchored at the bottom) clear of the stats panel
/// (anchored at the top), down to [`CHAT_LINES_MIN`]. `chrome` is the rest
/// of the chat window, unknown until it has been drawn once.
fn chat_lines_height(screen_bottom: f32, stats_bottom: Option<f32>, chrome: Option<f32>) -> f32 {
    let (Some(stats_bottom), Some(chrome)) = (stats_bottom, chrome) else { return CHAT_LINES_MAX };
    let room = screen_bottom - HUD_GAP - (stats_bottom + HUD_GAP) - chrome;
    room.clamp(CHAT_LINES_MIN, CHAT_LINES_MAX)
}

fn toasts_window(mut contexts: EguiContexts, hud: Res<HudState>) -> Result {
    if hud.toasts.is_empty() {
        return Ok(());
    }
    let ctx = contexts.ctx_mut()?;
    let width = toast_width(ctx.content_rect().width());
    egui::Area::new(egui::Id::new("toasts")).anchor(egui::Align2::RIGHT_TOP, [-TOAST_MARGIN, TOAST_MARGIN]).show(ctx, |ui| {
        for (_, text) in &hud.toasts {
            egui::Frame::popup(ui.style()).show(ui, |ui| {
                // One width for every toast, wrapping inside it, so a long
                // one can't run past the window's edge.
                ui.set_width(width);
                ui.add(egui::Label::new(text.as_str()).wrap());
            });
        }
    });
    Ok(())
}

/// Space between a toast and the window's edge, in points.
const TOAST_MARGIN: f32 = 8.0;

/// A toast's text width on a screen this wide: 360 points, less on a narrow
/// window, so the toast (on the right) stays clear of the stats panel (on
/// the left, about 340 points wide) and of the edge.
fn toast_width(screen_width: f32) -> f32 {
    (screen_width * 0.4).clamp(120.0, 360.0)
}

/// Names over the heads of avatars near the camera. Positions come from
/// this frame's `Transform`s (avatars and the camera are roots): the
/// propagated ones may still be last frame's when egui draws, and at low
/// frame rates a walking avatar would leave its name behind. In a crowd the
/// nearer name wins where two would overlap ([`uncluttered`]).
fn nameplates(
    mut contexts: EguiContexts,
    camera: Query<(&Camera, &Transform), With<MainCamera>>,
    avatars: Query<(&Avatar, &Lod, &Transform, Option<&RemoteAvatar>), Without<LocalPlayer>>,
    voice: Option<Res<VoiceInfo>>,
    mut plates: Local<Vec<(egui::Rect, f32, std::sync::Arc<egui::Galley>)>>,
) -> Result {
    let Ok((camera, eye)) = camera.single() else { return Ok(()) };
    let eye = GlobalTransform::from(*eye);
    let ctx = contexts.ctx_mut()?;
    // The scene camera may draw smaller than the output (render scale).
    let screen = ctx.content_rect().size();
    let Some(viewport) = camera.logical_viewport_size().filter(|v| v.x > 0.0 && v.y > 0.0) else { return Ok(()) };
    let scale = egui::vec2(screen.x / viewport.x, screen.y / viewport.y);
    let painter = ctx.layer_painter(egui::LayerId::background());
    let font = egui::FontId::proportional(14.0);
    plates.clear();
    for (avatar, lod, at, remote) in &avatars {
        if lod.level == LodLevel::Hidden || lod.distance > NAMEPLATE_DISTANCE {
            continue;
        }
        let Ok(pos) = camera.world_to_viewport(&eye, at.translation + Vec3::Y * 2.05) else { continue };
        let pos = egui::pos2(pos.x * scale.x, pos.y * scale.y);
        // Whoever is speaking has a green name.
        let speaking = remote.zip(voice.as_ref()).is_some_and(|(r, v)| v.speaking(r.id));
        let color = if speaking { SPEAKING_COLOR } else { egui::Color32::WHITE };
        let galley = painter.layout_no_wrap(avatar.name.clone(), font.clone(), color);
        plates.push((egui::Align2::CENTER_BOTTOM.anchor_size(pos, galley.size()), lod.distance, galley));
    }
    let shown = uncluttered(&plates.iter().map(|(rect, distance, _)| (*rect, *distance)).collect::<Vec<_>>());
    for i in shown {
        let (rect, _, galley) = &plates[i];
        painter.galley_with_override_text_color(rect.min + egui::vec2(1.0, 1.0), galley.clone(), egui::Color32::from_black_alpha(200));
        painter.galley(rect.min, galley.clone(), egui::Color32::WHITE);
    }
    Ok(())
}

/// A speaking avatar's name.
const SPEAKING_COLOR: egui::Color32 = egui::Color32::from_rgb(120, 230, 140);

/// Space kept clear around a name, in points.
const NAMEPLATE_GAP: f32 = 2.0;

/// Which names to draw, given each one's screen rect and distance: nearest
/// first, and each only where it clears every name already placed (a name
/// half under another reads as neither). Returns indices into `plates`.
fn uncluttered(plates: &[(egui::Rect, f32)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..plates.len()).collect();
    order.sort_by(|&a, &b| plates[a].1.total_cmp(&plates[b].1));
    let mut placed: Vec<usize> = Vec::with_capacity(plates.len());
    for i in order {
        // Grown by the whole gap, it touches a placed name exactly when the
        // two are less than the gap apart.
        let rect = plates[i].0.expand(NAMEPLATE_GAP);
        if placed.iter().all(|&j| !plates[j].0.intersects(rect)) {
            placed.push(i);
        }
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plate(x: f32, y: f32, distance: f32) -> (egui::Rect, f32) {
        (egui::Rect::from_min_size(egui::pos2(x, y), egui::vec2(60.0, 16.0)), distance)
    }

    #[test]
    fn toasts_narrow_with_the_window_and_leave_the_left_part_free() {
        assert_eq!(toast_width(1920.0), 360.0);
        for screen in [320.0, 640.0, 800.0, 960.0, 1280.0] {
            let width = toast_width(screen);
            // The toast's frame adds its inner margin (8) on both sides.
            let left = screen - TOAST_MARGIN - width - 16.0;
            assert!(left >= screen * 0.5, "{screen}: the toast starts at {left}");
        }
    }

    #[test]
    fn another_room_shows_its_own_chat_and_late_lines_of_the_last_one_stay_out() {
        use plaza_shared::messages::ChatMessage;
        let mut app = App::new();
        app.add_plugins(MinimalPlugins).add_message::<ChatUpdate>().add_message::<Toast>().init_resource::<HudState>().init_resource::<ConnectionInfo>().add_systems(Update, collect_chat_and_toasts);
        let said = |room: &str, id: &str, ts: u64| ChatMessage { id: id.into(), room: room.into(), from: "u2".into(), name: "Bea".into(), text: format!("{id} in {room}"), ts };
        let enter = |app: &mut App, room: &str, name: &str| app.world_mut().resource_mut::<ConnectionInfo>().status = ConnectionStatus::InRoom { room: room.into(), room_name: name.into() };
        enter(&mut app, "r_1", "lobby");
        app.world_mut().write_message(ChatUpdate::Message(said("r_1", "a", 1)));
        app.update();
        let texts = |app: &App| app.world().resource::<HudState>().chat.lines().map(|l| l.text.clone()).collect::<Vec<_>>();
        assert_eq!(texts(&app), ["a in r_1"]);
        // Off to the garden: a line of the lobby's still on its way, and the garden's history.
        enter(&mut app, "r_2", "garden");
        app.world_mut().write_message(ChatUpdate::Message(said("r_1", "late", 2)));
        app.world_mut().write_message(ChatUpdate::History(vec![said("r_1", "old", 0), said("r_2", "g", 3)]));
        app.update();
        assert_eq!(texts(&app), ["You are in garden now.", "g in r_2"]);
    }

    #[test]
    fn the_chat_shrinks_to_stay_clear_of_the_stats_panel_in_a_short_window() {
        // A tall window, or no stats panel: the full height.
        assert_eq!(chat_lines_height(720.0, Some(200.0), Some(90.0)), CHAT_LINES_MAX);
        assert_eq!(chat_lines_height(360.0, None, Some(90.0)), CHAT_LINES_MAX);
        // 640x360 with the stats panel to 200: what is left between them.
        let lines = chat_lines_height(360.0, Some(200.0), Some(90.0));
        assert_eq!(lines, 360.0 - HUD_GAP - (200.0 + HUD_GAP) - 90.0);
        assert!(360.0 - HUD_GAP - 90.0 - lines >= 200.0 + HUD_GAP, "the chat's top is below the panel");
        // Shorter still: two lines rather than none.
        assert_eq!(chat_lines_height(240.0, Some(200.0), Some(90.0)), CHAT_LINES_MIN);
    }

    #[test]
    fn who_is_here_lists_you_first_then_the_others_by_name() {
        let others = ["bot 2", "Ada", "Bot 10", "zed"].map(String::from);
        assert_eq!(here_now("Me", &others), "Me (you), Ada, bot 2, Bot 10, zed", "case aside, numbers as numbers");
        assert_eq!(here_now("Me", &[]), "Me (you)");
    }

    #[test]
    fn overlapping_names_keep_the_nearest_whatever_the_order() {
        // Two names at one spot, the farther listed first.
        assert_eq!(uncluttered(&[plate(100.0, 100.0, 9.0), plate(110.0, 104.0, 3.0)]), [1]);
        assert_eq!(uncluttered(&[plate(110.0, 104.0, 3.0), plate(100.0, 100.0, 9.0)]), [0]);
    }

    #[test]
    fn names_apart_are_all_drawn_nearest_first() {
        let shown = uncluttered(&[plate(0.0, 0.0, 5.0), plate(200.0, 0.0, 2.0), plate(0.0, 100.0, 8.0)]);
        assert_eq!(shown, [1, 0, 2]);
    }

    #[test]
    fn a_hidden_name_does_not_hide_others() {
        // A overlaps B, B overlaps C, A and C are clear of each other: B
        // (between them, not nearest) goes, C stays.
        let shown = uncluttered(&[plate(0.0, 0.0, 1.0), plate(50.0, 0.0, 2.0), plate(100.0, 0.0, 3.0)]);
        assert_eq!(shown, [0, 2]);
    }

    #[test]
    fn names_closer_than_the_gap_count_as_overlapping() {
        // 1 point apart, less than the gap.
        let shown = uncluttered(&[plate(0.0, 0.0, 1.0), plate(61.0, 0.0, 2.0)]);
        assert_eq!(shown, [0]);
        let shown = uncluttered(&[plate(0.0, 0.0, 1.0), plate(60.0 + NAMEPLATE_GAP + 0.5, 0.0, 2.0)]);
        assert_eq!(shown, [0, 1]);
    }

    #[test]
    fn f2_cycles_every_preset_then_auto() {
        let mut c = PresetChoice::Fixed(QualityPreset::Low);
        let mut seen = vec![c];
        for _ in 0..5 {
            c = next_choice(c);
            seen.push(c);
        }
        assert_eq!(seen.iter().map(ToString::to_string).collect::<Vec<_>>(), ["low", "medium", "high", "ultra", "auto", "low"]);
    }

    #[test]
    fn choosing_a_preset_applies_and_saves_it() {
        let dir = std::env::temp_dir().join(format!("plaza-hud-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut file = SettingsFile::open(Some(dir.join("settings.toml")));
        let mut quality = ActiveQuality::new(PresetChoice::Fixed(QualityPreset::High));
        let mut hud = HudState::default();
        choose_preset(PresetChoice::Fixed(QualityPreset::Low), &mut quality, Some(&mut file), &mut hud);
        assert_eq!(quality.settings.preset, QualityPreset::Low);
        assert!(hud.save_error.is_none());
        let saved = crate::settings::Settings::load(&dir.join("settings.toml")).unwrap();
        assert_eq!(saved.preset, Some(PresetChoice::Fixed(QualityPreset::Low)));
    }
}
