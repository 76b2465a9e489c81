//! Fuzz target: Temperature Measurement (0x2A1C) never panics on any bytes;
//! a value it accepts is whole (one byte fewer or one more is refused).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate::drivers::ble;
use vitalgate::drivers::fuzzing::value_is_whole;

fuzz_target!(|data: &[u8]| {
    value_is_whole(ble::decode_temperature, data);
    if let Ok(m) = ble::decode_temperature(data) {
        let _ = m.to_readings();
    }
    let _ = ble::decode_temperature_type(data);
});
