//! The keyring's housekeeping in the daemon (issue 15, acceptance 2): audits the data keys
//! the ingest writer created (by age or count rotation, or for a new patient) and destroys
//! the retired keys nothing is sealed with any more (after a retention or delivery purge),
//! once a minute on a connection of its own. Only ids, purposes, ages and patient
//! pseudonyms are audited, never key material.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::store::{Outbox, StoreError};

/// How often the keyring is looked at: cheap (the keyring and per-key counts only).
const EVERY: Duration = Duration::from_secs(60);

/// The meta-free high-water mark: keys up to this id were audited by this process or
/// existed at its start (audited when they were made, by the process that made them).
pub struct KeyHousekeeping {
    outbox: Outbox,
    audit: Arc<AuditLog>,
    audited_up_to: u32,
}

impl KeyHousekeeping {
    /// Opens its connection; keys existing now count as audited, except those created by
    /// the open that just ran (its `created` list).
    pub fn new(
        path: &PathBuf,
        master: &crate::store::MasterKey,
        audit: Arc<AuditLog>,
        audited_up_to: u32,
    ) -> Result<KeyHousekeeping, StoreError> {
        Ok(KeyHousekeeping {
            outbox: Outbox::open_secondary(path, master)?,
            audit,
            audited_up_to,
        })
    }

    /// One round: audit new keys, destroy spent ones (audited).
    pub fn round(&mut self) -> Result<(), StoreError> {
        let created = self.outbox.data_keys_after(self.audited_up_to)?;
        if let Some(last) = created.iter().map(|k| k.key_id).max() {
            self.audit
                .note("data_keys_created", serde_json::json!({ "keys": created }));
            self.audited_up_to = last;
        }
        let destroyed = self.outbox.destroy_spent_keys()?;
        crate::keyops::audit_destroyed(&self.audit, &destroyed, "no rows left");
        Ok(())
    }

    /// Runs [`KeyHousekeeping::round`] every minute until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        let this = Arc::new(std::sync::Mutex::new(self));
        loop {
            let job = this.clone();
            let done = tokio::task::spawn_blocking(move || {
                job.lock().unwrap_or_else(|p| p.into_inner()).round()
            })
            .await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "keyring housekeeping failed"),
                Err(e) => tracing::error!(error = %e, "keyring housekeeping panicked"),
            }
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(EVERY) => {}
            }
        }
    }
}
