//! `plaza.v1.bin`: the compact binary form of every message.
//!
//! A frame is `[format version = 1][type][body]`. Client-to-server types are
//! `0x01..=0x08`, server-to-client `0x81..=0x89`, so a frame sent the wrong
//! way is refused. Integers are LEB128 varints; strings a varint byte length
//! then UTF-8; an optional string a `0`/`1` byte then the string. Poses are
//! bit-packed, MSB first, padded to a byte (see [`crate::pose`] for the
//! quantization):
//!
//! ```text
//! pose block:
//!   has_head:1 has_hands:1 has_t:1
//!   x:17 y:17 z:17                       root position, ±1,000 m
//!   rotation                             see below
//!   [head: dx:10 dy:10 dz:10 rotation]   offset from root, ±4 m
//!   [hand × 2: same as head]
//!   zero bits up to the byte boundary
//!   [t: varint]                          sender clock, ms
//! rotation:
//!   0 yaw:13                             rotation about +y, 1/8192 turns
//!   1 largest:2 a:12 b:12 c:12           smallest three over ±1/√2
//! ```
//!
//! A desktop avatar (yaw-only, no head or hands) is a 9-byte block; with its
//! one-byte id, 10 bytes in a delta.

use super::bits::{Reader, Writer};
use super::{DecodeError, check_size};
use crate::limits::BINARY_FORMAT_VERSION;
use crate::messages::*;
use crate::pose::{
    COMPONENT_BITS, OFFSET_BITS, POSITION_BITS, Pose, QuantizedRotation, Transform, YAW_BITS,
    dequantize_offset, dequantize_position, dequantize_rotation, quantize_offset,
    quantize_position, quantize_rotation,
};

/// Message type bytes.
pub mod tag {
    pub const HELLO: u8 = 0x01;
    pub const JOIN: u8 = 0x02;
    pub const LEAVE: u8 = 0x03;
    pub const POSE: u8 = 0x04;
    pub const CHAT_SEND: u8 = 0x05;
    pub const PING: u8 = 0x06;
    pub const REFRESH: u8 = 0x07;
    pub const VOICE_UP: u8 = 0x08;

    pub const WELCOME: u8 = 0x81;
    pub const JOINED: u8 = 0x82;
    pub const DELTA: u8 = 0x83;
    pub const CHAT: u8 = 0x84;
    pub const CHAT_ACK: u8 = 0x85;
    pub const PONG: u8 = 0x86;
    pub const TOKEN_EXPIRING: u8 = 0x87;
    pub const ERROR: u8 = 0x88;
    pub const VOICE_DOWN: u8 = 0x89;
}

/// Smallest possible pose block: yaw-only, no limbs, no time.
const MIN_POSE_BYTES: usize = (3 + 3 * POSITION_BITS as usize + 1 + YAW_BITS as usize).div_ceil(8);

pub fn encode_client(msg: &ClientMessage) -> Vec<u8> {
    let mut w = Writer::with_capacity(64);
    w.u8(BINARY_FORMAT_VERSION);
    match msg {
        ClientMessage::Hello(h) => {
            w.u8(tag::HELLO);
            w.varint(u64::from(h.protocol));
            w.str(&h.token);
            w.opt_str(h.resume.as_deref());
        }
        ClientMessage::Join(j) => {
            w.u8(tag::JOIN);
            w.str(&j.room);
        }
        ClientMessage::Leave => w.u8(tag::LEAVE),
        ClientMessage::Pose(p) => {
            w.u8(tag::POSE);
            write_pose(&mut w, &p.pose, Some(p.t));
        }
        ClientMessage::Chat(c) => {
            w.u8(tag::CHAT_SEND);
            w.str(&c.id);
            w.str(&c.text);
        }
        ClientMessage::Ping(p) => {
            w.u8(tag::PING);
            w.varint(p.t);
        }
        ClientMessage::Refresh(r) => {
            w.u8(tag::REFRESH);
            w.str(&r.token);
        }
        ClientMessage::Voice(v) => {
            w.u8(tag::VOICE_UP);
            w.str(&v.signal.to_string());
        }
    }
    w.buf
}

pub fn encode_server(msg: &ServerMessage) -> Vec<u8> {
    let mut out = Vec::new();
    encode_server_into(msg, &mut out);
    out
}

