//! Key operations and patient erasure, as commands (issue 15, acceptance 2 and 3):
//! `vitalgate key rotate-data`, `vitalgate key rotate-master --new-key FILE` and
//! `vitalgate patient erase PATIENT_ID`, and the fleet commands `rotate-key` and
//! `erase-patient` run by the daemon ([`Live`]). The keyring itself is `store::keyring`.
//!
//! The CLI verbs take the instance lock (`daemon::instance_lock`) and refuse while the daemon
//! holds it: the daemon caches keys and alert state that an erasure or a master rotation
//! changes under it. A running hub is reached through the fleet commands instead, which the
//! daemon runs itself. Every operation is audited (ids, counts and pseudonyms only).
//!
//! Master key rotation, and how the key file is swapped (crash-safe at every point):
//! 1. one transaction adds the new master's check value and a second wrap of every data key
//!    under it: from its commit, old and new master both open the keyring (rows untouched);
//! 2. when the master came from the key file, the new key is copied beside it (0600,
//!    synced) and renamed over it (the directory synced): the file holds old or new, whole;
//! 3. the old master's wraps and check value are destroyed (`secure_delete`, WAL truncated).
//!
//! A kill between 1 and 3 leaves both wraps; the next open completes the rotation when it is
//! made with the new master, or abandons it when made with the old one (the key file was not
//! swapped yet). When the master comes from the systemd credential, the command stops after
//! step 1 and says so: install the new key as the credential, then start the daemon (its
//! first start with the new key completes the rotation).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use time::OffsetDateTime;

use crate::audit::{events, AuditLog};
use crate::config::Config;
use crate::daemon::instance_lock::{InstanceLock, LockError};
use crate::store::keyring::{Destroyed, Erasure, Rotated};
use crate::store::{KeyError, KeySource, MasterKey, Outbox, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum KeyOpError {
    #[error("{0}; or send the fleet command instead (rotate-key, erase-patient), which the running daemon runs itself")]
    Locked(LockError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("{0}: the new master key is the key in use; create a new one with `vitalgate keygen --out FILE`")]
    SameKey(PathBuf),
    #[error("{path}: cannot install the new master key: {source}. The keyring opens with both keys; run the command again")]
    Install {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no outbox here yet; there are no keys to rotate and no rows to erase")]
    NoOutbox(PathBuf),
    #[error("{0}. The keyring opens with both keys and the old key is still installed; run the command again")]
    FleetState(#[from] crate::fleet::state::StateError),
}

impl KeyOpError {
    /// A usage or configuration problem (exit 2) rather than a runtime failure (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            KeyOpError::Key(_)
                | KeyOpError::SameKey(_)
                | KeyOpError::NoOutbox(_)
                | KeyOpError::Store(StoreError::WrongKey { .. })
        )
    }
}

/// What a command holds while it runs: the lock, the master key, the audit log, the outbox.
struct Session {
    _lock: InstanceLock,
    master: MasterKey,
    audit: AuditLog,
    outbox: Outbox,
}

impl Session {
    fn open(config: &Config) -> Result<Session, KeyOpError> {
        let state_dir = &config.gateway.state_dir;
        let path = config.outbox_path();
        if !path.exists() {
            return Err(KeyOpError::NoOutbox(path));
        }
        let lock = InstanceLock::acquire(state_dir).map_err(KeyOpError::Locked)?;
        let master = MasterKey::load(&config.store.key_file)?;
        let master = crate::store::keyring::attach_audit_key(master, &path);
        let audit = AuditLog::open(state_dir, &master)?;
        let (outbox, _) = match Outbox::open(&path, &master) {
            Ok(x) => x,
            Err(e) => {
                if matches!(e, StoreError::WrongKey { .. }) {
                    audit.note(
                        "wrong_key_refused",
                        json!({"outbox": path, "key_source": master.source()}),
                    );
                }
                return Err(e.into());
            }
        };
        Ok(Session {
            _lock: lock,
            master,
            audit,
            outbox,
        })
    }

    /// Leaves the outbox as a clean stop does (the next start skips the full check).
    fn close(self) -> Result<(), KeyOpError> {
        self.outbox.close_clean()?;
        Ok(())
    }
}

/// Audits the data keys destroyed because nothing sealed with them remains.
pub fn audit_destroyed(audit: &AuditLog, destroyed: &[Destroyed], reason: &str) {
    if !destroyed.is_empty() {
        audit.note(
            "data_keys_destroyed",
            events::data_keys_destroyed(reason, destroyed),
        );
    }
}

/// What `key rotate-data` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DataRotation {
    pub rotated: Vec<Rotated>,
    pub destroyed: Vec<Destroyed>,
}

