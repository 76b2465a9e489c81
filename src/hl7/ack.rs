//! The acknowledgement a monitor gets, built from its message's MSH (protocols.md §3.3).
//!
//! Which ACK, if any, follows HL7's MSH-15/MSH-16 matrix:
//! - both empty (original mode): an application ACK, `AA`/`AE`/`AR`;
//! - MSH-15 asks for an accept ACK (`AL`, `ER` on error, `SU` on success): `CA`/`CE`/`CR`
//!   (Mindray sends `AL`/`NE` and waits for `CA`);
//! - else MSH-16 asks for an application ACK (`AL`, `ER`, `SU`): `AA`/`AE`/`AR` (GE sends
//!   `NE`/`AL`);
//! - else (`NE`/`NE`, or a condition not met) no ACK.
//!
//! The positive code means "committed to safe storage" to the monitor (GE treats `AA` and
//! `CA` so), so the listener builds one only after ingest has committed the readings.
//! Layout (python-hl7 `create_ack`): MSH-3/4 = the original MSH-5/6, MSH-5/6 = the original
//! MSH-3/4, MSH-9 `ACK^<trigger>^ACK`, MSH-10 `ACK<original MSH-10>`, MSH-11/12 copied,
//! `MSA|<code>|<original MSH-10>[|<text>]`, and for an error an `ERR` segment with the HL7
//! table 0357 code and the reason.

use super::escape::escape;
use super::oru::{Header, Refusal};

/// What the gateway did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every reading is committed to the outbox (or there was none to store).
    Stored,
    /// Not stored; the sender may retry (`AE`/`CE`).
    Error {
        code: (&'static str, &'static str),
        text: String,
    },
    /// Not stored; the sender should not retry (`AR`/`CR`).
    Reject {
        code: (&'static str, &'static str),
        text: String,
    },
}

impl From<&Refusal> for Verdict {
    fn from(r: &Refusal) -> Verdict {
        let code = r.hl7_error_code();
        let text = r.to_string();
        if r.is_reject() {
            Verdict::Reject { code, text }
        } else {
            Verdict::Error { code, text }
        }
    }
}

impl Verdict {
    fn is_success(&self) -> bool {
        matches!(self, Verdict::Stored)
    }
}

fn wanted(condition: &str, success: bool) -> bool {
    match condition {
        "AL" => true,
        "ER" => !success,
        "SU" => success,
        _ => false,
    }
}

/// The MSA-1 code for `verdict` under `header`'s MSH-15/16, or `None` when no ACK is asked for.
pub fn ack_code(header: &Header, verdict: &Verdict) -> Option<&'static str> {
    let success = verdict.is_success();
    let original = header.accept_ack.is_empty() && header.application_ack.is_empty();
    let (ok, error, reject) = if original {
        ("AA", "AE", "AR")
    } else if wanted(&header.accept_ack, success) {
        ("CA", "CE", "CR")
    } else if wanted(&header.application_ack, success) {
        ("AA", "AE", "AR")
    } else {
        return None;
    };
    Some(match verdict {
        Verdict::Stored => ok,
        Verdict::Error { .. } => error,
        Verdict::Reject { .. } => reject,
    })
}

/// Builds the ACK message text (segments ended by CR, not framed), or `None` when the
/// sender asked for none. `now` is MSH-7 as an HL7 timestamp.
pub fn build(header: &Header, verdict: &Verdict, now: &str) -> Option<String> {
    let code = ack_code(header, verdict)?;
    Some(build_with_code(header, code, verdict, now))
}

/// An ACK for a frame that is not an HL7 message (no MSH to answer): `AR` with the reason.
pub fn build_for_unreadable(reason: &str, now: &str) -> String {
    let header = Header {
        field_separator: '|',
        message_type: "ACK".into(),
        ..Header::default()
    };
    let verdict = Verdict::Reject {
        code: ("100", "Segment sequence error"),
        text: reason.to_string(),
    };
    build_with_code(&header, "AR", &verdict, now)
}

