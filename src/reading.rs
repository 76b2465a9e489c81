//! The domain types every part of vitalgate shares: [`Reading`], [`Metric`], [`Unit`],
//! [`Decimal`], [`Absent`], [`Acvpu`] and [`Flag`].
//!
//! A `Reading` is what a device said, decoded: one metric, its value (exact, as a decimal), its
//! UCUM unit, the device's own time when it gave one, and the device's status flags. It knows
//! nothing of storage, MQTT or FHIR. Its JSON form (what `vitalgate decode` prints and what the
//! `jsonl` driver reads) is a public contract fixed in DESIGN.md:
//!
//! ```json
//! {"metric":"spo2","value":97,"unit":"%","device_time":"2026-11-23T10:00:00Z","flags":["motion"]}
//! {"metric":"heart_rate","value":null,"status":"nres","unit":"/min"}
//! {"metric":"acvpu","code":"A"}
//! ```
//!
//! Values are kept exact (mantissa and exponent) from the wire to the FHIR edge: converting an
//! IEEE 11073 SFLOAT of 10.1 to `f32` would give 10.0999994, which a clinician must never see.
//! A special value (NaN, NRes, infinities, "missing") is never a number: it is an [`Absent`]
//! reason, so it can become a FHIR `dataAbsentReason` and never a fake zero.
//!
//! Plausibility ([`Metric::plausible_range`]) is a physical sanity check, not a clinical
//! threshold: a value outside it is a device or decoding fault and is rejected at ingest.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A vital sign or related measurement. `snake_case` names are the wire contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    HeartRate,
    PulseRate,
    Spo2,
    RespiratoryRate,
    BodyTemperature,
    SystolicBp,
    DiastolicBp,
    MeanBp,
    BodyWeight,
    BodyHeight,
    Bmi,
    BloodGlucose,
    PerfusionIndex,
    /// Oxygen flow in l/min; 0 means room air.
    InspiredOxygen,
    /// Level of consciousness (ACVPU); carries a [`Acvpu`] code, never a number.
    Acvpu,
}

impl Metric {
    /// Every metric, in a stable order (used by tests, the simulator and `status`).
    pub const ALL: [Metric; 15] = [
        Metric::HeartRate,
        Metric::PulseRate,
        Metric::Spo2,
        Metric::RespiratoryRate,
        Metric::BodyTemperature,
        Metric::SystolicBp,
        Metric::DiastolicBp,
        Metric::MeanBp,
        Metric::BodyWeight,
        Metric::BodyHeight,
        Metric::Bmi,
        Metric::BloodGlucose,
        Metric::PerfusionIndex,
        Metric::InspiredOxygen,
        Metric::Acvpu,
    ];

