//! `plaza-assets report`: what the assets cost — triangles per LOD level,
//! disk size, GPU memory of the KTX2 textures against PNG and RGBA8 — as
//! data and as docs/assets.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::check::{files_under, is_normal_map};
use crate::inspect::{self, Chain, Ktx2Info, rgba8_bytes};
use crate::lod::{LEVELS, MAX_ERROR, TARGET_RATIO};

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason} (run `plaza-assets check` for every problem)")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Debug, Clone)]
pub struct Model {
    /// Relative to the assets folder, `/`-separated.
    pub file: String,
    pub disk: u64,
    pub chains: Vec<Chain>,
    pub impostors: Vec<(String, usize)>,
    pub nodes: usize,
}

#[derive(Debug, Clone)]
pub struct Texture {
    pub file: String,
    pub disk: u64,
    pub info: Ktx2Info,
}

impl Texture {
    /// RGBA8 with the same mips: what an uncompressed upload costs.
    pub fn rgba8_bytes(&self) -> u64 {
        rgba8_bytes(self.info.width, self.info.height, self.info.levels)
    }

    /// A PNG as Bevy loads it: RGBA8, no mips.
    pub fn png_bytes(&self) -> u64 {
        rgba8_bytes(self.info.width, self.info.height, 1)
    }
}

#[derive(Debug, Clone)]
pub struct Sound {
    pub file: String,
    pub disk: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub models: Vec<Model>,
    pub textures: Vec<Texture>,
    pub sounds: Vec<Sound>,
    pub shaders: Vec<String>,
}