/// Encodes into `out` (cleared first), so a room tick can reuse one buffer.
pub fn encode_server_into(msg: &ServerMessage, out: &mut Vec<u8>) {
    out.clear();
    let mut w = Writer { buf: std::mem::take(out) };
    w.u8(BINARY_FORMAT_VERSION);
    match msg {
        ServerMessage::Welcome(m) => {
            w.u8(tag::WELCOME);
            w.str(&m.user_id);
            w.str(&m.session);
            w.varint(m.server_time);
            w.varint(u64::from(m.tick_hz));
        }
        ServerMessage::Joined(m) => {
            w.u8(tag::JOINED);
            w.str(&m.room);
            w.str(&m.room_name);
            w.varint(u64::from(m.you));
            w.varint(m.tick);
            w.varint(m.avatars.len() as u64);
            for a in &m.avatars {
                write_avatar_info(&mut w, a);
            }
        }
        ServerMessage::Delta(m) => {
            w.u8(tag::DELTA);
            w.varint(m.tick);
            w.varint(m.avatars.len() as u64);
            for a in &m.avatars {
                w.varint(u64::from(a.id));
                write_pose(&mut w, &a.pose, a.t);
            }
            w.varint(m.joined.len() as u64);
            for a in &m.joined {
                write_avatar_info(&mut w, a);
            }
            w.varint(m.left.len() as u64);
            for id in &m.left {
                w.varint(u64::from(*id));
            }
        }
        ServerMessage::Chat(m) => {
            w.u8(tag::CHAT);
            w.str(&m.id);
            w.str(&m.room);
            w.str(&m.from);
            w.str(&m.name);
            w.str(&m.text);
            w.varint(m.ts);
        }
        ServerMessage::ChatAck(m) => {
            w.u8(tag::CHAT_ACK);
            w.str(&m.id);
        }
        ServerMessage::Pong(m) => {
            w.u8(tag::PONG);
            w.varint(m.t);
            w.varint(m.server_time);
        }
        ServerMessage::TokenExpiring(m) => {
            w.u8(tag::TOKEN_EXPIRING);
            w.varint(u64::from(m.in_s));
        }
        ServerMessage::Error(m) => {
            w.u8(tag::ERROR);
            w.str(m.code.as_str());
            w.str(&m.message);
        }
        ServerMessage::Voice(v) => {
            w.u8(tag::VOICE_DOWN);
            w.str(&v.signal.to_string());
        }
    }
    *out = w.buf;
}

pub fn decode_client(bytes: &[u8]) -> Result<ClientMessage, DecodeError> {
    let (kind, mut r) = open(bytes)?;
    let msg = match kind {
        tag::HELLO => ClientMessage::Hello(Hello {
            protocol: r.varint_u32("hello protocol")?,
            token: r.str("hello token")?,
            resume: r.opt_str("hello resume")?,
        }),
        tag::JOIN => ClientMessage::Join(Join { room: r.str("join room")? }),
        tag::LEAVE => ClientMessage::Leave,
        tag::POSE => {
            let (pose, t) = read_pose(&mut r)?;
            let t = t.ok_or_else(|| DecodeError::Invalid { what: "pose", reason: "missing time t".into() })?;
            ClientMessage::Pose(PoseUpdate { t, pose })
        }
        tag::CHAT_SEND => ClientMessage::Chat(ChatSend { id: r.str("chat id")?, text: r.str("chat text")? }),
        tag::PING => ClientMessage::Ping(Ping { t: r.varint("ping t")? }),
        tag::REFRESH => ClientMessage::Refresh(Refresh { token: r.str("refresh token")? }),
        tag::VOICE_UP => ClientMessage::Voice(Voice { signal: read_json(&mut r)? }),
        other => return Err(DecodeError::UnknownType(other)),
    };
    r.finish()?;
    Ok(msg)
}

/// Whether `bytes` is a delta in this format, by its header alone: a
/// relay passes deltas on without decoding them (the server's
/// `relay`). Its body is not checked.
pub fn is_delta(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == BINARY_FORMAT_VERSION && bytes[1] == tag::DELTA
}