fn rotate_data_on(
    outbox: &mut Outbox,
    audit: &AuditLog,
    reason: &str,
    now: OffsetDateTime,
) -> Result<DataRotation, StoreError> {
    let rotated = outbox.rotate_data_keys(now)?;
    audit.note(
        "data_keys_rotated",
        events::data_keys_rotated(reason, &rotated),
    );
    let destroyed = outbox.destroy_spent_keys()?;
    audit_destroyed(audit, &destroyed, "rotation");
    Ok(DataRotation { rotated, destroyed })
}

/// `vitalgate key rotate-data`: every data key replaced; spent ones destroyed.
pub fn rotate_data(config: &Config, now: OffsetDateTime) -> Result<DataRotation, KeyOpError> {
    let mut s = Session::open(config)?;
    let done = rotate_data_on(&mut s.outbox, &s.audit, "command", now)?;
    s.close()?;
    Ok(done)
}

/// What `key rotate-master` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MasterRotation {
    /// The new master's id in the keyring.
    pub master_id: i64,
    /// Where the new key was installed (the key file), if the command installed it.
    pub installed_at: Option<PathBuf>,
    /// Whether the old master's wraps were destroyed (else: the first start with the new
    /// key completes the rotation).
    pub completed: bool,
    pub data_keys: usize,
}

/// `vitalgate key rotate-master --new-key FILE` (see the module doc for the steps).
pub fn rotate_master(
    config: &Config,
    new_key: &Path,
    now: OffsetDateTime,
) -> Result<MasterRotation, KeyOpError> {
    let new = MasterKey::from_file(new_key)?;
    let mut s = Session::open(config)?;
    if s.master.same_key_as(&new) {
        return Err(KeyOpError::SameKey(new_key.to_path_buf()));
    }
    let data_keys = s.outbox.data_keys()?.len();
    let master_id = s.outbox.add_master_key(&s.master, &new, now)?;
    s.audit.note(
        "master_key_rotation_started",
        json!({"master_id": master_id, "data_keys": data_keys, "new_key": new_key}),
    );
    // The fleet's stored document is sealed under the master too: staged under both keys
    // now, so it opens whichever key a crash leaves in the key file (fleet/state.rs).
    let staged = crate::fleet::state::stage_for_master(&config.gateway.state_dir, &s.master, &new)?;
    if staged {
        s.audit
            .note("fleet_document_resealed", json!({"master_id": master_id}));
    }
    crash_test_pause("wrapped");
    let target = match s.master.source() {
        KeySource::File(p) => Some(p.clone()),
        _ => None,
    };
    let Some(target) = target else {
        // The credential is systemd's: the operator installs it; the daemon's first start
        // with it completes the rotation.
        s.close()?;
        return Ok(MasterRotation {
            master_id,
            installed_at: None,
            completed: false,
            data_keys,
        });
    };
    install_key_file(new_key, &target)?;
    s.audit.note(
        "master_key_installed",
        json!({"master_id": master_id, "path": target}),
    );
    crash_test_pause("installed");
    s.outbox.finish_master_key(master_id)?;
    s.audit.note(
        "master_key_rotated",
        json!({"master_id": master_id, "data_keys": data_keys}),
    );
    s.close()?;
    Ok(MasterRotation {
        master_id,
        installed_at: Some(target),
        completed: true,
        data_keys,
    })
}

