//! `plaza-assets make`: paints the textures, builds the meshes and their
//! LOD chains, paints the avatars' impostors, encodes everything and writes
//! it under the output folder. Fixed seeds, no clocks, no hash-map order,
//! single-threaded encoders: the same bytes on every run.

use std::path::{Path, PathBuf};

use serde_json::json;
use thiserror::Error;

use crate::content::avatars::{self, Avatar};
use crate::content::plaza;
use crate::content::textures::{self, Source};
use crate::glb::{Builder, Material, Node};
use crate::impostor::{self, Shaded};
use crate::lod::{self, Level};
use crate::mesh::Xf;
use crate::progress;
use crate::texture::Space;
use crate::{audio, ktx};

/// Where each kind of output goes, relative to the output folder.
pub const MODELS_DIR: &str = "models";
/// Relative to the models folder (the URIs in the .glb files).
pub const TEXTURES_DIR: &str = "textures";
pub const AUDIO_DIR: &str = "audio";
pub const SHADERS_DIR: &str = "shaders";

/// Shaders the tool ships (kept in tools/assets/shaders/).
pub const SHADERS: [(&str, &str); 1] = [("impostor.wgsl", include_str!("../shaders/impostor.wgsl"))];

#[derive(Debug, Error)]
pub enum MakeError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot encode texture {name}: {source}")]
    Encode { name: String, source: ktx::EncodeError },
    #[error("LOD chain of {asset} does not fall: {triangles:?} triangles")]
    Lod { asset: String, triangles: Vec<usize> },
}

/// What `make` wrote: paths relative to the output folder, and sizes.
#[derive(Debug, Default)]
pub struct Made {
    pub files: Vec<(PathBuf, u64)>,
}

struct Writer<'a> {
    out: &'a Path,
    made: Made,
}

impl Writer<'_> {
    fn write(&mut self, rel: PathBuf, bytes: &[u8]) -> Result<(), MakeError> {
        let path = self.out.join(&rel);
        let err = |source| MakeError::Write { path: path.clone(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        std::fs::write(&path, bytes).map_err(err)?;
        self.made.files.push((rel, bytes.len() as u64));
        Ok(())
    }
}

/// Makes every asset under `out`.
pub fn make(out: &Path) -> Result<Made, MakeError> {
    let mut w = Writer { out, made: Made::default() };
    let models = PathBuf::from(MODELS_DIR);

    let started = std::time::Instant::now();
    let lap = |what: &str| tracing::debug!(what, elapsed_ms = started.elapsed().as_millis() as u64, "step done");
    let step = progress::spinner("painting textures");
    let avatars: Vec<Avatar> = (0..avatars::COUNT).map(avatars::avatar).collect();
    let sources = texture_sources(&avatars);
    step.finish_and_clear();
    lap("textures painted");

    let bar = progress::bar(sources.len() as u64, "encoding KTX2 (UASTC + zstd)");
    let encoded = crate::par_map(&sources, |s| {
        let levels = s.image.clone().mip_chain(s.space);
        let bytes = ktx::encode(&levels, s.space).map_err(|source| MakeError::Encode { name: s.name.clone(), source });
        bar.inc(1);
        bytes
    });
    bar.finish_and_clear();
    for (s, bytes) in sources.iter().zip(encoded) {
        w.write(models.join(TEXTURES_DIR).join(format!("{}.ktx2", s.name)), &bytes?)?;
    }
    lap("textures encoded");

    let scene = plaza::scene();
    let bar = progress::bar((avatars.len() + scene.assets.len()) as u64, "building LOD chains");
    for a in &avatars {
        bar.set_message(a.name.clone());
        w.write(models.join(format!("{}.glb", a.name)), &avatar_glb(a)?)?;
        bar.inc(1);
    }
    w.write(models.join("plaza.glb"), &scene_glb(&scene, &bar)?)?;
    bar.finish_and_clear();
    lap("models built");

    let step = progress::spinner("synthesizing audio");
    for (name, samples) in audio::all() {
        w.write(PathBuf::from(AUDIO_DIR).join(name), &audio::wav(&samples))?;
    }
    step.finish_and_clear();
    lap("audio synthesized");

    for (name, text) in SHADERS {
        w.write(PathBuf::from(SHADERS_DIR).join(name), text.as_bytes())?;
    }
    remove_stale(out, &w.made)?;
    Ok(w.made)
}

/// Deletes files in the folders `make` owns (models, textures, audio) that
/// this run did not write: left over from renamed assets. Shaders are
/// left alone (the client may ship its own next to ours).
fn remove_stale(out: &Path, made: &Made) -> Result<(), MakeError> {
    let owned = [PathBuf::from(MODELS_DIR), PathBuf::from(MODELS_DIR).join(TEXTURES_DIR), PathBuf::from(AUDIO_DIR)];
    for dir in owned {
        let Ok(entries) = std::fs::read_dir(out.join(&dir)) else { continue };
        let mut stale: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| dir.join(e.file_name()))
            .filter(|rel| out.join(rel).is_file() && !made.files.iter().any(|(f, _)| f == rel))
            .collect();
        stale.sort();
        for rel in stale {
            tracing::info!(file = %rel.display(), "removing a stale file");
            let path = out.join(&rel);
            std::fs::remove_file(&path).map_err(|source| MakeError::Write { path, source })?;
        }
    }
    Ok(())
}

/// Every texture: the painted ones and the avatars' impostors.
pub fn texture_sources(avatars: &[Avatar]) -> Vec<Source> {
    let mut sources = textures::all();
    let impostors = crate::par_map(avatars, |a| paint_impostor(a, &sources));
    sources.extend(impostors);
    sources
}

