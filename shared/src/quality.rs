//! Quality presets: one table that the client applies, the server labels
//! telemetry with, and tools and benchmarks read.
//!
//! | preset | MSAA | shadows (map, cascades, distance) | view | LOD bias | full-detail avatars | render scale | lights |
//! | --- | --- | --- | --- | --- | --- | --- | --- |
//! | low | off | off | 60 m | 0.4 | 4 | 0.6 | 0 |
//! | medium | 2× | 1024, 1, 30 m | 120 m | 0.75 | 8 | 1.0 | 4 |
//! | high | 4× | 2048, 3, 60 m | 200 m | 1.0 | 16 | 1.0 | 8 |
//! | ultra | 4× | 4096, 4, 100 m | 400 m | 1.5 | 40 | 1.0 | 16 |
//!
//! The LOD bias multiplies every LOD distance: below 1 switches to coarser
//! levels sooner.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A fixed quality level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QualityPreset {
    Low,
    Medium,
    High,
    Ultra,
}

/// What the user asked for: a fixed preset, or `auto` (adaptive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresetChoice {
    Fixed(QualityPreset),
    Auto,
}

/// Where the client runs; sets the frame-rate target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Desktop,
    Vr,
    Mobile,
}

impl Platform {
    pub const ALL: [Platform; 3] = [Platform::Desktop, Platform::Vr, Platform::Mobile];

    pub fn target_fps(self) -> u32 {
        match self {
            Platform::Desktop => 60,
            Platform::Vr => 72,
            Platform::Mobile => 30,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Desktop => "desktop",
            Platform::Vr => "vr",
            Platform::Mobile => "mobile",
        }
    }

    /// The preset a platform starts with when the user chose none.
    pub fn default_choice(self) -> PresetChoice {
        match self {
            Platform::Desktop => PresetChoice::Fixed(QualityPreset::High),
            Platform::Vr | Platform::Mobile => PresetChoice::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShadowSettings {
    pub enabled: bool,
    pub map_size: u32,
    pub cascades: u32,
    pub max_distance_m: f32,
}

/// Everything a preset sets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PresetSettings {
    pub preset: QualityPreset,
    /// 1 = off.
    pub msaa_samples: u32,
    pub shadows: ShadowSettings,
    /// Nothing farther than this is drawn.
    pub view_distance_m: f32,
    /// Multiplies every LOD distance.
    pub lod_bias: f32,
    /// How many avatars may be drawn at full detail; the nearest win.
    pub full_detail_avatars: u32,
    /// 3D resolution relative to the window.
    pub render_scale: f32,
    pub max_lights: u32,
    /// Frame-rate target on desktop; see [`Platform::target_fps`] elsewhere.
    pub target_fps: u32,
}

impl QualityPreset {
    pub const ALL: [QualityPreset; 4] = [QualityPreset::Low, QualityPreset::Medium, QualityPreset::High, QualityPreset::Ultra];
    pub const ALLOWED: &'static str = "low, medium (or med), high, ultra, auto";

    pub fn as_str(self) -> &'static str {
        match self {
            QualityPreset::Low => "low",
            QualityPreset::Medium => "medium",
            QualityPreset::High => "high",
            QualityPreset::Ultra => "ultra",
        }
    }

    /// The next preset down, if any.
    pub fn lower(self) -> Option<QualityPreset> {
        match self {
            QualityPreset::Low => None,
            QualityPreset::Medium => Some(QualityPreset::Low),
            QualityPreset::High => Some(QualityPreset::Medium),
            QualityPreset::Ultra => Some(QualityPreset::High),
        }
    }

    /// The next preset up, if any.
    pub fn higher(self) -> Option<QualityPreset> {
        match self {
            QualityPreset::Low => Some(QualityPreset::Medium),
            QualityPreset::Medium => Some(QualityPreset::High),
            QualityPreset::High => Some(QualityPreset::Ultra),
            QualityPreset::Ultra => None,
        }
    }

    pub fn settings(self) -> PresetSettings {
        let shadows = |map_size, cascades, max_distance_m| ShadowSettings { enabled: true, map_size, cascades, max_distance_m };
        match self {
            QualityPreset::Low => PresetSettings {
                preset: self,
                msaa_samples: 1,
                shadows: ShadowSettings { enabled: false, map_size: 0, cascades: 0, max_distance_m: 0.0 },
                view_distance_m: 60.0,
                // Tuned on lavapipe with 200 avatars (docs/benchmarks.md):
                // low must be clearly cheaper than medium, not a bit.
                lod_bias: 0.4,
                full_detail_avatars: 4,
                render_scale: 0.6,
                max_lights: 0,
                target_fps: 60,
            },
            QualityPreset::Medium => PresetSettings {
                preset: self,
                msaa_samples: 2,
                shadows: shadows(1024, 1, 30.0),
                view_distance_m: 120.0,
                lod_bias: 0.75,
                full_detail_avatars: 8,
                render_scale: 1.0,
                max_lights: 4,
                target_fps: 60,
            },
            QualityPreset::High => PresetSettings {
                preset: self,
                msaa_samples: 4,
                shadows: shadows(2048, 3, 60.0),
                view_distance_m: 200.0,
                lod_bias: 1.0,
                full_detail_avatars: 16,
                render_scale: 1.0,
                max_lights: 8,
                target_fps: 60,
            },
            QualityPreset::Ultra => PresetSettings {
                preset: self,
                msaa_samples: 4,
                shadows: shadows(4096, 4, 100.0),
                view_distance_m: 400.0,
                lod_bias: 1.5,
                full_detail_avatars: 40,
                render_scale: 1.0,
                max_lights: 16,
                target_fps: 60,
            },
        }
    }
}

impl fmt::Display for QualityPreset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for PresetChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PresetChoice::Fixed(p) => p.fmt(f),
            PresetChoice::Auto => f.write_str("auto"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a quality preset; allowed: {allowed}", allowed = QualityPreset::ALLOWED)]
pub struct PresetParseError {
    pub value: String,
}

impl FromStr for PresetChoice {
    type Err = PresetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "low" => PresetChoice::Fixed(QualityPreset::Low),
            "medium" | "med" => PresetChoice::Fixed(QualityPreset::Medium),
            "high" => PresetChoice::Fixed(QualityPreset::High),
            "ultra" => PresetChoice::Fixed(QualityPreset::Ultra),
            "auto" => PresetChoice::Auto,
            _ => return Err(PresetParseError { value: s.to_owned() }),
        })
    }
}

