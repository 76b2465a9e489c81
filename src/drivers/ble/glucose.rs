//! Glucose Measurement (0x2A18) and Glucose Measurement Context (0x2A34), protocols.md §1.9.
//!
//! A measurement gives one `blood_glucose` reading, converted **exactly** by moving the decimal
//! exponent: kg/L × 10⁵ = mg/dL (`mg/dL`), mol/L × 10³ = mmol/L (`mmol/L`); the mantissa is the
//! wire's. The device time is Base Time + Time Offset (signed minutes: `C4 FF` is −60, G4),
//! and none when the base date is unknown or the meter reports a time fault.
//!
//! Not patient data: a control-solution result (sample type 10 or sample location 4) decodes
//! to an **empty vec** ([`GlucoseMeasurement::is_control_solution`] says why). A record without
//! a concentration (an error record) also gives no reading.
//!
//! Sensor Status Annunciation to flags: battery low → `low_battery`; sensor malfunction and
//! general device fault → `sensor_fault`; sample size insufficient, strip insertion error,
//! strip type incorrect, result higher or lower than the device can process, temperature too
//! high or low, read interrupted → `questionable`. A result out of the meter's range keeps the
//! number the meter sent (its limit) with `questionable`, so a "HI" still reaches the alert
//! engine on the right side of the threshold instead of vanishing as a missing value.
//!
//! The context (meal, tester, health, exercise, medication, HbA1c) qualifies a measurement with
//! the same sequence number and carries no reading of its own; [`pair_glucose_context`] joins
//! the two for the central. Sequence numbers are in the typed form for RACP resumption.

use time::{Duration, OffsetDateTime};

use super::datetime::DateTime;
use super::ieee11073::Float11073;
use super::wire::{expect_len, flags, Wire};
use crate::drivers::DecodeError;
use crate::reading::{Flag, Metric, Reading, Unit};

const FLAG_TIME_OFFSET: u8 = 0x01;
const FLAG_CONCENTRATION: u8 = 0x02;
const FLAG_MOL_PER_L: u8 = 0x04;
const FLAG_STATUS: u8 = 0x08;
const FLAG_CONTEXT_FOLLOWS: u8 = 0x10;
const RFU: u8 = 0xE0;

/// Concentration unit on the wire (flags bit 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlucoseUnit {
    /// kg/L; the reading is in mg/dL (× 10⁵).
    KgPerL,
    /// mol/L; the reading is in mmol/L (× 10³).
    MolPerL,
}

/// Sample type (low nibble of the Type-Sample Location byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleType {
    CapillaryWholeBlood,
    CapillaryPlasma,
    VenousWholeBlood,
    VenousPlasma,
    ArterialWholeBlood,
    ArterialPlasma,
    UndeterminedWholeBlood,
    UndeterminedPlasma,
    InterstitialFluid,
    ControlSolution,
    Reserved(u8),
}

impl From<u8> for SampleType {
    fn from(v: u8) -> Self {
        match v {
            1 => SampleType::CapillaryWholeBlood,
            2 => SampleType::CapillaryPlasma,
            3 => SampleType::VenousWholeBlood,
            4 => SampleType::VenousPlasma,
            5 => SampleType::ArterialWholeBlood,
            6 => SampleType::ArterialPlasma,
            7 => SampleType::UndeterminedWholeBlood,
            8 => SampleType::UndeterminedPlasma,
            9 => SampleType::InterstitialFluid,
            10 => SampleType::ControlSolution,
            other => SampleType::Reserved(other),
        }
    }
}

/// Sample location (high nibble of the Type-Sample Location byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleLocation {
    Finger,
    AlternateSiteTest,
    Earlobe,
    ControlSolution,
    NotAvailable,
    Reserved(u8),
}

impl From<u8> for SampleLocation {
    fn from(v: u8) -> Self {
        match v {
            1 => SampleLocation::Finger,
            2 => SampleLocation::AlternateSiteTest,
            3 => SampleLocation::Earlobe,
            4 => SampleLocation::ControlSolution,
            15 => SampleLocation::NotAvailable,
            other => SampleLocation::Reserved(other),
        }
    }
}

/// The concentration with its unit, sample type and location.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlucoseConcentration {
    /// As on the wire, in `unit` (kg/L or mol/L).
    pub value: Float11073,
    pub unit: GlucoseUnit,
    pub sample_type: SampleType,
    pub sample_location: SampleLocation,
}

