//! Transports: where a device's bytes come from. Bytes in, reconnect, hot-plug; no decoding.
//!
//! [`stream::StreamSource`] reads a path that may be a regular file (followed like `tail -f`,
//! resuming from a committed offset), a FIFO (reopened when its writer goes away) or a
//! character device such as a serial port (reopened when it vanishes and comes back).
//! [`ble::BleCentral`] is the Bluetooth LE central (btleplug on BlueZ).

pub mod ble;
pub mod stream;

/// A device's connection state, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Not yet opened.
    Starting,
    /// Open and delivering data.
    Connected,
    /// Open, but nothing arrived for longer than expected.
    NoData,
    /// The port or file is gone; retrying with backoff.
    Disconnected,
    /// The transport cannot work on this host (e.g. no Bluetooth adapter).
    Unavailable,
}
