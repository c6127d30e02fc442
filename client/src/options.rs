//! Command-line flags and environment variables (see the contract's
//! "Client: plaza" table). Flags beat environment variables, which beat
//! defaults. Bad values exit with status 2 and one line naming the flag and
//! the allowed values (clap's behaviour, with our parsers' messages).

use clap::Parser;
use plaza_shared::flags::Switch;
use plaza_shared::quality::{Platform, PresetChoice};
use std::path::PathBuf;

#[derive(Debug, Clone, Parser)]
#[command(name = "plaza", version, about = "Plaza: a social 3D space. Desktop client.")]
pub struct ClientOptions {
    /// Quality preset: low, medium (med), high, ultra, auto. Default: high on desktop.
    #[arg(long, env = "CLIENT_QUALITY_PRESET")]
    pub preset: Option<PresetChoice>,

    /// Level of detail by distance: on/off.
    #[arg(long, env = "ENABLE_LOD", default_value = "on")]
    pub lod: Switch,

    /// Frustum culling: on/off (off draws everything, to measure its worth).
    #[arg(long, env = "ENABLE_FRUSTUM_CULLING", default_value = "on")]
    pub culling: Switch,

    /// Send frame-timing telemetry to the server: on/off.
    #[arg(long, env = "ENABLE_TELEMETRY", default_value = "on")]
    pub telemetry: Switch,

    /// Number of bot avatars walking in the plaza.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub bots: u32,

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

impl ClientOptions {
    pub fn platform(&self) -> Platform {
        Platform::Desktop
    }

    pub fn preset_choice(&self) -> PresetChoice {
        self.preset.unwrap_or_else(|| self.platform().default_choice())
    }
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

    fn parse(args: &[&str]) -> Result<ClientOptions, clap::Error> {
        ClientOptions::try_parse_from(std::iter::once("plaza").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_follow_the_contract() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.preset_choice(), PresetChoice::Fixed(QualityPreset::High));
        assert!(o.lod.is_on() && o.culling.is_on() && o.telemetry.is_on());
        assert_eq!(o.bots, 24);
        assert_eq!(o.resolution, (1280, 720));
    }

    #[test]
    fn flags_parse() {
        let o = parse(&["--preset", "med", "--lod", "off", "--culling", "false", "--headless", "--frames", "3", "--resolution", "320x200"]).unwrap();
        assert_eq!(o.preset_choice(), PresetChoice::Fixed(QualityPreset::Medium));
        assert!(!o.lod.is_on() && !o.culling.is_on() && o.headless);
        assert_eq!((o.frames, o.resolution), (Some(3), (320, 200)));
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
        assert!(parse(&["--screenshot", "x.png"]).is_err(), "--screenshot needs --frames");
    }
}
