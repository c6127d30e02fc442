//! Voice chat in the ECS: what the network thread's voice call
//! (`network::voice`) needs from the world and what it says back.
//!
//! - [`VoiceSystems::Status`]: the call's status into [`VoiceInfo`] (for the
//!   HUD: on, connecting, failed and why; who is speaking).
//! - [`VoiceSystems::Input`]: M mutes and unmutes the microphone (not while
//!   typing in chat); the microphone's switches go to the call; the sound
//!   devices chosen go to the device thread, what it has open (and a
//!   chosen device it could not find) comes back, and the devices there
//!   are are listed while the settings panel is open.
//! - [`VoiceSystems::Scene`]: where the listener is (your avatar, facing
//!   the camera's way) and where the avatars in the listening slots are,
//!   for the spatial mix.
//!
//! Without [`VoiceLink`] (voice off, offline, no sound device) these do
//! nothing, and [`VoiceInfo`] says why.

use crate::network::voice::{MicControl, VoiceScene, VoiceState, VoiceStatus};
use crate::network::{NetworkSystems, Toast, VoiceLink, VoiceUnavailable};
use crate::network::connection::Notice;
use plaza_voice::device_list::{AudioDevices, DeviceChoice};
use plaza_voice::devices::DeviceState;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use crate::player::{LocalPlayer, PlayerControl};
use crate::quality::MainCamera;
use crate::remote::{RemoteAvatars, RemoteSystems, RemoteUser};
use crate::settings::{MAX_VOICE_VOLUME, SettingsFile};
use bevy::prelude::*;
use plaza_voice::spatial::Listener;

/// Where a voice comes from on an avatar: about mouth height.
const MOUTH_HEIGHT: f32 = 1.6;
/// The key that mutes and unmutes the microphone.
pub const MUTE_KEY: KeyCode = KeyCode::KeyM;
/// Held while muted, the microphone is live (push to talk).
pub const TALK_KEY: KeyCode = KeyCode::KeyT;

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum VoiceSystems {
    Status,
    Input,
    Scene,
}

/// Voice as the HUD shows it, and what the listener chose.
#[derive(Resource, Debug, Clone)]
pub struct VoiceInfo {
    pub status: VoiceStatus,
    /// Your microphone is muted.
    pub muted: bool,
    /// Muted, but the talk key is held: the microphone is live.
    pub pushing_to_talk: bool,
    /// Every voice's volume, 0–[`MAX_VOICE_VOLUME`] (1: as sent).
    pub volume: f32,
    /// Echo cancellation and noise suppression on the microphone.
    pub mic_cleanup: bool,
    /// Your microphone goes out while at least this loud (dBFS).
    pub mic_gate_db: f32,
    /// Users (by user id, so it holds across their reconnects) whose voices
    /// you don't want to hear.
    pub muted_users: std::collections::BTreeSet<String>,
    /// Users whose voices you turned up or down, 0–[`MAX_VOICE_VOLUME`]
    /// (by user id, as above; for this run of the client).
    pub user_volumes: std::collections::BTreeMap<String, f32>,
    /// Voice was asked for and can't run (no sound device): why.
    pub unavailable: Option<String>,
    /// Voice runs (a link to the network thread exists).
    pub enabled: bool,
    /// The speakers and microphone.
    pub devices: SoundDevices,
    /// The headset is on: the mute is a controller button, not a key.
    pub in_headset: bool,
}

/// The sound devices, as the settings panel shows and changes them.
#[derive(Debug, Clone, Default)]
pub struct SoundDevices {
    /// What was chosen (`None`: the system's default): the panel changes it
    /// and [`sound_devices`] has it opened.
    pub choice: DeviceChoice,
    /// What is open, and any trouble with the choice.
    pub state: DeviceState,
    /// The devices there are, once listed.
    pub list: Option<AudioDevices>,
    /// Set while the settings panel is open: list the devices (again once
    /// `list` is cleared).
    pub want_list: bool,
}

/// How often what the device thread has open is read.
const DEVICE_STATE_EVERY: Duration = Duration::from_millis(500);

