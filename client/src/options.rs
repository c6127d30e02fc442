//! Command-line flags and environment variables (see the contract's
//! "Client: plaza" table). Flags beat environment variables, which beat the
//! settings file ([`crate::settings`]), which beats defaults: the switches
//! the file can set are `Option`s here, and [`ClientOptions::resolve`]
//! fills them in. Bad values exit with status 2 and one line naming the flag
//! and the allowed values (clap's behaviour, with our parsers' messages).

use clap::Parser;
use plaza_shared::flags::{HttpBaseError, Switch};
use plaza_shared::quality::{Platform, PresetChoice};
use std::path::PathBuf;

#[derive(Debug, Clone, Parser)]
#[command(name = "plaza", version, about = "Plaza: a social 3D space. Desktop client.")]
pub struct ClientOptions {
    /// Quality preset: low, medium (med), high, ultra, auto. Default: high on desktop.
    #[arg(long, env = "CLIENT_QUALITY_PRESET")]
    pub preset: Option<PresetChoice>,

    /// Level of detail by distance: on/off. Default on.
    #[arg(long, env = "ENABLE_LOD")]
    pub lod: Option<Switch>,

    /// Frustum culling: on/off (off draws everything, to measure its worth). Default on.
    #[arg(long, env = "ENABLE_FRUSTUM_CULLING")]
    pub culling: Option<Switch>,

    /// Send frame-timing telemetry to the server: on/off. Default on.
    #[arg(long, env = "ENABLE_TELEMETRY")]
    pub telemetry: Option<Switch>,

    /// Voice chat: on/off. Default on, off with --headless (nobody listens).
    #[arg(long, env = "PLAZA_VOICE")]
    pub voice: Option<Switch>,

    /// Send your microphone: on/off (off: listen only). Default on. M mutes
    /// and unmutes while playing.
    #[arg(long, env = "PLAZA_MIC")]
    pub mic: Option<Switch>,

    /// Log voice quality-of-service decisions: each listening slot's
    /// playout delay as it changes, and its loss, late and concealed frames
    /// every 5 s (target `plaza::voice::qos`).
    #[arg(long, env = "VOICE_QOS_DEBUG")]
    pub voice_qos_debug: bool,

    /// Speakers or headphones for voice: a device's id as
    /// --list-audio-devices prints it, its name, or a part of the name only
    /// it has. Default: the system's. One that is not there plays on the
    /// default (said in the HUD) until it is plugged in.
    #[arg(long, env = "PLAZA_AUDIO_OUT", value_name = "DEVICE", value_parser = parse_device)]
    pub audio_out: Option<String>,

    /// Microphone for voice, named as for --audio-out. Default: the system's.
    #[arg(long, env = "PLAZA_AUDIO_IN", value_name = "DEVICE", value_parser = parse_device)]
    pub audio_in: Option<String>,

    /// Print the sound devices (speakers and microphones, with their ids)
    /// and exit.
    #[arg(long)]
    pub list_audio_devices: bool,

    /// Server to join, e.g. http://127.0.0.1:7878. Unset: start the embedded
    /// server on 127.0.0.1 (any free port) with bots.
    #[arg(long, env = "PLAZA_SERVER", value_parser = parse_server_url)]
    pub server: Option<String>,

    /// Room to join (an id or a name; a new name creates the room).
    #[arg(long, default_value = "plaza", value_parser = parse_room)]
    pub room: String,

    /// Your display name (1–32 characters). Default: from the settings
    /// file, else "Guest".
    #[arg(long, value_parser = parse_name)]
    pub name: Option<String>,

    /// Bots in the room: with the embedded server they are the server's
    /// bots (default 24); with --server, none unless asked for.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub bots: Option<u32>,

    /// A scripted camera path and crowd (TOML), for benchmarks; see
    /// docs/scenarios.md.
    #[arg(long)]
    pub scenario: Option<PathBuf>,

    /// Start in an OpenXR headset (SteamVR, Monado, WiVRn); falls back to
    /// the desktop view with a notice saying what is missing (the loader,
    /// an active runtime, or a headset).
    #[arg(long)]
    pub xr: bool,

    /// Don't connect to any server (no embedded one either): the plaza
    /// with local bots.
    #[arg(long, conflicts_with = "server")]
    pub offline: bool,

    /// Render offscreen, without a window.
    #[arg(long)]
    pub headless: bool,

    /// Stop after this many frames.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub frames: Option<u32>,

    /// Write a PNG of the last frame here (needs --frames).
    #[arg(long, requires = "frames")]
    pub screenshot: Option<PathBuf>,

    /// Write a JSON frame report here (needs --frames).
    #[arg(long, requires = "frames")]
    pub report: Option<PathBuf>,

    /// Size of the window or offscreen image, WIDTHxHEIGHT (16..=7680 each).
    #[arg(long, default_value = "1280x720", value_parser = parse_resolution)]
    pub resolution: (u32, u32),
}

/// The maximum number of avatars the embedded server's room holds.
pub const EMBEDDED_ROOM_CAPACITY: u32 = plaza_shared::limits::DEFAULT_ROOM_CAPACITY;