fn find<'a>(sources: &'a [Source], name: &str) -> Option<&'a Source> {
    sources.iter().find(|s| s.name == name)
}

/// The avatar's impostor texture: its full-detail parts painted from the
/// front.
fn paint_impostor(a: &Avatar, sources: &[Source]) -> Source {
    let placed: Vec<_> = a
        .parts
        .iter()
        .map(|p| crate::mesh::Geometry::default().merged(&p.geometry, Xf::at(p.offset[0], p.offset[1], p.offset[2])))
        .collect();
    let shaded: Vec<Shaded<'_>> = a
        .parts
        .iter()
        .zip(&placed)
        .map(|(p, g)| {
            let texture = a.textures[p.material].as_deref().and_then(|n| find(sources, n)).map(|s| &s.image);
            Shaded { geometry: g, factor: a.materials[p.material].base_color, texture }
        })
        .collect();
    let (w, h) = avatars::IMPOSTOR_SIZE;
    let image = impostor::render(&shaded, avatars::impostor_view(a), w, h);
    Source { name: format!("{}_impostor", a.name), space: Space::Srgb, image }
}

fn lod_name(name: &str, level: usize) -> String {
    format!("{name}_lod{level}")
}

/// Builds the chain and checks it falls at every level.
fn chain(asset: &str, primitives: &[crate::mesh::Geometry]) -> Result<Vec<Level>, MakeError> {
    let levels = lod::chain(primitives);
    let triangles: Vec<usize> = levels.iter().map(Level::triangles).collect();
    if triangles.windows(2).any(|w| w[1] >= w[0]) {
        return Err(MakeError::Lod { asset: asset.to_owned(), triangles });
    }
    Ok(levels)
}

/// One mesh per level, `<asset>_lod<N>`, with the level and error as
/// extras; returns the mesh indices.
fn chain_meshes(b: &mut Builder, asset: &str, levels: &[Level], materials: &[usize]) -> Vec<usize> {
    levels
        .iter()
        .enumerate()
        .map(|(n, level)| {
            let prims: Vec<_> = level.primitives.iter().zip(materials).map(|(g, &m)| (g, m)).collect();
            let error = format!("{:.5}", level.error).parse::<f64>().unwrap_or(0.0);
            b.mesh(&lod_name(asset, n), &prims, Some(json!({ "lod": n, "error": error })))
        })
        .collect()
}

/// Child nodes `<instance>_lod<N>` under a node for the instance.
fn lod_nodes(b: &mut Builder, instance: &str, meshes: &[usize]) -> Vec<usize> {
    meshes
        .iter()
        .enumerate()
        .map(|(n, &mesh)| {
            b.node(Node { mesh: Some(mesh), extras: Some(json!({ "lod": n })), ..Node::new(&lod_name(instance, n)) })
        })
        .collect()
}

fn avatar_glb(a: &Avatar) -> Result<Vec<u8>, MakeError> {
    let mut b = Builder::default();
    let materials: Vec<usize> = a.materials.iter().map(|m| b.material(m)).collect();
    let mut children = Vec::new();
    for part in &a.parts {
        let name = format!("{}_{}", a.name, part.name);
        let levels = chain(&name, std::slice::from_ref(&part.geometry))?;
        let meshes = chain_meshes(&mut b, &name, &levels, &[materials[part.material]]);
        let lods = lod_nodes(&mut b, &name, &meshes);
        let offset = part.offset.map(|c| c as f32);
        children.push(b.node(Node { translation: offset, children: lods, ..Node::new(&name) }));
    }
    let view = avatars::impostor_view(a);
    let mut m = Material::new(&format!("{}_impostor", a.name), [1.0; 4], 1.0)
        .textured(&format!("{TEXTURES_DIR}/{}_impostor.ktx2", a.name), None);
    m.unlit = true;
    m.alpha_cutoff = Some(0.5);
    m.double_sided = true;
    m.clamp = true;
    let material = b.material(&m);
    let quad = impostor::quad(view);
    let name = format!("{}_impostor", a.name);
    let mesh = b.mesh(&name, &[(&quad, material)], Some(json!({ "impostor": true })));
    children.push(b.node(Node { mesh: Some(mesh), extras: Some(json!({ "lod": "impostor" })), ..Node::new(&name) }));
    let root = b.node(Node { children, ..Node::new(&a.name) });
    Ok(b.finish(&a.name, &[root]))
}

fn scene_glb(scene: &plaza::Scene, bar: &indicatif::ProgressBar) -> Result<Vec<u8>, MakeError> {
    let mut b = Builder::default();
    let materials: Vec<usize> = scene.materials.iter().map(|m| b.material(m)).collect();
    let mut meshes: Vec<(&str, Vec<usize>)> = Vec::new();
    for asset in &scene.assets {
        bar.set_message(asset.name);
        let geometry: Vec<_> = asset.primitives.iter().map(|(g, _)| g.clone()).collect();
        let mats: Vec<usize> = asset.primitives.iter().map(|(_, m)| materials[*m]).collect();
        let levels = chain(asset.name, &geometry)?;
        meshes.push((asset.name, chain_meshes(&mut b, asset.name, &levels, &mats)));
        bar.inc(1);
    }
    let mut roots = Vec::new();
    for inst in &scene.instances {
        let Some((_, chain)) = meshes.iter().find(|(n, _)| *n == inst.asset) else { continue };
        let lods = lod_nodes(&mut b, &inst.name, chain);
        roots.push(b.node(Node {
            translation: inst.position.map(|c| c as f32),
            yaw: inst.yaw,
            scale: inst.scale as f32,
            children: lods,
            ..Node::new(&inst.name)
        }));
    }
    let root = b.node(Node { children: roots, ..Node::new("plaza") });
    Ok(b.finish("plaza", &[root]))
}