impl Default for VoiceInfo {
    fn default() -> Self {
        VoiceInfo {
            status: VoiceStatus::default(),
            muted: false,
            pushing_to_talk: false,
            volume: 1.0,
            mic_cleanup: true,
            mic_gate_db: crate::network::voice::default_gate_db(),
            muted_users: Default::default(),
            user_volumes: Default::default(),
            unavailable: None,
            enabled: false,
            devices: SoundDevices::default(),
            in_headset: false,
        }
    }
}

impl VoiceInfo {
    /// One line for the HUD, or none when voice was not asked for.
    pub fn line(&self) -> Option<String> {
        if let Some(why) = &self.unavailable {
            return Some(format!("Voice off: {why}"));
        }
        if !self.enabled {
            return None;
        }
        let mic = match (self.status.mic, self.muted, self.in_headset) {
            (false, _, _) => "no microphone (listening)",
            (true, true, _) if self.pushing_to_talk => "talking (T held)",
            (true, true, false) => "muted (M unmutes, hold T to talk)",
            (true, true, true) => "muted (the left menu button unmutes)",
            (true, false, false) if self.status.self_speaking => "talking (M mutes)",
            (true, false, true) if self.status.self_speaking => "talking (the left menu button mutes)",
            (true, false, false) => "mic on (M mutes)",
            (true, false, true) => "mic on (the left menu button mutes)",
        };
        Some(match &self.status.state {
            VoiceState::Off => "Voice: joins with the room".into(),
            VoiceState::Connecting => format!("Voice: connecting… · {mic}"),
            VoiceState::On => format!("Voice: on · {mic}"),
            VoiceState::Failed(why) => format!("Voice: lost ({why}); retrying"),
        })
    }

    pub fn speaking(&self, avatar: u32) -> bool {
        self.status.speaking.contains(&avatar)
    }
}

pub struct VoicePlugin;

impl Plugin for VoicePlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<VoiceInfo>()
            .add_systems(Startup, from_settings)
            .add_systems(PreUpdate, read_status.in_set(VoiceSystems::Status).after(NetworkSystems::Receive))
            .add_systems(Update, ((mute_key, sound_devices).in_set(VoiceSystems::Input), share_scene.in_set(VoiceSystems::Scene).after(RemoteSystems::Interpolate)));
    }
}

fn from_settings(file: Option<Res<SettingsFile>>, mut info: ResMut<VoiceInfo>) {
    let Some(settings) = file.map(|f| f.settings.clone()) else { return };
    if let Some(v) = settings.voice_volume {
        info.volume = v.clamp(0.0, MAX_VOICE_VOLUME);
    }
    if let Some(on) = settings.mic_cleanup {
        info.mic_cleanup = on;
    }
    if let Some(db) = settings.mic_gate_db {
        info.mic_gate_db = plaza_voice::level::clamp_gate_db(db);
    }
}

/// The status, copied only when the call changed it (the receiver is kept:
/// a fresh clone would see every change again, every frame).
fn read_status(
    link: Option<Res<VoiceLink>>,
    unavailable: Option<Res<VoiceUnavailable>>,
    mut status: Local<Option<tokio::sync::watch::Receiver<VoiceStatus>>>,
    mut info: ResMut<VoiceInfo>,
) {
    if let Some(why) = unavailable
        && info.unavailable.is_none()
    {
        info.unavailable = Some(why.0.clone());
    }
    let Some(link) = link else { return };
    let status = status.get_or_insert_with(|| {
        let mut first = link.0.status.clone();
        first.mark_changed();
        first
    });
    if status.has_changed().unwrap_or(false) {
        info.enabled = true;
        info.status = status.borrow_and_update().clone();
    }
}

