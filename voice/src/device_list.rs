//! Which sound devices a user means. People name a device by what their
//! system calls it ("USB Headset"), scripts by the id it is listed under
//! (`plaza --list-audio-devices`), and the settings file keeps the id, which
//! stays the same across runs where names can repeat. No cpal here: the
//! listing itself is [`crate::devices::list`].

use std::fmt::Write;

/// One device as the system lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioDevice {
    /// Stable across runs (cpal's `DeviceId`, e.g. `alsa:hw:CARD=Headset,DEV=0`).
    pub id: String,
    /// What the system calls it.
    pub name: String,
}

/// The devices there are, each direction's in the system's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AudioDevices {
    pub outputs: Vec<AudioDevice>,
    pub inputs: Vec<AudioDevice>,
}

/// What to open: `None` is the system's default device. Otherwise a
/// device's id, or its name, or a part of a name only one device has
/// (see [`pick`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceChoice {
    pub output: Option<String>,
    pub input: Option<String>,
}

/// Why a wanted device is not one of those listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// `known` is for the log and the command line; the message stays
    /// short enough for the settings panel.
    #[error("no {what} called \"{wanted}\" is connected")]
    NotFound { what: &'static str, wanted: String, known: Vec<String> },
    #[error("\"{wanted}\" could be any of {}; give more of the name, or the id", names(matches))]
    Ambiguous { wanted: String, matches: Vec<String> },
}

fn names(devices: &[String]) -> String {
    let mut out = String::new();
    for (i, name) in devices.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(out, "{sep}\"{name}\"");
    }
    out
}

impl PickError {
    /// The devices there are, as a sentence: for a log line.
    pub fn known(&self) -> String {
        match self {
            PickError::NotFound { known, .. } if known.is_empty() => "there are none".to_owned(),
            PickError::NotFound { known, .. } if known.len() == 1 => format!("there is {}", names(known)),
            PickError::NotFound { known, .. } => format!("there are {}", names(known)),
            PickError::Ambiguous { matches, .. } => format!("it matches {}", names(matches)),
        }
    }
}

/// The device `wanted` means, of `devices` (`what` names the direction in
/// the error: "speaker", "microphone"). In order: an id, a name, a name
/// with its case aside, then the one device whose name or id contains it
/// (case aside). A part that more than one has is ambiguous, not the first.
pub fn pick<'a>(what: &'static str, devices: &'a [AudioDevice], wanted: &str) -> Result<&'a AudioDevice, PickError> {
    let wanted_trimmed = wanted.trim();
    if let Some(d) = devices.iter().find(|d| d.id == wanted_trimmed) {
        return Ok(d);
    }
    if let Some(d) = devices.iter().find(|d| d.name == wanted_trimmed) {
        return Ok(d);
    }
    let lower = wanted_trimmed.to_lowercase();
    if let Some(d) = devices.iter().find(|d| d.name.to_lowercase() == lower) {
        return Ok(d);
    }
    let matches: Vec<&AudioDevice> = if lower.is_empty() {
        Vec::new()
    } else {
        devices.iter().filter(|d| d.name.to_lowercase().contains(&lower) || d.id.to_lowercase().contains(&lower)).collect()
    };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(PickError::NotFound { what, wanted: wanted.to_owned(), known: devices.iter().map(|d| d.name.clone()).collect() }),
        many => Err(PickError::Ambiguous { wanted: wanted.to_owned(), matches: many.iter().map(|d| d.name.clone()).collect() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices() -> Vec<AudioDevice> {
        [("alsa:default", "Default Audio Device"), ("alsa:hw:CARD=Headset,DEV=0", "USB Headset"), ("alsa:hw:CARD=PCH,DEV=0", "HDA Intel PCH, ALC897 Analog"), ("alsa:hw:CARD=PCH,DEV=3", "HDA Intel PCH, HDMI 0")]
            .map(|(id, name)| AudioDevice { id: id.into(), name: name.into() })
            .to_vec()
    }

    #[test]
    fn a_device_is_found_by_id_name_or_a_part_only_it_has() {
        let d = devices();
        assert_eq!(pick("speaker", &d, "alsa:hw:CARD=PCH,DEV=3").unwrap().name, "HDA Intel PCH, HDMI 0", "by id");
        assert_eq!(pick("speaker", &d, "USB Headset").unwrap().id, "alsa:hw:CARD=Headset,DEV=0", "by name");
        assert_eq!(pick("speaker", &d, "usb headset").unwrap().id, "alsa:hw:CARD=Headset,DEV=0", "case aside");
        assert_eq!(pick("speaker", &d, " headset ").unwrap().id, "alsa:hw:CARD=Headset,DEV=0", "a part, trimmed");
        assert_eq!(pick("speaker", &d, "hdmi").unwrap().id, "alsa:hw:CARD=PCH,DEV=3");
        assert_eq!(pick("speaker", &d, "DEV=3").unwrap().name, "HDA Intel PCH, HDMI 0", "a part of the id");
    }

    #[test]
    fn a_part_several_have_or_none_has_says_which_there_are() {
        let d = devices();
        let e = pick("speaker", &d, "intel").unwrap_err();
        assert_eq!(e, PickError::Ambiguous { wanted: "intel".into(), matches: vec!["HDA Intel PCH, ALC897 Analog".into(), "HDA Intel PCH, HDMI 0".into()] });
        assert!(e.to_string().contains("give more of the name, or the id"), "{e}");
        let e = pick("microphone", &d, "Webcam").unwrap_err();
        assert_eq!(e.to_string(), "no microphone called \"Webcam\" is connected");
        assert!(e.known().starts_with("there are \"Default Audio Device\", \"USB Headset\""), "{}", e.known());
        assert_eq!(pick("microphone", &[], "x").unwrap_err().known(), "there are none");
        assert_eq!(pick("microphone", &d[..1], "x").unwrap_err().known(), "there is \"Default Audio Device\"");
        assert!(matches!(pick("speaker", &d, "  "), Err(PickError::NotFound { .. })), "blank names nothing");
    }
}
