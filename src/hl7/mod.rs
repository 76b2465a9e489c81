//! HL7 v2 ORU^R01 from bedside monitors (IHE PCD-01): messages to readings, and the ACK.
//!
//! Pure, like `drivers/`: no IO, no clock (times are arguments), no panics on any input.
//! The listener (`transport::mllp`) cuts frames; `daemon::hl7` binds them to patients and
//! commits them; this module only says what a message means.
//!
//! - [`oru`]: the decoder (`decode`) and the header alone (`header`, to answer any message).
//! - [`codes`]: the MDC and Philips MDIL codes and units vitalgate knows.
//! - [`ack`]: the acknowledgement, per MSH-15/16.
//! - [`time`]: HL7 timestamps in the monitor's zone.
//! - [`escape`]: escape sequences.
//!
//! See docs/hl7.md for the choices (crate, demo data, time zones).

pub mod ack;
pub mod codes;
pub mod config;
pub mod escape;
pub mod oru;
pub mod time;

pub use ack::{build as build_ack, Verdict};
pub use oru::{decode, header, Header, Oru, Refusal, Row, RowOutcome};
pub use time::MonitorZone;
