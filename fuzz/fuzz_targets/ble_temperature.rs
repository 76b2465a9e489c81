//! Fuzz target: Temperature Measurement (0x2A1C) never panics on any bytes;
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
    assert_whole(ble::decode_temperature, data);
    if let Ok(m) = ble::decode_temperature(data) {
        let _ = m.to_readings();
    }
    let _ = ble::decode_temperature_type(data);
});