impl GlucoseConcentration {
    /// The value in mg/dL or mmol/L, exactly (exponent moved), with its UCUM unit.
    pub fn clinical_value(&self) -> Option<(Float11073, Unit)> {
        match self.unit {
            GlucoseUnit::KgPerL => Some((self.value.scaled_by_power_of_ten(5)?, Unit::MgPerDl)),
            GlucoseUnit::MolPerL => Some((self.value.scaled_by_power_of_ten(3)?, Unit::MmolPerL)),
        }
    }
}

/// Sensor Status Annunciation (16 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlucoseSensorStatus(pub u16);

impl GlucoseSensorStatus {
    pub const BATTERY_LOW: u16 = 1 << 0;
    pub const SENSOR_MALFUNCTION: u16 = 1 << 1;
    pub const SAMPLE_SIZE_INSUFFICIENT: u16 = 1 << 2;
    pub const STRIP_INSERTION_ERROR: u16 = 1 << 3;
    pub const STRIP_TYPE_INCORRECT: u16 = 1 << 4;
    pub const RESULT_TOO_HIGH: u16 = 1 << 5;
    pub const RESULT_TOO_LOW: u16 = 1 << 6;
    pub const TEMPERATURE_TOO_HIGH: u16 = 1 << 7;
    pub const TEMPERATURE_TOO_LOW: u16 = 1 << 8;
    pub const READ_INTERRUPTED: u16 = 1 << 9;
    pub const GENERAL_DEVICE_FAULT: u16 = 1 << 10;
    pub const TIME_FAULT: u16 = 1 << 11;

    /// Whether bit `mask` is set.
    pub fn has(self, mask: u16) -> bool {
        self.0 & mask != 0
    }

    /// The reading flags these bits imply (see the module docs; time fault drops the time).
    pub fn flags(self) -> Vec<Flag> {
        let questionable = Self::SAMPLE_SIZE_INSUFFICIENT
            | Self::STRIP_INSERTION_ERROR
            | Self::STRIP_TYPE_INCORRECT
            | Self::RESULT_TOO_HIGH
            | Self::RESULT_TOO_LOW
            | Self::TEMPERATURE_TOO_HIGH
            | Self::TEMPERATURE_TOO_LOW
            | Self::READ_INTERRUPTED;
        [
            (Self::BATTERY_LOW, Flag::LowBattery),
            (
                Self::SENSOR_MALFUNCTION | Self::GENERAL_DEVICE_FAULT,
                Flag::SensorFault,
            ),
            (questionable, Flag::Questionable),
        ]
        .into_iter()
        .filter_map(|(mask, flag)| self.has(mask).then_some(flag))
        .collect()
    }
}

/// A decoded Glucose Measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlucoseMeasurement {
    /// The record's sequence number (RACP "report records ≥ N").
    pub sequence_number: u16,
    pub base_time: DateTime,
    /// Minutes to add to the base time (signed).
    pub time_offset_minutes: Option<i16>,
    pub concentration: Option<GlucoseConcentration>,
    pub sensor_status: Option<GlucoseSensorStatus>,
    /// A Glucose Measurement Context with the same sequence number follows.
    pub context_follows: bool,
}

/// Decodes a whole Glucose Measurement value.
pub fn decode_glucose(buf: &[u8]) -> Result<GlucoseMeasurement, DecodeError> {
    let f = flags(buf, RFU, "Glucose Measurement", 10)?;
    let needed = 10
        + if f & FLAG_TIME_OFFSET != 0 { 2 } else { 0 }
        + if f & FLAG_CONCENTRATION != 0 { 3 } else { 0 }
        + if f & FLAG_STATUS != 0 { 2 } else { 0 };
    expect_len(buf, needed)?;
    let mut w = Wire::new(buf);
    w.u8()?;
    let sequence_number = w.u16()?;
    let base_time = w.date_time()?;
    let time_offset_minutes = if f & FLAG_TIME_OFFSET != 0 {
        Some(w.i16()?)
    } else {
        None
    };
    let concentration = if f & FLAG_CONCENTRATION != 0 {
        let value = w.sfloat()?;
        let type_location = w.u8()?;
        Some(GlucoseConcentration {
            value,
            unit: if f & FLAG_MOL_PER_L != 0 {
                GlucoseUnit::MolPerL
            } else {
                GlucoseUnit::KgPerL
            },
            sample_type: (type_location & 0x0F).into(),
            sample_location: (type_location >> 4).into(),
        })
    } else {
        None
    };
    let sensor_status = if f & FLAG_STATUS != 0 {
        Some(GlucoseSensorStatus(w.u16()?))
    } else {
        None
    };
    w.finish()?;
    Ok(GlucoseMeasurement {
        sequence_number,
        base_time,
        time_offset_minutes,
        concentration,
        sensor_status,
        context_follows: f & FLAG_CONTEXT_FOLLOWS != 0,
    })
}