impl ClientOptions {
    pub fn platform(&self) -> Platform {
        if self.xr { Platform::Vr } else { Platform::Desktop }
    }

    pub fn preset_choice(&self) -> PresetChoice {
        self.preset.unwrap_or_else(|| self.platform().default_choice())
    }

    pub fn lod_on(&self) -> bool {
        self.lod.unwrap_or(Switch::ON).is_on()
    }

    pub fn culling_on(&self) -> bool {
        self.culling.unwrap_or(Switch::ON).is_on()
    }

    pub fn telemetry_on(&self) -> bool {
        self.telemetry.unwrap_or(Switch::ON).is_on()
    }

    /// Voice, when on: with the microphone or listening only. Off offline
    /// (no server) and by default headless.
    pub fn voice(&self) -> Option<crate::network::VoiceOptions> {
        let on = self.voice.map_or(!self.headless, Switch::is_on) && !self.offline;
        on.then(|| crate::network::VoiceOptions {
            mic: self.mic.unwrap_or(Switch::ON).is_on(),
            qos_debug: self.voice_qos_debug,
            devices: plaza_voice::device_list::DeviceChoice { output: self.audio_out.clone(), input: self.audio_in.clone() },
        })
    }

    /// Bots: the server's with the embedded server (default 24), else local
    /// walkers only when asked for.
    pub fn bots(&self) -> u32 {
        self.bots.unwrap_or(if self.embedded_server() { 24 } else { 0 })
    }

    /// No `--server` and not offline: run the server in-process.
    pub fn embedded_server(&self) -> bool {
        self.server.is_none() && !self.offline
    }

    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| "Guest".into())
    }

    /// Fills what flags and environment left unset from the settings file.
    pub fn resolve(mut self, file: &crate::settings::Settings) -> Self {
        self.preset = self.preset.or(file.preset);
        self.lod = self.lod.or(file.lod.map(Switch));
        self.culling = self.culling.or(file.culling.map(Switch));
        self.telemetry = self.telemetry.or(file.telemetry.map(Switch));
        self.voice = self.voice.or(file.voice.map(Switch));
        self.mic = self.mic.or(file.mic.map(Switch));
        self.audio_out = self.audio_out.or_else(|| file.audio_out.clone());
        self.audio_in = self.audio_in.or_else(|| file.audio_in.clone());
        self.name = self.name.or_else(|| file.name.clone());
        self
    }
}

/// The most a device name or id may run to.
pub const MAX_DEVICE_CHARS: usize = 200;

/// A sound device as a flag names it: not blank, at most
/// [`MAX_DEVICE_CHARS`] characters.
fn parse_device(s: &str) -> Result<String, String> {
    let name = s.trim();
    if name.is_empty() {
        return Err("give a device's id or name (plaza --list-audio-devices lists them), or leave the flag out for the system's default".into());
    }
    if name.chars().count() > MAX_DEVICE_CHARS {
        return Err(format!("a device's id or name is at most {MAX_DEVICE_CHARS} characters; this one has {}", name.chars().count()));
    }
    Ok(name.to_owned())
}

fn parse_server_url(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    match plaza_shared::flags::http_base(s) {
        Ok(_) => Ok(s.to_owned()),
        Err(HttpBaseError::NotHttp) => Err(format!("`{s}` is not a server URL; expected http://HOST:PORT (https is not supported yet)")),
        Err(HttpBaseError::NotHostPort) => Err(format!("`{s}` is not a server URL; expected http://HOST:PORT with no path")),
    }
}

/// A room as `--room` and the settings panel take it: an id or a name.
pub fn parse_room(s: &str) -> Result<String, String> {
    let n = s.chars().count();
    if n == 0 || n > 64 || s.chars().any(char::is_control) {
        return Err(format!("`{s}` is not a room; a room id or name is 1–64 characters without control characters"));
    }
    Ok(s.to_owned())
}

/// A display name as `--name` and the settings panel take it.
pub fn parse_name(s: &str) -> Result<String, String> {
    let n = s.trim().chars().count();
    if n == 0 || n > 32 || s.chars().any(char::is_control) {
        return Err(format!("`{s}` is not a display name; names are 1–32 characters without control characters"));
    }
    Ok(s.trim().to_owned())
}

