//! Record Access Control Point (0x2A52): request builders and response parser for the stored-
//! record procedure (protocols.md §1.10), as pure functions for the BLE central.
//!
//! The central writes a request ([`RacpRequest::encode`], or the helpers
//! [`report_records_from`], [`report_all_records`], [`report_number_of_records`], [`abort`]),
//! receives the records as ordinary measurement notifications, then an indication that
//! [`decode_racp_response`] parses. Persist the highest sequence number only after
//! `ResponseCode { request_op_code: 0x01, value: Success }` (protocols.md §4 pitfall 5).
//!
//! Policy for the record count (R11): the spec says uint16, so a count of any other width is
//! refused (`TooShort` for 1 byte, `TrailingBytes` for 4), not guessed at like NRF does. Filters
//! use sequence numbers (filter type 0x01) only; user-facing-time filters are optional in
//! meters and not needed. PLXS meters accept only "all records".

use super::wire::{expect_len, Wire};
use crate::drivers::DecodeError;

pub const OP_REPORT_STORED_RECORDS: u8 = 0x01;
pub const OP_DELETE_STORED_RECORDS: u8 = 0x02;
pub const OP_ABORT: u8 = 0x03;
pub const OP_REPORT_NUMBER_OF_RECORDS: u8 = 0x04;
pub const OP_NUMBER_OF_RECORDS_RESPONSE: u8 = 0x05;
pub const OP_RESPONSE_CODE: u8 = 0x06;

/// Filter type "sequence number" (uint16 operands).
pub const FILTER_SEQUENCE_NUMBER: u8 = 0x01;

/// Which records a request applies to (the operator and its sequence-number operand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RacpFilter {
    /// Operator 0x01, no operand.
    All,
    /// Operator 0x02: sequence number ≤ n.
    LessOrEqual(u16),
    /// Operator 0x03: sequence number ≥ n.
    GreaterOrEqual(u16),
    /// Operator 0x04: lo ≤ sequence number ≤ hi (the meter answers "invalid operand" if lo > hi).
    WithinRange(u16, u16),
    /// Operator 0x05: the oldest record.
    First,
    /// Operator 0x06: the newest record.
    Last,
}

impl RacpFilter {
    fn encode_into(self, out: &mut Vec<u8>) {
        let seq = |out: &mut Vec<u8>, op: u8, values: &[u16]| {
            out.extend([op, FILTER_SEQUENCE_NUMBER]);
            for v in values {
                out.extend(v.to_le_bytes());
            }
        };
        match self {
            RacpFilter::All => out.push(0x01),
            RacpFilter::LessOrEqual(n) => seq(out, 0x02, &[n]),
            RacpFilter::GreaterOrEqual(n) => seq(out, 0x03, &[n]),
            RacpFilter::WithinRange(lo, hi) => seq(out, 0x04, &[lo, hi]),
            RacpFilter::First => out.push(0x05),
            RacpFilter::Last => out.push(0x06),
        }
    }
}

/// A request the central writes to the RACP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RacpRequest {
    ReportStoredRecords(RacpFilter),
    DeleteStoredRecords(RacpFilter),
    /// `03 00`.
    Abort,
    ReportNumberOfRecords(RacpFilter),
}

impl RacpRequest {
    /// The bytes to write.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(7);
        match *self {
            RacpRequest::ReportStoredRecords(f) => {
                out.push(OP_REPORT_STORED_RECORDS);
                f.encode_into(&mut out);
            }
            RacpRequest::DeleteStoredRecords(f) => {
                out.push(OP_DELETE_STORED_RECORDS);
                f.encode_into(&mut out);
            }
            RacpRequest::Abort => out.extend([OP_ABORT, 0x00]),
            RacpRequest::ReportNumberOfRecords(f) => {
                out.push(OP_REPORT_NUMBER_OF_RECORDS);
                f.encode_into(&mut out);
            }
        }
        out
    }
}

/// "Report stored records with sequence number ≥ `seq`" (`01 03 01 LL HH`); resume with
/// `last_committed + 1`.
pub fn report_records_from(seq: u16) -> Vec<u8> {
    RacpRequest::ReportStoredRecords(RacpFilter::GreaterOrEqual(seq)).encode()
}

/// "Report all stored records" (`01 01`), for the first sync with a meter.
pub fn report_all_records() -> Vec<u8> {
    RacpRequest::ReportStoredRecords(RacpFilter::All).encode()
}

/// "Report number of stored records", all of them (`04 01`).
pub fn report_number_of_records() -> Vec<u8> {
    RacpRequest::ReportNumberOfRecords(RacpFilter::All).encode()
}

/// "Abort operation" (`03 00`).
pub fn abort() -> Vec<u8> {
    RacpRequest::Abort.encode()
}

/// The Response Value of a Response Code indication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RacpResponseValue {
    Success,
    OpCodeNotSupported,
    InvalidOperator,
    OperatorNotSupported,
    InvalidOperand,
    NoRecordsFound,
    AbortUnsuccessful,
    ProcedureNotCompleted,
    OperandNotSupported,
    /// Not defined by the spec; kept for the log.
    Other(u8),
}

