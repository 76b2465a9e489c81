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
//! - [`daemon`]: wires the tasks together for `vitalgate run` and `vitalgate demo`.
//! - [`demo`]: `vitalgate demo`: certificates, its own broker, a platform subscriber, the view.

pub mod alerts;
pub mod audit;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod drivers;
pub mod fhir;
pub mod fleet;
pub mod ingest;
pub mod nhs_number;
pub mod reading;
pub mod status;
pub mod store;
pub mod transport;
pub mod uplink;
