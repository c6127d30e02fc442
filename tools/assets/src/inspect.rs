//! Reading back and validating what the tool makes: .glb (gltf), .ktx2
//! (ktx2, zstd, basis-universal transcoding) and .wgsl (naga). Each reader
//! returns what it found or every problem as a sentence; none of them panics
//! on bad input.

use std::path::Path;

use basis_universal::{DecodeFlags, LowLevelUastcTranscoder, SliceParametersUastc, TranscoderBlockFormat};
use ktx2::{ColorModel, SupercompressionScheme, TransferFunction};

use crate::ktx::BLOCK_BYTES;
use crate::lod::LEVELS;
use crate::texture::mip_count;

/// One LOD chain: meshes `<asset>_lod0` .. `<asset>_lod3`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    pub asset: String,
    pub triangles: Vec<usize>,
    /// The simplifier's error per level (relative to the asset's size),
    /// from the meshes' extras.
    pub errors: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GlbInfo {
    pub chains: Vec<Chain>,
    /// `<asset>_impostor` meshes and their triangle counts.
    pub impostors: Vec<(String, usize)>,
    /// Image URIs, relative to the .glb.
    pub images: Vec<String>,
    pub nodes: usize,
}

fn glb_problem<T>(msg: impl Into<String>) -> Result<T, Vec<String>> {
    Err(vec![msg.into()])
}

/// Splits `<asset>_lod<N>` into (asset, N).
pub fn lod_suffix(name: &str) -> Option<(&str, usize)> {
    let (asset, n) = name.rsplit_once("_lod")?;
    if asset.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((asset, n.parse().ok()?))
}

fn accessor_ok(a: &gltf::Accessor<'_>, buffer_lens: &[usize]) -> Result<(), String> {
    let what = || format!("accessor {}", a.index());
    let Some(view) = a.view() else { return Err(format!("{} has no buffer view", what())) };
    let buffer_len = buffer_lens.get(view.buffer().index()).copied().unwrap_or(0);
    if view.offset() + view.length() > buffer_len {
        return Err(format!(
            "buffer view {} (bytes {}..{}) runs past its buffer ({} bytes)",
            view.index(),
            view.offset(),
            view.offset() + view.length(),
            buffer_len
        ));
    }
    let elem = a.size();
    let stride = view.stride().unwrap_or(elem);
    let need = if a.count() == 0 { 0 } else { a.offset() + stride * (a.count() - 1) + elem };
    if need > view.length() {
        return Err(format!("{} needs {need} bytes of buffer view {} which has {}", what(), view.index(), view.length()));
    }
    Ok(())
}