fn build_with_code(header: &Header, code: &str, verdict: &Verdict, now: &str) -> String {
    let mut s = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{}||ACK^{}^ACK|ACK{}|{}|{}\r",
        header.receiving_application,
        header.receiving_facility,
        header.sending_application,
        header.sending_facility,
        now,
        header.trigger,
        header.control_id,
        header.processing_id,
        header.version,
    );
    match verdict {
        Verdict::Stored => s.push_str(&format!("MSA|{code}|{}\r", header.control_id)),
        Verdict::Error { code: err, text } | Verdict::Reject { code: err, text } => {
            let text = escape(text);
            s.push_str(&format!("MSA|{code}|{}|{text}\r", header.control_id));
            s.push_str(&format!("ERR|||{}^{}^HL70357|E||||{text}\r", err.0, err.1));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(accept: &str, app: &str) -> Header {
        Header {
            field_separator: '|',
            sending_application: "MINDRAY_VS900^00A0370098006640^EUI-64".into(),
            message_type: "ORU".into(),
            trigger: "R01".into(),
            control_id: "13".into(),
            processing_id: "P".into(),
            version: "2.6".into(),
            accept_ack: accept.into(),
            application_ack: app.into(),
            ..Header::default()
        }
    }

    /// protocols.md §3.3, derived ACK [D]: exactly these 103 framed bytes.
    #[test]
    fn the_mindray_sample_gets_the_derived_commit_ack_byte_for_byte() {
        let ack = build(&header("AL", "NE"), &Verdict::Stored, "20200212125542").unwrap();
        assert_eq!(
            ack,
            "MSH|^~\\&|||MINDRAY_VS900^00A0370098006640^EUI-64||20200212125542||ACK^R01^ACK|ACK13|P|2.6\rMSA|CA|13\r"
        );
        let framed = crate::transport::mllp::encode(ack.as_bytes());
        assert_eq!(framed.len(), 103);
        assert_eq!(
            &framed[..8],
            &[0x0B, 0x4D, 0x53, 0x48, 0x7C, 0x5E, 0x7E, 0x5C]
        );
        assert_eq!(
            &framed[framed.len() - 12..],
            &[0x4D, 0x53, 0x41, 0x7C, 0x43, 0x41, 0x7C, 0x31, 0x33, 0x0D, 0x1C, 0x0D]
        );
    }

    /// GE B40 (protocols.md §3.3) sends NE/AL and waits for an application ACK.
    #[test]
    fn msh15_ne_msh16_al_gets_an_application_ack() {
        assert_eq!(ack_code(&header("NE", "AL"), &Verdict::Stored), Some("AA"));
    }

    #[test]
    fn original_mode_gets_aa_ae_ar() {
        let h = header("", "");
        let err = Verdict::Error {
            code: ("102", "x"),
            text: "t".into(),
        };
        let rej = Verdict::Reject {
            code: ("201", "x"),
            text: "t".into(),
        };
        assert_eq!(ack_code(&h, &Verdict::Stored), Some("AA"));
        assert_eq!(ack_code(&h, &err), Some("AE"));
        assert_eq!(ack_code(&h, &rej), Some("AR"));
    }

    #[test]
    fn enhanced_mode_conditions_are_honoured() {
        let err = Verdict::Error {
            code: ("102", "x"),
            text: "t".into(),
        };
        assert_eq!(ack_code(&header("ER", "NE"), &Verdict::Stored), None);
        assert_eq!(ack_code(&header("ER", "NE"), &err), Some("CE"));
        assert_eq!(ack_code(&header("SU", "NE"), &err), None);
        assert_eq!(ack_code(&header("NE", "NE"), &Verdict::Stored), None);
    }

    #[test]
    fn an_error_ack_names_the_reason_in_msa3_and_err_escaped() {
        let v = Verdict::Error {
            code: ("204", "Unknown key identifier"),
            text: "no [[hl7.bed]] for location 3West^301^1".into(),
        };
        let ack = build(&header("", ""), &v, "20260101000000").unwrap();
        let segs: Vec<&str> = ack.split('\r').collect();
        assert_eq!(
            segs[1],
            "MSA|AE|13|no [[hl7.bed]] for location 3West\\S\\301\\S\\1"
        );
        assert_eq!(
            segs[2],
            "ERR|||204^Unknown key identifier^HL70357|E||||no [[hl7.bed]] for location 3West\\S\\301\\S\\1"
        );
    }

    /// protocols.md §3.4 H9: a negative ACK with text, as Philips sends it.
    #[test]
    fn the_philips_negative_ack_vector_reads_as_ae_with_its_text() {
        let msg = "MSH|^~\\&|||||20260101||ACK^R01^ACK|X1|P|2.4\rMSA|AE|MONITORABC000000002D|Incorrect Patient ID";
        let parsed = hl7_parser::Message::parse(msg).unwrap();
        let msa = parsed.segment("MSA").unwrap();
        assert_eq!(msa.field(1).unwrap().raw_value(), "AE");
        assert_eq!(msa.field(2).unwrap().raw_value(), "MONITORABC000000002D");
        assert_eq!(msa.field(3).unwrap().raw_value(), "Incorrect Patient ID");
    }
}
