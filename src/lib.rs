//! vitalgate: the edge gateway of an NHS remote patient monitoring service.
//!
//! Data flows one way (see ARCHITECTURE.md):
//!
//! ```text
//! transport -> driver (bytes -> Reading) -> ingest (validate, alert, commit) -> outbox -> publisher -> MQTT
//! ```
//!
//! - [`reading`]: the domain types every part shares.
//! - [`config`]: the TOML schema, loaded in two stages with field-named errors.
//! - [`drivers`]: pure decoders, one per device protocol, and the simulated patient.
//! - [`transport`]: byte sources (files, pipes, serial ports) with reconnect.
//! - [`store`]: the encrypted SQLite outbox and its keys.
//! - [`ingest`]: the only writer of readings; group commit.
//! - [`alerts`]: the clinical rules engine (NEWS2, thresholds, technical alarms).
//! - [`fhir`]: Reading -> UK Core Observation JSON.
//! - [`uplink`]: MQTT session and publisher.
//! - [`crash`]: what a panic was doing, and what the next start does about it.
//! - [`daemon`]: wires the tasks together for `vitalgate run` and `vitalgate demo`.
//! - `demo` (cargo feature `demo`, in the default features, left out of the Debian packages):
//!   `vitalgate demo`: certificates, its own broker, a platform subscriber, the view.

pub mod alerts;
pub mod audit;
pub mod clock;
pub mod config;
pub mod crash;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod doctor;
pub mod drivers;
pub mod fhir;
pub mod fleet;
pub mod hl7;
pub mod ingest;
pub mod keyops;
pub mod live;
pub mod logging;
pub mod nhs_number;
pub mod preflight;
pub mod reading;
pub mod redact;
pub mod sandbox;
pub mod secure_file;
pub mod status;
pub mod store;
pub mod task;
pub mod toml_path;
pub mod top;
pub mod transport;
pub mod uplink;