impl GlucoseMeasurement {
    /// Whether this is a control-solution result (type 10 or location 4): never patient data.
    pub fn is_control_solution(&self) -> bool {
        self.concentration.is_some_and(|c| {
            c.sample_type == SampleType::ControlSolution
                || c.sample_location == SampleLocation::ControlSolution
        })
    }

    /// Base Time + Time Offset, labelled +00:00 (see the `ble` module docs); `None` when the
    /// base date is unknown, the meter reports a time fault, or the sum leaves the calendar.
    pub fn user_facing_time(&self) -> Option<OffsetDateTime> {
        if self
            .sensor_status
            .is_some_and(|s| s.has(GlucoseSensorStatus::TIME_FAULT))
        {
            return None;
        }
        let base = self.base_time.device_time()?;
        let offset = Duration::minutes(i64::from(self.time_offset_minutes.unwrap_or(0)));
        base.checked_add(offset)
    }

    /// One `blood_glucose` reading in mg/dL or mmol/L; empty for control solution or when no
    /// concentration was sent.
    pub fn to_readings(&self) -> Vec<Reading> {
        if self.is_control_solution() {
            return Vec::new();
        }
        let Some((value, unit)) = self.concentration.and_then(|c| c.clinical_value()) else {
            return Vec::new();
        };
        let mut r = Reading::absent(Metric::BloodGlucose, crate::reading::Absent::Nan);
        r.value = value.to_value();
        r.unit = Some(unit);
        r.device_time = self.user_facing_time();
        vec![r.with_flags(
            self.sensor_status
                .map(GlucoseSensorStatus::flags)
                .unwrap_or_default(),
        )]
    }
}

/// Registry form (`ble-glucose`); control solution gives `Ok(vec![])`.
pub fn glucose_readings(buf: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    decode_glucose(buf).map(|m| m.to_readings())
}

/// Meal (Glucose Measurement Context).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meal {
    Preprandial,
    Postprandial,
    Fasting,
    Casual,
    Bedtime,
    Reserved(u8),
}

impl From<u8> for Meal {
    fn from(v: u8) -> Self {
        match v {
            1 => Meal::Preprandial,
            2 => Meal::Postprandial,
            3 => Meal::Fasting,
            4 => Meal::Casual,
            5 => Meal::Bedtime,
            other => Meal::Reserved(other),
        }
    }
}

/// Carbohydrate intake: id (1 breakfast, 2 lunch, 3 dinner, 4 snack, 5 drink, 6 supper,
/// 7 brunch) and amount in kilograms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Carbohydrate {
    pub id: u8,
    pub kilograms: Float11073,
}

/// Exercise before the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exercise {
    /// Seconds; 65535 = overrun.
    pub duration_seconds: u16,
    /// Percent.
    pub intensity_percent: u8,
}

/// Medication: id (1 rapid, 2 short, 3 intermediate, 4 long acting insulin, 5 pre-mixed) and
/// amount in kilograms or litres (flags bit 5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Medication {
    pub id: u8,
    pub amount: Float11073,
    /// `true`: litres; `false`: kilograms.
    pub litres: bool,
}

/// A decoded Glucose Measurement Context.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlucoseContext {
    pub sequence_number: u16,
    /// Extended Flags (all bits RFU today), when present.
    pub extended_flags: Option<u8>,
    pub carbohydrate: Option<Carbohydrate>,
    pub meal: Option<Meal>,
    /// Tester (low nibble: 1 self, 2 health care professional, 3 lab test, 15 not available).
    pub tester: Option<u8>,
    /// Health (high nibble: 1 minor issues, 2 major, 3 menses, 4 stress, 5 none, 15 n/a).
    pub health: Option<u8>,
    pub exercise: Option<Exercise>,
    pub medication: Option<Medication>,
    /// HbA1c, %.
    pub hba1c: Option<Float11073>,
}