impl FromStr for QualityPreset {
    type Err = PresetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<PresetChoice>() {
            Ok(PresetChoice::Fixed(p)) => Ok(p),
            _ => Err(PresetParseError { value: s.to_owned() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_name() {
        assert_eq!("low".parse(), Ok(PresetChoice::Fixed(QualityPreset::Low)));
        assert_eq!("med".parse(), Ok(PresetChoice::Fixed(QualityPreset::Medium)));
        assert_eq!("Medium".parse(), Ok(PresetChoice::Fixed(QualityPreset::Medium)));
        assert_eq!("ULTRA".parse(), Ok(PresetChoice::Fixed(QualityPreset::Ultra)));
        assert_eq!("auto".parse(), Ok(PresetChoice::Auto));
        let err = "extreme".parse::<PresetChoice>().unwrap_err().to_string();
        assert!(err.contains("`extreme`") && err.contains("low, medium"), "{err}");
    }

    #[test]
    fn display_round_trips() {
        for p in QualityPreset::ALL {
            assert_eq!(p.to_string().parse::<QualityPreset>(), Ok(p));
        }
    }

    #[test]
    fn presets_grow_monotonically_in_cost() {
        for pair in QualityPreset::ALL.windows(2) {
            let (lo, hi) = (pair[0].settings(), pair[1].settings());
            assert!(lo.msaa_samples <= hi.msaa_samples, "{pair:?}");
            assert!(lo.shadows.map_size <= hi.shadows.map_size, "{pair:?}");
            assert!(lo.view_distance_m < hi.view_distance_m, "{pair:?}");
            assert!(lo.lod_bias < hi.lod_bias, "{pair:?}");
            assert!(lo.full_detail_avatars < hi.full_detail_avatars, "{pair:?}");
            assert!(lo.render_scale <= hi.render_scale, "{pair:?}");
            assert!(lo.max_lights < hi.max_lights, "{pair:?}");
            assert_eq!(pair[0].higher(), Some(pair[1]));
            assert_eq!(pair[1].lower(), Some(pair[0]));
        }
    }

    #[test]
    fn platforms_have_the_contract_targets_and_defaults() {
        assert_eq!(Platform::Desktop.target_fps(), 60);
        assert_eq!(Platform::Vr.target_fps(), 72);
        assert_eq!(Platform::Mobile.target_fps(), 30);
        assert_eq!(Platform::Desktop.default_choice(), PresetChoice::Fixed(QualityPreset::High));
        assert_eq!(Platform::Vr.default_choice(), PresetChoice::Auto);
    }
}
