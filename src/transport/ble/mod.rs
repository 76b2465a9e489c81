//! The Bluetooth LE central: scans, connects to allow-listed health devices, subscribes to their
//! measurement characteristics, downloads stored glucose records with RACP, checks device clocks
//! and hands every decoded measurement to a [`BleSink`] that commits it (issue "Bluetooth LE
//! health devices", items 2-7).
//!
//! What it does (rust-stack.md §2, protocols.md §1, peers.md "BLE reliability"):
//! - One [`BleCentral`] per gateway drives the first BlueZ adapter through btleplug. It scans
//!   continuously and connects **only** to the addresses in its [`BleDeviceConfig`] list (the
//!   allow-list); every other advertiser is ignored and logged at debug.
//! - On every connection it discovers services and subscribes (notifications and indications:
//!   BlueZ `StartNotify`) again, because unbonded peers forget their CCCDs between connections
//!   and many cuffs connect, indicate and disconnect within seconds (protocols.md §1.1).
//! - A measurement is decoded ([`crate::drivers::ble`]) and handed to the sink at once; the sink
//!   returns only when the readings are committed (the daemon uses `submit_and_wait`).
//! - Glucose meters with RACP: "report stored records with sequence number >= last + 1", each
//!   record committed together with its sequence number as the device cursor `racp_last_seq`
//!   ([`RACP_CURSOR_KEY`]), so a dropped link never loses or duplicates a record
//!   (protocols.md §1.10).
//! - Device clocks: where a device offers Current Time (0x1805/0x2A2B) the offset to the gateway
//!   clock is measured on every connection and the device timestamps corrected or flagged
//!   according to [`TimePolicy`] ([`clock`]).
//! - Errors that mean "this device must be bonded" are recognised ([`bonding`]) and reported
//!   with the `bluetoothctl` steps (docs/ble.md).
//! - A watchdog restarts discovery when the adapter goes quiet (BlueZ scans are known to stop
//!   silently), and a missing adapter or bluetoothd marks every BLE device
//!   [`LinkState::Unavailable`] with the reason while the central retries; [`BleCentral::run`]
//!   never panics and never exits the process.
//!
//! What it deliberately does not do: no pairing (btleplug has no pairing API and bonding is a
//! provisioning step, docs/ble.md), no decoding of its own (the pure decoders in
//! `drivers::ble` do that), no writing of device clocks, and no storage: the sink owns
//! committing, which keeps this module testable against a mocked BlueZ (`tests/ble_mock.rs`).

pub mod bonding;
mod central;
pub mod clock;
pub mod sink;

use std::future::Future;
use std::time::Duration;

pub use central::{BleCentral, BleCounters};
pub use sink::{load_last_seqs, IngestBleSink, PatientOf};

use crate::reading::Reading;
use crate::transport::LinkState;

/// The device-state key under which the last committed RACP sequence number is stored
/// (`Frame.cursor`).
pub const RACP_CURSOR_KEY: &str = "racp_last_seq";

/// What to do with device timestamps when the device clock is found off by more than the
/// tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimePolicy {
    /// Shift device timestamps by the measured offset and add `Flag::TimeCorrected`.
    #[default]
    Correct,
    /// Keep the device timestamps as sent and add `Flag::DeviceClockSuspect`.
    KeepAndFlag,
}

/// One allow-listed BLE device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BleDeviceConfig {
    /// The device id in config, status and the outbox.
    pub id: String,
    /// The Bluetooth address, upper case `AA:BB:CC:DD:EE:FF` (see [`BleDeviceConfig::new`]).
    pub address: String,
    /// The `ble-*` driver name (documentation and status only: values are routed by
    /// characteristic UUID).
    pub driver: String,
    /// The 16-bit UUIDs of the characteristics to subscribe to (measurements, and the Glucose
    /// Measurement Context); the RACP (0x2A52) is added when `has_racp`.
    pub characteristics: Vec<u16>,
    pub time_policy: TimePolicy,
    /// Download stored records through the Record Access Control Point on every connection.
    pub has_racp: bool,
}

/// A configuration value the central cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BleConfigError {
    #[error("BLE address {0:?} is not six hex bytes separated by ':' (e.g. \"A4:C1:38:12:34:56\"); copy it from `bluetoothctl devices`")]
    Address(String),
    #[error("BLE characteristic {0:?} is not a 16-bit hex UUID such as \"2a35\"")]
    Characteristic(String),
}

impl BleDeviceConfig {
    /// A device with a validated address (normalised to upper case) and characteristics given
    /// as hex strings (`"2a35"`), as in `devices/ble-*.toml`.
    pub fn new(
        id: &str,
        address: &str,
        driver: &str,
        characteristics: &[&str],
        time_policy: TimePolicy,
        has_racp: bool,
    ) -> Result<Self, BleConfigError> {
        let address = normalise_address(address)?;
        let characteristics = characteristics
            .iter()
            .map(|c| parse_uuid16(c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BleDeviceConfig {
            id: id.to_string(),
            address,
            driver: driver.to_string(),
            characteristics,
            time_policy,
            has_racp,
        })
    }
}

/// `a4:c1:38:12:34:56` -> `A4:C1:38:12:34:56`; anything but six ':'-separated hex bytes is an
/// error.
pub fn normalise_address(address: &str) -> Result<String, BleConfigError> {
    let parts: Vec<&str> = address.trim().split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(parts.join(":").to_ascii_uppercase())
    } else {
        Err(BleConfigError::Address(address.to_string()))
    }
}