/// M flips the microphone; T held while muted talks (push to talk). The
/// switches, whatever changed them (a key, or the settings panel), reach
/// the call.
fn mute_key(keys: Option<Res<ButtonInput<KeyCode>>>, control: Res<PlayerControl>, link: Option<Res<VoiceLink>>, mut info: ResMut<VoiceInfo>) {
    let Some(link) = link else { return };
    let keys = keys.filter(|_| !control.typing);
    if keys.as_ref().is_some_and(|k| k.just_pressed(MUTE_KEY)) {
        info.muted = !info.muted;
    }
    info.pushing_to_talk = info.muted && keys.is_some_and(|k| k.pressed(TALK_KEY));
    let control = MicControl { muted: info.muted && !info.pushing_to_talk, cleanup: info.mic_cleanup, gate_db: info.mic_gate_db };
    if link.0.mic.send_if_modified(|m| std::mem::replace(m, control) != control) {
        debug!(muted = control.muted, cleanup = control.cleanup, gate_db = control.gate_db, "microphone");
    }
}

/// `plaza --list-audio-devices`: each device's name and the id to give
/// `--audio-out` / `--audio-in` (or a part of the name only it has).
pub fn device_listing(devices: &AudioDevices) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (title, list, flag) in [("Speakers", &devices.outputs, "--audio-out"), ("Microphones", &devices.inputs, "--audio-in")] {
        let _ = writeln!(out, "{title} ({flag}):");
        if list.is_empty() {
            let _ = writeln!(out, "  none found");
        }
        for d in list {
            let _ = writeln!(out, "  {}\n      id: {}", d.name, d.id);
        }
    }
    if devices.outputs.is_empty() && devices.inputs.is_empty() {
        let _ = writeln!(out, "No sound system answered (no sound card, and no PulseAudio, PipeWire or ALSA configuration).");
    }
    out
}

/// Listing the sound devices, off the frame: ALSA takes a good part of a
/// second to answer.
#[derive(Debug, Default)]
pub struct DeviceLister {
    listed: Arc<Mutex<Option<AudioDevices>>>,
    in_flight: bool,
}

impl DeviceLister {
    fn start(&mut self) {
        if self.in_flight {
            return;
        }
        self.in_flight = true;
        let listed = self.listed.clone();
        let spawned = std::thread::Builder::new().name("plaza-audio-list".into()).spawn(move || {
            let devices = plaza_voice::devices::list();
            *listed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(devices);
        });
        if let Err(e) = spawned {
            warn!(cause = %e, "the sound devices can't be listed");
            *self.listed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(AudioDevices::default());
        }
    }

    fn take(&mut self) -> Option<AudioDevices> {
        let done = self.listed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if done.is_some() {
            self.in_flight = false;
        }
        done
    }
}

/// The devices chosen, to the device thread (once each change); what it
/// has open, back (a toast when a chosen one is missing); the list of
/// devices while the settings panel wants it.
fn sound_devices(
    link: Option<Res<VoiceLink>>,
    mut info: ResMut<VoiceInfo>,
    mut applied: Local<Option<DeviceChoice>>,
    mut read_at: Local<Option<Instant>>,
    mut lister: Local<DeviceLister>,
    mut toasts: MessageWriter<Toast>,
) {
    let Some(link) = link else { return };
    let audio = &link.0.audio;
    // The first time: what the devices were opened with (flags, settings).
    let applied = applied.get_or_insert_with(|| {
        info.devices.choice = link.0.devices.clone();
        link.0.devices.clone()
    });
    if info.devices.choice != *applied {
        *applied = info.devices.choice.clone();
        info!(speakers = ?applied.output, microphone = ?applied.input, "sound devices chosen");
        audio.choose(applied.clone());
    }
    if read_at.is_none_or(|at| at.elapsed() >= DEVICE_STATE_EVERY) {
        *read_at = Some(Instant::now());
        let state = audio.state();
        if state != info.devices.state {
            if let Some(problem) = state.problem.as_ref().filter(|p| info.devices.state.problem.as_ref() != Some(*p)) {
                toasts.write(Toast(Notice::AudioDevice { problem: problem.clone() }));
            }
            info.devices.state = state;
        }
    }
    if !info.devices.want_list {
        // Listed afresh the next time the panel opens; written only when there
        // is something to clear, so the resource is not marked changed every frame.
        if info.devices.list.is_some() {
            info.devices.list = None;
        }
    } else if info.devices.list.is_none() {
        lister.start();
    }
    if let Some(devices) = lister.take()
        && info.devices.want_list
    {
        info.devices.list = Some(devices);
    }
}

