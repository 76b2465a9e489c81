//! `jsonl`: one JSON reading per line, in the form `vitalgate decode` prints (DESIGN.md).
//!
//! The generic driver for custom devices and manual entry (a nurse's ACVPU or respiration
//! rate): anything that can write a line of JSON to a file, a pipe or a serial port. A line
//! may also hold an array of readings taken together (a blood-pressure set). Blank lines and
//! lines starting with `#` are ignored; a malformed line is skipped with an error naming what
//! was wrong, and the stream goes on.

use super::{DecodeError, DriverInfo, DriverKind, Step, StreamDecoder};
use crate::reading::Reading;

/// Lines longer than this are refused (and skipped) rather than buffered without bound.
pub const MAX_LINE: usize = 16 * 1024;

pub const DRIVER: DriverInfo = DriverInfo {
    name: "jsonl",
    summary: "one JSON reading (or an array of readings) per line, as `decode` prints them",
    text: true,
    kind: DriverKind::Stream(|| Box::new(JsonlDecoder)),
};

/// Stateless line decoder.
#[derive(Debug, Default)]
pub struct JsonlDecoder;

impl StreamDecoder for JsonlDecoder {
    fn feed(&mut self, buf: &[u8]) -> Step {
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > MAX_LINE {
                return Step::Skip {
                    consumed: buf.len(),
                    error: DecodeError::BadLength(format!("line longer than {MAX_LINE} bytes")),
                };
            }
            return Step::NeedMore;
        };
        let consumed = end + 1;
        if end > MAX_LINE {
            return Step::Skip {
                consumed,
                error: DecodeError::BadLength(format!("line of {end} bytes, limit {MAX_LINE}")),
            };
        }
        match decode_line(&buf[..end]) {
            Ok(readings) => Step::Frame { consumed, readings },
            Err(error) => Step::Skip { consumed, error },
        }
    }
}

/// Decodes one line (without its newline).
pub fn decode_line(line: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    let text = std::str::from_utf8(line)
        .map_err(|e| DecodeError::Malformed(format!("not UTF-8: {e}")))?
        .trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(Vec::new());
    }
    let parsed = if text.starts_with('[') {
        serde_json::from_str::<Vec<Reading>>(text)
    } else {
        serde_json::from_str::<Reading>(text).map(|r| vec![r])
    };
    parsed.map_err(|e| DecodeError::Malformed(format!("not a reading: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::drain;
    use crate::reading::{Decimal, Metric, Value};

    fn run(input: &str) -> (Vec<Reading>, Vec<DecodeError>, usize) {
        let (mut out, mut errs) = (Vec::new(), Vec::new());
        let n = drain(&mut JsonlDecoder, input.as_bytes(), &mut out, &mut errs);
        (out, errs, n)
    }

    #[test]
    fn jsonl_decodes_one_reading_per_line() {
        let (r, e, n) = run("{\"metric\":\"spo2\",\"value\":97,\"unit\":\"%\"}\n{\"metric\":\"acvpu\",\"code\":\"A\"}\n");
        assert!(e.is_empty());
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].value, Value::Number(Decimal::int(97)));
        assert_eq!(r[1].metric, Metric::Acvpu);
        assert_eq!(n, "{\"metric\":\"spo2\",\"value\":97,\"unit\":\"%\"}\n{\"metric\":\"acvpu\",\"code\":\"A\"}\n".len());
    }

    #[test]
    fn jsonl_skips_malformed_line_and_keeps_going() {
        let (r, e, _) =
            run("{not json}\n{\"metric\":\"heart_rate\",\"value\":60,\"unit\":\"/min\"}\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].to_string().contains("not a reading"), "{}", e[0]);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn jsonl_waits_for_the_end_of_a_partial_line() {
        let (r, e, n) = run("{\"metric\":\"spo2\",");
        assert!(r.is_empty() && e.is_empty());
        assert_eq!(n, 0);
    }

    #[test]
    fn jsonl_accepts_an_array_for_readings_taken_together() {
        let (r, _, _) = run("[{\"metric\":\"systolic_bp\",\"value\":120,\"unit\":\"mm[Hg]\"},{\"metric\":\"diastolic_bp\",\"value\":80,\"unit\":\"mm[Hg]\"}]\n");
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn jsonl_ignores_blank_and_comment_lines() {
        let (r, e, _) = run("\n# nurse entry\n  \n");
        assert!(r.is_empty() && e.is_empty());
    }

    #[test]
    fn jsonl_refuses_overlong_line_without_buffering_forever() {
        let long = "x".repeat(MAX_LINE + 10);
        let (_, e, n) = run(&long);
        assert_eq!(e.len(), 1);
        assert_eq!(n, long.len());
    }
}