/// `"2a35"` or `"0x2A35"` -> 0x2A35.
pub fn parse_uuid16(text: &str) -> Result<u16, BleConfigError> {
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if t.is_empty() || t.len() > 4 {
        return Err(BleConfigError::Characteristic(text.to_string()));
    }
    u16::from_str_radix(t, 16).map_err(|_| BleConfigError::Characteristic(text.to_string()))
}

/// Timeouts and intervals of the central. Every btleplug call is wrapped in a timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CentralOptions {
    /// Reads, writes, subscribes and other single D-Bus calls.
    pub op_timeout: Duration,
    /// `connect` and `discover_services` (btleplug 0.13.5 waits up to 30 s for discovery).
    pub connect_timeout: Duration,
    /// No adapter event for this long restarts discovery (stop_scan + start_scan).
    pub scan_watchdog: Duration,
    /// How often to retry when there is no adapter or no bluetoothd.
    pub adapter_retry: Duration,
    /// Longest silence between RACP notifications before the download is abandoned
    /// (protocols.md §1.10 step 4: 5 s).
    pub racp_idle_timeout: Duration,
    /// A device clock within this of the gateway clock is trusted as is.
    pub clock_tolerance: Duration,
    /// Least time between two connection attempts to one device.
    pub reconnect_backoff: Duration,
    /// Wait after a device refused access for lack of bonding before trying it again.
    pub bonding_backoff: Duration,
    /// How often a connected session checks `is_connected` (disconnect events are not always
    /// delivered, rust-stack.md §2).
    pub link_check: Duration,
}

impl Default for CentralOptions {
    fn default() -> Self {
        CentralOptions {
            op_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(35),
            scan_watchdog: Duration::from_secs(600),
            adapter_retry: Duration::from_secs(30),
            racp_idle_timeout: Duration::from_secs(5),
            clock_tolerance: Duration::from_secs(120),
            reconnect_backoff: Duration::from_secs(2),
            bonding_backoff: Duration::from_secs(60),
            link_check: Duration::from_secs(5),
        }
    }
}

/// Why the sink could not take readings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// What the central hands its results to; the daemon implements it over ingest and the status
/// registry ([`IngestBleSink`]), tests with a recorder.
pub trait BleSink: Send + Sync + 'static {
    /// Commits readings from one device, with the device cursor to store atomically with them
    /// (`(RACP_CURSOR_KEY, seq)` for RACP records). Returns only once committed.
    fn readings(
        &self,
        device_id: &str,
        readings: Vec<Reading>,
        cursor: Option<(String, String)>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// The device's link state and, when something went wrong, why (status `last_error`).
    fn state(&self, device_id: &str, state: LinkState, last_error: Option<String>);

    /// The last RACP sequence number committed for this device (`racp_last_seq`), if any.
    fn last_seq(&self, device_id: &str) -> Option<u16>;

    /// The measured device clock offset (device minus gateway) on this connection. The default
    /// does nothing beyond the central's own info log.
    fn clock_offset(&self, _device_id: &str, _offset: time::Duration) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_address_upper_cases_a_valid_address() {
        assert_eq!(
            normalise_address(" a4:c1:38:0f:34:56 ").unwrap(),
            "A4:C1:38:0F:34:56"
        );
    }

    #[test]
    fn normalise_address_rejects_wrong_shapes_with_the_value() {
        for bad in [
            "",
            "A4:C1:38:12:34",
            "A4-C1-38-12-34-56",
            "A4:C1:38:12:34:5G",
            "A4:C1:38:12:34:567",
        ] {
            assert_eq!(
                normalise_address(bad),
                Err(BleConfigError::Address(bad.to_string())),
                "{bad}"
            );
        }
    }

    #[test]
    fn parse_uuid16_accepts_bare_and_prefixed_hex() {
        // protocols.md §1.1: Blood Pressure Measurement 0x2A35
        assert_eq!(parse_uuid16("2a35"), Ok(0x2A35));
        assert_eq!(parse_uuid16("0x2A35"), Ok(0x2A35));
    }

    #[test]
    fn parse_uuid16_rejects_long_or_non_hex_text() {
        for bad in ["", "12345", "2a3g", "00002a35-0000-1000-8000-00805f9b34fb"] {
            assert!(parse_uuid16(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_policy_reads_snake_case_names() {
        #[derive(serde::Deserialize)]
        struct T {
            p: TimePolicy,
        }
        let t: T = toml::from_str("p = \"keep_and_flag\"").unwrap();
        assert_eq!(t.p, TimePolicy::KeepAndFlag);
        let t: T = toml::from_str("p = \"correct\"").unwrap();
        assert_eq!(t.p, TimePolicy::Correct);
    }
}
