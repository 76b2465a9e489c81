//! The keyring's housekeeping in the daemon (issue 15, acceptance 2): audits the data keys
//! the ingest writer created (by age or count rotation, or for a new patient) and destroys
//! the retired keys nothing is sealed with any more (after a retention or delivery purge),
//! once a minute on a connection of its own. Only ids, purposes, ages and patient
//! pseudonyms are audited, never key material. Which keys were audited is kept in the
//! outbox (`meta.keys_audited`), so a key made shortly before a stop is audited by the next
//! run.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::store::{MasterKey, Outbox, StoreError};

/// How often the keyring is looked at: cheap (the keyring and per-key counts only).
const EVERY: Duration = Duration::from_secs(60);

pub struct KeyHousekeeping {
    outbox: Outbox,
    audit: Arc<AuditLog>,
}

impl KeyHousekeeping {
    pub fn new(
        path: &Path,
        master: &MasterKey,
        audit: Arc<AuditLog>,
    ) -> Result<KeyHousekeeping, StoreError> {
        Ok(KeyHousekeeping {
            outbox: Outbox::open_secondary(path, master)?,
            audit,
        })
    }

    /// One round: audit keys not audited yet, destroy spent ones (audited).
    pub fn round(&mut self) -> Result<(), StoreError> {
        let after = self.outbox.keys_audited_up_to()?;
        let created = self.outbox.data_keys_after(after)?;
        if let Some(last) = created.iter().map(|k| k.key_id).max() {
            self.audit
                .note("data_keys_created", serde_json::json!({ "keys": created }));
            self.outbox.set_keys_audited_up_to(last)?;
        }
        let destroyed = self.outbox.destroy_spent_keys()?;
        crate::keyops::audit_destroyed(&self.audit, &destroyed, "no rows left");
        Ok(())
    }

    /// Runs [`KeyHousekeeping::round`] every minute until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        let this = Arc::new(std::sync::Mutex::new(self));
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(EVERY) => {}
            }
            let job = this.clone();
            let done = crate::task::spawn_blocking(move || {
                job.lock().unwrap_or_else(|p| p.into_inner()).round()
            })
            .await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "keyring housekeeping failed"),
                Err(e) => tracing::error!(error = %e, "keyring housekeeping did not finish"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_audits_each_new_key_once_and_destroys_spent_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let master = MasterKey::ephemeral().unwrap();
        let (mut outbox, _) = Outbox::open(&path, &master).unwrap();
        let record = crate::store::Record::Alert(crate::store::AlertRecord {
            patient_id: "p1".into(),
            event: serde_json::json!({"alert_id": "a1"}),
        });
        let t0 = time::OffsetDateTime::now_utc();
        let ids = outbox.append(&[record], t0).unwrap();
        let audit = Arc::new(AuditLog::open(dir.path(), &master).unwrap());
        let mut hk = KeyHousekeeping::new(&path, &master, audit.clone()).unwrap();
        hk.round().unwrap();
        hk.round().unwrap();
        outbox.rotate_data_keys(t0).unwrap();
        outbox.mark_delivered(&ids, t0).unwrap();
        outbox
            .purge_delivered_before(t0 + time::Duration::seconds(1))
            .unwrap();
        hk.round().unwrap();
        let log = std::fs::read_to_string(audit.path()).unwrap();
        let created = log.matches("\"data_keys_created\"").count();
        assert_eq!(
            created, 2,
            "one for the first key, one for the rotated one: {log}"
        );
        assert_eq!(log.matches("\"data_keys_destroyed\"").count(), 1, "{log}");
    }
}
