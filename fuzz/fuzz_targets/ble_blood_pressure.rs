//! Fuzz target: Blood Pressure Measurement (0x2A35) never panics on any bytes;
//! a value it accepts is whole (one byte fewer or one more is refused).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate::drivers::ble;
use vitalgate::drivers::fuzzing::value_is_whole;

fuzz_target!(|data: &[u8]| {
    value_is_whole(ble::decode_blood_pressure, data);
    if let Ok(m) = ble::decode_blood_pressure(data) {
        let _ = m.to_readings();
    }
    let _ = ble::decode_intermediate_cuff_pressure(data);
});
