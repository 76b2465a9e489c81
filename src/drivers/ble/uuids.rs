//! GATT 16-bit UUIDs of the health services and characteristics vitalgate uses
//! (protocols.md §1.1), and their 128-bit form.

/// Heart Rate service.
pub const HEART_RATE_SERVICE: u16 = 0x180D;
/// Health Thermometer service.
pub const HEALTH_THERMOMETER_SERVICE: u16 = 0x1809;
/// Blood Pressure service.
pub const BLOOD_PRESSURE_SERVICE: u16 = 0x1810;
/// Pulse Oximeter service.
pub const PULSE_OXIMETER_SERVICE: u16 = 0x1822;
/// Weight Scale service.
pub const WEIGHT_SCALE_SERVICE: u16 = 0x181D;
/// Glucose service.
pub const GLUCOSE_SERVICE: u16 = 0x1808;
/// Current Time service (clock-trust check).
pub const CURRENT_TIME_SERVICE: u16 = 0x1805;

pub const HEART_RATE_MEASUREMENT: u16 = 0x2A37;
pub const BODY_SENSOR_LOCATION: u16 = 0x2A38;
pub const HEART_RATE_CONTROL_POINT: u16 = 0x2A39;
pub const TEMPERATURE_MEASUREMENT: u16 = 0x2A1C;
pub const TEMPERATURE_TYPE: u16 = 0x2A1D;
/// Not a final result: never a reading.
pub const INTERMEDIATE_TEMPERATURE: u16 = 0x2A1E;
pub const MEASUREMENT_INTERVAL: u16 = 0x2A21;
pub const BLOOD_PRESSURE_MEASUREMENT: u16 = 0x2A35;
/// Cuff pressure during inflation: never a reading.
pub const INTERMEDIATE_CUFF_PRESSURE: u16 = 0x2A36;
pub const BLOOD_PRESSURE_FEATURE: u16 = 0x2A49;
pub const PLX_SPOT_CHECK_MEASUREMENT: u16 = 0x2A5E;
pub const PLX_CONTINUOUS_MEASUREMENT: u16 = 0x2A5F;
pub const PLX_FEATURES: u16 = 0x2A60;
pub const RECORD_ACCESS_CONTROL_POINT: u16 = 0x2A52;
pub const WEIGHT_MEASUREMENT: u16 = 0x2A9D;
pub const WEIGHT_SCALE_FEATURE: u16 = 0x2A9E;
pub const GLUCOSE_MEASUREMENT: u16 = 0x2A18;
pub const GLUCOSE_MEASUREMENT_CONTEXT: u16 = 0x2A34;
pub const GLUCOSE_FEATURE: u16 = 0x2A51;
pub const DATE_TIME: u16 = 0x2A08;
pub const CURRENT_TIME: u16 = 0x2A2B;
/// Client Characteristic Configuration descriptor.
pub const CLIENT_CHARACTERISTIC_CONFIGURATION: u16 = 0x2902;

/// CCCD value enabling notifications.
pub const CCCD_NOTIFY: [u8; 2] = [0x01, 0x00];
/// CCCD value enabling indications.
pub const CCCD_INDICATE: [u8; 2] = [0x02, 0x00];

/// The Bluetooth Base UUID, `00000000-0000-1000-8000-00805F9B34FB`.
pub const BLUETOOTH_BASE_UUID: u128 = 0x0000_0000_0000_1000_8000_0080_5F9B_34FB;

/// The 128-bit form `0000xxxx-0000-1000-8000-00805F9B34FB` of a 16-bit UUID.
pub const fn full_uuid(uuid16: u16) -> uuid::Uuid {
    uuid::Uuid::from_u128(BLUETOOTH_BASE_UUID | ((uuid16 as u128) << 96))
}

/// The 16-bit UUID inside a 128-bit one, if it is based on the Bluetooth Base UUID.
pub fn short_uuid(full: uuid::Uuid) -> Option<u16> {
    let v = full.as_u128();
    let short = ((v >> 96) & 0xFFFF) as u16;
    (v & !(0xFFFF_u128 << 96) == BLUETOOTH_BASE_UUID).then_some(short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_uuid_uses_the_bluetooth_base() {
        // protocols.md §1.1: 0000xxxx-0000-1000-8000-00805F9B34FB
        assert_eq!(
            full_uuid(BLOOD_PRESSURE_MEASUREMENT).to_string(),
            "00002a35-0000-1000-8000-00805f9b34fb"
        );
    }

    #[test]
    fn short_uuid_inverts_full_uuid_and_rejects_vendor_uuids() {
        assert_eq!(short_uuid(full_uuid(GLUCOSE_SERVICE)), Some(0x1808));
        let vendor = uuid::Uuid::from_u128(0x6e40_0001_b5a3_f393_e0a9_e50e_24dc_ca9e);
        assert_eq!(short_uuid(vendor), None);
    }
}