/// Decodes a whole Glucose Measurement Context value (XML `glucose_measurement_context`:
/// flags | sequence | [extended flags] | [carb id, carb] | [meal] | [tester-health] |
/// [exercise duration, intensity] | [medication id, medication] | [HbA1c]).
pub fn decode_glucose_context(buf: &[u8]) -> Result<GlucoseContext, DecodeError> {
    let f = flags(buf, 0x00, "Glucose Measurement Context", 3)?;
    let sizes = [
        (0x80, 1),
        (0x01, 3),
        (0x02, 1),
        (0x04, 1),
        (0x08, 3),
        (0x10, 3),
        (0x40, 2),
    ];
    let needed = sizes
        .iter()
        .fold(3, |n, &(bit, size)| if f & bit != 0 { n + size } else { n });
    expect_len(buf, needed)?;
    let mut w = Wire::new(buf);
    w.u8()?;
    let sequence_number = w.u16()?;
    let extended_flags = if f & 0x80 != 0 { Some(w.u8()?) } else { None };
    let carbohydrate = if f & 0x01 != 0 {
        Some(Carbohydrate {
            id: w.u8()?,
            kilograms: w.sfloat()?,
        })
    } else {
        None
    };
    let meal = if f & 0x02 != 0 {
        Some(w.u8()?.into())
    } else {
        None
    };
    let (tester, health) = if f & 0x04 != 0 {
        let b = w.u8()?;
        (Some(b & 0x0F), Some(b >> 4))
    } else {
        (None, None)
    };
    let exercise = if f & 0x08 != 0 {
        Some(Exercise {
            duration_seconds: w.u16()?,
            intensity_percent: w.u8()?,
        })
    } else {
        None
    };
    let medication = if f & 0x10 != 0 {
        Some(Medication {
            id: w.u8()?,
            amount: w.sfloat()?,
            litres: f & 0x20 != 0,
        })
    } else {
        None
    };
    let hba1c = if f & 0x40 != 0 {
        Some(w.sfloat()?)
    } else {
        None
    };
    w.finish()?;
    Ok(GlucoseContext {
        sequence_number,
        extended_flags,
        carbohydrate,
        meal,
        tester,
        health,
        exercise,
        medication,
        hba1c,
    })
}

/// A measurement with its context, when the meter sent one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlucoseRecord {
    pub measurement: GlucoseMeasurement,
    pub context: Option<GlucoseContext>,
}

impl GlucoseRecord {
    /// The measurement's readings (the context adds none).
    pub fn to_readings(&self) -> Vec<Reading> {
        self.measurement.to_readings()
    }
}