pub fn decode_server(bytes: &[u8]) -> Result<ServerMessage, DecodeError> {
    let (kind, mut r) = open(bytes)?;
    let msg = match kind {
        tag::WELCOME => ServerMessage::Welcome(Welcome {
            user_id: r.str("welcome user_id")?,
            session: r.str("welcome session")?,
            server_time: r.varint("welcome server_time")?,
            tick_hz: r.varint_u32("welcome tick_hz")?,
        }),
        tag::JOINED => {
            let room = r.str("joined room")?;
            let room_name = r.str("joined room_name")?;
            let you = r.varint_u32("joined you")?;
            let tick = r.varint("joined tick")?;
            let n = r.count("joined avatars", 3 + MIN_POSE_BYTES)?;
            let mut avatars = Vec::with_capacity(n);
            for _ in 0..n {
                avatars.push(read_avatar_info(&mut r)?);
            }
            ServerMessage::Joined(Joined { room, room_name, you, tick, avatars })
        }
        tag::DELTA => {
            let tick = r.varint("delta tick")?;
            let n = r.count("delta avatars", 1 + MIN_POSE_BYTES)?;
            let mut avatars = Vec::with_capacity(n);
            for _ in 0..n {
                let id = r.varint_u32("delta avatar id")?;
                let (pose, t) = read_pose(&mut r)?;
                avatars.push(AvatarPose { id, t, pose });
            }
            let n = r.count("delta joined", 3 + MIN_POSE_BYTES)?;
            let mut joined = Vec::with_capacity(n);
            for _ in 0..n {
                joined.push(read_avatar_info(&mut r)?);
            }
            let n = r.count("delta left", 1)?;
            let mut left = Vec::with_capacity(n);
            for _ in 0..n {
                left.push(r.varint_u32("delta left id")?);
            }
            ServerMessage::Delta(Delta { tick, avatars, joined, left })
        }
        tag::CHAT => ServerMessage::Chat(ChatMessage {
            id: r.str("chat id")?,
            room: r.str("chat room")?,
            from: r.str("chat from")?,
            name: r.str("chat name")?,
            text: r.str("chat text")?,
            ts: r.varint("chat ts")?,
        }),
        tag::CHAT_ACK => ServerMessage::ChatAck(ChatAck { id: r.str("chat_ack id")? }),
        tag::PONG => ServerMessage::Pong(Pong { t: r.varint("pong t")?, server_time: r.varint("pong server_time")? }),
        tag::TOKEN_EXPIRING => ServerMessage::TokenExpiring(TokenExpiring { in_s: r.varint_u32("token_expiring in_s")? }),
        tag::ERROR => {
            let code = r.str("error code")?;
            let code = ErrorCode::ALL.into_iter().find(|c| c.as_str() == code).unwrap_or(ErrorCode::Unknown);
            ServerMessage::Error(ErrorMessage { code, message: r.str("error message")? })
        }
        tag::VOICE_DOWN => ServerMessage::Voice(Voice { signal: read_json(&mut r)? }),
        other => return Err(DecodeError::UnknownType(other)),
    };
    r.finish()?;
    Ok(msg)
}

/// A delta's entries without their poses: each moved avatar's id and `t`,
/// and the joined and left sections in full. For a reader that accounts for
/// who moved when and draws no one: the load tool reads 1.5 million entries
/// a second at 2,000 users, and dequantizing their poses (a sine and cosine
/// each) was a fifth of its decoding.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeltaStamps {
    pub tick: u64,
    pub moved: Vec<(AvatarId, Option<u64>)>,
    pub joined: Vec<AvatarInfo>,
    pub left: Vec<AvatarId>,
}

/// Decodes a delta into `out` (its vectors reused) and returns true; any
/// other message type returns false and leaves `out` alone, for
/// [`decode_server`]. A delta is checked as fully as [`decode_server`]
/// checks it (the pose bits are read, not converted).
pub fn decode_delta_stamps(bytes: &[u8], out: &mut DeltaStamps) -> Result<bool, DecodeError> {
    let (kind, mut r) = open(bytes)?;
    if kind != tag::DELTA {
        return Ok(false);
    }
    out.tick = r.varint("delta tick")?;
    let n = r.count("delta avatars", 1 + MIN_POSE_BYTES)?;
    out.moved.clear();
    for _ in 0..n {
        let id = r.varint_u32("delta avatar id")?;
        out.moved.push((id, skip_pose(&mut r)?));
    }
    let n = r.count("delta joined", 3 + MIN_POSE_BYTES)?;
    out.joined.clear();
    for _ in 0..n {
        out.joined.push(read_avatar_info(&mut r)?);
    }
    let n = r.count("delta left", 1)?;
    out.left.clear();
    for _ in 0..n {
        out.left.push(r.varint_u32("delta left id")?);
    }
    r.finish()?;
    Ok(true)
}

