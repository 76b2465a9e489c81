//! IEEE 11073-20601 SFLOAT (16-bit) and FLOAT (32-bit) medical floats (protocols.md §1.2).
//!
//! Decoded exactly, never through `f32`: the wire mantissa and exponent become a
//! [`Decimal`], so 10.1 stays 10.1 and 37.60 keeps its two decimals. The five special patterns
//! are matched on the whole raw integer first (they only exist at exponent 0: `FF 17` is 20470,
//! not NaN, protocols.md §4.1) and stay distinct: NRes means "outside the device's range", NaN
//! means "no valid value", and the reserved pattern is kept as [`Float11073::Reserved`] so it
//! can be logged. In readings, Reserved becomes [`Absent::Nan`]: it carries no number we could
//! interpret, and there is no `Absent` reason for it.

use crate::reading::{Absent, Decimal, Value};

/// A decoded SFLOAT or FLOAT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Float11073 {
    /// A finite value, `mantissa × 10^exponent` exactly as sent.
    Number(Decimal),
    /// Not a Number: invalid or missing.
    Nan,
    /// Not at this resolution: over- or underflow, the true value is outside the device's range.
    Nres,
    PosInf,
    NegInf,
    /// A pattern reserved for future use (0x0801 / 0x00800001).
    Reserved,
}

impl Float11073 {
    /// Decodes an SFLOAT from its raw 16-bit value (already assembled little-endian).
    pub fn from_sfloat_raw(raw: u16) -> Self {
        match raw {
            0x07FF => Float11073::Nan,
            0x0800 => Float11073::Nres,
            0x07FE => Float11073::PosInf,
            0x0802 => Float11073::NegInf,
            0x0801 => Float11073::Reserved,
            _ => {
                // 4-bit two's complement exponent in bits 15..12, 12-bit mantissa in 11..0;
                // arithmetic shifts sign-extend both.
                let exponent = (raw as i16) >> 12;
                let mantissa = ((raw << 4) as i16) >> 4;
                Float11073::Number(Decimal::new(i64::from(mantissa), exponent as i8))
            }
        }
    }

    /// Decodes an SFLOAT from its two wire bytes (little-endian).
    pub fn from_sfloat_bytes(bytes: [u8; 2]) -> Self {
        Self::from_sfloat_raw(u16::from_le_bytes(bytes))
    }

    /// Decodes a FLOAT from its raw 32-bit value (already assembled little-endian).
    pub fn from_float_raw(raw: u32) -> Self {
        match raw {
            0x007F_FFFF => Float11073::Nan,
            0x0080_0000 => Float11073::Nres,
            0x007F_FFFE => Float11073::PosInf,
            0x0080_0002 => Float11073::NegInf,
            0x0080_0001 => Float11073::Reserved,
            _ => {
                // 8-bit two's complement exponent in bits 31..24, 24-bit mantissa in 23..0.
                let exponent = (raw >> 24) as u8 as i8;
                let mantissa = ((raw << 8) as i32) >> 8;
                Float11073::Number(Decimal::new(i64::from(mantissa), exponent))
            }
        }
    }

    /// Decodes a FLOAT from its four wire bytes (little-endian).
    pub fn from_float_bytes(bytes: [u8; 4]) -> Self {
        Self::from_float_raw(u32::from_le_bytes(bytes))
    }

    /// The number, if this is one.
    pub fn number(self) -> Option<Decimal> {
        match self {
            Float11073::Number(d) => Some(d),
            _ => None,
        }
    }

    /// Why there is no number (`None` for a number). Reserved maps to [`Absent::Nan`].
    pub fn absent(self) -> Option<Absent> {
        match self {
            Float11073::Number(_) => None,
            Float11073::Nan | Float11073::Reserved => Some(Absent::Nan),
            Float11073::Nres => Some(Absent::Nres),
            Float11073::PosInf => Some(Absent::PosInf),
            Float11073::NegInf => Some(Absent::NegInf),
        }
    }

