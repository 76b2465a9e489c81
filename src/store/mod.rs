//! Storage: the encrypted SQLite outbox ([`outbox`]), its keys and sealing ([`crypto`]), and
//! the plaintext record format ([`record`]).
//!
//! Only this module knows SQL and AES-GCM. Everything above it hands in [`Record`]s and gets
//! [`Record`]s back.

mod counts;
pub mod crypto;
pub mod delivery;
pub mod keyring;
pub mod outbox;
pub mod record;

pub use crypto::{KeyError, KeySource, MasterKey};
pub use delivery::deferred::DeferredMarks;
pub use outbox::cap::{CapGuard, CapOutcome, StorageCap, WhenFull};
pub use outbox::{OpenReport, Outbox, OutboxStats, StoreError};
pub use record::{AlertRecord, DerivedRecord, Lane, ReadingRecord, Record};
