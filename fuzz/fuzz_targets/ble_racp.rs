//! Fuzz target: RACP responses (0x2A52) and Date Time (0x2A08) never panics on any bytes;
//! a value it accepts is whole (one byte fewer or one more is refused).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate::drivers::ble;
use vitalgate::drivers::fuzzing::value_is_whole;

fuzz_target!(|data: &[u8]| {
    value_is_whole(ble::decode_racp_response, data);
    let _ = ble::decode_racp_response(data);
    let _ = ble::decode_date_time(data);
});