/// Replaces the key file `target` by the content of `new_key`, atomically: a copy beside
/// it (0600, synced), renamed over it, the directory synced. A kill leaves the old file or
/// the new one, whole, and possibly the copy (`<target>.new`), which the next run replaces.
fn install_key_file(new_key: &Path, target: &Path) -> Result<(), KeyOpError> {
    let err = |source| KeyOpError::Install {
        path: target.to_path_buf(),
        source,
    };
    let bytes = zeroize::Zeroizing::new(std::fs::read(new_key).map_err(err)?);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "master.key".into());
    let staged = target.with_file_name(format!("{name}.new"));
    let _ = std::fs::remove_file(&staged);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .map_err(err)?;
    file.write_all(&bytes)
        .and_then(|_| file.sync_all())
        .map_err(err)?;
    drop(file);
    crash_test_pause("staged");
    std::fs::rename(&staged, target).map_err(err)?;
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

/// For the crash tests only (tests/keys.rs): with `VITALGATE_CRASH_TEST_PAUSE` set to
/// `step`, says so on stderr and waits to be killed at that point of `rotate-master`.
fn crash_test_pause(step: &str) {
    if std::env::var("VITALGATE_CRASH_TEST_PAUSE").as_deref() == Ok(step) {
        eprintln!("crash-test pause: {step}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }
}

/// The devices bound to `patient` in `config` (their cursors are erased with them).
fn devices_of(config: &Config, patient: &str) -> Vec<String> {
    config
        .devices
        .iter()
        .filter(|d| d.patient == patient)
        .map(|d| d.id.clone())
        .collect()
}

fn erase_on(
    outbox: &mut Outbox,
    audit: &AuditLog,
    patient: &str,
    devices: &[String],
    via: &str,
) -> Result<Erasure, StoreError> {
    let erased = outbox.erase_patient(patient, devices)?;
    audit.note("patient_erased", events::patient_erased(&erased, via));
    Ok(erased)
}

/// `vitalgate patient erase PATIENT_ID`.
pub fn erase_patient(config: &Config, patient: &str) -> Result<Erasure, KeyOpError> {
    let mut s = Session::open(config)?;
    let erased = erase_on(
        &mut s.outbox,
        &s.audit,
        patient,
        &devices_of(config, patient),
        "command",
    )?;
    s.close()?;
    Ok(erased)
}

/// The fleet commands `rotate-key` and `erase-patient`, run by the daemon on a connection of
/// their own (the writer re-reads the keyring before its next batch: `store::keyring`).
pub struct Live {
    outbox_path: PathBuf,
    master: MasterKey,
    config: Config,
    audit: Arc<AuditLog>,
}

impl Live {
    pub fn new(config: &Config, master: &MasterKey, audit: Arc<AuditLog>) -> Live {
        Live {
            outbox_path: config.outbox_path(),
            master: master.duplicate(),
            config: config.clone(),
            audit,
        }
    }

    fn outbox(&self) -> Result<Outbox, StoreError> {
        Outbox::open_secondary(&self.outbox_path, &self.master)
    }

    /// `rotate-key`.
    pub fn rotate_data(&self, now: OffsetDateTime) -> Result<DataRotation, StoreError> {
        rotate_data_on(&mut self.outbox()?, &self.audit, "fleet", now)
    }

    /// `erase-patient PATIENT_ID`.
    pub fn erase_patient(&self, patient: &str) -> Result<Erasure, StoreError> {
        let devices = devices_of(&self.config, patient);
        erase_on(&mut self.outbox()?, &self.audit, patient, &devices, "fleet")
    }
}
