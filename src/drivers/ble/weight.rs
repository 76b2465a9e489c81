//! Weight Measurement (0x2A9D) and Weight Scale Feature (0x2A9E), protocols.md §1.8.
//!
//! Readings: `body_weight` (`kg` or `[lb_av]`), and with flag bit 3 both `bmi` (`kg/m2`) and
//! `body_height` (`m` or `[in_i]`), exactly from the fixed wire units: weight raw × 0.005 kg or
//! × 0.01 lb, BMI raw × 0.1, height raw × 0.001 m or × 0.1 in. The Weight Scale Feature's
//! resolution is the device's precision only and never rescales the value (protocols.md §4
//! pitfall 3: SpeziBluetooth gets this wrong). Bit 3 means BMI **and** height together (bit 4
//! is RFU, unlike bluetooth-sig-python's reading).
//!
//! Weight 0xFFFF is "measurement unsuccessful": no readings at all (BMI and height of a failed
//! weighing are not trusted either). The user id (255 = unknown) is typed only, as for blood
//! pressure.

use super::datetime::DateTime;
use super::wire::{expect_len, flags, Wire};
use crate::drivers::DecodeError;
use crate::reading::{Decimal, Metric, Reading, Unit};

const FLAG_IMPERIAL: u8 = 0x01;
const FLAG_TIME_STAMP: u8 = 0x02;
const FLAG_USER: u8 = 0x04;
const FLAG_BMI_HEIGHT: u8 = 0x08;
const RFU: u8 = 0xF0;

/// Raw weight meaning "measurement unsuccessful".
pub const MEASUREMENT_UNSUCCESSFUL: u16 = 0xFFFF;

/// Flags bit 0: SI (kg, m) or imperial (lb, in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightUnits {
    Si,
    Imperial,
}

impl WeightUnits {
    /// Unit of the weight field.
    pub fn weight_unit(self) -> Unit {
        match self {
            WeightUnits::Si => Unit::Kilogram,
            WeightUnits::Imperial => Unit::Pound,
        }
    }

    /// Unit of the height field.
    pub fn height_unit(self) -> Unit {
        match self {
            WeightUnits::Si => Unit::Metre,
            WeightUnits::Imperial => Unit::Inch,
        }
    }
}

/// A decoded Weight Measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightMeasurement {
    pub units: WeightUnits,
    /// The weight in [`WeightUnits::weight_unit`]; `None` = measurement unsuccessful (0xFFFF).
    pub weight: Option<Decimal>,
    pub time_stamp: Option<DateTime>,
    /// 255 = unknown user.
    pub user_id: Option<u8>,
    /// kg/m², present together with `height`.
    pub bmi: Option<Decimal>,
    /// In [`WeightUnits::height_unit`].
    pub height: Option<Decimal>,
}

/// Decodes a whole Weight Measurement value.
pub fn decode_weight(buf: &[u8]) -> Result<WeightMeasurement, DecodeError> {
    let f = flags(buf, RFU, "Weight Measurement", 3)?;
    let needed = 3
        + if f & FLAG_TIME_STAMP != 0 { 7 } else { 0 }
        + if f & FLAG_USER != 0 { 1 } else { 0 }
        + if f & FLAG_BMI_HEIGHT != 0 { 4 } else { 0 };
    expect_len(buf, needed)?;
    let units = if f & FLAG_IMPERIAL != 0 {
        WeightUnits::Imperial
    } else {
        WeightUnits::Si
    };
    let mut w = Wire::new(buf);
    w.u8()?;
    let raw = w.u16()?;
    let weight = (raw != MEASUREMENT_UNSUCCESSFUL).then(|| match units {
        WeightUnits::Si => Decimal::new(i64::from(raw) * 5, -3),
        WeightUnits::Imperial => Decimal::new(i64::from(raw), -2),
    });
    let time_stamp = if f & FLAG_TIME_STAMP != 0 {
        Some(w.date_time()?)
    } else {
        None
    };
    let user_id = if f & FLAG_USER != 0 {
        Some(w.u8()?)
    } else {
        None
    };
    let (bmi, height) = if f & FLAG_BMI_HEIGHT != 0 {
        let bmi = Decimal::new(i64::from(w.u16()?), -1);
        let h = i64::from(w.u16()?);
        let height = match units {
            WeightUnits::Si => Decimal::new(h, -3),
            WeightUnits::Imperial => Decimal::new(h, -1),
        };
        (Some(bmi), Some(height))
    } else {
        (None, None)
    };
    w.finish()?;
    Ok(WeightMeasurement {
        units,
        weight,
        time_stamp,
        user_id,
        bmi,
        height,
    })
}

