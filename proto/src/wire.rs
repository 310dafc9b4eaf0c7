//! Primitive field encoding shared by every message: big-endian integers,
//! `str` (u16 length + UTF-8) and `bytes` (u32 length + octets).
//!
//! The reader never panics: every read checks the remaining length and
//! returns a [`DecodeError`] naming the field that was short or malformed.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// Why a message body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The body ended before `field` was complete.
    Truncated { field: &'static str },
    /// A `str` field was not valid UTF-8.
    NotUtf8 { field: &'static str },
    /// Bytes were left over after the last field.
    TrailingBytes { count: usize },
    /// A field had a value outside its allowed set.
    BadValue { field: &'static str, value: u64 },
    /// A fixed-size field had the wrong length.
    BadLength {
        field: &'static str,
        expected: usize,
        found: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { field } => write!(f, "message ends inside field `{field}`"),
            Self::NotUtf8 { field } => write!(f, "field `{field}` is not valid UTF-8"),
            Self::TrailingBytes { count } => {
                write!(f, "{count} unexpected bytes after the last field")
            }
            Self::BadValue { field, value } => {
                write!(f, "field `{field}` has invalid value {value}")
            }
            Self::BadLength {
                field,
                expected,
                found,
            } => {
                write!(f, "field `{field}` must be {expected} bytes, found {found}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reads fields from a message body in order.
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError::Truncated { field })
        } else {
            Ok(())
        }
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32())
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(8, field)?;
        Ok(self.buf.get_u64())
    }

    pub fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.need(8, field)?;
        Ok(self.buf.get_i64())
    }

    /// A fixed number of raw octets (nonces, proofs).
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        self.need(N, field)?;
        let mut out = [0u8; N];
        self.buf.copy_to_slice(&mut out);
        Ok(out)
    }

    /// `bytes`: u32 length, then that many octets.
    pub fn bytes(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u32(field)? as usize;
        self.need(len, field)?;
        Ok(self.buf.split_to(len))
    }

    /// `str`: u16 length, then that many octets of UTF-8.
    pub fn str(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u16(field)? as usize;
        self.need(len, field)?;
        let raw = self.buf.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::NotUtf8 { field })
    }

    /// Everything that is left (the last field of DATA frames).
    pub fn rest(&mut self) -> Bytes {
        self.buf.split_to(self.buf.len())
    }

    /// Succeeds only if every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.buf.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { count }),
        }
    }
}

/// Appends fields to a message body. Lengths that do not fit their prefix
/// are a programming error on our own side, never peer input, so they are
/// truncated by the caller's validation before encoding (see `str`).
#[derive(Default)]
pub struct Writer {
    buf: BytesMut,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.put_u8(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.put_u16(v);
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.put_u32(v);
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.put_u64(v);
        self
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.put_i64(v);
        self
    }

    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.put_slice(v);
        self
    }

    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).expect("bytes field longer than 4 GiB");
        self.buf.put_u32(len);
        self.buf.put_slice(v);
        self
    }

    /// Writes a `str`, cutting it at a character boundary if it is longer than
    /// 65535 bytes (only human-readable text is ever sent as `str`).
    pub fn str(&mut self, v: &str) -> &mut Self {
        let mut end = v.len().min(u16::MAX as usize);
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        self.buf.put_u16(end as u16);
        self.buf.put_slice(&v.as_bytes()[..end]);
        self
    }

    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }

    /// Writes on at the end of `buf`.
    pub fn resume(buf: BytesMut) -> Self {
        Writer { buf }
    }

    /// The buffer, with what was written appended.
    pub fn into_inner(self) -> BytesMut {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut w = Writer::new();
        w.u8(7)
            .u16(300)
            .u32(70000)
            .u64(1 << 40)
            .i64(-5)
            .str("héllo")
            .bytes(b"\x00\x01");
        let mut r = Reader::new(w.finish());
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u16("b").unwrap(), 300);
        assert_eq!(r.u32("c").unwrap(), 70000);
        assert_eq!(r.u64("d").unwrap(), 1 << 40);
        assert_eq!(r.i64("e").unwrap(), -5);
        assert_eq!(r.str("f").unwrap(), "héllo");
        assert_eq!(&r.bytes("g").unwrap()[..], b"\x00\x01");
        r.finish().unwrap();
    }

    #[test]
    fn truncated_length_prefix_is_an_error_not_a_panic() {
        let mut r = Reader::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 1]));
        assert_eq!(
            r.bytes("blob"),
            Err(DecodeError::Truncated { field: "blob" })
        );
        let mut r = Reader::new(Bytes::from_static(&[0, 2, 0xc3]));
        assert_eq!(r.str("name"), Err(DecodeError::Truncated { field: "name" }));
        let mut r = Reader::new(Bytes::from_static(&[0, 1, 0xff]));
        assert_eq!(r.str("name"), Err(DecodeError::NotUtf8 { field: "name" }));
    }

    #[test]
    fn long_str_is_cut_on_a_char_boundary() {
        let s = "é".repeat(40000);
        let mut w = Writer::new();
        w.str(&s);
        let mut r = Reader::new(w.finish());
        let back = r.str("s").unwrap();
        assert!(back.len() <= u16::MAX as usize);
        assert!(s.starts_with(&back));
    }
}