    /// The wire name (`heart_rate`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::HeartRate => "heart_rate",
            Metric::PulseRate => "pulse_rate",
            Metric::Spo2 => "spo2",
            Metric::RespiratoryRate => "respiratory_rate",
            Metric::BodyTemperature => "body_temperature",
            Metric::SystolicBp => "systolic_bp",
            Metric::DiastolicBp => "diastolic_bp",
            Metric::MeanBp => "mean_bp",
            Metric::BodyWeight => "body_weight",
            Metric::BodyHeight => "body_height",
            Metric::Bmi => "bmi",
            Metric::BloodGlucose => "blood_glucose",
            Metric::PerfusionIndex => "perfusion_index",
            Metric::InspiredOxygen => "inspired_oxygen",
            Metric::Acvpu => "acvpu",
        }
    }

    /// The unit every stored value of this metric is compared in; `None` for coded metrics.
    pub fn canonical_unit(self) -> Option<Unit> {
        Some(match self {
            Metric::HeartRate | Metric::PulseRate | Metric::RespiratoryRate => Unit::PerMinute,
            Metric::Spo2 | Metric::PerfusionIndex => Unit::Percent,
            Metric::BodyTemperature => Unit::Celsius,
            Metric::SystolicBp | Metric::DiastolicBp | Metric::MeanBp => Unit::MmHg,
            Metric::BodyWeight => Unit::Kilogram,
            Metric::BodyHeight => Unit::Centimetre,
            Metric::Bmi => Unit::KgPerM2,
            Metric::BloodGlucose => Unit::MmolPerL,
            Metric::InspiredOxygen => Unit::LitrePerMinute,
            Metric::Acvpu => return None,
        })
    }

    /// Units a device may report this metric in (the canonical one first). Anything else is
    /// refused at ingest, because a silently misread unit is a wrong number.
    pub fn accepted_units(self) -> &'static [Unit] {
        match self {
            Metric::HeartRate | Metric::PulseRate | Metric::RespiratoryRate => &[Unit::PerMinute],
            Metric::Spo2 | Metric::PerfusionIndex => &[Unit::Percent],
            Metric::BodyTemperature => &[Unit::Celsius, Unit::Fahrenheit],
            Metric::SystolicBp | Metric::DiastolicBp | Metric::MeanBp => {
                &[Unit::MmHg, Unit::KiloPascal]
            }
            Metric::BodyWeight => &[Unit::Kilogram, Unit::Pound],
            Metric::BodyHeight => &[Unit::Centimetre, Unit::Metre, Unit::Inch],
            Metric::Bmi => &[Unit::KgPerM2],
            Metric::BloodGlucose => &[Unit::MmolPerL, Unit::MgPerDl],
            Metric::InspiredOxygen => &[Unit::LitrePerMinute],
            Metric::Acvpu => &[],
        }
    }

    /// Physically plausible range in the canonical unit, inclusive. Outside it, the device or
    /// decoder is wrong; the reading is rejected, counted and logged, never stored as valid.
    /// These are deliberately wide: clinical thresholds live in `alerts`.
    pub fn plausible_range(self) -> Option<(f64, f64)> {
        Some(match self {
            Metric::HeartRate | Metric::PulseRate => (10.0, 350.0),
            Metric::Spo2 => (30.0, 100.0),
            Metric::RespiratoryRate => (0.0, 90.0),
            Metric::BodyTemperature => (25.0, 45.0),
            Metric::SystolicBp => (30.0, 300.0),
            Metric::DiastolicBp => (10.0, 250.0),
            Metric::MeanBp => (20.0, 270.0),
            Metric::BodyWeight => (0.3, 500.0),
            Metric::BodyHeight => (20.0, 275.0),
            Metric::Bmi => (5.0, 150.0),
            Metric::BloodGlucose => (0.5, 60.0),
            Metric::PerfusionIndex => (0.0, 30.0),
            Metric::InspiredOxygen => (0.0, 60.0),
            Metric::Acvpu => return None,
        })
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .iter()
            .copied()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Metric::ALL.iter().map(|m| m.as_str()).collect();
                format!("unknown metric {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// A UCUM unit code. The serialized form is the exact UCUM code (case-sensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Unit {
    #[serde(rename = "/min")]
    PerMinute,
    #[serde(rename = "%")]
    Percent,
    #[serde(rename = "Cel")]
    Celsius,
    #[serde(rename = "[degF]")]
    Fahrenheit,
    #[serde(rename = "mm[Hg]")]
    MmHg,
    #[serde(rename = "kPa")]
    KiloPascal,
    #[serde(rename = "kg")]
    Kilogram,
    #[serde(rename = "[lb_av]")]
    Pound,
    #[serde(rename = "cm")]
    Centimetre,
    #[serde(rename = "m")]
    Metre,
    #[serde(rename = "[in_i]")]
    Inch,
    #[serde(rename = "kg/m2")]
    KgPerM2,
    #[serde(rename = "mmol/L")]
    MmolPerL,
    #[serde(rename = "mg/dL")]
    MgPerDl,
    #[serde(rename = "l/min")]
    LitrePerMinute,
}

impl Unit {
    /// The UCUM code.
    pub fn ucum(self) -> &'static str {
        match self {
            Unit::PerMinute => "/min",
            Unit::Percent => "%",
            Unit::Celsius => "Cel",
            Unit::Fahrenheit => "[degF]",
            Unit::MmHg => "mm[Hg]",
            Unit::KiloPascal => "kPa",
            Unit::Kilogram => "kg",
            Unit::Pound => "[lb_av]",
            Unit::Centimetre => "cm",
            Unit::Metre => "m",
            Unit::Inch => "[in_i]",
            Unit::KgPerM2 => "kg/m2",
            Unit::MmolPerL => "mmol/L",
            Unit::MgPerDl => "mg/dL",
            Unit::LitrePerMinute => "l/min",
        }
    }

    /// Converts `v` in this unit to the canonical unit of its dimension (for range checks and
    /// alerting; the stored value keeps the device's unit and exact digits).
    pub fn to_canonical(self, v: f64) -> f64 {
        match self {
            Unit::Fahrenheit => (v - 32.0) * 5.0 / 9.0,
            Unit::KiloPascal => v * 7.500_615_75,
            Unit::Pound => v * 0.453_592_37,
            Unit::Metre => v * 100.0,
            Unit::Inch => v * 2.54,
            // glucose: 1 mmol/L = 18.016 mg/dL (molar mass of glucose 180.16 g/mol)
            Unit::MgPerDl => v / 18.016,
            _ => v,
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ucum())
    }
}

