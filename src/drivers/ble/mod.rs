//! Bluetooth SIG GATT health-profile decoders. Filled in by the BLE issue.

use super::DriverInfo;

/// The BLE characteristic decoders, by public name.
pub fn drivers() -> Vec<DriverInfo> {
    Vec::new()
}
