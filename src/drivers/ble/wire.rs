//! A bounds-checked little-endian reader over one characteristic value, shared by the
//! decoders. Every read is fallible (never an index that can panic); the decoders first check
//! the exact length their flags demand, so a failed read here is only a second line of defence.

use super::datetime::DateTime;
use super::ieee11073::Float11073;
use crate::drivers::DecodeError;

pub(crate) struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Wire<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Wire { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self.pos.saturating_add(N);
        let bytes = self.buf.get(self.pos..end).ok_or(DecodeError::TooShort {
            needed: end,
            got: self.buf.len(),
        })?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let [b] = self.take::<1>()?;
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take::<2>()?))
    }

    pub(crate) fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_le_bytes(self.take::<2>()?))
    }

    pub(crate) fn u24(&mut self) -> Result<u32, DecodeError> {
        let [a, b, c] = self.take::<3>()?;
        Ok(u32::from_le_bytes([a, b, c, 0]))
    }

    pub(crate) fn sfloat(&mut self) -> Result<Float11073, DecodeError> {
        Ok(Float11073::from_sfloat_bytes(self.take::<2>()?))
    }

    pub(crate) fn float(&mut self) -> Result<Float11073, DecodeError> {
        Ok(Float11073::from_float_bytes(self.take::<4>()?))
    }

    pub(crate) fn date_time(&mut self) -> Result<DateTime, DecodeError> {
        DateTime::from_bytes(self.take::<7>()?)
    }

    /// The value must end here: leftover bytes are an error (DESIGN.md: a BLE value is whole).
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Checks a value is exactly `needed` bytes long.
pub(crate) fn expect_len(buf: &[u8], needed: usize) -> Result<(), DecodeError> {
    match buf.len() {
        n if n < needed => Err(DecodeError::TooShort { needed, got: n }),
        n if n > needed => Err(DecodeError::TrailingBytes(n - needed)),
        _ => Ok(()),
    }
}

/// Reads the flags byte (an empty value is `TooShort { needed: min_len }`) and refuses
/// reserved-for-future-use bits (`rfu_mask`), which might announce a field this decoder cannot
/// size.
pub(crate) fn flags(
    buf: &[u8],
    rfu_mask: u8,
    what: &str,
    min_len: usize,
) -> Result<u8, DecodeError> {
    let flags = *buf.first().ok_or(DecodeError::TooShort {
        needed: min_len,
        got: 0,
    })?;
    if flags & rfu_mask != 0 {
        return Err(DecodeError::Unsupported(format!(
            "{what} flags {flags:#04x} set reserved bit(s) {:#04x}; a newer profile revision may \
             add fields there, so the value is refused rather than misread (capture it and report \
             the device model)",
            flags & rfu_mask
        )));
    }
    Ok(flags)
}

/// Test helpers shared by the characteristic tests.
#[cfg(test)]
pub(crate) mod testutil {
    use crate::drivers::DecodeError;
    use crate::reading::{Decimal, Reading, Value};

    /// Wire bytes from the spaced hex of protocols.md (`"1E 8A 00"`).
    pub(crate) fn hexb(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    /// The exact (mantissa, exponent) of a numeric reading.
    pub(crate) fn exact(r: &Reading) -> (i64, i8) {
        match r.value {
            Value::Number(Decimal { mantissa, exponent }) => (mantissa, exponent),
            other => panic!("{:?} is not a number: {other:?}", r.metric),
        }
    }

    /// Every strict prefix of a valid value is `TooShort` (a truncated notification), and the
    /// value is refused with one extra byte when `trailing` says that is a trailing byte.
    pub(crate) fn assert_truncations_too_short<T: std::fmt::Debug>(
        decode: fn(&[u8]) -> Result<T, DecodeError>,
        valid: &[u8],
    ) {
        assert!(
            decode(valid).is_ok(),
            "the vector itself must decode: {valid:02x?}"
        );
        for n in 0..valid.len() {
            let r = decode(&valid[..n]);
            assert!(
                matches!(r, Err(DecodeError::TooShort { got, needed }) if got == n && needed > n),
                "prefix of {n} bytes of {valid:02x?} gave {r:?}"
            );
        }
    }

    /// The valid value with one extra byte is `TrailingBytes(1)`.
    pub(crate) fn assert_trailing_rejected<T: std::fmt::Debug>(
        decode: fn(&[u8]) -> Result<T, DecodeError>,
        valid: &[u8],
    ) {
        let mut long = valid.to_vec();
        long.push(0x00);
        assert_eq!(
            decode(&long).map(|_| ()),
            Err(DecodeError::TrailingBytes(1)),
            "{long:02x?}"
        );
    }
}