    /// The reading value: the exact number or the reason it is absent.
    pub fn to_value(self) -> Value {
        match (self.number(), self.absent()) {
            (Some(d), _) => Value::Number(d),
            (None, Some(a)) => Value::Absent(a),
            (None, None) => Value::Absent(Absent::Nan),
        }
    }

    /// Multiplies a number by `10^shift` exactly, by moving the exponent (used for unit
    /// changes such as kg/L -> mg/dL). Specials are unchanged; `None` only if the exponent
    /// would leave the `i8` range, which cannot happen for an SFLOAT (exponent −8..=7).
    pub fn scaled_by_power_of_ten(self, shift: i8) -> Option<Self> {
        match self {
            Float11073::Number(d) => d
                .exponent
                .checked_add(shift)
                .map(|e| Float11073::Number(Decimal::new(d.mantissa, e))),
            other => Some(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact(v: Float11073) -> (i64, i8) {
        match v {
            Float11073::Number(d) => (d.mantissa, d.exponent),
            other => panic!("expected a number, got {other:?}"),
        }
    }

    #[test]
    fn sfloat_s1_keeps_ten_point_one_exact() {
        // protocols.md §1.2 vector S1
        assert_eq!(
            exact(Float11073::from_sfloat_bytes([0x65, 0xF0])),
            (101, -1)
        );
    }

    #[test]
    fn sfloat_s2_s3_equal_values_with_different_exponents() {
        // protocols.md §1.2 vectors S2, S3
        let s2 = Float11073::from_sfloat_bytes([0xE8, 0xF3]);
        let s3 = Float11073::from_sfloat_bytes([0x64, 0x00]);
        assert_eq!(exact(s2), (1000, -1));
        assert_eq!(exact(s3), (100, 0));
        assert_eq!(s2, s3);
    }

    #[test]
    fn sfloat_s4_special_values_stay_distinct() {
        // protocols.md §1.2 vector S4, PLXS Table 5.1
        assert_eq!(Float11073::from_sfloat_bytes([0xFF, 0x07]), Float11073::Nan);
        assert_eq!(
            Float11073::from_sfloat_bytes([0x00, 0x08]),
            Float11073::Nres
        );
        assert_eq!(
            Float11073::from_sfloat_bytes([0xFE, 0x07]),
            Float11073::PosInf
        );
        assert_eq!(
            Float11073::from_sfloat_bytes([0x02, 0x08]),
            Float11073::NegInf
        );
        assert_eq!(
            Float11073::from_sfloat_bytes([0x01, 0x08]),
            Float11073::Reserved
        );
    }

    #[test]
    fn sfloat_s5_negative_mantissa_and_exponent() {
        // protocols.md §1.2 vector S5
        assert_eq!(exact(Float11073::from_sfloat_bytes([0xFF, 0xFF])), (-1, -1));
    }

    #[test]
    fn sfloat_s6_minus_one_is_not_special() {
        // protocols.md §1.2 vector S6
        assert_eq!(exact(Float11073::from_sfloat_bytes([0xFF, 0x0F])), (-1, 0));
    }

    #[test]
    fn sfloat_s7_nan_mantissa_at_exponent_one_is_a_number() {
        // protocols.md §1.2 vector S7, §4 pitfall 1
        assert_eq!(
            exact(Float11073::from_sfloat_bytes([0xFF, 0x17])),
            (2047, 1)
        );
    }

    #[test]
    fn float_f1_keeps_trailing_zero_digits() {
        // protocols.md §1.2 vector F1
        let v = Float11073::from_float_bytes([0xB0, 0x0E, 0x00, 0xFE]);
        assert_eq!(exact(v), (3760, -2));
        assert_eq!(v.number().unwrap().to_string(), "37.60");
    }

    #[test]
    fn float_f2_large_mantissa() {
        // protocols.md §1.2 vector F2
        assert_eq!(
            exact(Float11073::from_float_bytes([0x87, 0xD6, 0x12, 0xFE])),
            (1234567, -2)
        );
    }

    #[test]
    fn float_f3_one() {
        // protocols.md §1.2 vector F3
        assert_eq!(
            exact(Float11073::from_float_bytes([0x01, 0x00, 0x00, 0x00])),
            (1, 0)
        );
    }

    #[test]
    fn float_f4_special_values_stay_distinct() {
        // protocols.md §1.2 vector F4
        assert_eq!(
            Float11073::from_float_bytes([0xFF, 0xFF, 0x7F, 0x00]),
            Float11073::Nan
        );
        assert_eq!(
            Float11073::from_float_bytes([0x00, 0x00, 0x80, 0x00]),
            Float11073::Nres
        );
        assert_eq!(
            Float11073::from_float_bytes([0xFE, 0xFF, 0x7F, 0x00]),
            Float11073::PosInf
        );
        assert_eq!(
            Float11073::from_float_bytes([0x02, 0x00, 0x80, 0x00]),
            Float11073::NegInf
        );
        assert_eq!(
            Float11073::from_float_bytes([0x01, 0x00, 0x80, 0x00]),
            Float11073::Reserved
        );
    }

    #[test]
    fn float_f5_ninety_eight_point_six() {
        // protocols.md §1.2 vector F5
        assert_eq!(
            exact(Float11073::from_float_bytes([0xDA, 0x03, 0x00, 0xFF])),
            (986, -1)
        );
    }

    #[test]
    fn float_negative_mantissa_is_sign_extended_from_24_bits() {
        // protocols.md §1.2: 24-bit two's complement mantissa; 0xFFFFFF = -1, exponent 0xFF = -1
        assert_eq!(
            exact(Float11073::from_float_bytes([0xFF, 0xFF, 0xFF, 0xFF])),
            (-1, -1)
        );
    }

    #[test]
    fn float_nan_mantissa_at_nonzero_exponent_is_a_number() {
        // protocols.md §4 pitfall 1 (FLOAT form): 0x7FFFFF at exponent 1 is 8388607e1
        assert_eq!(
            exact(Float11073::from_float_bytes([0xFF, 0xFF, 0x7F, 0x01])),
            (8_388_607, 1)
        );
    }

    #[test]
    fn absent_keeps_nres_distinct_from_nan_and_folds_reserved_into_nan() {
        // protocols.md §1.2: keep NRes distinct (NRFD folds it into NaN)
        assert_eq!(Float11073::Nres.to_value(), Value::Absent(Absent::Nres));
        assert_eq!(Float11073::Nan.to_value(), Value::Absent(Absent::Nan));
        assert_eq!(Float11073::PosInf.to_value(), Value::Absent(Absent::PosInf));
        assert_eq!(Float11073::NegInf.to_value(), Value::Absent(Absent::NegInf));
        assert_eq!(Float11073::Reserved.to_value(), Value::Absent(Absent::Nan));
    }

    proptest! {
        #[test]
        fn sfloat_any_raw_is_special_or_in_range(raw in any::<u16>()) {
            match Float11073::from_sfloat_raw(raw) {
                Float11073::Number(d) => {
                    prop_assert!((-2048..=2047).contains(&d.mantissa));
                    prop_assert!((-8..=7).contains(&d.exponent));
                    // re-encoding the exponent and mantissa gives the raw value back
                    let back = ((d.exponent as u16 & 0xF) << 12) | (d.mantissa as u16 & 0x0FFF);
                    prop_assert_eq!(back, raw);
                }
                _ => prop_assert!([0x07FF, 0x0800, 0x07FE, 0x0802, 0x0801].contains(&raw)),
            }
        }

        #[test]
        fn float_any_raw_round_trips_or_is_special(raw in any::<u32>()) {
            match Float11073::from_float_raw(raw) {
                Float11073::Number(d) => {
                    let back = ((d.exponent as u8 as u32) << 24) | (d.mantissa as u32 & 0x00FF_FFFF);
                    prop_assert_eq!(back, raw);
                }
                _ => prop_assert!(
                    [0x007F_FFFF, 0x0080_0000, 0x007F_FFFE, 0x0080_0002, 0x0080_0001].contains(&raw)
                ),
            }
        }
    }
}