/// An exact decimal, `mantissa × 10^exponent`, as devices send them (IEEE 11073 SFLOAT/FLOAT,
/// ASCII digits). Two decimals are equal when they denote the same number (`100` = `1000e-1`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Decimal {
    pub mantissa: i64,
    pub exponent: i8,
}

impl Decimal {
    pub const fn new(mantissa: i64, exponent: i8) -> Self {
        Decimal { mantissa, exponent }
    }

    /// An integer value.
    pub const fn int(v: i64) -> Self {
        Decimal::new(v, 0)
    }

    /// The nearest `f64`. Goes through the decimal string so 36.4 stays 36.4, not
    /// 36.400000000000006 as `364 as f64 * 0.1` would give.
    pub fn to_f64(self) -> f64 {
        // Fast path (Clinger): a mantissa below 2^53 and a power of ten up to 10^22 are both
        // exact doubles, so one IEEE multiplication or division rounds correctly.
        const POW10: [f64; 23] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
            1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
        ];
        let e = self.exponent.unsigned_abs() as usize;
        if self.mantissa.unsigned_abs() < (1u64 << 53) && e < POW10.len() {
            let m = self.mantissa as f64;
            return if self.exponent >= 0 {
                m * POW10[e]
            } else {
                m / POW10[e]
            };
        }
        format!("{}e{}", self.mantissa, self.exponent)
            .parse()
            .unwrap_or(f64::NAN)
    }

    /// The shortest decimal that round-trips to `v` (what a human typed as `36.4`).
    /// Returns `None` for non-finite input or more precision than an `i64` mantissa holds.
    pub fn from_f64(v: f64) -> Option<Self> {
        if !v.is_finite() {
            return None;
        }
        // `{:e}` gives the shortest round-trip form, e.g. "3.64e1".
        let s = format!("{v:e}");
        let (digits, exp) = s.split_once('e')?;
        let exp: i32 = exp.parse().ok()?;
        let (neg, digits) = match digits.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, digits),
        };
        let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
        let all: String = format!("{int_part}{frac_part}");
        let mut mantissa: i64 = all.parse().ok()?;
        if neg {
            mantissa = -mantissa;
        }
        let exponent = exp - i32::try_from(frac_part.len()).ok()?;
        Some(Decimal::new(mantissa, i8::try_from(exponent).ok()?).normalized())
    }

    /// Removes trailing zeros from the mantissa (`1000e-1` -> `1e2`), for comparisons.
    pub fn normalized(self) -> Self {
        let mut d = self;
        if d.mantissa == 0 {
            return Decimal::new(0, 0);
        }
        while d.mantissa % 10 == 0 && d.exponent < i8::MAX {
            d.mantissa /= 10;
            d.exponent += 1;
        }
        d
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.normalized(), other.normalized());
        a.mantissa == b.mantissa && a.exponent == b.exponent
    }
}

