//! KTX2 textures: Basis Universal UASTC blocks, zstd-supercompressed, with
//! mips — the one compressed form Bevy transcodes (to BC7 or ASTC 4×4 on
//! the GPU; it cannot load ETC1S).
//!
//! The basis-universal crate writes `.basis` files, not KTX2, and its build
//! has no zstd; so the encoder runs UASTC into a `.basis` file, the level
//! slices (raw 16-byte UASTC blocks) are taken out of it, and the KTX2
//! container is written here, each level compressed with ruzstd (the zstd
//! Bevy decodes with).

use std::num::NonZeroU8;

use basis_universal::{BasisTextureFormat, ColorSpace, Compressor, CompressorParams};
use ktx2::dfd::{Basic, Block, ChannelTypeQualifiers, DataFormatFlags, SampleInformation};
use ktx2::{ColorModel, ColorPrimaries, Header, SupercompressionScheme, TransferFunction};
use thiserror::Error;

use crate::texture::{Image, Space};

/// Bytes per UASTC (and BC7, and ASTC 4×4) block of 4×4 texels.
pub const BLOCK_BYTES: u64 = 16;

/// KHR_DF_CHANNEL_UASTC_RGB and _RGBA.
const UASTC_RGB: u8 = 0;
const UASTC_RGBA: u8 = 3;

/// UASTC pack flags: the fastest level (encoding time matters: the
/// regeneration test runs in a debug build), faster ETC1 hints (used only
/// when transcoding to ETC, which Bevy does last).
const UASTC_FLAGS: basis_universal::sys::UastcPackFlags =
    basis_universal::sys::UastcPackFlags_PackUASTCLevelFastest | basis_universal::sys::UastcPackFlags_PackUASTCETC1FasterHints;

/// The KTX2 writer id stored in every file. No version: the bytes must not
/// change when only the crate's version does.
pub const WRITER: &str = "plaza-assets";

#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("basis-universal rejected the parameters for a {0}x{1} image")]
    Init(u32, u32),
    #[error("basis-universal failed to encode: {0:?}")]
    Process(basis_universal::CompressorErrorCode),
    #[error("the .basis file basis-universal wrote is malformed: {0}")]
    Basis(&'static str),
}

/// Encodes `levels` (a full mip chain, largest first) as a UASTC KTX2 file.
/// Single-threaded and with fixed settings, so the bytes are reproducible.
pub fn encode(levels: &[Image], space: Space) -> Result<Vec<u8>, EncodeError> {
    let base = &levels[0];
    let alpha = levels.iter().any(Image::has_alpha);
    let mut params = CompressorParams::new();
    params.set_basis_format(BasisTextureFormat::UASTC4x4);
    // No rate-distortion optimization: it would shrink the files by a
    // third but makes encoding six times slower, and the regeneration test
    // runs this in a debug build.
    params.set_rdo_uastc(None);
    params.set_color_space(match space {
        Space::Srgb => ColorSpace::Srgb,
        Space::Normal => ColorSpace::Linear,
    });
    params.set_generate_mipmaps(false);
    params.source_image_mut(0).init(&base.rgba, base.width, base.height, 4);
    for (i, level) in levels.iter().enumerate().skip(1) {
        params.source_mipmap_image_mut(0, i as u32 - 1).init(&level.rgba, level.width, level.height, 4);
    }
    let basis = run_compressor(&mut params, base)?;
    let slices = basis_slices(&basis)?;
    if slices.len() != levels.len() {
        return Err(EncodeError::Basis("level count differs from the mips given"));
    }
    Ok(write(base.width, base.height, &slices, space, alpha))
}

#[expect(unsafe_code, reason = "basis-universal's compressor entry points are unsafe fns; the parameters are fully set above")]
fn run_compressor(params: &mut CompressorParams, base: &Image) -> Result<Vec<u8>, EncodeError> {
    // The crate's `set_uastc_quality_level` ORs the level into the default
    // flags (which hold level 2), so the flags are set whole here.
    // SAFETY: a plain setter on a live parameter object.
    unsafe { basis_universal::sys::compressor_params_set_pack_uastc_flags(params.0, UASTC_FLAGS) };
    let mut compressor = Compressor::new(1);
    // SAFETY: `params` holds valid images and a supported format.
    if !unsafe { compressor.init(params) } {
        return Err(EncodeError::Init(base.width, base.height));
    }
    // SAFETY: as above; `init` succeeded.
    unsafe { compressor.process() }.map_err(EncodeError::Process)?;
    Ok(compressor.basis_file().to_vec())
}

