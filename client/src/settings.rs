//! The settings file, `$XDG_CONFIG_HOME/plaza/settings.toml` (or
//! `~/.config/plaza/settings.toml`; `PLAZA_CONFIG_DIR` overrides the folder).
//! Flags and environment variables beat it; it beats the defaults.
//!
//! ```toml
//! preset = "high"      # low, medium, high, ultra, auto
//! lod = true
//! culling = true
//! telemetry = true
//! voice = true         # voice chat
//! mic = true           # false: listen only
//! voice_volume = 1.0   # 0–2
//! mic_cleanup = true   # echo cancellation, noise suppression, automatic gain
//! mic_gate_db = -46.0  # your voice goes out while at least this loud (−60 to −20 dBFS)
//! audio_out = "alsa:hw:CARD=Headset,DEV=0"   # speakers (id or name); unset: the system's
//! audio_in = "alsa:hw:CARD=Headset,DEV=0"    # microphone, the same way
//! name = "Ada"
//! vr_mirror = true     # in VR, the window shows the headset's view too
//! ```
//!
//! A file that can't be read or parsed is reported in one line and ignored;
//! it is never overwritten: before the first save it is moved aside to
//! `settings.toml.bad`, so nothing the user wrote is lost.

use bevy::prelude::*;
use plaza_shared::quality::PresetChoice;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The loudest the voices may be set (twice as sent).
pub const MAX_VOICE_VOLUME: f32 = 2.0;

/// What the file may set. Unknown keys are an error (a typo would
/// otherwise be silently ignored).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default, with = "preset_text", skip_serializing_if = "Option::is_none")]
    pub preset: Option<PresetChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lod: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub culling: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mic: Option<bool>,
    /// Voices' volume, 0–2 (1: as sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_volume: Option<f32>,
    /// Echo cancellation, noise suppression and automatic gain on the
    /// microphone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mic_cleanup: Option<bool>,
    /// The microphone's gate, dBFS (−60 to −20; outside is held to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mic_gate_db: Option<f32>,
    /// Speakers and microphone for voice: a device's id (what the
    /// settings panel saves) or name; unset, the system's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_out: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_in: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// In VR, show the headset's view in the desktop window too (a third
    /// view to draw); off, the window keeps the HUD and chat only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vr_mirror: Option<bool>,
}

/// Presets as the flags spell them (`"med"` and `"auto"` included).
mod preset_text {
    use plaza_shared::quality::PresetChoice;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<PresetChoice>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(p) => s.serialize_str(&p.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PresetChoice>, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("can't read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid settings: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("can't write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Where the file lives.
pub fn default_path() -> Option<PathBuf> {
    let dir = std::env::var_os("PLAZA_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()).map(|d| PathBuf::from(d).join("plaza")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/plaza")))?;
    Some(dir.join("settings.toml"))
}

impl Settings {
    /// The file's settings; a missing file is the defaults.
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Settings::default()),
            Err(source) => return Err(SettingsError::Read { path: path.to_owned(), source }),
        };
        let settings: Settings = toml::from_str(&text).map_err(|e| SettingsError::Parse { path: path.to_owned(), message: e.message().to_owned() })?;
        if let Some(name) = &settings.name {
            let n = name.trim().chars().count();
            if n == 0 || n > 32 || name.chars().any(char::is_control) {
                return Err(SettingsError::Parse { path: path.to_owned(), message: "`name` must be 1–32 characters without control characters".into() });
            }
        }
        if let Some(v) = settings.voice_volume
            && !(0.0..=MAX_VOICE_VOLUME).contains(&v)
        {
            return Err(SettingsError::Parse { path: path.to_owned(), message: format!("`voice_volume` must be 0–{MAX_VOICE_VOLUME} (1 is as sent); got {v}") });
        }
        Ok(settings)
    }

    /// Writes the file (atomically: a temp file renamed over it).
    pub fn save(&self, path: &Path) -> Result<(), SettingsError> {
        let write = |source| SettingsError::Write { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        let text = format!("# Plaza settings; flags and environment variables override these.\n{}", toml::to_string(self).expect("settings serialize"));
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(write)?;
        std::fs::rename(&tmp, path).map_err(write)
    }
}