impl From<u8> for RacpResponseValue {
    fn from(v: u8) -> Self {
        match v {
            0x01 => RacpResponseValue::Success,
            0x02 => RacpResponseValue::OpCodeNotSupported,
            0x03 => RacpResponseValue::InvalidOperator,
            0x04 => RacpResponseValue::OperatorNotSupported,
            0x05 => RacpResponseValue::InvalidOperand,
            0x06 => RacpResponseValue::NoRecordsFound,
            0x07 => RacpResponseValue::AbortUnsuccessful,
            0x08 => RacpResponseValue::ProcedureNotCompleted,
            0x09 => RacpResponseValue::OperandNotSupported,
            other => RacpResponseValue::Other(other),
        }
    }
}

/// An indication the server sends on the RACP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RacpResponse {
    /// `05 00 LL HH`: the count asked for with op code 0x04.
    NumberOfRecords(u16),
    /// `06 00 op value`: how the request with `request_op_code` ended.
    ResponseCode {
        request_op_code: u8,
        value: RacpResponseValue,
    },
}

/// Parses a whole RACP indication (exactly 4 bytes, operator Null).
pub fn decode_racp_response(buf: &[u8]) -> Result<RacpResponse, DecodeError> {
    let (op, operator) = match buf {
        [op, operator, ..] => (*op, *operator),
        _ => {
            return Err(DecodeError::TooShort {
                needed: 4,
                got: buf.len(),
            })
        }
    };
    if op != OP_NUMBER_OF_RECORDS_RESPONSE && op != OP_RESPONSE_CODE {
        return Err(DecodeError::Malformed(format!(
            "RACP op code {op:#04x} is not a server response (0x05 count, 0x06 response code); \
             requests are written by the central, never indicated"
        )));
    }
    if operator != 0x00 {
        return Err(DecodeError::Malformed(format!(
            "RACP response op code {op:#04x} with operator {operator:#04x}; responses use the Null operator 0x00"
        )));
    }
    expect_len(buf, 4)?;
    let mut w = Wire::new(buf);
    w.u16()?;
    let response = if op == OP_NUMBER_OF_RECORDS_RESPONSE {
        RacpResponse::NumberOfRecords(w.u16()?)
    } else {
        RacpResponse::ResponseCode {
            request_op_code: w.u8()?,
            value: w.u8()?.into(),
        }
    };
    w.finish()?;
    Ok(response)
}

/// ATT error codes a server returns to the RACP write itself (not an indication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RacpAttError {
    /// 0xFD (CSS v4+) or 0x81 (older glucose meters): enable indications on the RACP first.
    CccdImproperlyConfigured,
    /// 0xFE (CSS v4+) or 0x80 (older glucose meters): wait for the running procedure or abort it.
    ProcedureAlreadyInProgress,
}