impl fmt::Display for Decimal {
    /// Plain decimal notation with exactly the digits the device gave (`37.60` stays `37.60`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.mantissa < 0;
        let digits = self.mantissa.unsigned_abs().to_string();
        let sign = if neg { "-" } else { "" };
        if self.exponent >= 0 {
            write!(f, "{sign}{digits}{}", "0".repeat(self.exponent as usize))
        } else {
            let frac = (-(self.exponent as i32)) as usize;
            if digits.len() > frac {
                let (i, d) = digits.split_at(digits.len() - frac);
                write!(f, "{sign}{i}.{d}")
            } else {
                write!(f, "{sign}0.{}{digits}", "0".repeat(frac - digits.len()))
            }
        }
    }
}

/// Why a reading carries no number. Kept distinct because they mean different things to a
/// clinician: NRes is "out of the device's range", NaN is "no valid value".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Absent {
    /// Not a number: invalid or absent (IEEE 11073 NaN).
    Nan,
    /// Not at this resolution: over- or underflow, the value is outside the device's range.
    Nres,
    PosInf,
    NegInf,
    /// The device sent its "missing" marker (e.g. Nonin 127 / 511), e.g. no finger.
    Missing,
}

/// ACVPU level of consciousness (NEWS2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Acvpu {
    /// Alert.
    A,
    /// New confusion.
    C,
    /// Responds to voice.
    V,
    /// Responds to pain.
    P,
    /// Unresponsive.
    U,
}

/// Device status that qualifies a reading. Names are the wire contract (snake_case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    SensorOff,
    ProbeDisconnected,
    SensorFault,
    LowPerfusion,
    LowBattery,
    Motion,
    Artifact,
    OutOfTrack,
    /// Pulse searching, value not yet settled.
    Searching,
    /// Signal quality below the device's threshold (e.g. Nonin SmartPoint not met).
    LowSignalQuality,
    IrregularPulse,
    CuffFitLoose,
    BodyMovement,
    ImproperPosition,
    /// The value was measured earlier and retransmitted (e.g. a stored record).
    Stored,
    /// The device's clock was found off and the timestamp corrected by the gateway.
    TimeCorrected,
    /// The device's clock is known to be off and its timestamp was kept as sent.
    DeviceClockSuspect,
    /// Interference (e.g. Masimo exception "interference detected").
    Interference,
    /// A value the device itself marks as questionable or of low confidence.
    Questionable,
}

/// What a reading holds: a number, a coded value, or the reason it has neither.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Number(Decimal),
    Code(Acvpu),
    Absent(Absent),
}

/// One decoded measurement. See the module docs for the JSON form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ReadingJson", into = "ReadingJson")]
pub struct Reading {
    pub metric: Metric,
    pub value: Value,
    /// `None` only for coded metrics (ACVPU).
    pub unit: Option<Unit>,
    /// The device's own timestamp, when it gave one.
    pub device_time: Option<OffsetDateTime>,
    /// Sorted and without duplicates (see [`Reading::with_flags`]).
    pub flags: Vec<Flag>,
}

impl Reading {
    /// A numeric reading in `unit`, no device time, no flags.
    pub fn number(metric: Metric, value: Decimal, unit: Unit) -> Self {
        Reading {
            metric,
            value: Value::Number(value),
            unit: Some(unit),
            device_time: None,
            flags: Vec::new(),
        }
    }

    /// A numeric reading in the metric's canonical unit.
    ///
    /// # Panics
    /// Never for numeric metrics; for `Acvpu` (no unit) it falls back to a coded-less reading
    /// that validation refuses, so misuse is caught at ingest rather than by a panic.
    pub fn canonical(metric: Metric, value: Decimal) -> Self {
        Reading {
            metric,
            value: Value::Number(value),
            unit: metric.canonical_unit(),
            device_time: None,
            flags: Vec::new(),
        }
    }

