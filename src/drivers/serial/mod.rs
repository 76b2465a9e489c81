//! Serial-device protocols (Nonin, Contec, Masimo, data-driven line profiles).
//! Filled in by the serial-devices issue.

use super::DriverInfo;

/// The serial drivers, by public name.
pub fn drivers() -> Vec<DriverInfo> {
    Vec::new()
}