/// [`read_pose`] without building the pose: the block's length worked out
/// from its flag bits (the fields have fixed widths), only `t` read.
fn skip_pose(r: &mut Reader<'_>) -> Result<Option<u64>, DecodeError> {
    const WHAT: &str = "pose";
    let (has_head, has_hands, has_t) = (r.peek_bit(0, WHAT)?, r.peek_bit(1, WHAT)?, r.peek_bit(2, WHAT)?);
    // A rotation starting at `bit`: its flag, then yaw or smallest three.
    let rotation = |r: &Reader<'_>, bit: usize| -> Result<usize, DecodeError> {
        Ok(1 + if r.peek_bit(bit, WHAT)? { 2 + 3 * COMPONENT_BITS as usize } else { YAW_BITS as usize })
    };
    let mut bits = 3 + 3 * POSITION_BITS as usize;
    bits += rotation(r, bits)?;
    for _ in 0..usize::from(has_head) + 2 * usize::from(has_hands) {
        bits += 3 * OFFSET_BITS as usize;
        bits += rotation(r, bits)?;
    }
    r.skip(bits.div_ceil(8), WHAT)?;
    if has_t { Ok(Some(r.varint("pose t")?)) } else { Ok(None) }
}

fn open(bytes: &[u8]) -> Result<(u8, Reader<'_>), DecodeError> {
    check_size(bytes)?;
    let mut r = Reader::new(bytes);
    let version = r.u8("format version")?;
    if version != BINARY_FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion { expected: BINARY_FORMAT_VERSION, actual: version });
    }
    Ok((r.u8("message type")?, r))
}

fn read_json(r: &mut Reader<'_>) -> Result<serde_json::Value, DecodeError> {
    let text = r.str("voice signal")?;
    serde_json::from_str(&text).map_err(|e| DecodeError::Invalid { what: "voice signal", reason: e.to_string() })
}

/// A delta encoded once for a whole room. Each entry's bytes are kept
/// apart, so one member's frame is spliced from them without that member's
/// own avatar (a member is never sent itself) instead of encoding the delta
/// again for every member. [`SharedDelta::frame_for`] gives exactly the
/// bytes [`encode_server`] gives for the delta with `own` filtered out.
#[derive(Debug, Clone)]
pub struct SharedDelta {
    tick: u64,
    /// Every entry's encoding, back to back.
    bytes: Vec<u8>,
    /// (avatar id, end offset in `bytes`) of each moved avatar, then each
    /// joined one; an entry starts where the one before it ends.
    moved: Vec<(AvatarId, usize)>,
    joined: Vec<(AvatarId, usize)>,
    /// The `left` section, count included.
    left: Vec<u8>,
}

impl SharedDelta {
    pub fn new(d: &Delta) -> SharedDelta {
        let mut w = Writer::with_capacity(16 * (d.avatars.len() + d.joined.len()) + 8);
        let mut moved = Vec::with_capacity(d.avatars.len());
        for a in &d.avatars {
            w.varint(u64::from(a.id));
            write_pose(&mut w, &a.pose, a.t);
            moved.push((a.id, w.buf.len()));
        }
        let mut joined = Vec::with_capacity(d.joined.len());
        for a in &d.joined {
            write_avatar_info(&mut w, a);
            joined.push((a.id, w.buf.len()));
        }
        let mut left = Writer::with_capacity(1 + 3 * d.left.len());
        left.varint(d.left.len() as u64);
        for id in &d.left {
            left.varint(u64::from(*id));
        }
        SharedDelta { tick: d.tick, bytes: w.buf, moved, joined, left: left.buf }
    }

    /// The frame for the member whose avatar is `own` (0: none), written
    /// into `out` (cleared first). False when nothing is left for it: a
    /// tick with no change for this member sends nothing.
    pub fn frame_for(&self, own: AvatarId, out: &mut Vec<u8>) -> bool {
        out.clear();
        let keep = |entries: &[(AvatarId, usize)]| entries.iter().filter(|(id, _)| own == 0 || *id != own).count();
        let (moved, joined) = (keep(&self.moved), keep(&self.joined));
        if moved == 0 && joined == 0 && self.left.len() == 1 {
            return false; // `left` is just its zero count
        }
        let mut w = Writer { buf: std::mem::take(out) };
        w.u8(BINARY_FORMAT_VERSION);
        w.u8(tag::DELTA);
        w.varint(self.tick);
        let mut start = 0;
        w.varint(moved as u64);
        for &(id, end) in &self.moved {
            if own == 0 || id != own {
                w.buf.extend_from_slice(&self.bytes[start..end]);
            }
            start = end;
        }
        w.varint(joined as u64);
        for &(id, end) in &self.joined {
            if own == 0 || id != own {
                w.buf.extend_from_slice(&self.bytes[start..end]);
            }
            start = end;
        }
        w.buf.extend_from_slice(&self.left);
        *out = w.buf;
        true
    }
}

