//! Byte and bit readers/writers for the binary codec. Readers check every
//! length against what is left, so a lying length can't allocate or panic.

use super::DecodeError;

#[derive(Default)]
pub(crate) struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn with_capacity(n: usize) -> Self {
        Writer { buf: Vec::with_capacity(n) }
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    pub fn str(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }

    /// Starts a run of bit-packed fields, ended by [`BitWriter::finish`].
    pub fn bits(&mut self) -> BitWriter<'_> {
        BitWriter { out: &mut self.buf, acc: 0, used: 0 }
    }
}

/// Writes fields MSB-first; the last byte is padded with zero bits.
pub(crate) struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    used: u32,
}

impl BitWriter<'_> {
    pub fn put(&mut self, value: u32, bits: u32) {
        debug_assert!(bits <= 32 && (bits == 32 || value < (1 << bits)));
        self.acc = (self.acc << bits) | u64::from(value);
        self.used += bits;
        while self.used >= 8 {
            self.used -= 8;
            self.out.push((self.acc >> self.used) as u8);
        }
        self.acc &= (1u64 << self.used) - 1;
    }

    pub fn finish(self) {
        if self.used > 0 {
            self.out.push((self.acc << (8 - self.used)) as u8);
        }
    }
}

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    /// The bit `offset` bits past the read position (MSB first, as
    /// [`BitReader`] reads), without moving.
    pub fn peek_bit(&self, offset: usize, what: &'static str) -> Result<bool, DecodeError> {
        let b = *self.bytes.get(self.pos + offset / 8).ok_or(DecodeError::Truncated(what))?;
        Ok(b >> (7 - offset % 8) & 1 == 1)
    }

    /// Moves past `n` bytes.
    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated(what));
        }
        self.pos += n;
        Ok(())
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let b = *self.bytes.get(self.pos).ok_or(DecodeError::Truncated(what))?;
        self.pos += 1;
        Ok(b)
    }

    pub fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8(what)?;
            let part = u64::from(b & 0x7f);
            if i == 9 && part > 1 {
                return Err(DecodeError::Invalid { what, reason: "varint overflows 64 bits".into() });
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Invalid { what, reason: "varint longer than 10 bytes".into() })
    }

    pub fn varint_u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let v = self.varint(what)?;
        u32::try_from(v).map_err(|_| DecodeError::Invalid { what, reason: format!("{v} does not fit in 32 bits") })
    }

    /// A count of items that each take at least `min_item_bytes`: refused
    /// when the rest of the frame can't hold that many, so the caller may
    /// allocate for it.
    pub fn count(&mut self, what: &'static str, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.varint(what)?;
        let fits = self.remaining() / min_item_bytes.max(1);
        match usize::try_from(n) {
            Ok(n) if n <= fits => Ok(n),
            _ => Err(DecodeError::Invalid {
                what,
                reason: format!("count {n} exceeds what the remaining {} bytes can hold", self.remaining()),
            }),
        }
    }

    pub fn bytes(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::Truncated(what));
        }
        let out = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    pub fn str(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let len = self.varint(what)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated(what))?;
        let raw = self.bytes(len, what)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|e| DecodeError::Invalid { what, reason: format!("not UTF-8: {e}") })
    }

    pub fn opt_str(&mut self, what: &'static str) -> Result<Option<String>, DecodeError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => self.str(what).map(Some),
            other => Err(DecodeError::Invalid { what, reason: format!("option tag {other}, expected 0 or 1") }),
        }
    }

    /// Starts reading bit-packed fields; `finish` skips the padding.
    pub fn bits(&mut self) -> BitReader<'_, 'a> {
        BitReader { reader: self, acc: 0, avail: 0 }
    }
}

pub(crate) struct BitReader<'r, 'a> {
    reader: &'r mut Reader<'a>,
    acc: u64,
    avail: u32,
}

impl BitReader<'_, '_> {
    pub fn get(&mut self, bits: u32, what: &'static str) -> Result<u32, DecodeError> {
        while self.avail < bits {
            let b = self.reader.u8(what)?;
            self.acc = (self.acc << 8) | u64::from(b);
            self.avail += 8;
        }
        self.avail -= bits;
        let v = (self.acc >> self.avail) & ((1u64 << bits) - 1);
        self.acc &= (1u64 << self.avail) - 1;
        Ok(v as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip_across_byte_boundaries() {
        let fields = [(1u32, 1u32), (0x1ffff, 17), (5, 3), (0xabc, 12), (0, 2), (0x3ff, 10)];
        let mut w = Writer::default();
        let mut bw = w.bits();
        for (v, n) in fields {
            bw.put(v, n);
        }
        bw.finish();
        assert_eq!(w.buf.len(), 45usize.div_ceil(8));
        let mut r = Reader::new(&w.buf);
        let mut br = r.bits();
        for (v, n) in fields {
            assert_eq!(br.get(n, "field").unwrap(), v);
        }
    }

    #[test]
    fn varints_round_trip_and_reject_overflow() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut w = Writer::default();
            w.varint(v);
            assert_eq!(Reader::new(&w.buf).varint("v").unwrap(), v);
        }
        let eleven = [0xffu8; 11];
        assert!(Reader::new(&eleven).varint("v").is_err());
        let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&overflow).varint("v").is_err());
    }

    #[test]
    fn counts_larger_than_the_frame_are_refused() {
        let mut w = Writer::default();
        w.varint(1 << 40);
        w.buf.extend_from_slice(&[0; 8]);
        let err = Reader::new(&w.buf).count("avatars", 2).unwrap_err();
        assert!(matches!(err, DecodeError::Invalid { what: "avatars", .. }), "{err}");
    }
}
