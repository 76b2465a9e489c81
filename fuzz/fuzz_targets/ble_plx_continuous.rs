//! Fuzz target: PLX Continuous (0x2A5F) never panics on any bytes;
//! a value it accepts is whole (one byte fewer or one more is refused).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate::drivers::ble;
use vitalgate::drivers::fuzzing::value_is_whole;

fuzz_target!(|data: &[u8]| {
    value_is_whole(ble::decode_plx_continuous, data);
    if let Ok(m) = ble::decode_plx_continuous(data) {
        let readings = m.to_readings();
        // demonstration or testing data never becomes a reading (protocols.md §1.7)
        assert!(m.not_patient_data().is_none() || readings.is_empty());
    }
});
