//! Bluetooth SIG GATT health-profile decoders (protocols.md §1).
//!
//! What this module does: it turns one whole characteristic value, as a BLE central receives it
//! in a notification or indication, into a typed measurement (`decode_*`, with everything the
//! profile carries: user id, sequence number, sensor contact, RR intervals, status words) and
//! from there into [`Reading`]s (`to_readings()`). The typed form is for the BLE central; the
//! [`ValueDecoder`] form (`*_readings`) is what the registry, `vitalgate decode` and the fuzz
//! targets call. It also builds and parses Record Access Control Point messages ([`racp`]) and
//! lists the GATT UUIDs ([`uuids`]).
//!
//! What it deliberately does not do: no radio, no connection state, no clock. Whether a
//! reading belongs to this patient (a shared cuff's user id), when to re-arm a CCCD, and how to
//! correct a device clock are the central's and ingest's business; these functions only say
//! what the bytes mean, so they can be tested with the public vectors and fuzzed.
//!
//! Decoding rules shared by every characteristic (DESIGN.md "Pure decoders"):
//! - A value is whole. The flags byte fixes the exact length; fewer bytes is
//!   [`DecodeError::TooShort`] (with the length the flags demand), more is
//!   [`DecodeError::TrailingBytes`].
//! - A flags byte with a reserved-for-future-use bit set is [`DecodeError::Unsupported`]: a
//!   newer profile revision may have added a field there, and guessing its length could shift
//!   every later field, which would be a wrong number rather than a lost one.
//! - Values stay exact: SFLOAT/FLOAT become a [`Decimal`](crate::reading::Decimal) with the
//!   wire mantissa and exponent; special values become an [`Absent`](crate::reading::Absent)
//!   (see [`ieee11073`]).
//! - Device time: the Date Time field is the device's local wall clock with no zone. It becomes
//!   `Reading::device_time` with the wall-clock digits unchanged and the offset set to UTC
//!   (+00:00) as a placeholder: the offset is unknown, and ingest compares the device time with
//!   the gateway's receive time and corrects it. A Date Time with
//!   an unknown (zero) year, month or day, a PLX "device clock not set" flag or a glucose "time
//!   fault" gives no device time at all, so the gateway's receive time applies.
//! - Data that is not a patient's measurement never becomes a reading: PLX data for
//!   demonstration or testing and glucose control-solution results decode to an **empty vec**
//!   (not an error: the value is well formed, and the typed form says why it was excluded, so
//!   the central can count and log it). Intermediate values (Intermediate Cuff Pressure 0x2A36,
//!   Intermediate Temperature 0x2A1E) have typed decoders but no reading form at all.

pub mod blood_pressure;
pub mod datetime;
pub mod glucose;
pub mod heart_rate;
pub mod ieee11073;
pub mod plx;
pub mod racp;
pub mod temperature;
pub mod uuids;
pub mod weight;

mod wire;

pub use blood_pressure::{
    decode_blood_pressure, decode_intermediate_cuff_pressure, BloodPressureMeasurement, BpStatus,
    IntermediateCuffPressure, PressureUnit, PulseRateRange,
};
pub use datetime::{
    decode_current_time, decode_date_time, encode_current_time, encode_date_time, CurrentTime,
    DateTime,
};
pub use glucose::{
    decode_glucose, decode_glucose_context, pair_glucose_context, GlucoseConcentration,
    GlucoseContext, GlucoseMeasurement, GlucoseRecord, GlucoseSensorStatus, GlucoseUnit,
    SampleLocation, SampleType,
};
pub use heart_rate::{decode_heart_rate, rr_interval_seconds, HeartRateMeasurement, SensorContact};
pub use ieee11073::Float11073;
pub use plx::{
    decode_plx_continuous, decode_plx_features, decode_plx_spot_check, NotPatientData,
    PlxContinuous, PlxDeviceStatus, PlxFeatures, PlxMeasurementStatus, PlxSpotCheck, SpO2Pr,
};
pub use racp::{
    decode_racp_response, report_all_records, report_number_of_records, report_records_from,
    RacpAttError, RacpFilter, RacpRequest, RacpResponse, RacpResponseValue,
};
pub use temperature::{
    decode_intermediate_temperature, decode_temperature, decode_temperature_type,
    TemperatureMeasurement, TemperatureType, TemperatureUnit,
};
pub use weight::{
    decode_weight, decode_weight_scale_feature, WeightMeasurement, WeightScaleFeature, WeightUnits,
};