/// Joins a measurement and a context; their sequence numbers must match (a context for another
/// record is `Malformed`, so it is never attached to the wrong reading).
pub fn pair_glucose_context(
    measurement: GlucoseMeasurement,
    context: Option<GlucoseContext>,
) -> Result<GlucoseRecord, DecodeError> {
    if let Some(c) = context {
        if c.sequence_number != measurement.sequence_number {
            return Err(DecodeError::Malformed(format!(
                "glucose context has sequence number {} but the measurement has {}; the meter \
                 sent them out of order, do not pair them",
                c.sequence_number, measurement.sequence_number
            )));
        }
    }
    Ok(GlucoseRecord {
        measurement,
        context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::ble::wire::testutil::*;
    use crate::reading::{Absent, Decimal, Value};
    use proptest::prelude::*;
    use time::macros::datetime;

    const G1: &str = "1B 01 00 E3 07 02 1B 0B 0A 1E FB FF 1E 00 12 05 01";
    const G3: &str = "07 01 00 E5 07 07 05 0C 1E 05 00 00 32 C0 11";
    const G4: &str = "07 02 00 E5 07 07 05 0C 1E 05 C4 FF 33 C0 11";

    #[test]
    fn glucose_g1_full_record() {
        // protocols.md §1.9 vector G1
        let m = decode_glucose(&hexb(G1)).unwrap();
        assert_eq!(m.sequence_number, 1);
        assert_eq!(m.time_offset_minutes, Some(-5));
        assert!(m.context_follows);
        let c = m.concentration.unwrap();
        assert_eq!(c.value, Float11073::Number(Decimal::int(30)));
        assert_eq!(c.unit, GlucoseUnit::KgPerL);
        assert_eq!(
            (c.sample_type, c.sample_location),
            (SampleType::CapillaryPlasma, SampleLocation::Finger)
        );
        let s = m.sensor_status.unwrap();
        assert_eq!(s, GlucoseSensorStatus(0x0105));
        assert!(!s.has(GlucoseSensorStatus::GENERAL_DEVICE_FAULT));
        assert_eq!(
            m.user_facing_time(),
            Some(datetime!(2019-02-27 11:05:30 UTC))
        );
        let rs = m.to_readings();
        assert_eq!(rs.len(), 1);
        // 30 kg/L (synthetic) = 30e5 mg/dL, exponent moved, mantissa kept
        assert_eq!(
            (rs[0].metric, exact(&rs[0]), rs[0].unit),
            (Metric::BloodGlucose, (30, 5), Some(Unit::MgPerDl))
        );
        assert_eq!(rs[0].flags, vec![Flag::LowBattery, Flag::Questionable]);
        assert_eq!(rs[0].device_time, Some(datetime!(2019-02-27 11:05:30 UTC)));
    }

    #[test]
    fn glucose_g2_offset_flagged_but_short_is_too_short() {
        // protocols.md §1.9 vector G2
        assert_eq!(
            decode_glucose(&hexb("1B 00 00 E2 07 04 1A 0B 09 1E 1E 00 12 05 01")),
            Err(DecodeError::TooShort {
                needed: 17,
                got: 15
            })
        );
    }

    #[test]
    fn glucose_g3_mol_per_litre_becomes_exact_mmol_per_litre() {
        // protocols.md §1.9 vector G3
        let m = decode_glucose(&hexb(G3)).unwrap();
        let c = m.concentration.unwrap();
        assert_eq!(
            (c.sample_type, c.sample_location),
            (SampleType::CapillaryWholeBlood, SampleLocation::Finger)
        );
        let rs = m.to_readings();
        assert_eq!(
            (exact(&rs[0]), rs[0].unit),
            ((50, -1), Some(Unit::MmolPerL))
        );
        assert_eq!(rs[0].value, Value::Number(Decimal::new(5, 0)));
        assert_eq!(rs[0].device_time, Some(datetime!(2021-07-05 12:30:05 UTC)));
        assert!(rs[0].flags.is_empty());
    }

    #[test]
    fn glucose_g4_negative_offset_is_minus_sixty_minutes() {
        // protocols.md §1.9 vector G4, §4 pitfall 4 ("-2 hours" in SLB is wrong)
        let m = decode_glucose(&hexb(G4)).unwrap();
        assert_eq!((m.sequence_number, m.time_offset_minutes), (2, Some(-60)));
        let rs = m.to_readings();
        assert_eq!(exact(&rs[0]), (51, -1));
        assert_eq!(rs[0].device_time, Some(datetime!(2021-07-05 11:30:05 UTC)));
    }

    #[test]
    fn glucose_type_is_low_nibble_and_location_high_nibble() {
        // protocols.md §4 pitfall 4: 0x21 = type 1 capillary whole blood, location 2 AST
        let m = decode_glucose(&hexb("02 01 00 E5 07 07 05 0C 1E 05 32 C0 21")).unwrap();
        let c = m.concentration.unwrap();
        assert_eq!(
            (c.sample_type, c.sample_location),
            (
                SampleType::CapillaryWholeBlood,
                SampleLocation::AlternateSiteTest
            )
        );
    }

    #[test]
    fn glucose_control_solution_type_gives_no_readings() {
        // protocols.md §1.9: type 10 = control solution, never a patient reading
        let v = hexb("06 01 00 E5 07 07 05 0C 1E 05 32 C0 1A");
        assert!(decode_glucose(&v).unwrap().is_control_solution());
        assert_eq!(glucose_readings(&v), Ok(vec![]));
    }

    #[test]
    fn glucose_control_solution_location_gives_no_readings() {
        // protocols.md §1.9: location 4 = control solution
        let v = hexb("06 01 00 E5 07 07 05 0C 1E 05 32 C0 41");
        assert!(decode_glucose(&v).unwrap().is_control_solution());
        assert_eq!(glucose_readings(&v), Ok(vec![]));
    }

    #[test]
    fn glucose_without_concentration_gives_no_readings() {
        // protocols.md §1.9: concentration present only with flag bit 1
        let m = decode_glucose(&hexb("00 07 00 E5 07 07 05 0C 1E 05")).unwrap();
        assert_eq!((m.sequence_number, m.concentration), (7, None));
        assert_eq!(m.to_readings(), vec![]);
    }

    #[test]
    fn glucose_time_fault_drops_device_time() {
        // protocols.md §1.9 status bit 11 time fault: the base time is not trusted
        let rs = glucose_readings(&hexb("0E 01 00 E5 07 07 05 0C 1E 05 32 C0 11 00 08")).unwrap();
        assert_eq!(rs[0].device_time, None);
        assert_eq!(exact(&rs[0]), (50, -1));
    }

    #[test]
    fn glucose_unknown_base_date_gives_no_device_time() {
        // protocols.md §1.3: zero year/month/day = not known
        let rs = glucose_readings(&hexb("06 01 00 00 00 00 00 0C 1E 05 32 C0 11")).unwrap();
        assert_eq!(rs[0].device_time, None);
    }

    #[test]
    fn glucose_result_out_of_range_keeps_the_number_and_is_questionable() {
        // protocols.md §1.9 status bit 5 "result higher than device can process": a "HI" must
        // still reach alerting above the threshold, not vanish as a missing value
        let rs = glucose_readings(&hexb("0E 01 00 E5 07 07 05 0C 1E 05 21 C1 11 20 00")).unwrap();
        assert_eq!(
            (exact(&rs[0]), rs[0].unit),
            ((289, -1), Some(Unit::MmolPerL))
        );
        assert_eq!(rs[0].flags, vec![Flag::Questionable]);
    }

    #[test]
    fn glucose_nres_concentration_is_absent_nres() {
        // protocols.md §1.2: NRes stays NRes through the unit change
        let rs = glucose_readings(&hexb("06 01 00 E5 07 07 05 0C 1E 05 00 08 11")).unwrap();
        assert_eq!(rs[0].value, Value::Absent(Absent::Nres));
        assert_eq!(rs[0].unit, Some(Unit::MmolPerL));
    }

    #[test]
    fn glucose_sensor_status_bits_map_to_flags() {
        // protocols.md §1.9 Sensor Status Annunciation
        let f = |bit: u16| GlucoseSensorStatus(1 << bit).flags();
        assert_eq!(f(0), vec![Flag::LowBattery]);
        assert_eq!(f(1), vec![Flag::SensorFault]);
        for bit in 2..=9 {
            assert_eq!(f(bit), vec![Flag::Questionable], "bit {bit}");
        }
        assert_eq!(f(10), vec![Flag::SensorFault]);
        assert_eq!(f(11), vec![], "time fault drops the time, adds no flag");
        assert_eq!(
            GlucoseSensorStatus(0xF000).flags(),
            vec![],
            "bits 12–15 RFU"
        );
    }

    #[test]
    fn glucose_every_flag_combination_decodes_its_fields() {
        // protocols.md §1.9 layout: flags | seq | base time | [offset] | [conc | type-loc] | [status]
        for f in 0u8..0x20 {
            let mut v = vec![f, 0x2A, 0x00];
            v.extend(hexb("EA 07 0B 17 08 1E 00"));
            if f & FLAG_TIME_OFFSET != 0 {
                v.extend([0x0F, 0x00])
            } // +15 min
            if f & FLAG_CONCENTRATION != 0 {
                v.extend([0x3A, 0xC0, 0x11])
            } // 58e-4
            if f & FLAG_STATUS != 0 {
                v.extend([0x01, 0x00])
            } // battery low
            let m = decode_glucose(&v).unwrap_or_else(|e| panic!("flags {f:#04x}: {e}"));
            assert_eq!(m.sequence_number, 42);
            assert_eq!(m.context_follows, f & FLAG_CONTEXT_FOLLOWS != 0);
            let rs = m.to_readings();
            if f & FLAG_CONCENTRATION == 0 {
                assert!(rs.is_empty(), "{f:#04x}");
            } else {
                let (want, unit) = if f & FLAG_MOL_PER_L != 0 {
                    ((58, -1), Unit::MmolPerL)
                } else {
                    ((58, 1), Unit::MgPerDl)
                };
                assert_eq!((exact(&rs[0]), rs[0].unit), (want, Some(unit)), "{f:#04x}");
                let t = if f & FLAG_TIME_OFFSET != 0 {
                    datetime!(2026-11-23 08:45:00 UTC)
                } else {
                    datetime!(2026-11-23 08:30:00 UTC)
                };
                assert_eq!(rs[0].device_time, Some(t), "{f:#04x}");
                let fl = if f & FLAG_STATUS != 0 {
                    vec![Flag::LowBattery]
                } else {
                    vec![]
                };
                assert_eq!(rs[0].flags, fl, "{f:#04x}");
            }
            assert_truncations_too_short(decode_glucose, &v);
            assert_trailing_rejected(decode_glucose, &v);
        }
    }

    #[test]
    fn glucose_reserved_flag_bits_are_refused() {
        // protocols.md §1.9: bits 5–7 RFU
        let v = hexb("20 01 00 E5 07 07 05 0C 1E 05");
        assert!(matches!(
            decode_glucose(&v),
            Err(DecodeError::Unsupported(_))
        ));
    }

    #[test]
    fn glucose_context_with_every_field() {
        // XML glucose_measurement_context layout; tester = low nibble, health = high nibble
        let v = hexb("FF 01 00 00 01 32 D0 02 51 10 0E 32 01 0A E0 3A F0");
        let c = decode_glucose_context(&v).unwrap();
        assert_eq!(c.sequence_number, 1);
        assert_eq!(c.extended_flags, Some(0));
        assert_eq!(
            c.carbohydrate,
            Some(Carbohydrate {
                id: 1,
                kilograms: Float11073::Number(Decimal::new(50, -3))
            })
        );
        assert_eq!(c.meal, Some(Meal::Postprandial));
        assert_eq!((c.tester, c.health), (Some(1), Some(5)));
        assert_eq!(
            c.exercise,
            Some(Exercise {
                duration_seconds: 3600,
                intensity_percent: 50
            })
        );
        assert_eq!(
            c.medication,
            Some(Medication {
                id: 1,
                amount: Float11073::Number(Decimal::new(10, -2)),
                litres: true
            })
        );
        assert_eq!(c.hba1c, Some(Float11073::Number(Decimal::new(58, -1))));
        assert_truncations_too_short(decode_glucose_context, &v);
        assert_trailing_rejected(decode_glucose_context, &v);
    }

    #[test]
    fn glucose_context_minimal_and_each_single_field() {
        // XML glucose_measurement_context: each flag bit adds exactly its field(s)
        assert_eq!(
            decode_glucose_context(&hexb("00 05 00"))
                .unwrap()
                .sequence_number,
            5
        );
        let cases = [
            ("01", 3),
            ("02", 1),
            ("04", 1),
            ("08", 3),
            ("10", 3),
            ("40", 2),
            ("80", 1),
        ];
        for (flag, size) in cases {
            let mut v = hexb(&format!("{flag} 05 00"));
            v.extend(std::iter::repeat_n(0x11, size));
            assert!(decode_glucose_context(&v).is_ok(), "flag {flag}");
            assert_truncations_too_short(decode_glucose_context, &v);
            assert_trailing_rejected(decode_glucose_context, &v);
        }
    }

    #[test]
    fn glucose_pairing_requires_matching_sequence_numbers() {
        // protocols.md §1.9 flag bit 4: the context has the same sequence number
        let m = decode_glucose(&hexb(G1)).unwrap();
        let same = decode_glucose_context(&hexb("02 01 00 01")).unwrap();
        let other = decode_glucose_context(&hexb("02 02 00 01")).unwrap();
        let record = pair_glucose_context(m, Some(same)).unwrap();
        assert_eq!(record.context.and_then(|c| c.meal), Some(Meal::Preprandial));
        assert_eq!(record.to_readings(), m.to_readings());
        assert!(matches!(
            pair_glucose_context(m, Some(other)),
            Err(DecodeError::Malformed(_))
        ));
        assert!(pair_glucose_context(m, None).is_ok());
    }

    proptest! {
        #[test]
        fn glucose_any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            let _ = glucose_readings(&bytes);
            let _ = decode_glucose_context(&bytes);
        }

        #[test]
        fn glucose_control_solution_never_yields_readings(
            conc in any::<u16>(), nibble in 0u8..16, by_type in any::<bool>(), mol in any::<bool>()
        ) {
            let type_loc = if by_type { (nibble << 4) | 10 } else { (4 << 4) | nibble };
            let [c0, c1] = conc.to_le_bytes();
            let f = FLAG_CONCENTRATION | if mol { FLAG_MOL_PER_L } else { 0 };
            let v = [f, 1, 0, 0xE5, 0x07, 7, 5, 12, 30, 5, c0, c1, type_loc];
            prop_assert_eq!(glucose_readings(&v), Ok(vec![]));
        }
    }
}