fn le(bytes: &[u8], at: usize, n: usize) -> Result<u64, EncodeError> {
    let b = bytes.get(at..at + n).ok_or(EncodeError::Basis("truncated"))?;
    Ok(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

/// The level slices of image 0 of a UASTC `.basis` file, largest first.
/// Layout: basisu_file_headers.h (packed little-endian fields).
fn basis_slices(basis: &[u8]) -> Result<Vec<Vec<u8>>, EncodeError> {
    const HEADER_SIZE: usize = 77;
    const SLICE_DESC_SIZE: usize = 23;
    if le(basis, 0, 2)? != u64::from(b'B') << 8 | u64::from(b's') {
        return Err(EncodeError::Basis("bad signature"));
    }
    if le(basis, 4, 2)? as usize != HEADER_SIZE {
        return Err(EncodeError::Basis("unexpected header size"));
    }
    let total_slices = le(basis, 14, 3)? as usize;
    if le(basis, 20, 1)? != 1 {
        return Err(EncodeError::Basis("not UASTC"));
    }
    let slice_desc_ofs = le(basis, 65, 4)? as usize;
    let mut slices = Vec::with_capacity(total_slices);
    for s in 0..total_slices {
        let d = slice_desc_ofs + s * SLICE_DESC_SIZE;
        let (image, level) = (le(basis, d, 3)?, le(basis, d + 3, 1)? as usize);
        let blocks = le(basis, d + 9, 2)? * le(basis, d + 11, 2)?;
        let (ofs, size) = (le(basis, d + 13, 4)? as usize, le(basis, d + 17, 4)? as usize);
        if image != 0 || level != slices.len() || size as u64 != blocks * BLOCK_BYTES {
            return Err(EncodeError::Basis("unexpected slice layout"));
        }
        slices.push(basis.get(ofs..ofs + size).ok_or(EncodeError::Basis("slice out of bounds"))?.to_vec());
    }
    Ok(slices)
}

/// The basic data format descriptor of a UASTC texture.
fn dfd(space: Space, alpha: bool) -> Basic {
    let one = NonZeroU8::MIN;
    let four = NonZeroU8::new(4).unwrap_or(one);
    Basic {
        color_model: Some(ColorModel::UASTC),
        color_primaries: Some(ColorPrimaries::BT709),
        transfer_function: Some(match space {
            Space::Srgb => TransferFunction::SRGB,
            Space::Normal => TransferFunction::Linear,
        }),
        flags: DataFormatFlags::STRAIGHT_ALPHA,
        texel_block_dimensions: [four, four, one, one],
        bytes_planes: [16, 0, 0, 0, 0, 0, 0, 0],
        sample_information: vec![SampleInformation {
            bit_offset: 0,
            bit_length: NonZeroU8::new(128).unwrap_or(one),
            channel_type: if alpha { UASTC_RGBA } else { UASTC_RGB },
            channel_type_qualifiers: ChannelTypeQualifiers::empty(),
            sample_positions: [0; 4],
            lower: 0,
            upper: u32::MAX,
        }],
    }
}

/// Assembles the KTX2 file: header, level index, DFD, key/value data, then
/// the zstd-compressed levels, smallest first as the format asks.
fn write(width: u32, height: u32, levels: &[Vec<u8>], space: Space, alpha: bool) -> Vec<u8> {
    let dfd_block = Block::Basic(dfd(space, alpha)).to_vec();
    let mut kvd = Vec::new();
    let entry = format!("KTXwriter\0{WRITER}\0");
    kvd.extend_from_slice(&(entry.len() as u32).to_le_bytes());
    kvd.extend_from_slice(entry.as_bytes());
    while kvd.len() % 4 != 0 {
        kvd.push(0);
    }
    let index_len = levels.len() * 24;
    let dfd_offset = Header::LENGTH + index_len;
    let dfd_len = 4 + dfd_block.len();
    let kvd_offset = dfd_offset + dfd_len;
    let compressed: Vec<Vec<u8>> =
        levels.iter().map(|l| ruzstd::encoding::compress_to_vec(l.as_slice(), ruzstd::encoding::CompressionLevel::Fastest)).collect();
    // Offsets of each level, laid out smallest first after the key/values.
    let mut offsets = vec![0u64; levels.len()];
    let mut at = (kvd_offset + kvd.len()) as u64;
    for i in (0..levels.len()).rev() {
        offsets[i] = at;
        at += compressed[i].len() as u64;
    }
    let header = Header {
        format: None,
        type_size: 1,
        pixel_width: width,
        pixel_height: height,
        pixel_depth: 0,
        layer_count: 0,
        face_count: 1,
        level_count: levels.len() as u32,
        supercompression_scheme: Some(SupercompressionScheme::Zstandard),
        index: ktx2::Index {
            dfd_byte_offset: dfd_offset as u32,
            dfd_byte_length: dfd_len as u32,
            kvd_byte_offset: kvd_offset as u32,
            kvd_byte_length: kvd.len() as u32,
            sgd_byte_offset: 0,
            sgd_byte_length: 0,
        },
    };
    let mut out = Vec::with_capacity(at as usize);
    out.extend_from_slice(&header.as_bytes());
    for (i, level) in levels.iter().enumerate() {
        for v in [offsets[i], compressed[i].len() as u64, level.len() as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out.extend_from_slice(&(dfd_len as u32).to_le_bytes());
    out.extend_from_slice(&dfd_block);
    out.extend_from_slice(&kvd);
    for c in compressed.iter().rev() {
        out.extend_from_slice(c);
    }
    out
}