use super::{DriverInfo, DriverKind};

/// `ble-heart-rate`: Heart Rate Measurement (0x2A37).
pub const HEART_RATE: DriverInfo = DriverInfo {
    name: "ble-heart-rate",
    summary: "BLE Heart Rate Measurement (0x2A37): heart rate, sensor contact",
    text: false,
    kind: DriverKind::Value(heart_rate::heart_rate_readings),
};

/// `ble-temperature`: Temperature Measurement (0x2A1C).
pub const TEMPERATURE: DriverInfo = DriverInfo {
    name: "ble-temperature",
    summary: "BLE Temperature Measurement (0x2A1C): body temperature in Cel or [degF]",
    text: false,
    kind: DriverKind::Value(temperature::temperature_readings),
};

/// `ble-blood-pressure`: Blood Pressure Measurement (0x2A35).
pub const BLOOD_PRESSURE: DriverInfo = DriverInfo {
    name: "ble-blood-pressure",
    summary: "BLE Blood Pressure Measurement (0x2A35): systolic, diastolic, mean, pulse rate",
    text: false,
    kind: DriverKind::Value(blood_pressure::blood_pressure_readings),
};

/// `ble-plx-spot`: PLX Spot-check Measurement (0x2A5E).
pub const PLX_SPOT: DriverInfo = DriverInfo {
    name: "ble-plx-spot",
    summary: "BLE PLX Spot-check Measurement (0x2A5E): SpO2, pulse rate, perfusion index",
    text: false,
    kind: DriverKind::Value(plx::plx_spot_check_readings),
};

/// `ble-plx-continuous`: PLX Continuous Measurement (0x2A5F).
pub const PLX_CONTINUOUS: DriverInfo = DriverInfo {
    name: "ble-plx-continuous",
    summary: "BLE PLX Continuous Measurement (0x2A5F): SpO2, pulse rate, perfusion index",
    text: false,
    kind: DriverKind::Value(plx::plx_continuous_readings),
};

/// `ble-weight`: Weight Measurement (0x2A9D).
pub const WEIGHT: DriverInfo = DriverInfo {
    name: "ble-weight",
    summary: "BLE Weight Measurement (0x2A9D): body weight, BMI, height (SI or imperial)",
    text: false,
    kind: DriverKind::Value(weight::weight_readings),
};

/// `ble-glucose`: Glucose Measurement (0x2A18).
pub const GLUCOSE: DriverInfo = DriverInfo {
    name: "ble-glucose",
    summary: "BLE Glucose Measurement (0x2A18): blood glucose in mg/dL or mmol/L",
    text: false,
    kind: DriverKind::Value(glucose::glucose_readings),
};

/// The BLE characteristic decoders, by public name (DESIGN.md).
pub fn drivers() -> Vec<DriverInfo> {
    vec![
        HEART_RATE,
        TEMPERATURE,
        BLOOD_PRESSURE,
        PLX_SPOT,
        PLX_CONTINUOUS,
        WEIGHT,
        GLUCOSE,
    ]
}

