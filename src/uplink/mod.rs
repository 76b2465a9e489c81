//! The uplink: the MQTT 5 session over mutual TLS 1.3 and the at-least-once publisher.
//!
//! - [`config`]: the `[uplink]` schema and validation.
//! - [`tls`]: rustls client configuration from PEM files (TLS 1.3 only, ring provider);
//!   [`cert_fields`] reads a certificate's validity and subject CN for it.
//! - [`source`]: the [`OutboxSource`] boundary the publisher reads, and [`MemorySource`].
//! - [`publisher`]: [`Uplink`], the task that drains the outbox to the broker.
//! - [`session`], [`topics`], [`backoff`]: connection options and error text, topic names and
//!   status payloads, reconnect delays.
//!
//! The outbox is the queue; this module keeps at most the in-flight window in memory and
//! never marks a row delivered without its own successful PUBACK. Audit entries travel as a
//! third lane behind alerts ([`audit_lane`]); the retained status carries the telemetry of
//! [`status_feed`]. Fleet configuration and
//! commands (`config/desired`, `cmd`) travel on a session of their own ([`fleet_link`]).

pub mod audit_lane;
pub mod backoff;
pub mod cert_fields;
pub mod config;
pub mod fleet_link;
pub mod publisher;
pub mod session;
pub mod source;
pub mod status_feed;
pub mod tls;
pub mod topics;

pub use config::{ConfigError, NoSubscribers, UplinkConfig};
pub use publisher::{Uplink, UplinkError, UplinkStatus};
pub use source::{Lane, MemorySource, OutboxSource, Outgoing, SourceError};
pub use tls::{gateway_id_from_cert, LoadedTls, TlsError};
