//! Transports: where a device's bytes come from. Bytes in, reconnect, hot-plug; no decoding.
//!
//! [`stream::StreamSource`] reads a path that may be a regular file (followed like `tail -f`,
//! resuming from a committed offset), a FIFO (reopened when its writer goes away) or a
//! character device (reopened when it vanishes and comes back), waiting for either without a
//! blocking thread so that shutdown is never held. [`serial::SerialSource`] opens
//! a serial port with a device profile's link settings, writes its init and keepalive bytes,
//! and reopens it by path after an unplug. [`Source`] is either, so the daemon's device task
//! is written once. [`simulator`] is the other end: a pseudo-terminal that behaves like a
//! serial device, for `vitalgate simulate --pty` and tests. [`ble::BleCentral`] is the
//! Bluetooth LE central (btleplug on BlueZ).

pub mod ble;
pub mod hl7_simulator;
pub mod mllp;
pub mod mllp_server;
pub mod serial;
pub mod simulator;
pub mod stream;

use std::path::Path;

/// A device's byte source: a file, FIFO or plain character device, or a serial port.
pub enum Source {
    Stream(stream::StreamSource),
    Serial(serial::SerialSource),
}

impl Source {
    /// Waits for the next event; cancel-safe between events (see each source).
    pub async fn next(&mut self) -> stream::Event {
        match self {
            Source::Stream(s) => s.next().await,
            Source::Serial(s) => s.next().await,
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Source::Stream(s) => s.path(),
            Source::Serial(s) => s.path(),
        }
    }
}

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
    /// Not started: decoding its input crashed the gateway (a bug, `crate::crash`); it is
    /// tried again when the pause its `last_error` names ends.
    Paused,
}

/// Tests that make pseudo-terminals take this lock: pty numbers are reused as soon as one is
/// closed, and a transport that reopens a vanished device *by path* (as it must) would then
/// open another test's pty.
#[cfg(test)]
pub(crate) static PTY_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