fn rel(dir: &Path, path: &Path) -> String {
    let r = path.strip_prefix(dir).unwrap_or(path);
    r.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

fn read(path: &Path) -> Result<Vec<u8>, ReportError> {
    std::fs::read(path).map_err(|source| ReportError::Read { path: path.to_owned(), source })
}

fn invalid(path: &Path, problems: Vec<String>) -> ReportError {
    ReportError::Invalid { path: path.to_owned(), reason: problems.join("; ") }
}

/// Duration of a 16-bit PCM WAV, from its `fmt ` and `data` chunks.
fn wav_seconds(bytes: &[u8]) -> Option<f64> {
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let (mut at, mut rate, mut block) = (12, None, None);
    while at + 8 <= bytes.len() {
        let (id, len) = (&bytes[at..at + 4], u32_at(at + 4)? as usize);
        if id == b"fmt " {
            rate = u32_at(at + 12);
            block = Some(u16::from_le_bytes(bytes.get(at + 20..at + 22)?.try_into().ok()?));
        } else if id == b"data" {
            return Some(len as f64 / f64::from(rate?) / f64::from(block?.max(1)));
        }
        at += 8 + len + len % 2;
    }
    None
}

impl Report {
    /// Reads everything under `dir` (an assets folder).
    pub fn build(dir: &Path) -> Result<Report, ReportError> {
        let mut report = Report::default();
        for path in files_under(dir) {
            let bytes = read(&path)?;
            let file = rel(dir, &path);
            let disk = bytes.len() as u64;
            match path.extension().and_then(|e| e.to_str()) {
                Some("glb") => {
                    let info = inspect::glb(&path, &bytes).map_err(|p| invalid(&path, p))?;
                    report.models.push(Model { file, disk, chains: info.chains, impostors: info.impostors, nodes: info.nodes });
                }
                Some("ktx2") => {
                    let info = inspect::ktx2(&bytes, is_normal_map(&path)).map_err(|p| invalid(&path, p))?;
                    report.textures.push(Texture { file, disk, info });
                }
                Some("wgsl") => report.shaders.push(file),
                _ => {}
            }
        }
        let audio = dir.join(crate::make::AUDIO_DIR);
        let mut wavs: Vec<PathBuf> = std::fs::read_dir(&audio)
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "wav")).collect())
            .unwrap_or_default();
        wavs.sort();
        for path in wavs {
            let bytes = read(&path)?;
            let seconds = wav_seconds(&bytes).ok_or_else(|| invalid(&path, vec!["not a PCM WAV file".to_owned()]))?;
            report.sounds.push(Sound { file: rel(dir, &path), disk: bytes.len() as u64, seconds });
        }
        Ok(report)
    }

    pub fn chains(&self) -> impl Iterator<Item = (&Model, &Chain)> {
        self.models.iter().flat_map(|m| m.chains.iter().map(move |c| (m, c)))
    }

    pub fn ktx2_gpu_bytes(&self) -> u64 {
        self.textures.iter().map(|t| t.info.gpu_bytes).sum()
    }

    pub fn rgba8_bytes(&self) -> u64 {
        self.textures.iter().map(Texture::rgba8_bytes).sum()
    }

    pub fn png_bytes(&self) -> u64 {
        self.textures.iter().map(Texture::png_bytes).sum()
    }

    pub fn disk_bytes(&self) -> u64 {
        self.models.iter().map(|m| m.disk).sum::<u64>()
            + self.textures.iter().map(|t| t.disk).sum::<u64>()
            + self.sounds.iter().map(|s| s.disk).sum::<u64>()
    }

    /// The tables as Markdown.
    pub fn tables(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "### LOD chains\n");
        let _ = writeln!(md, "Triangles per level; the last columns are the share of the full mesh left at `_lod3` and the simplifier's error there (relative to the asset's size).\n");
        let _ = writeln!(md, "| file | asset | lod0 | lod1 | lod2 | lod3 | lod3 / lod0 | lod3 error |");
        let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (m, c) in self.chains() {
            let t = &c.triangles;
            let last = t.last().copied().unwrap_or(0) as f64;
            let first = t.first().copied().unwrap_or(1).max(1) as f64;
            let levels: Vec<String> = t.iter().map(|n| n.to_string()).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1}% | {:.2}% |",
                m.file,
                c.asset,
                levels.join(" | "),
                100.0 * last / first,
                100.0 * c.errors.last().copied().unwrap_or(0.0)
            );
        }
        let _ = writeln!(md, "\n### Impostors\n");
        let _ = writeln!(md, "| file | mesh | triangles |");
        let _ = writeln!(md, "| --- | --- | ---: |");
        for m in &self.models {
            for (name, tris) in &m.impostors {
                let _ = writeln!(md, "| {} | {name} | {tris} |", m.file);
            }
        }
        let _ = writeln!(md, "\n### Models on disk\n");
        let _ = writeln!(md, "| file | size | nodes | LOD chains |");
        let _ = writeln!(md, "| --- | ---: | ---: | ---: |");
        for m in &self.models {
            let _ = writeln!(md, "| {} | {} | {} | {} |", m.file, kib(m.disk), m.nodes, m.chains.len());
        }
        let _ = writeln!(md, "\n### Textures\n");
        let _ = writeln!(md, "GPU memory: KTX2 UASTC is transcoded to BC7 or ASTC 4x4 at load, one byte per texel with mips. A PNG is uploaded as RGBA8 without mips (Bevy makes none); RGBA8 with the same mips is the like-for-like comparison.\n");
        let _ = writeln!(md, "| texture | size | mips | alpha | space | on disk | GPU (KTX2) | GPU (PNG, RGBA8) | GPU (RGBA8 + mips) | KTX2 / RGBA8 + mips |");
        let _ = writeln!(md, "| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |");
        for t in &self.textures {
            let i = &t.info;
            let _ = writeln!(
                md,
                "| {} | {}x{} | {} | {} | {} | {} | {} | {} | {} | {:.3} |",
                t.file,
                i.width,
                i.height,
                i.levels,
                if i.alpha { "yes" } else { "no" },
                if i.srgb { "sRGB" } else { "linear" },
                kib(t.disk),
                kib(i.gpu_bytes),
                kib(t.png_bytes()),
                kib(t.rgba8_bytes()),
                i.gpu_bytes as f64 / t.rgba8_bytes().max(1) as f64
            );
        }
        let _ = writeln!(
            md,
            "| **all {}** | | | | | **{}** | **{}** | **{}** | **{}** | **{:.3}** |",
            self.textures.len(),
            kib(self.textures.iter().map(|t| t.disk).sum()),
            kib(self.ktx2_gpu_bytes()),
            kib(self.png_bytes()),
            kib(self.rgba8_bytes()),
            self.ktx2_gpu_bytes() as f64 / self.rgba8_bytes().max(1) as f64
        );
        let _ = writeln!(md, "\n### Audio\n");
        let _ = writeln!(md, "| file | length | size |");
        let _ = writeln!(md, "| --- | ---: | ---: |");
        for s in &self.sounds {
            let _ = writeln!(md, "| {} | {:.2} s | {} |", s.file, s.seconds, kib(s.disk));
        }
        let _ = writeln!(md, "\nShaders: {}.", self.shaders.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "));
        let _ = writeln!(md, "\nEverything on disk: {}.", kib(self.disk_bytes()));
        md
    }

    /// The whole docs/assets.md: conventions, how to regenerate, tables.
    pub fn markdown(&self) -> String {
        let targets: Vec<String> = TARGET_RATIO.iter().skip(1).map(|r| format!("{:.0}%", r * 100.0)).collect();
        let errors: Vec<String> = MAX_ERROR.iter().skip(1).map(|e| format!("{:.1}%", e * 100.0)).collect();
        GUIDE
            .replace("{LEVELS_MAX}", &(LEVELS - 1).to_string())
            .replace("{TARGETS}", &targets.join(", "))
            .replace("{ERRORS}", &errors.join(", "))
            .replace("{TABLES}", &self.tables())
    }
}

fn kib(bytes: u64) -> String {
    if bytes >= 1024 * 1024 {
        format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

const GUIDE: &str = include_str!("report_guide.md");