/// The settings file as the running client knows it.
#[derive(Resource, Debug, Clone)]
pub struct SettingsFile {
    pub path: Option<PathBuf>,
    /// What the file said (defaults when missing or broken).
    pub settings: Settings,
    /// The file exists but couldn't be used: move it aside before saving.
    pub broken: bool,
}

impl SettingsFile {
    /// Loads from `path`, reporting a broken file in one line.
    pub fn open(path: Option<PathBuf>) -> SettingsFile {
        let Some(path) = path else { return SettingsFile { path: None, settings: Settings::default(), broken: false } };
        match Settings::load(&path) {
            Ok(settings) => SettingsFile { path: Some(path), settings, broken: false },
            Err(e) => {
                eprintln!("plaza: {e}; using defaults (the file is kept; fix it or delete it)");
                SettingsFile { path: Some(path), settings: Settings::default(), broken: true }
            }
        }
    }

    /// Changes and saves; a broken file is first kept as `settings.toml.bad`.
    pub fn update(&mut self, change: impl FnOnce(&mut Settings)) -> Result<(), SettingsError> {
        change(&mut self.settings);
        let Some(path) = &self.path else { return Ok(()) };
        if self.broken {
            let aside = path.with_extension("toml.bad");
            std::fs::rename(path, &aside).map_err(|source| SettingsError::Write { path: aside.clone(), source })?;
            warn!(kept = %aside.display(), "the broken settings file was moved aside");
            self.broken = false;
        }
        self.settings.save(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plaza_shared::quality::QualityPreset;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("plaza-settings-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("settings.toml")
    }

    #[test]
    fn saves_and_loads_back() {
        let path = temp("roundtrip");
        assert_eq!(Settings::load(&path).unwrap(), Settings::default(), "missing is defaults");
        let s = Settings { preset: Some(PresetChoice::Auto), lod: Some(false), culling: None, telemetry: Some(true), voice: None, mic: Some(false), voice_volume: Some(0.5), mic_cleanup: Some(false), mic_gate_db: Some(-40.0), audio_out: Some("alsa:hw:CARD=Headset,DEV=0".into()), audio_in: None, name: Some("Ada".into()), vr_mirror: Some(false) };
        s.save(&path).unwrap();
        assert_eq!(Settings::load(&path).unwrap(), s);
        std::fs::write(&path, "preset = \"med\"\n").unwrap();
        assert_eq!(Settings::load(&path).unwrap().preset, Some(PresetChoice::Fixed(QualityPreset::Medium)));
    }

    #[test]
    fn bad_files_say_what_is_wrong_and_are_never_lost() {
        let path = temp("bad");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        for (text, expect) in [("preset = \"extreme\"", "low, medium"), ("lod = \"maybe\"", "bool"), ("colour = 3", "colour"), ("name = \"\"", "1–32"), ("voice_volume = 3.0", "0–2"), ("voice_volume = -1", "0–2"), ("[[[", "")] {
            std::fs::write(&path, text).unwrap();
            let err = Settings::load(&path).unwrap_err().to_string();
            assert!(err.contains("settings.toml") && err.contains(expect), "{text}: {err}");
        }
        std::fs::write(&path, "preset = \"extreme\"\n# mine\n").unwrap();
        let mut file = SettingsFile::open(Some(path.clone()));
        assert!(file.broken);
        assert_eq!(file.settings, Settings::default());
        file.update(|s| s.preset = Some(PresetChoice::Fixed(QualityPreset::Low))).unwrap();
        assert_eq!(std::fs::read_to_string(path.with_extension("toml.bad")).unwrap(), "preset = \"extreme\"\n# mine\n", "the user's file is kept");
        assert_eq!(Settings::load(&path).unwrap().preset, Some(PresetChoice::Fixed(QualityPreset::Low)));
    }
}
