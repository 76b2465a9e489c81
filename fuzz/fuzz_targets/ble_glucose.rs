//! Fuzz target: Glucose Measurement (0x2A18) and Context (0x2A34) never panics on any bytes;
//! a value it accepts is whole (one byte fewer or one more is refused).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate::drivers::ble;
use vitalgate::drivers::fuzzing::value_is_whole;

fuzz_target!(|data: &[u8]| {
    value_is_whole(ble::decode_glucose, data);
    if let Ok(m) = ble::decode_glucose(data) {
        let readings = m.to_readings();
        // control solution never becomes a reading (protocols.md §1.9)
        assert!(!m.is_control_solution() || readings.is_empty());
        let _ = m.user_facing_time();
    }
    if let Ok(c) = ble::decode_glucose_context(data) {
        let _ = ble::pair_glucose_context(
            ble::GlucoseMeasurement {
                sequence_number: c.sequence_number,
                base_time: ble::DateTime {
                    year: 0,
                    month: 0,
                    day: 0,
                    hours: 0,
                    minutes: 0,
                    seconds: 0,
                },
                time_offset_minutes: None,
                concentration: None,
                sensor_status: None,
                context_follows: true,
            },
            Some(c),
        );
    }
});