impl RacpAttError {
    /// Recognises both the current and the pre-CSS-v4 codes (protocols.md §1.10).
    pub fn from_att_code(code: u8) -> Option<Self> {
        match code {
            0xFD | 0x81 => Some(RacpAttError::CccdImproperlyConfigured),
            0xFE | 0x80 => Some(RacpAttError::ProcedureAlreadyInProgress),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::ble::wire::testutil::hexb;
    use proptest::prelude::*;

    #[test]
    fn racp_r1_report_all_records() {
        // protocols.md §1.10 vector R1
        assert_eq!(report_all_records(), hexb("01 01"));
    }

    #[test]
    fn racp_r2_report_number_of_all_records() {
        // protocols.md §1.10 vector R2
        assert_eq!(report_number_of_records(), hexb("04 01"));
    }

    #[test]
    fn racp_r3_report_records_from_sequence_five() {
        // protocols.md §1.10 vector R3
        assert_eq!(report_records_from(5), hexb("01 03 01 05 00"));
    }

    #[test]
    fn racp_r4_report_sequence_range() {
        // protocols.md §1.10 vector R4
        assert_eq!(
            RacpRequest::ReportStoredRecords(RacpFilter::WithinRange(12, 412)).encode(),
            hexb("01 04 01 0C 00 9C 01")
        );
    }

    #[test]
    fn racp_r5_last_first_abort_delete_all() {
        // protocols.md §1.10 vector R5
        assert_eq!(
            RacpRequest::ReportStoredRecords(RacpFilter::Last).encode(),
            hexb("01 06")
        );
        assert_eq!(
            RacpRequest::ReportStoredRecords(RacpFilter::First).encode(),
            hexb("01 05")
        );
        assert_eq!(abort(), hexb("03 00"));
        assert_eq!(
            RacpRequest::DeleteStoredRecords(RacpFilter::All).encode(),
            hexb("02 01")
        );
    }

    #[test]
    fn racp_less_or_equal_uses_sequence_filter() {
        // protocols.md §1.10 operators: 0x02 ≤ with filter type 0x01
        assert_eq!(
            RacpRequest::ReportNumberOfRecords(RacpFilter::LessOrEqual(0x0102)).encode(),
            hexb("04 02 01 02 01")
        );
    }

    #[test]
    fn racp_r6_success() {
        // protocols.md §1.10 vector R6
        assert_eq!(
            decode_racp_response(&hexb("06 00 01 01")),
            Ok(RacpResponse::ResponseCode {
                request_op_code: 0x01,
                value: RacpResponseValue::Success
            })
        );
    }

    #[test]
    fn racp_r7_no_records_found() {
        // protocols.md §1.10 vector R7
        assert_eq!(
            decode_racp_response(&hexb("06 00 01 06")),
            Ok(RacpResponse::ResponseCode {
                request_op_code: 0x01,
                value: RacpResponseValue::NoRecordsFound
            })
        );
    }

    #[test]
    fn racp_r8_op_code_not_supported() {
        // protocols.md §1.10 vector R8
        assert_eq!(
            decode_racp_response(&hexb("06 00 0C 02")),
            Ok(RacpResponse::ResponseCode {
                request_op_code: 0x0C,
                value: RacpResponseValue::OpCodeNotSupported
            })
        );
    }

    #[test]
    fn racp_r9_each_error_response_value() {
        // protocols.md §1.10 vector R9
        use RacpResponseValue::*;
        let cases = [
            ("06 00 01 03", 0x01, InvalidOperator),
            ("06 00 02 04", 0x02, OperatorNotSupported),
            ("06 00 01 05", 0x01, InvalidOperand),
            ("06 00 03 07", 0x03, AbortUnsuccessful),
            ("06 00 02 08", 0x02, ProcedureNotCompleted),
            ("06 00 02 09", 0x02, OperandNotSupported),
        ];
        for (wire, op, value) in cases {
            assert_eq!(
                decode_racp_response(&hexb(wire)),
                Ok(RacpResponse::ResponseCode {
                    request_op_code: op,
                    value
                }),
                "{wire}"
            );
        }
        assert_eq!(
            decode_racp_response(&hexb("06 00 01 7F")),
            Ok(RacpResponse::ResponseCode {
                request_op_code: 0x01,
                value: Other(0x7F)
            })
        );
    }

    #[test]
    fn racp_r10_count_is_uint16() {
        // protocols.md §1.10 vector R10
        assert_eq!(
            decode_racp_response(&hexb("05 00 02 01")),
            Ok(RacpResponse::NumberOfRecords(258))
        );
    }

    #[test]
    fn racp_r11_uint8_and_uint32_counts_are_refused() {
        // protocols.md §1.10 vector R11: strict uint16 policy
        assert_eq!(
            decode_racp_response(&hexb("05 00 01")),
            Err(DecodeError::TooShort { needed: 4, got: 3 })
        );
        assert_eq!(
            decode_racp_response(&hexb("05 00 04 03 02 01")),
            Err(DecodeError::TrailingBytes(2))
        );
    }

    #[test]
    fn racp_r12_invalid_responses() {
        // protocols.md §1.10 vector R12: request op code indicated; non-Null operator; too short
        assert!(
            matches!(decode_racp_response(&hexb("01 03 01 02 00")), Err(DecodeError::Malformed(m)) if m.contains("0x01"))
        );
        assert!(
            matches!(decode_racp_response(&hexb("06 01 01")), Err(DecodeError::Malformed(m)) if m.contains("operator"))
        );
        assert!(decode_racp_response(&hexb("01 01")).is_err());
        assert_eq!(
            decode_racp_response(&hexb("06")),
            Err(DecodeError::TooShort { needed: 4, got: 1 })
        );
        assert_eq!(
            decode_racp_response(&hexb("06 00 01")),
            Err(DecodeError::TooShort { needed: 4, got: 3 })
        );
    }

    #[test]
    fn racp_att_errors_accept_old_and_new_codes() {
        // protocols.md §1.10: 0xFD/0xFE (CSS v4) and 0x81/0x80 (older glucose meters)
        assert_eq!(
            RacpAttError::from_att_code(0xFE),
            Some(RacpAttError::ProcedureAlreadyInProgress)
        );
        assert_eq!(
            RacpAttError::from_att_code(0x80),
            Some(RacpAttError::ProcedureAlreadyInProgress)
        );
        assert_eq!(
            RacpAttError::from_att_code(0xFD),
            Some(RacpAttError::CccdImproperlyConfigured)
        );
        assert_eq!(
            RacpAttError::from_att_code(0x81),
            Some(RacpAttError::CccdImproperlyConfigured)
        );
        assert_eq!(RacpAttError::from_att_code(0x01), None);
    }

    proptest! {
        #[test]
        fn racp_any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let _ = decode_racp_response(&bytes);
        }

        #[test]
        fn racp_report_from_encodes_sequence_little_endian(seq in any::<u16>()) {
            let v = report_records_from(seq);
            prop_assert_eq!(&v[..3], &[0x01, 0x03, 0x01]);
            prop_assert_eq!(u16::from_le_bytes([v[3], v[4]]), seq);
            prop_assert_eq!(v.len(), 5);
        }
    }
}