/// Validates a .glb at `path` (image files are looked up next to it).
pub fn glb(path: &Path, bytes: &[u8]) -> Result<GlbInfo, Vec<String>> {
    if bytes.get(..4) != Some(b"glTF") {
        return glb_problem("not a glTF binary: no `glTF` magic at the start");
    }
    let declared = bytes.get(8..12).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    match declared {
        Some(n) if n > bytes.len() => return glb_problem(format!("truncated: the GLB header declares {n} bytes, the file has {}", bytes.len())),
        None => return glb_problem(format!("truncated: {} bytes is shorter than a GLB header", bytes.len())),
        _ => {}
    }
    let gltf = match gltf::Gltf::from_slice(bytes) {
        Ok(g) => g,
        Err(e) => return glb_problem(format!("not a valid glTF binary: {e}")),
    };
    let blob = gltf.blob.as_deref().unwrap_or(&[]);
    let mut problems = Vec::new();
    let mut buffer_lens = Vec::new();
    for buffer in gltf.buffers() {
        match buffer.source() {
            gltf::buffer::Source::Bin => {
                if blob.len() < buffer.length() {
                    problems.push(format!("the BIN chunk has {} bytes, buffer {} declares {}", blob.len(), buffer.index(), buffer.length()));
                }
                buffer_lens.push(blob.len().min(buffer.length()));
            }
            gltf::buffer::Source::Uri(uri) => {
                problems.push(format!("buffer {} is external ({uri}); Plaza's .glb files embed their buffers", buffer.index()));
                buffer_lens.push(0);
            }
        }
    }
    for a in gltf.accessors() {
        if let Err(e) = accessor_ok(&a, &buffer_lens) {
            problems.push(e);
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    let mut chains: Vec<Chain> = Vec::new();
    let mut impostors = Vec::new();
    for mesh in gltf.meshes() {
        let name = mesh.name().unwrap_or("").to_owned();
        let mut triangles = 0;
        for (p, prim) in mesh.primitives().enumerate() {
            let what = format!("mesh `{name}` primitive {p}");
            if prim.mode() != gltf::mesh::Mode::Triangles {
                problems.push(format!("{what} is not a triangle list"));
                continue;
            }
            let Some(pos) = prim.get(&gltf::Semantic::Positions) else {
                problems.push(format!("{what} has no POSITION"));
                continue;
            };
            if pos.min().is_none() || pos.max().is_none() {
                problems.push(format!("{what}: POSITION has no min/max"));
            }
            let reader = prim.reader(|_| Some(blob));
            let Some(indices) = reader.read_indices() else {
                problems.push(format!("{what} has no indices"));
                continue;
            };
            let indices: Vec<u32> = indices.into_u32().collect();
            if !indices.len().is_multiple_of(3) {
                problems.push(format!("{what}: {} indices is not a whole number of triangles", indices.len()));
            }
            if let Some(bad) = indices.iter().find(|&&i| i as usize >= pos.count()) {
                problems.push(format!("{what}: index {bad} is out of range ({} vertices)", pos.count()));
            }
            triangles += indices.len() / 3;
        }
        let extras: Option<serde_json::Value> = mesh.extras().as_ref().and_then(|raw| serde_json::from_str(raw.get()).ok());
        if let Some(asset) = name.strip_suffix("_impostor") {
            if triangles > 4 {
                problems.push(format!("impostor mesh `{name}` has {triangles} triangles; a card has 2"));
            }
            let textured = mesh.primitives().all(|p| p.material().pbr_metallic_roughness().base_color_texture().is_some());
            if !textured {
                problems.push(format!("impostor mesh `{name}` has no base colour texture"));
            }
            impostors.push((format!("{asset}_impostor"), triangles));
        } else if let Some((asset, level)) = lod_suffix(&name) {
            let i = match chains.iter().position(|c| c.asset == asset) {
                Some(i) => i,
                None => {
                    chains.push(Chain { asset: asset.to_owned(), triangles: Vec::new(), errors: Vec::new() });
                    chains.len() - 1
                }
            };
            let chain = &mut chains[i];
            if level != chain.triangles.len() {
                problems.push(format!("mesh `{name}` is out of order: expected {asset}_lod{}", chain.triangles.len()));
            }
            chain.triangles.push(triangles);
            chain.errors.push(extras.as_ref().and_then(|e| e.get("error")).and_then(|e| e.as_f64()).unwrap_or(0.0));
        } else {
            problems.push(format!("mesh `{name}` is named neither <asset>_lod<N> nor <asset>_impostor"));
        }
    }
    for c in &chains {
        if c.triangles.len() != LEVELS {
            problems.push(format!("LOD chain `{}` has {} levels, expected {LEVELS} (_lod0.._lod{})", c.asset, c.triangles.len(), LEVELS - 1));
        }
        if c.triangles.windows(2).any(|w| w[1] >= w[0]) {
            problems.push(format!("LOD chain `{}` does not fall: {:?} triangles", c.asset, c.triangles));
        }
    }
    for node in gltf.nodes() {
        let name = node.name().unwrap_or("");
        if let Some((_, level)) = lod_suffix(name) {
            let mesh_level = node.mesh().and_then(|m| m.name().and_then(lod_suffix)).map(|(_, l)| l);
            if mesh_level != Some(level) {
                problems.push(format!("node `{name}` should hold a `_lod{level}` mesh"));
            }
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut images = Vec::new();
    for image in gltf.images() {
        match image.source() {
            gltf::image::Source::Uri { uri, .. } => {
                if !uri.ends_with(".ktx2") {
                    problems.push(format!("image `{uri}` is not KTX2"));
                } else if !dir.join(uri).is_file() {
                    problems.push(format!("image `{uri}` is missing (looked for {})", dir.join(uri).display()));
                }
                images.push(uri.to_owned());
            }
            gltf::image::Source::View { .. } => problems.push(format!("image {} is embedded; Plaza's textures are KTX2 files", image.index())),
        }
    }
    if chains.is_empty() {
        problems.push("no LOD chains (meshes named <asset>_lod<N>)".to_owned());
    }
    if problems.is_empty() { Ok(GlbInfo { chains, impostors, images, nodes: gltf.nodes().len() }) } else { Err(problems) }
}

/// What a KTX2 texture holds and costs.
#[derive(Debug, Clone, PartialEq)]
pub struct Ktx2Info {
    pub width: u32,
    pub height: u32,
    pub levels: u32,
    pub alpha: bool,
    pub srgb: bool,
    /// Bytes once transcoded to BC7 or ASTC 4×4 (what the GPU holds).
    pub gpu_bytes: u64,
}

/// Bytes of a texture of this size as RGBA8, optionally with the same mip
/// levels.
pub fn rgba8_bytes(width: u32, height: u32, levels: u32) -> u64 {
    (0..levels).map(|l| u64::from((width >> l).max(1)) * u64::from((height >> l).max(1)) * 4).sum()
}

fn blocks(texels: u32) -> u64 {
    u64::from(texels.div_ceil(4).max(1))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// A truncated file names what it lacks, before the KTX2 reader's
/// generic "unexpected end".
fn truncation(bytes: &[u8]) -> Option<String> {
    let levels = u32::from_le_bytes(bytes.get(40..44)?.try_into().ok()?).max(1) as usize;
    let mut need = 80 + levels * 24;
    for l in 0..levels {
        let at = 80 + l * 24;
        let (Some(ofs), Some(len)) = (le_u64(bytes, at), le_u64(bytes, at + 8)) else { break };
        need = need.max(ofs.saturating_add(len) as usize);
    }
    (need > bytes.len()).then(|| format!("truncated: the level index needs {need} bytes, the file has {}", bytes.len()))
}

/// Validates a KTX2 texture: Basis UASTC, zstd, a full mip chain down to
/// 4 texels, every level decompressing to the right size and transcoding.
/// `normal_map` says whether it must be linear (else sRGB).
pub fn ktx2(bytes: &[u8], normal_map: bool) -> Result<Ktx2Info, Vec<String>> {
    let reader = match ktx2::Reader::new(bytes) {
        Ok(r) => r,
        Err(e) => {
            let why = if bytes.len() >= 12 && bytes[..12] == *b"\xABKTX 20\xBB\r\n\x1A\n" { truncation(bytes) } else { None };
            return Err(vec![why.unwrap_or_else(|| format!("not a valid KTX2 file: {e}"))]);
        }
    };
    let h = reader.header();
    let mut problems = Vec::new();
    if let Some(format) = h.format {
        problems.push(format!("format {format:?}: expected Basis Universal UASTC (VK_FORMAT_UNDEFINED with a UASTC data format descriptor)"));
    }
    match reader.color_model() {
        Some(ColorModel::UASTC) => {}
        Some(ColorModel::ETC1S) => problems.push("ETC1S (BasisLZ): Bevy cannot load ETC1S; encode as UASTC".to_owned()),
        other => problems.push(format!("colour model {other:?}: expected UASTC")),
    }
    if h.supercompression_scheme != Some(SupercompressionScheme::Zstandard) {
        problems.push(format!("supercompression {:?}: expected Zstandard", h.supercompression_scheme));
    }
    let srgb = reader.transfer_function() == Some(TransferFunction::SRGB);
    match (normal_map, reader.transfer_function()) {
        (true, Some(TransferFunction::Linear)) | (false, Some(TransferFunction::SRGB)) => {}
        (true, tf) => problems.push(format!("a normal map must be linear, this one is {tf:?}")),
        (false, tf) => problems.push(format!("a colour texture must be sRGB, this one is {tf:?}")),
    }
    if h.pixel_width % 4 != 0 || h.pixel_height % 4 != 0 {
        problems.push(format!("{}x{} is not whole 4x4 blocks", h.pixel_width, h.pixel_height));
    }
    if h.pixel_depth > 1 || h.layer_count > 1 || h.face_count != 1 {
        problems.push("not a plain 2D texture (depth, layers or faces)".to_owned());
    }
    let expected = mip_count(h.pixel_width, h.pixel_height);
    if h.level_count != expected {
        problems.push(format!("{} mip levels, expected {expected} for {}x{} (down to 4 texels)", h.level_count, h.pixel_width, h.pixel_height));
    }
    let alpha = reader.basic_dfd().and_then(|d| d.sample_information.first()).map(|s| s.channel_type == 3).unwrap_or(false);
    if !problems.is_empty() {
        return Err(problems);
    }
    let transcoder = LowLevelUastcTranscoder::new();
    let mut gpu_bytes = 0;
    for (l, level) in reader.levels().enumerate() {
        let (w, hgt) = ((h.pixel_width >> l).max(1), (h.pixel_height >> l).max(1));
        let size = blocks(w) * blocks(hgt) * BLOCK_BYTES;
        if level.uncompressed_byte_length != size {
            problems.push(format!("level {l}: {} bytes uncompressed, {w}x{hgt} UASTC needs {size}", level.uncompressed_byte_length));
            continue;
        }
        let data = match zstd_decode(level.data) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("level {l}: zstd data is corrupt ({e})"));
                continue;
            }
        };
        if data.len() as u64 != size {
            problems.push(format!("level {l}: zstd gives {} bytes, expected {size}", data.len()));
            continue;
        }
        let params = SliceParametersUastc { num_blocks_x: blocks(w) as u32, num_blocks_y: blocks(hgt) as u32, has_alpha: alpha, original_width: w, original_height: hgt };
        if let Err(e) = transcoder.transcode_slice(&data, params, DecodeFlags::HIGH_QUALITY, TranscoderBlockFormat::BC7) {
            problems.push(format!("level {l}: UASTC blocks do not transcode to BC7 ({e:?})"));
        }
        gpu_bytes += size;
    }
    if problems.is_empty() {
        Ok(Ktx2Info { width: h.pixel_width, height: h.pixel_height, levels: h.level_count, alpha, srgb, gpu_bytes })
    } else {
        Err(problems)
    }
}

fn zstd_decode(data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut cursor = std::io::Cursor::new(data);
    let mut decoder = ruzstd::decoding::StreamingDecoder::new(&mut cursor).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    decoder.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Parses and validates WGSL with naga. Bevy's preprocessor directives are
/// not WGSL: a shader using them is reported as such.
pub fn wgsl(source: &str) -> Result<(), Vec<String>> {
    if let Some(line) = source.lines().map(str::trim_start).find(|l| l.starts_with("#import") || l.starts_with("#define_import_path") || l.starts_with("#ifdef") || l.starts_with("#if ")) {
        return Err(vec![format!(
            "uses Bevy's shader preprocessor (`{line}`), which naga alone cannot check; ship self-contained WGSL (see docs/assets.md)"
        )]);
    }
    let at = |loc: Option<naga::SourceLocation>| loc.map(|l| format!(" at line {}:{}", l.line_number, l.line_position)).unwrap_or_default();
    let module = naga::front::wgsl::parse_str(source).map_err(|e| vec![format!("invalid WGSL{}: {}", at(e.location(source)), e.message())])?;
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::default())
        .validate(&module)
        .map_err(|e| {
            let mut why = e.as_inner().to_string();
            let mut cause = std::error::Error::source(e.as_inner());
            while let Some(c) = cause {
                why = format!("{why}: {c}");
                cause = c.source();
            }
            vec![format!("WGSL does not validate{}: {why}", at(e.location(source)))]
        })?;
    Ok(())
}