impl WeightMeasurement {
    /// `body_weight`, then `bmi` and `body_height` if sent; nothing if the weighing failed.
    pub fn to_readings(&self) -> Vec<Reading> {
        let Some(weight) = self.weight else {
            return Vec::new();
        };
        let mut out = vec![Reading::number(
            Metric::BodyWeight,
            weight,
            self.units.weight_unit(),
        )];
        if let (Some(bmi), Some(height)) = (self.bmi, self.height) {
            out.push(Reading::number(Metric::Bmi, bmi, Unit::KgPerM2));
            out.push(Reading::number(
                Metric::BodyHeight,
                height,
                self.units.height_unit(),
            ));
        }
        let time = self.time_stamp.and_then(|t| t.device_time());
        for r in &mut out {
            r.device_time = time;
        }
        out
    }
}

/// Registry form (`ble-weight`).
pub fn weight_readings(buf: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    decode_weight(buf).map(|m| m.to_readings())
}

/// A decoded Weight Scale Feature (uint32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightScaleFeature {
    pub time_stamp_supported: bool,
    pub multiple_users_supported: bool,
    pub bmi_supported: bool,
    /// Bits 3–6: 0 unspecified, 1 = 0.5 kg / 1 lb … 7 = 0.005 kg / 0.01 lb. Precision only.
    pub weight_resolution: u8,
    /// Bits 7–9: 0 unspecified, 1 = 0.01 m / 1 in, 2 = 0.005 m / 0.5 in, 3 = 0.001 m / 0.1 in.
    pub height_resolution: u8,
}