    /// A reading whose device sent a special value instead of a number.
    pub fn absent(metric: Metric, why: Absent) -> Self {
        Reading {
            metric,
            value: Value::Absent(why),
            unit: metric.canonical_unit(),
            device_time: None,
            flags: Vec::new(),
        }
    }

    /// An ACVPU observation.
    pub fn acvpu(code: Acvpu) -> Self {
        Reading {
            metric: Metric::Acvpu,
            value: Value::Code(code),
            unit: None,
            device_time: None,
            flags: Vec::new(),
        }
    }

    pub fn at(mut self, device_time: OffsetDateTime) -> Self {
        self.device_time = Some(device_time);
        self
    }

    /// Adds flags, keeping the list sorted and unique so equal readings compare equal.
    pub fn with_flags(mut self, flags: impl IntoIterator<Item = Flag>) -> Self {
        self.flags.extend(flags);
        self.flags.sort();
        self.flags.dedup();
        self
    }

    /// The numeric value in the canonical unit, if there is one.
    pub fn canonical_value(&self) -> Option<f64> {
        match (self.value, self.unit) {
            (Value::Number(d), Some(u)) => Some(u.to_canonical(d.to_f64())),
            _ => None,
        }
    }

    /// Checks the reading is well formed and physically plausible. Ingest calls this; a
    /// reading that fails is rejected and counted, never stored as valid.
    pub fn validate(&self) -> Result<(), InvalidReading> {
        let m = self.metric;
        match (m, self.value) {
            (Metric::Acvpu, Value::Code(_)) => {
                if self.unit.is_some() {
                    return Err(InvalidReading::UnexpectedUnit { metric: m });
                }
                return Ok(());
            }
            (Metric::Acvpu, _) => return Err(InvalidReading::AcvpuNeedsCode),
            (_, Value::Code(_)) => return Err(InvalidReading::UnexpectedCode { metric: m }),
            _ => {}
        }
        let unit = self.unit.ok_or(InvalidReading::MissingUnit { metric: m })?;
        if !m.accepted_units().contains(&unit) {
            return Err(InvalidReading::WrongUnit { metric: m, unit });
        }
        if let Value::Number(d) = self.value {
            let v = unit.to_canonical(d.to_f64());
            if let Some((lo, hi)) = m.plausible_range() {
                if !(v >= lo && v <= hi) {
                    return Err(InvalidReading::Implausible {
                        metric: m,
                        value: d,
                        unit,
                        low: lo,
                        high: hi,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Why a reading was refused at ingest. Each message names the metric and what was wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidReading {
    #[error("{metric} = {value} {unit} is outside the plausible range {low}..={high} (canonical unit); a device or decoding fault")]
    Implausible {
        metric: Metric,
        value: Decimal,
        unit: Unit,
        low: f64,
        high: f64,
    },
    #[error("{metric} cannot be given in {unit}")]
    WrongUnit { metric: Metric, unit: Unit },
    #[error("{metric} needs a unit")]
    MissingUnit { metric: Metric },
    #[error("{metric} takes no unit")]
    UnexpectedUnit { metric: Metric },
    #[error("{metric} is numeric and cannot carry an ACVPU code")]
    UnexpectedCode { metric: Metric },
    #[error("acvpu needs a code (A, C, V, P or U) and no value")]
    AcvpuNeedsCode,
}

/// The flat JSON shape of DESIGN.md; conversion enforces that `value`, `status` and `code` agree.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadingJson {
    metric: Metric,
    #[serde(default, skip_serializing_if = "is_unset")]
    value: Option<Option<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<Absent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<Acvpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unit: Option<Unit>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    device_time: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    flags: Vec<Flag>,
    /// Exact digits, so JSON consumers that care (and our own round trip) lose nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
}

fn is_unset(v: &Option<Option<f64>>) -> bool {
    v.is_none()
}

impl From<Reading> for ReadingJson {
    fn from(r: Reading) -> Self {
        let (value, status, code, exact) = match r.value {
            Value::Number(d) => (Some(Some(d.to_f64())), None, None, Some(d.to_string())),
            Value::Absent(a) => (Some(None), Some(a), None, None),
            Value::Code(c) => (None, None, Some(c), None),
        };
        // Only print `exact` when the float form would lose digits (e.g. "37.60").
        let exact = exact.filter(|s| value.flatten().map(|v| v.to_string()) != Some(s.clone()));
        ReadingJson {
            metric: r.metric,
            value,
            status,
            code,
            unit: r.unit,
            device_time: r.device_time,
            flags: r.flags,
            exact,
        }
    }
}

impl TryFrom<ReadingJson> for Reading {
    type Error = String;
    fn try_from(j: ReadingJson) -> Result<Self, Self::Error> {
        let value =
            match (j.value, j.status, j.code) {
                (None, None, Some(c)) => Value::Code(c),
                (Some(Some(v)), None, None) => {
                    let d = match &j.exact {
                        Some(s) => parse_exact(s)
                            .filter(|d| (d.to_f64() - v).abs() < 1e-9)
                            .ok_or_else(|| {
                                format!("`exact` {s:?} is not a decimal equal to value {v}")
                            })?,
                        None => Decimal::from_f64(v)
                            .ok_or_else(|| format!("value {v} is not a finite decimal"))?,
                    };
                    Value::Number(d)
                }
                (Some(None) | None, Some(a), None) => Value::Absent(a),
                (Some(None), None, None) => return Err(
                    "value is null but no `status` says why (nan, nres, pos_inf, neg_inf, missing)"
                        .into(),
                ),
                (None, None, None) => {
                    return Err("a reading needs `value` (or `status`, or `code` for acvpu)".into())
                }
                (Some(Some(_)), Some(_), _) => {
                    return Err("a reading with a number cannot also have a `status`".into())
                }
                (_, _, Some(_)) => {
                    return Err("`code` is for acvpu only and excludes `value` and `status`".into())
                }
            };
        let unit = match (j.unit, value) {
            (Some(u), _) => Some(u),
            (None, Value::Absent(_)) => j.metric.canonical_unit(),
            (None, _) => None,
        };
        Ok(Reading {
            metric: j.metric,
            value,
            unit,
            device_time: j.device_time,
            flags: Vec::new(),
        }
        .with_flags(j.flags))
    }
}

/// Parses a plain decimal string such as `-37.60` exactly.
pub fn parse_exact(s: &str) -> Option<Decimal> {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (i, f) = body.split_once('.').unwrap_or((body, ""));
    if (i.is_empty() && f.is_empty())
        || !i.bytes().all(|b| b.is_ascii_digit())
        || !f.bytes().all(|b| b.is_ascii_digit())
        || i.len() + f.len() > 18
    {
        return None;
    }
    let mut m: i64 = format!("{i}{f}").parse().ok()?;
    if neg {
        m = -m;
    }
    Some(Decimal::new(m, -i8::try_from(f.len()).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_keeps_device_digits_in_display() {
        assert_eq!(Decimal::new(3760, -2).to_string(), "37.60");
        assert_eq!(Decimal::new(-1, -1).to_string(), "-0.1");
        assert_eq!(Decimal::new(2047, 1).to_string(), "20470");
        assert_eq!(Decimal::new(5, -3).to_string(), "0.005");
    }

    #[test]
    fn decimal_to_f64_is_the_nearest_double() {
        assert_eq!(Decimal::new(364, -1).to_f64(), 36.4);
        assert_eq!(Decimal::new(101, -1).to_f64(), 10.1);
    }

    #[test]
    fn decimal_to_f64_fast_path_agrees_with_decimal_parsing() {
        for m in [-123456789i64, -1, 0, 7, 101, 3760, 98765432109876] {
            for e in -22i8..=22 {
                let d = Decimal::new(m, e);
                let slow: f64 = format!("{m}e{e}").parse().unwrap();
                assert_eq!(d.to_f64(), slow, "{m}e{e}");
            }
        }
    }

    #[test]
    fn decimal_equality_ignores_trailing_zeros() {
        assert_eq!(Decimal::new(1000, -1), Decimal::new(100, 0));
        assert_ne!(Decimal::new(1001, -1), Decimal::new(100, 0));
    }

    #[test]
    fn decimal_from_f64_is_shortest() {
        assert_eq!(Decimal::from_f64(36.4), Some(Decimal::new(364, -1)));
        assert_eq!(Decimal::from_f64(120.0), Some(Decimal::new(12, 1)));
        assert_eq!(Decimal::from_f64(f64::NAN), None);
    }

    #[test]
    fn reading_json_matches_the_design_contract() {
        let r = Reading::canonical(Metric::Spo2, Decimal::int(97)).with_flags([Flag::Motion]);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"metric":"spo2","value":97.0,"unit":"%","flags":["motion"]}"#
        );
        let a = Reading::absent(Metric::HeartRate, Absent::Nres);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"metric":"heart_rate","value":null,"status":"nres","unit":"/min"}"#
        );
        let c = Reading::acvpu(Acvpu::V);
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"metric":"acvpu","code":"V"}"#
        );
    }

    #[test]
    fn reading_json_round_trips_exact_digits() {
        let r = Reading::canonical(Metric::BodyTemperature, Decimal::new(3760, -2));
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains(r#""exact":"37.60""#), "{s}");
        let back: Reading = serde_json::from_str(&s).unwrap();
        assert_eq!(back.value, Value::Number(Decimal::new(3760, -2)));
        assert!(matches!(back.value, Value::Number(d) if d.exponent == -2));
    }

    #[test]
    fn reading_json_refuses_null_value_without_status() {
        let e = serde_json::from_str::<Reading>(r#"{"metric":"spo2","value":null}"#).unwrap_err();
        assert!(e.to_string().contains("status"), "{e}");
    }

    #[test]
    fn reading_json_refuses_unknown_fields() {
        assert!(serde_json::from_str::<Reading>(
            r#"{"metric":"spo2","value":97,"unit":"%","vlaue":1}"#
        )
        .is_err());
    }

    #[test]
    fn validate_rejects_implausible_spo2() {
        let r = Reading::canonical(Metric::Spo2, Decimal::int(101));
        assert!(matches!(
            r.validate(),
            Err(InvalidReading::Implausible { .. })
        ));
    }

    #[test]
    fn validate_rejects_wrong_unit_for_metric() {
        let r = Reading::number(Metric::Spo2, Decimal::int(97), Unit::MmHg);
        assert!(matches!(
            r.validate(),
            Err(InvalidReading::WrongUnit { .. })
        ));
    }

    #[test]
    fn validate_converts_fahrenheit_before_range_check() {
        let r = Reading::number(
            Metric::BodyTemperature,
            Decimal::new(986, -1),
            Unit::Fahrenheit,
        );
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn validate_accepts_absent_values_without_range_check() {
        assert_eq!(
            Reading::absent(Metric::Spo2, Absent::Missing).validate(),
            Ok(())
        );
    }

    #[test]
    fn every_metric_has_consistent_units_and_ranges() {
        for m in Metric::ALL {
            assert_eq!(m.as_str().parse::<Metric>(), Ok(m));
            match m.canonical_unit() {
                Some(u) => {
                    assert_eq!(m.accepted_units()[0], u, "{m}");
                    assert!(m.plausible_range().is_some(), "{m}");
                }
                None => assert!(m.accepted_units().is_empty()),
            }
        }
    }

    #[test]
    fn parse_exact_rejects_garbage() {
        assert_eq!(parse_exact("37.60"), Some(Decimal::new(3760, -2)));
        assert_eq!(parse_exact("-5"), Some(Decimal::new(-5, 0)));
        assert_eq!(parse_exact("1e5"), None);
        assert_eq!(parse_exact("."), None);
        assert_eq!(parse_exact(""), None);
    }
}