fn parse_resolution(s: &str) -> Result<(u32, u32), String> {
    let err = || format!("`{s}` is not a resolution; expected WIDTHxHEIGHT, each 16..=7680, e.g. 1280x720");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(err)?;
    let w: u32 = w.trim().parse().map_err(|_| err())?;
    let h: u32 = h.trim().parse().map_err(|_| err())?;
    if !(16..=7680).contains(&w) || !(16..=7680).contains(&h) {
        return Err(err());
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use plaza_shared::quality::QualityPreset;

    use plaza_voice::device_list::DeviceChoice;

    fn parse(args: &[&str]) -> Result<ClientOptions, clap::Error> {
        ClientOptions::try_parse_from(std::iter::once("plaza").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_follow_the_contract() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.preset_choice(), PresetChoice::Fixed(QualityPreset::High));
        assert!(o.lod_on() && o.culling_on() && o.telemetry_on());
        assert!(o.embedded_server());
        assert_eq!(o.bots(), 24);
        assert_eq!(o.room, "plaza");
        assert_eq!(o.resolution, (1280, 720));
        let remote = parse(&["--server", "http://10.0.0.5:7878/"]).unwrap();
        assert_eq!(remote.server.as_deref(), Some("http://10.0.0.5:7878"));
        assert_eq!(remote.bots(), 0, "no bots of our own on a real server");
        assert_eq!(parse(&["--xr"]).unwrap().preset_choice(), PresetChoice::Auto, "auto in VR");
    }

    #[test]
    fn flags_parse() {
        let o = parse(&["--preset", "med", "--lod", "off", "--culling", "false", "--headless", "--frames", "3", "--resolution", "320x200"]).unwrap();
        assert_eq!(o.preset_choice(), PresetChoice::Fixed(QualityPreset::Medium));
        assert!(!o.lod_on() && !o.culling_on() && o.headless);
        assert_eq!((o.frames, o.resolution), (Some(3), (320, 200)));
    }

    #[test]
    fn flags_beat_the_settings_file_which_beats_defaults() {
        let file = crate::settings::Settings { preset: Some(PresetChoice::Fixed(QualityPreset::Low)), lod: Some(false), culling: None, telemetry: Some(false), voice: Some(false), mic: None, voice_volume: None, mic_cleanup: None, mic_gate_db: None, audio_out: Some("Headset".into()), audio_in: None, name: Some("Ada".into()), vr_mirror: None };
        let o = parse(&["--lod", "on"]).unwrap().resolve(&file);
        assert_eq!(o.preset_choice(), PresetChoice::Fixed(QualityPreset::Low), "from the file");
        assert!(o.lod_on(), "the flag wins");
        assert!(o.culling_on(), "the default");
        assert!(!o.telemetry_on());
        assert_eq!(o.display_name(), "Ada");
        assert_eq!(o.voice(), None, "voice off from the file");
        let o = parse(&["--voice", "on", "--mic", "off"]).unwrap().resolve(&file);
        let voice = o.voice().expect("the flag turns voice on");
        assert!(!voice.mic, "the flags win");
        assert_eq!(voice.devices, DeviceChoice { output: Some("Headset".into()), input: None }, "the speakers from the file");
        let o = parse(&["--voice", "on", "--audio-out", "HDMI", "--audio-in", "alsa:hw:1,0"]).unwrap().resolve(&file);
        assert_eq!(o.voice().unwrap().devices, DeviceChoice { output: Some("HDMI".into()), input: Some("alsa:hw:1,0".into()) }, "the flags win");
    }

    #[test]
    fn a_device_flag_must_name_something_short() {
        for (args, says) in [(vec!["--audio-out", "  "], "--list-audio-devices lists them"), (vec!["--audio-in", &"x".repeat(201)], "at most 200 characters; this one has 201")] {
            let err = parse(&args).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            let text = err.to_string();
            assert!(text.contains(args[0]) && text.contains(says), "{text}");
        }
        assert_eq!(parse(&["--audio-out", " USB Headset "]).unwrap().audio_out.as_deref(), Some("USB Headset"), "trimmed");
    }

    #[test]
    fn voice_is_on_with_the_microphone_by_default_and_off_headless_or_offline() {
        assert_eq!(parse(&[]).unwrap().voice(), Some(crate::network::VoiceOptions { mic: true, qos_debug: false, devices: DeviceChoice::default() }), "the system's devices");
        assert_eq!(parse(&["--headless"]).unwrap().voice(), None);
        assert!(parse(&["--headless", "--voice", "on"]).unwrap().voice().is_some(), "asked for");
        assert_eq!(parse(&["--offline", "--voice", "on"]).unwrap().voice(), None, "no server, no voice");
        assert!(parse(&["--voice-qos-debug"]).unwrap().voice().unwrap().qos_debug);
        let text = parse(&["--mic", "loud"]).unwrap_err().to_string();
        assert!(text.contains("--mic") && text.contains("on, off"), "{text}");
    }

    #[test]
    fn bad_values_name_the_flag_and_the_allowed_values() {
        let err = parse(&["--preset", "extreme"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(text.contains("--preset") && text.contains("low, medium"), "{text}");

        let text = parse(&["--lod", "maybe"]).unwrap_err().to_string();
        assert!(text.contains("--lod") && text.contains("on, off"), "{text}");

        let text = parse(&["--resolution", "big"]).unwrap_err().to_string();
        assert!(text.contains("WIDTHxHEIGHT"), "{text}");

        assert!(parse(&["--frames", "0"]).is_err());
        let text = parse(&["--server", "ws://x"]).unwrap_err().to_string();
        assert!(text.contains("--server") && text.contains("http://HOST:PORT"), "{text}");
        assert!(parse(&["--room", ""]).is_err());
        assert!(parse(&["--name", &"n".repeat(33)]).is_err());
        assert!(parse(&["--offline", "--server", "http://a:1"]).is_err());
        assert!(parse(&["--screenshot", "x.png"]).is_err(), "--screenshot needs --frames");
    }
}
