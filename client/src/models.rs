//! Where the client's content comes from: the `.glb` models, KTX2 textures
//! and sounds that `plaza-assets` writes under `assets/` (docs/assets.md has
//! the naming convention this module and its users rely on).
//!
//! [`asset_dir`] finds the folder (Bevy's `AssetPlugin::file_path` is set
//! to it): `$BEVY_ASSET_ROOT/assets` if that is set, else `./assets` (`make
//! run` starts from the repository root), else the `assets/` of the source
//! tree the binary was built from (tests run from `client/`), else
//! `assets/` beside the executable (an installed copy).
//!
//! [`ModelFiles`] says which models are there. When one is missing (say
//! `assets/` was deleted) the client says so once and draws its built-in
//! placeholder shapes instead: [`crate::scene`] the plaza, [`crate::avatars`]
//! the avatars. A file that is there but fails to load falls back the same
//! way, once Bevy reports the failure.

use bevy::prelude::*;
use std::path::{Path, PathBuf};

/// The scene, relative to the asset folder.
pub const PLAZA_MODEL: &str = "models/plaza.glb";
/// Avatar bodies: `models/avatar_K.glb`, K = 0..AVATAR_MODELS.
pub const AVATAR_MODELS: u32 = 4;

pub fn avatar_model(k: u32) -> String {
    format!("models/avatar_{k}.glb")
}

/// The folder Bevy loads assets from, absolute (Bevy joins a relative one
/// to `BEVY_ASSET_ROOT`, `CARGO_MANIFEST_DIR` or the executable's folder).
pub fn asset_dir() -> PathBuf {
    if let Some(root) = std::env::var_os("BEVY_ASSET_ROOT") {
        let root = PathBuf::from(root);
        let root = if root.is_absolute() { root } else { std::env::current_dir().map(|d| d.join(&root)).unwrap_or(root) };
        return root.join("assets");
    }
    let has_models = |dir: &Path| dir.join(PLAZA_MODEL).is_file();
    let cwd = std::env::current_dir().map(|d| d.join("assets")).unwrap_or_else(|_| PathBuf::from("assets"));
    if has_models(&cwd) {
        return cwd;
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("assets");
    if has_models(&source) {
        return source.canonicalize().unwrap_or(source);
    }
    if let Some(beside) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("assets")))
        && has_models(&beside)
    {
        return beside;
    }
    // Nothing anywhere: report the folder people expect.
    cwd
}

/// Which models are on disk, found once at start.
#[derive(Resource, Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub plaza: bool,
    pub avatars: bool,
}

impl ModelFiles {
    /// Looks in `dir`; warns once (naming what is missing and where) when
    /// something is.
    pub fn find(dir: &Path) -> ModelFiles {
        let plaza = dir.join(PLAZA_MODEL).is_file();
        let missing_avatars: Vec<String> = (0..AVATAR_MODELS).map(avatar_model).filter(|m| !dir.join(m).is_file()).collect();
        let files = ModelFiles { dir: dir.to_owned(), plaza, avatars: missing_avatars.is_empty() };
        let mut missing = missing_avatars;
        if !plaza {
            missing.insert(0, PLAZA_MODEL.to_owned());
        }
        if !missing.is_empty() {
            warn!(
                folder = %dir.display(),
                missing = %missing.join(", "),
                "asset models not found; drawing the built-in placeholder plaza and avatars instead (run `make assets`, or set BEVY_ASSET_ROOT to the folder holding assets/)"
            );
        } else {
            info!(folder = %dir.display(), "loading the plaza and avatars from asset models");
        }
        files
    }

}

/// Looks for the models in `dir` (the asset folder Bevy was given) and
/// puts [`ModelFiles`] in the world for the scene and avatar plugins.
pub struct ModelsPlugin {
    pub dir: PathBuf,
}

#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelsSystems {
    /// In `PreStartup`: the GPU's texture formats checked; whoever reads
    /// [`ModelFiles`] at start runs after this.
    Check,
}

impl Plugin for ModelsPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(ModelFiles::find(&self.dir)).add_systems(PreStartup, check_texture_formats.in_set(ModelsSystems::Check));
    }
}

/// The models' textures are UASTC, which Bevy transcodes to ASTC, BC or
/// ETC2. A GPU with none of these would take Bevy's last resort, RGBA32,
/// which crashes in basis-universal 0.3.1 (docs/assets.md): draw the
/// placeholders instead. (Lavapipe has BC.)
fn check_texture_formats(mut files: ResMut<ModelFiles>, formats: Option<Res<bevy::image::CompressedImageFormatSupport>>) {
    use bevy::image::CompressedImageFormats as F;
    let Some(formats) = formats else { return };
    if !files.plaza && !files.avatars || formats.0.intersects(F::ASTC_LDR | F::BC | F::ETC2) {
        return;
    }
    warn!("this GPU has none of the ASTC, BC or ETC2 texture formats the models' textures need; drawing the built-in placeholder plaza and avatars instead");
    files.plaza = false;
    files.avatars = false;
}

/// The JSON of a `.glb` file, read directly: just what the client needs to
/// name meshes, materials and nodes before Bevy has loaded the file.
#[derive(Debug, Clone)]
pub struct GlbIndex {
    json: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum GlbError {
    #[error("can't read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a glTF binary: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path} has no {what} named {name}")]
    Missing { path: String, what: &'static str, name: String },
}

impl GlbIndex {
    pub fn read(path: &Path) -> Result<GlbIndex, GlbError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| GlbError::Read { path: shown.clone(), source })?;
        GlbIndex::parse(&bytes).map_err(|reason| GlbError::Invalid { path: shown, reason })
    }