/// The reading decoder for a characteristic's 16-bit UUID, for the central to route
/// notifications by.
///
/// `None` for characteristics that carry no patient reading: intermediate values (0x2A36,
/// 0x2A1E: not results), the Glucose Measurement Context (0x2A34: qualifies a measurement, use
/// [`decode_glucose_context`]), RACP (0x2A52: use [`racp`]), features and anything unknown.
pub fn decoder_for_characteristic(uuid16: u16) -> Option<DriverInfo> {
    use uuids::*;
    match uuid16 {
        HEART_RATE_MEASUREMENT => Some(HEART_RATE),
        TEMPERATURE_MEASUREMENT => Some(TEMPERATURE),
        BLOOD_PRESSURE_MEASUREMENT => Some(BLOOD_PRESSURE),
        PLX_SPOT_CHECK_MEASUREMENT => Some(PLX_SPOT),
        PLX_CONTINUOUS_MEASUREMENT => Some(PLX_CONTINUOUS),
        WEIGHT_MEASUREMENT => Some(WEIGHT),
        GLUCOSE_MEASUREMENT => Some(GLUCOSE),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_have_the_design_md_names() {
        let names: Vec<_> = drivers().iter().map(|d| d.name).collect();
        assert_eq!(
            names,
            [
                "ble-heart-rate",
                "ble-temperature",
                "ble-blood-pressure",
                "ble-plx-spot",
                "ble-plx-continuous",
                "ble-weight",
                "ble-glucose"
            ]
        );
        assert!(drivers()
            .iter()
            .all(|d| !d.text && matches!(d.kind, DriverKind::Value(_))));
    }

    #[test]
    fn decoder_for_characteristic_routes_each_measurement_uuid() {
        // protocols.md §1.1 table
        let cases = [
            (0x2A37, "ble-heart-rate"),
            (0x2A1C, "ble-temperature"),
            (0x2A35, "ble-blood-pressure"),
            (0x2A5E, "ble-plx-spot"),
            (0x2A5F, "ble-plx-continuous"),
            (0x2A9D, "ble-weight"),
            (0x2A18, "ble-glucose"),
        ];
        for (uuid, name) in cases {
            assert_eq!(
                decoder_for_characteristic(uuid).map(|d| d.name),
                Some(name),
                "{uuid:#06x}"
            );
        }
    }

    #[test]
    fn decoder_for_characteristic_refuses_intermediate_and_non_measurement_values() {
        // protocols.md §1.6: ICP values are never results; §1.5: 0x2A1E is not final.
        for uuid in [
            0x2A36, 0x2A1E, 0x2A34, 0x2A52, 0x2A60, 0x2A08, 0x180D, 0x0000,
        ] {
            assert!(decoder_for_characteristic(uuid).is_none(), "{uuid:#06x}");
        }
    }

    #[test]
    fn decoder_for_characteristic_decodes_through_the_registry_form() {
        // protocols.md §1.4 vector HR1
        let Some(DriverInfo {
            kind: DriverKind::Value(f),
            ..
        }) = decoder_for_characteristic(0x2A37)
        else {
            panic!("no value decoder for 0x2A37");
        };
        let readings = f(&[0x00, 0x55]).unwrap();
        assert_eq!(readings.len(), 1);
        assert_eq!(readings[0].metric, crate::reading::Metric::HeartRate);
    }

    /// Every `devices/ble-*.toml` names a BLE driver, parseable metrics and characteristics, and
    /// lists a characteristic that [`decoder_for_characteristic`] routes to that driver.
    #[test]
    fn device_profiles_name_existing_drivers_and_routable_characteristics() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("devices");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            if !(file.starts_with("ble-") && file.ends_with(".toml")) {
                continue;
            }
            seen += 1;
            let doc: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
            let s = |t: &toml::Table, k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            assert_eq!(s(&doc, "transport").as_deref(), Some("ble"), "{file}");
            assert!(
                s(&doc, "name").is_some() && s(&doc, "description").is_some(),
                "{file}"
            );
            let driver = s(&doc, "driver").unwrap();
            assert!(
                drivers().iter().any(|d| d.name == driver),
                "{file}: unknown driver {driver}"
            );
            for m in doc["metrics"].as_array().unwrap() {
                assert!(
                    m.as_str()
                        .unwrap()
                        .parse::<crate::reading::Metric>()
                        .is_ok(),
                    "{file}: {m}"
                );
            }
            let ble = doc["ble"].as_table().unwrap();
            u16::from_str_radix(&s(ble, "service").unwrap(), 16).unwrap();
            let chars: Vec<u16> = ble["characteristics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| u16::from_str_radix(c.as_str().unwrap(), 16).unwrap())
                .collect();
            assert!(
                chars.iter().any(
                    |&c| decoder_for_characteristic(c).map(|d| d.name) == Some(driver.as_str())
                ),
                "{file}: no characteristic routes to {driver}"
            );
            let bonding = s(ble, "bonding").unwrap();
            assert!(
                ["required", "optional", "none"].contains(&bonding.as_str()),
                "{file}"
            );
            assert!(ble["current_time_service"].as_bool().is_some(), "{file}");
            assert!(
                s(ble, "notes").is_some_and(|n| !n.trim().is_empty()),
                "{file}"
            );
        }
        assert!(
            seen >= 7,
            "expected the standard-service profiles, found {seen}"
        );
    }
}