/// Decodes a whole Weight Scale Feature value (4 bytes).
pub fn decode_weight_scale_feature(buf: &[u8]) -> Result<WeightScaleFeature, DecodeError> {
    expect_len(buf, 4)?;
    let v = u32::from_le_bytes(Wire::new(buf).take::<4>()?);
    Ok(WeightScaleFeature {
        time_stamp_supported: v & 0x01 != 0,
        multiple_users_supported: v & 0x02 != 0,
        bmi_supported: v & 0x04 != 0,
        weight_resolution: ((v >> 3) & 0x0F) as u8,
        height_resolution: ((v >> 7) & 0x07) as u8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::ble::wire::testutil::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    #[test]
    fn weight_w1_si_kilograms() {
        // protocols.md §1.8 vector W1
        let rs = weight_readings(&hexb("00 B0 36")).unwrap();
        assert_eq!(rs.len(), 1);
        assert_eq!(
            (rs[0].metric, rs[0].unit),
            (Metric::BodyWeight, Some(Unit::Kilogram))
        );
        assert_eq!(exact(&rs[0]), (70000, -3));
        assert_eq!(rs[0].value, crate::reading::Value::Number(Decimal::int(70)));
    }

    #[test]
    fn weight_w2_imperial_pounds() {
        // protocols.md §1.8 vector W2
        let rs = weight_readings(&hexb("01 54 3D")).unwrap();
        assert_eq!(
            (exact(&rs[0]), rs[0].unit),
            ((15700, -2), Some(Unit::Pound))
        );
    }

    #[test]
    fn weight_w3_with_time_stamp() {
        // protocols.md §1.8 vector W3
        let rs = weight_readings(&hexb("02 B0 36 E7 07 0C 19 0E 1E 2D")).unwrap();
        assert_eq!(exact(&rs[0]), (70000, -3));
        assert_eq!(rs[0].device_time, Some(datetime!(2023-12-25 14:30:45 UTC)));
    }

    #[test]
    fn weight_w4_unsuccessful_gives_no_readings() {
        // protocols.md §1.8 vector W4
        let m = decode_weight(&hexb("00 FF FF")).unwrap();
        assert_eq!(m.weight, None);
        assert_eq!(m.to_readings(), vec![]);
        // also with BMI and height present (a failed weighing's BMI is not trusted)
        assert_eq!(weight_readings(&hexb("08 FF FF F5 00 CA 06")), Ok(vec![]));
    }

    #[test]
    fn weight_bit3_is_bmi_and_height_together_si() {
        // protocols.md §1.8 / §4 pitfall 3: bit 3 = BMI and height, height × 0.001 m
        let rs = weight_readings(&hexb("08 B0 36 F5 00 CA 06")).unwrap();
        let got: Vec<_> = rs.iter().map(|r| (r.metric, exact(r), r.unit)).collect();
        assert_eq!(
            got,
            vec![
                (Metric::BodyWeight, (70000, -3), Some(Unit::Kilogram)),
                (Metric::Bmi, (245, -1), Some(Unit::KgPerM2)),
                (Metric::BodyHeight, (1738, -3), Some(Unit::Metre)),
            ]
        );
    }

    #[test]
    fn weight_imperial_height_is_tenths_of_an_inch() {
        // protocols.md §1.8: imperial height × 0.1 in
        let rs = weight_readings(&hexb("09 54 3D F5 00 B8 02")).unwrap();
        assert_eq!((exact(&rs[2]), rs[2].unit), ((696, -1), Some(Unit::Inch)));
    }

    #[test]
    fn weight_bit4_is_reserved_not_height() {
        // protocols.md §1.8: bit 4 RFU (bluetooth-sig-python reads it as height)
        assert!(matches!(
            decode_weight(&hexb("10 B0 36 CA 06")),
            Err(DecodeError::Unsupported(_))
        ));
    }

    #[test]
    fn weight_scale_feature_resolution_does_not_rescale_weight() {
        // protocols.md §1.8: raw 120 is 0.6 kg whatever the feature resolution says
        let feature = decode_weight_scale_feature(&hexb("3F 00 00 00")).unwrap();
        assert_eq!(feature.weight_resolution, 7);
        assert!(
            feature.time_stamp_supported
                && feature.multiple_users_supported
                && feature.bmi_supported
        );
        let rs = weight_readings(&hexb("00 78 00")).unwrap();
        assert_eq!(
            rs[0].value,
            crate::reading::Value::Number(Decimal::new(6, -1))
        );
    }

    #[test]
    fn weight_scale_feature_height_resolution_and_length() {
        // protocols.md §1.8: bits 7–9 height resolution
        assert_eq!(
            decode_weight_scale_feature(&hexb("80 01 00 00"))
                .unwrap()
                .height_resolution,
            3
        );
        assert_eq!(
            decode_weight_scale_feature(&hexb("00 00 00")),
            Err(DecodeError::TooShort { needed: 4, got: 3 })
        );
    }

    #[test]
    fn weight_every_flag_combination_decodes_its_fields() {
        // protocols.md §1.8 layout: flags | weight | [time 7] | [user 1] | [BMI 2 | height 2]
        for f in 0u8..0x10 {
            let mut v = vec![f, 0x10, 0x27]; // raw 10000
            if f & FLAG_TIME_STAMP != 0 {
                v.extend(hexb("EA 07 0B 17 08 1E 00"))
            }
            if f & FLAG_USER != 0 {
                v.push(2)
            }
            if f & FLAG_BMI_HEIGHT != 0 {
                v.extend([0xF5, 0x00, 0xCA, 0x06])
            }
            let m = decode_weight(&v).unwrap_or_else(|e| panic!("flags {f:#04x}: {e}"));
            let rs = m.to_readings();
            let imperial = f & FLAG_IMPERIAL != 0;
            let w = if imperial { (10000, -2) } else { (50000, -3) };
            assert_eq!(exact(&rs[0]), w, "{f:#04x}");
            assert_eq!(
                rs.len(),
                if f & FLAG_BMI_HEIGHT != 0 { 3 } else { 1 },
                "{f:#04x}"
            );
            assert_eq!(m.user_id, (f & FLAG_USER != 0).then_some(2));
            let t = (f & FLAG_TIME_STAMP != 0).then_some(datetime!(2026-11-23 08:30:00 UTC));
            assert!(rs.iter().all(|r| r.device_time == t), "{f:#04x}");
            assert_truncations_too_short(decode_weight, &v);
            assert_trailing_rejected(decode_weight, &v);
        }
    }

    proptest! {
        #[test]
        fn weight_any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = weight_readings(&bytes);
            let _ = decode_weight_scale_feature(&bytes);
        }

        #[test]
        fn weight_si_value_is_raw_times_0_005_kg(raw in 0u16..0xFFFF) {
            let [a, b] = raw.to_le_bytes();
            let rs = weight_readings(&[0x00, a, b]).unwrap();
            // protocols.md §1.8: resolution 0.005 kg, i.e. raw / 200 kg
            let kg = rs[0].canonical_value().unwrap();
            prop_assert!((kg - f64::from(raw) / 200.0).abs() < 1e-9, "{} -> {}", raw, kg);
        }
    }
}