    /// The header (magic, version, length) and the first chunk, JSON.
    pub fn parse(bytes: &[u8]) -> Result<GlbIndex, String> {
        let u32_at = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if bytes.get(..4) != Some(b"glTF") {
            return Err("no glTF magic".into());
        }
        let length = u32_at(12).ok_or("truncated header")? as usize;
        if u32_at(16) != Some(0x4E4F_534A) {
            return Err("the first chunk is not JSON".into());
        }
        let json = bytes.get(20..20 + length).ok_or("truncated JSON chunk")?;
        let json = serde_json::from_slice(json).map_err(|e| format!("bad JSON: {e}"))?;
        Ok(GlbIndex { json })
    }

    fn named(&self, list: &str, name: &str) -> Option<(usize, &serde_json::Value)> {
        self.json[list].as_array()?.iter().enumerate().find(|(_, v)| v["name"] == name)
    }

    /// Index of the mesh called `name`, and its first primitive's material.
    pub fn mesh(&self, name: &str) -> Option<(usize, Option<usize>)> {
        let (i, mesh) = self.named("meshes", name)?;
        Some((i, mesh["primitives"][0]["material"].as_u64().map(|m| m as usize)))
    }

    /// The local transform of the node called `name`.
    pub fn node_transform(&self, name: &str) -> Option<Transform> {
        let (_, node) = self.named("nodes", name)?;
        let floats = |key: &str| node[key].as_array().map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect::<Vec<f32>>());
        let mut t = Transform::IDENTITY;
        if let Some(v) = floats("translation").filter(|v| v.len() == 3) {
            t.translation = Vec3::new(v[0], v[1], v[2]);
        }
        if let Some(v) = floats("rotation").filter(|v| v.len() == 4) {
            t.rotation = Quat::from_xyzw(v[0], v[1], v[2], v[3]);
        }
        if let Some(v) = floats("scale").filter(|v| v.len() == 3) {
            t.scale = Vec3::new(v[0], v[1], v[2]);
        }
        Some(t)
    }
}

/// `bench_03_lod2` → (`bench_03`, 2): the LOD child nodes' names.
pub fn lod_of(name: &str) -> Option<(&str, u8)> {
    let (instance, level) = name.rsplit_once("_lod")?;
    let level: u8 = level.parse().ok()?;
    (level <= 3 && !instance.is_empty()).then_some((instance, level))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_assets() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets")
    }

    #[test]
    fn lod_names_parse() {
        assert_eq!(lod_of("bench_03_lod2"), Some(("bench_03", 2)));
        assert_eq!(lod_of("building_a_00_lod0"), Some(("building_a_00", 0)));
        assert_eq!(lod_of("bench_03"), None);
        assert_eq!(lod_of("x_lod9"), None);
        assert_eq!(lod_of("avatar_0_impostor"), None);
    }

    #[test]
    fn the_committed_avatar_models_have_what_the_client_names() {
        let dir = repo_assets();
        for k in 0..AVATAR_MODELS {
            let glb = GlbIndex::read(&dir.join(avatar_model(k))).unwrap();
            for part in ["torso", "head", "hand_l", "hand_r"] {
                for lod in 0..3 {
                    assert!(glb.mesh(&format!("avatar_{k}_{part}_lod{lod}")).is_some_and(|(_, m)| m.is_some()), "avatar_{k}_{part}_lod{lod}");
                }
                assert!(glb.node_transform(&format!("avatar_{k}_{part}")).is_some());
            }
            assert!(glb.mesh(&format!("avatar_{k}_impostor")).is_some());
            let head = glb.node_transform(&format!("avatar_{k}_head")).unwrap();
            assert!((1.5..1.9).contains(&head.translation.y), "head about 1.7 m up: {head:?}");
        }
    }

    #[test]
    fn a_gpu_without_astc_bc_or_etc2_gets_the_placeholders() {
        use bevy::image::{CompressedImageFormatSupport, CompressedImageFormats};
        let files = |formats: CompressedImageFormats| {
            let mut app = App::new();
            app.add_plugins(MinimalPlugins).insert_resource(CompressedImageFormatSupport(formats)).add_plugins(ModelsPlugin { dir: repo_assets() });
            app.update();
            app.world().resource::<ModelFiles>().clone()
        };
        assert!(files(CompressedImageFormats::BC).plaza, "lavapipe: BC");
        assert!(files(CompressedImageFormats::ETC2).avatars);
        let none = files(CompressedImageFormats::NONE);
        assert!(!none.plaza && !none.avatars, "RGBA32 would crash");
    }

    #[test]
    fn finding_models_in_an_empty_folder_says_none_are_there() {
        let files = ModelFiles::find(Path::new("/nonexistent/plaza-assets"));
        assert!(!files.plaza && !files.avatars);
        assert!(ModelFiles::find(&repo_assets()).plaza);
        assert!(GlbIndex::parse(b"not a glb at all").is_err());
        assert!(matches!(GlbIndex::read(Path::new("/nonexistent/x.glb")), Err(GlbError::Read { .. })));
    }
}