fn write_avatar_info(w: &mut Writer, a: &AvatarInfo) {
    w.varint(u64::from(a.id));
    w.str(&a.user);
    w.str(&a.name);
    write_pose(w, &a.pose, None);
}

fn read_avatar_info(r: &mut Reader<'_>) -> Result<AvatarInfo, DecodeError> {
    let id = r.varint_u32("avatar id")?;
    let user = r.str("avatar user")?;
    let name = r.str("avatar name")?;
    let (pose, _) = read_pose(r)?;
    Ok(AvatarInfo { id, user, name, pose })
}

fn write_pose(w: &mut Writer, pose: &Pose, t: Option<u64>) {
    let mut b = w.bits();
    b.put(u32::from(pose.head.is_some()), 1);
    b.put(u32::from(pose.hands.is_some()), 1);
    b.put(u32::from(t.is_some()), 1);
    let root = quantize_position(pose.p);
    for axis in root {
        b.put(axis, POSITION_BITS);
    }
    let put_rotation = |b: &mut super::bits::BitWriter<'_>, r: [f32; 4]| match quantize_rotation(r) {
        QuantizedRotation::Yaw(yaw) => {
            b.put(0, 1);
            b.put(yaw, YAW_BITS);
        }
        QuantizedRotation::SmallestThree { largest, rest } => {
            b.put(1, 1);
            b.put(u32::from(largest), 2);
            for c in rest {
                b.put(c, COMPONENT_BITS);
            }
        }
    };
    put_rotation(&mut b, pose.r);
    // Limbs are offsets from the root the receiver will see.
    let root_seen = dequantize_position(root);
    let limbs = pose.head.iter().chain(pose.hands.iter().flatten());
    for limb in limbs {
        for axis in quantize_offset(limb.p, root_seen) {
            b.put(axis, OFFSET_BITS);
        }
        put_rotation(&mut b, limb.r);
    }
    b.finish();
    if let Some(t) = t {
        w.varint(t);
    }
}

fn read_pose(r: &mut Reader<'_>) -> Result<(Pose, Option<u64>), DecodeError> {
    const WHAT: &str = "pose";
    let mut b = r.bits();
    let has_head = b.get(1, WHAT)? == 1;
    let has_hands = b.get(1, WHAT)? == 1;
    let has_t = b.get(1, WHAT)? == 1;
    let mut root = [0u32; 3];
    for axis in &mut root {
        *axis = b.get(POSITION_BITS, WHAT)?;
    }
    let get_rotation = |b: &mut super::bits::BitReader<'_, '_>| -> Result<[f32; 4], DecodeError> {
        let q = if b.get(1, WHAT)? == 0 {
            QuantizedRotation::Yaw(b.get(YAW_BITS, WHAT)?)
        } else {
            let largest = b.get(2, WHAT)? as u8;
            let mut rest = [0u32; 3];
            for c in &mut rest {
                *c = b.get(COMPONENT_BITS, WHAT)?;
            }
            QuantizedRotation::SmallestThree { largest, rest }
        };
        Ok(dequantize_rotation(q))
    };
    let p = dequantize_position(root);
    let rot = get_rotation(&mut b)?;
    let limb = |b: &mut super::bits::BitReader<'_, '_>| -> Result<Transform, DecodeError> {
        let mut off = [0u32; 3];
        for axis in &mut off {
            *axis = b.get(OFFSET_BITS, WHAT)?;
        }
        Ok(Transform { p: dequantize_offset(p, off), r: get_rotation(b)? })
    };
    let head = if has_head { Some(limb(&mut b)?) } else { None };
    let hands = if has_hands { Some([limb(&mut b)?, limb(&mut b)?]) } else { None };
    let t = if has_t { Some(r.varint("pose t")?) } else { None };
    Ok((Pose { p, r: rot, head, hands }, t))
}