/// The listener (your avatar, facing the camera's way) and the avatars the
/// slots carry; sent only when it changed.
fn share_scene(
    link: Option<Res<VoiceLink>>,
    info: Res<VoiceInfo>,
    camera: Query<&Transform, With<MainCamera>>,
    me: Query<&Transform, With<LocalPlayer>>,
    remote: Res<RemoteAvatars>,
    avatars: Query<(&Transform, Option<&RemoteUser>), Without<MainCamera>>,
) {
    let Some(link) = link else { return };
    let Ok(eye) = camera.single() else { return };
    let at = me.single().map_or(eye.translation, |t| t.translation + Vec3::Y * MOUTH_HEIGHT);
    let right = eye.right();
    let heard = || info.status.slots.iter().flatten().filter_map(|id| remote.by_id.get(id).and_then(|e| avatars.get(*e).ok()).map(|a| (*id, a)));
    // Everyone in the room by a muted user, heard now or not: the SFU
    // keeps them out of the slots.
    let mut muted: Vec<u32> = remote
        .by_id
        .iter()
        .filter(|(_, e)| avatars.get(**e).is_ok_and(|(_, user)| user.is_some_and(|u| info.muted_users.contains(&u.0))))
        .map(|(id, _)| *id)
        .collect();
    muted.sort_unstable();
    let scene = VoiceScene {
        listener: Listener { position: at.to_array(), right: right.to_array() },
        avatars: heard().map(|(id, (t, _))| (id, (t.translation + Vec3::Y * MOUTH_HEIGHT).to_array())).collect(),
        volumes: heard().filter_map(|(id, (_, user))| user.and_then(|u| info.user_volumes.get(&u.0)).map(|v| (id, *v))).collect(),
        muted,
        volume: info.volume,
    };
    link.0.scene.send_if_modified(|s| {
        let changed = *s != scene;
        if changed {
            *s = scene;
        }
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::voice::voice_link;
    use plaza_voice::devices::AudioIo;

    /// An app with the voice plugin's input and a link to nowhere; returns
    /// the app and what the call would see of the mute switch.
    fn keyed_app() -> (App, tokio::sync::watch::Receiver<MicControl>) {
        let mut app = App::new();
        app.add_plugins(MinimalPlugins).init_resource::<ButtonInput<KeyCode>>().insert_resource(PlayerControl::default());
        let (control, port) = voice_link(AudioIo::detached(true), false, Default::default());
        app.insert_resource(VoiceLink(control)).init_resource::<VoiceInfo>().add_systems(Update, mute_key);
        (app, port.mic)
    }

    fn press(app: &mut App, key: KeyCode, down: bool) {
        let mut keys = app.world_mut().resource_mut::<ButtonInput<KeyCode>>();
        keys.clear();
        if down { keys.press(key) } else { keys.release(key) }
        app.update();
    }

    #[test]
    fn m_mutes_and_t_held_talks_while_muted_but_not_while_typing() {
        let (mut app, muted) = keyed_app();
        app.update();
        assert!(!muted.borrow().muted, "live by default");
        press(&mut app, MUTE_KEY, true);
        assert!(muted.borrow().muted, "M mutes");
        press(&mut app, MUTE_KEY, false);
        press(&mut app, TALK_KEY, true);
        assert!(!muted.borrow().muted, "T held talks");
        assert!(app.world().resource::<VoiceInfo>().pushing_to_talk);
        press(&mut app, TALK_KEY, false);
        assert!(muted.borrow().muted, "T let go: muted again");
        app.world_mut().resource_mut::<PlayerControl>().typing = true;
        press(&mut app, MUTE_KEY, true);
        assert!(muted.borrow().muted, "typing an M in chat does not unmute");
        press(&mut app, TALK_KEY, true);
        assert!(muted.borrow().muted, "nor does a T");
        assert!(muted.borrow().cleanup, "the microphone is cleaned by default");
        app.world_mut().resource_mut::<VoiceInfo>().mic_cleanup = false;
        app.update();
        assert!(!muted.borrow().cleanup, "switched off in the settings: the call hears of it");
    }

    #[test]
    fn a_device_chosen_in_the_panel_is_opened_once_and_the_list_comes_while_the_panel_is_open() {
        let mut app = App::new();
        app.add_plugins(MinimalPlugins).add_message::<Toast>();
        let opened_with = DeviceChoice { output: Some("Headset".into()), input: None };
        let (control, _port) = voice_link(AudioIo::detached(true), false, opened_with.clone());
        let audio = control.audio.clone();
        app.insert_resource(VoiceLink(control)).init_resource::<VoiceInfo>().add_systems(Update, sound_devices);
        app.update();
        assert_eq!(app.world().resource::<VoiceInfo>().devices.choice, opened_with, "the panel starts from what was opened");
        assert_eq!(audio.chosen(), DeviceChoice::default(), "nothing asked of the device thread yet");
        app.world_mut().resource_mut::<VoiceInfo>().devices.choice.output = Some("alsa:null".into());
        app.update();
        app.update();
        assert_eq!(audio.chosen(), DeviceChoice { output: Some("alsa:null".into()), input: None }, "the new choice, asked for");
        assert_eq!(app.world().resource::<VoiceInfo>().devices.state.description, "no audio device", "what is open comes back");

        assert!(app.world().resource::<VoiceInfo>().devices.list.is_none());
        app.world_mut().resource_mut::<VoiceInfo>().devices.want_list = true;
        let deadline = Instant::now() + Duration::from_secs(10);
        while app.world().resource::<VoiceInfo>().devices.list.is_none() {
            assert!(Instant::now() < deadline, "the devices were not listed within 10 s");
            std::thread::sleep(Duration::from_millis(20));
            app.update();
        }
        app.world_mut().resource_mut::<VoiceInfo>().devices.want_list = false;
        app.update();
        assert!(app.world().resource::<VoiceInfo>().devices.list.is_none(), "listed afresh next time");
    }

    #[test]
    fn the_device_listing_gives_each_name_and_its_id() {
        use plaza_voice::device_list::AudioDevice;
        let headset = AudioDevice { id: "alsa:hw:CARD=Headset,DEV=0".into(), name: "USB Headset".into() };
        let text = device_listing(&AudioDevices { outputs: vec![headset.clone()], inputs: vec![] });
        assert_eq!(text, "Speakers (--audio-out):\n  USB Headset\n      id: alsa:hw:CARD=Headset,DEV=0\nMicrophones (--audio-in):\n  none found\n");
        assert!(device_listing(&AudioDevices::default()).contains("No sound system answered"));
    }

    #[test]
    fn the_hud_line_says_where_voice_stands() {
        let mut info = VoiceInfo::default();
        assert_eq!(info.line(), None, "not asked for");
        info.unavailable = Some("no audio output device".into());
        assert_eq!(info.line().unwrap(), "Voice off: no audio output device");
        let mut info = VoiceInfo { enabled: true, ..Default::default() };
        assert_eq!(info.volume, 1.0, "as sent by default");
        info.status.mic = true;
        info.status.state = VoiceState::On;
        assert_eq!(info.line().unwrap(), "Voice: on · mic on (M mutes)");
        info.muted = true;
        assert_eq!(info.line().unwrap(), "Voice: on · muted (M unmutes, hold T to talk)");
        info.pushing_to_talk = true;
        assert_eq!(info.line().unwrap(), "Voice: on · talking (T held)");
        info.pushing_to_talk = false;
        info.status.state = VoiceState::Failed("the voice connection failed".into());
        assert_eq!(info.line().unwrap(), "Voice: lost (the voice connection failed); retrying");
    }
}
