//! Fuzz target: PLX Spot-check (0x2A5E) never panics on any bytes;
//! a value it accepts is whole (one byte fewer or one more is refused).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate::drivers::{ble, DecodeError};

/// An accepted value is exactly as long as its flags say: DESIGN.md "a BLE value is whole".
fn assert_whole<T>(decode: fn(&[u8]) -> Result<T, DecodeError>, data: &[u8]) {
    if decode(data).is_ok() {
        if let Some((_, head)) = data.split_last() {
            assert!(decode(head).is_err(), "a strict prefix was accepted");
        }
        let mut longer = data.to_vec();
        longer.push(0);
        assert!(decode(&longer).is_err(), "a trailing byte was accepted");
    }
}

fuzz_target!(|data: &[u8]| {
    assert_whole(ble::decode_plx_spot_check, data);
    if let Ok(m) = ble::decode_plx_spot_check(data) {
        let readings = m.to_readings();
        // demonstration or testing data never becomes a reading (protocols.md §1.7)
        assert!(m.not_patient_data().is_none() || readings.is_empty());
    }
    let _ = ble::decode_plx_features(data);
});
