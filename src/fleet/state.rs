//! The applied document, persisted: `fleet-applied.json` in the state directory.
//!
//! One file holds the signed document with its version, hash, key id and time of applying,
//! written to a temporary file, synced, renamed over the old one and the directory synced. A
//! crash (kill -9, power cut) at any point leaves the old file or the new one, never a mix, so
//! the effective config after a restart is the old or the new one. The version in it is the
//! high-water mark that refuses a replayed or older document across restarts.
//!
//! The document is sealed (`seal.rs`: AES-256-GCM under the master key, the file name as
//! associated data), since its overlay may hold NHS Numbers; its version, hash, key id and
//! time stay in clear beside it, so `vitalgate status` reads them without the key and the
//! high-water mark survives even a document that can no longer be opened. A file written by
//! an earlier version (the document in clear) is read, and sealed at the next start.
//!
//! At start the stored document is verified again under the keys trusted now (a key removed
//! from `[fleet] trusted_keys` takes its overlay with it) and validated against the local
//! config as it is now; if either fails the hub runs the local config alone, says why, and
//! still refuses documents at or below the stored version.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::document::ConfigPayload;
use super::jws::{self, TYPE_CONFIG};
use super::keys::PublicKey;
use super::overlay::Overlay;
use super::seal::{self, Sealed};
use crate::config::Config;
use crate::store::MasterKey;

pub const STATE_FILE: &str = "fleet-applied.json";
const TMP_FILE: &str = ".fleet-applied.json.tmp";

/// The document in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    pub version: u64,
    /// SHA-256 (hex) of the signed payload.
    pub sha256: String,
    pub key_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub applied_at: OffsetDateTime,
    /// The JWS document as received.
    pub document: String,
}

/// `fleet-applied.json` as stored: the metadata in clear, the document sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    version: u64,
    sha256: String,
    key_id: String,
    #[serde(with = "time::serde::rfc3339")]
    applied_at: OffsetDateTime,
    /// Written by earlier versions only (sealed at the next start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    document: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<Sealed>,
    /// The document sealed under the incoming master key, written by `key rotate-master`
    /// before it installs that key (`stage_for_master`), so the document opens under the old
    /// key or the new one whatever point a crash stops the rotation at. The first start
    /// that opens the file keeps only the seal of the key in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<Sealed>,
}

impl OnDisk {
    /// `applied`'s metadata in clear beside its document sealed (and, during a master
    /// rotation, sealed again under the incoming key).
    fn sealed(applied: &Applied, sealed: Sealed, next: Option<Sealed>) -> OnDisk {
        OnDisk {
            version: applied.version,
            sha256: applied.sha256.clone(),
            key_id: applied.key_id.clone(),
            applied_at: applied.applied_at,
            document: None,
            sealed: Some(sealed),
            next,
        }
    }

    /// The stored document, opened; `Err` says why it cannot be (the metadata still holds).
    /// The flag says the file should be written again under `master` alone (a document in
    /// clear from an earlier version, or a master rotation's second seal).
    fn open(self, master: &MasterKey) -> (Applied, Result<(), String>, bool) {
        let open = |s: &Sealed| {
            seal::open(master, STATE_FILE, s)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .map_err(|e| e.to_string())
        };
        let rewrite = self.next.is_some();
        let (document, opened, clear) = match (&self.sealed, &self.next, self.document) {
            (Some(s), next, _) => match (open(s), next) {
                (Ok(d), _) => (d, Ok(()), rewrite),
                (Err(_), Some(n)) => match open(n) {
                    Ok(d) => (d, Ok(()), true),
                    Err(e) => (String::new(), Err(e), false),
                },
                (Err(e), None) => (String::new(), Err(e), false),
            },
            (None, _, Some(d)) => (d, Ok(()), true),
            (None, _, None) => (
                String::new(),
                Err("the file holds no document".into()),
                false,
            ),
        };
        let applied = Applied {
            version: self.version,
            sha256: self.sha256,
            key_id: self.key_id,
            applied_at: self.applied_at,
            document,
        };
        (applied, opened, clear)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a fleet state file: {why}")]
    Corrupt { path: PathBuf, why: String },
}

fn read(state_dir: &Path) -> Result<Option<OnDisk>, StateError> {
    let path = state_dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StateError::Corrupt {
            path,
            why: super::redact(&e.to_string()),
        })
}

/// The applied document's version, hash, key id and time (read without the key; the
/// `document` is left empty): for `vitalgate status` and the high-water mark.
pub fn load_meta(state_dir: &Path) -> Result<Option<Applied>, StateError> {
    Ok(read(state_dir)?.map(|d| Applied {
        version: d.version,
        sha256: d.sha256,
        key_id: d.key_id,
        applied_at: d.applied_at,
        document: String::new(),
    }))
}

/// Reads the applied document, if any, opened with `master`.
pub fn load(state_dir: &Path, master: &MasterKey) -> Result<Option<Applied>, StateError> {
    let Some(d) = read(state_dir)? else {
        return Ok(None);
    };
    match d.open(master) {
        (a, Ok(()), _) => Ok(Some(a)),
        (_, Err(why), _) => Err(StateError::Corrupt {
            path: state_dir.join(STATE_FILE),
            why,
        }),
    }
}

/// Persists `applied` atomically (temporary file, fsync, rename, fsync of the directory),
/// its document sealed under `master`.
pub fn save(state_dir: &Path, applied: &Applied, master: &MasterKey) -> Result<(), StateError> {
    let sealed = seal_for(state_dir, master, &applied.document)?;
    write(state_dir, &OnDisk::sealed(applied, sealed, None))
}

/// For `key rotate-master`, before the new key is installed: the stored document (if any,
/// and if it opens under `old`) is written again sealed under both `old` and `new`, so it
/// opens whichever key the rotation ends with. Returns whether there was a document.
pub fn stage_for_master(
    state_dir: &Path,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<bool, StateError> {
    let Some(disk) = read(state_dir)? else {
        return Ok(false);
    };
    let (applied, opened, _) = disk.open(old);
    if opened.is_err() {
        // Nothing the old key opens: the next start drops it either way (its version stays).
        return Ok(false);
    }
    let sealed = seal_for(state_dir, old, &applied.document)?;
    let next = seal_for(state_dir, new, &applied.document)?;
    write(state_dir, &OnDisk::sealed(&applied, sealed, Some(next)))?;
    Ok(true)
}

fn seal_for(state_dir: &Path, master: &MasterKey, document: &str) -> Result<Sealed, StateError> {
    seal::seal(master, STATE_FILE, document.as_bytes()).map_err(|e| StateError::Io {
        path: state_dir.join(STATE_FILE),
        source: std::io::Error::other(e),
    })
}

fn write(state_dir: &Path, disk: &OnDisk) -> Result<(), StateError> {
    let tmp = state_dir.join(TMP_FILE);
    let path = state_dir.join(STATE_FILE);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StateError::Io { path: p, source }
    };
    let json = serde_json::to_vec_pretty(disk).map_err(|e| StateError::Io {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(&json).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(state_dir))
}

/// What the hub runs at start.
#[derive(Debug, Clone)]
pub struct AtStart {
    /// The effective config: local, with the stored overlay when it still holds.
    pub config: Config,
    /// The stored document (its version is the high-water mark even when not in force).
    pub applied: Option<Applied>,
    /// Why the stored overlay is not in force, when it is not.
    pub dropped: Option<String>,
}

impl AtStart {
    /// Version of the stored document; 0 when none.
    pub fn version(&self) -> u64 {
        self.applied.as_ref().map_or(0, |a| a.version)
    }
}

/// The effective config from `local` and the stored document (opened with `master`; a
/// document left in clear by an earlier version is sealed now).
pub fn at_start(
    local: Config,
    trusted: &[PublicKey],
    master: &MasterKey,
) -> Result<AtStart, StateError> {
    let Some(disk) = read(&local.gateway.state_dir)? else {
        return Ok(AtStart {
            config: local,
            applied: None,
            dropped: None,
        });
    };
    let (a, opened, rewrite) = disk.open(master);
    if rewrite {
        match save(&local.gateway.state_dir, &a, master) {
            Ok(()) => tracing::info!(
                "fleet: the stored document is now sealed under the master key in force alone"
            ),
            Err(e) => tracing::error!(error = %e, "fleet: cannot seal the stored document"),
        }
    }
    let effective = opened
        .and_then(|()| {
            jws::verify(a.document.as_bytes(), TYPE_CONFIG, trusted).map_err(|e| e.to_string())
        })
        .and_then(|v| {
            serde_json::from_slice::<ConfigPayload>(&v.payload).map_err(|e| e.to_string())
        })
        .and_then(|p| Overlay::parse(&p.overlay).map_err(|e| e.to_string()))
        .and_then(|o| o.effective(&local).map_err(|e| e.to_string()));
    Ok(match effective {
        Ok(config) => AtStart {
            config,
            applied: Some(a),
            dropped: None,
        },
        Err(why) => AtStart {
            config: local,
            applied: Some(a),
            dropped: Some(super::redact(&why)),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::keys::{self, SigningKey};
    use time::macros::datetime;

    fn local(dir: &Path) -> Config {
        let text = format!(
            "[gateway]\nid = \"gw-1\"\nstate_dir = {:?}\n[[patient]]\nid = \"p1\"\n[[device]]\nid = \"d1\"\npatient = \"p1\"\ndriver = \"sim\"\n",
            dir.display()
        );
        Config::parse(&text, Path::new("local.toml")).unwrap()
    }

    fn applied(key: &SigningKey, overlay: &str) -> Applied {
        let p = ConfigPayload {
            gateway: "gw-1".into(),
            version: 9,
            issued_at: datetime!(2026-12-01 12:00 UTC),
            expires_at: None,
            overlay: overlay.into(),
        };
        Applied {
            version: 9,
            sha256: "x".into(),
            key_id: key.key_id().into(),
            applied_at: datetime!(2026-12-01 12:00 UTC),
            document: p.sign(key),
        }
    }

    fn key(dir: &Path) -> SigningKey {
        SigningKey::load(&keys::generate(&dir.join("k")).unwrap().private_key).unwrap()
    }

    /// One master key per test process (the tests seal and open with it).
    fn master() -> MasterKey {
        static KEY: std::sync::OnceLock<MasterKey> = std::sync::OnceLock::new();
        KEY.get_or_init(|| MasterKey::ephemeral().unwrap())
            .duplicate()
    }

    #[test]
    fn stored_file_holds_no_nhs_number_in_clear_and_opens_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        let o = "[[patient]]\nid = \"p1\"\nnhs_number = \"9434765919\"\n";
        let a = applied(&k, o);
        save(dir.path(), &a, &master()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        // The JWS payload is base64url of JSON holding the overlay: look for both forms.
        assert!(
            !text.contains("9434765919") && !text.contains(&a.document),
            "{text}"
        );
        assert_eq!(load(dir.path(), &master()).unwrap().unwrap(), a);
        assert_eq!(load_meta(dir.path()).unwrap().unwrap().version, 9);
    }

    #[test]
    fn clear_file_of_an_earlier_version_is_read_and_sealed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        let a = applied(&k, OVERLAY);
        std::fs::write(
            dir.path().join(STATE_FILE),
            serde_json::to_vec(&serde_json::json!({"version": 9, "sha256": "x",
                "key_id": a.key_id, "applied_at": "2026-12-01T12:00:00Z", "document": a.document}))
            .unwrap(),
        )
        .unwrap();
        let s = at_start(local(dir.path()), &[k.public().clone()], &master()).unwrap();
        assert_eq!(s.config.store.retention_days, 30);
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(
            text.contains("\"sealed\"") && !text.contains(&a.document),
            "{text}"
        );
    }

    #[test]
    fn document_sealed_under_another_key_is_dropped_but_its_version_stays() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        save(
            dir.path(),
            &applied(&k, OVERLAY),
            &MasterKey::ephemeral().unwrap(),
        )
        .unwrap();
        let s = at_start(local(dir.path()), &[k.public().clone()], &master()).unwrap();
        assert_eq!(s.version(), 9);
        assert!(s.dropped.unwrap().contains("authentication"));
        assert_eq!(s.config.store.retention_days, 7);
    }

    const OVERLAY: &str = "[store]\nretention_days = 30\n";

    #[test]
    fn saved_document_is_in_force_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        save(dir.path(), &applied(&k, OVERLAY), &master()).unwrap();
        let s = at_start(local(dir.path()), &[k.public().clone()], &master()).unwrap();
        assert_eq!(s.config.store.retention_days, 30);
        assert_eq!(s.version(), 9);
        assert_eq!(s.dropped, None);
    }

    #[test]
    fn state_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        save(dir.path(), &applied(&k, OVERLAY), &master()).unwrap();
        let mode = std::fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn no_state_means_local_config_and_version_zero() {
        let dir = tempfile::tempdir().unwrap();
        let s = at_start(local(dir.path()), &[], &master()).unwrap();
        assert_eq!(s.version(), 0);
        assert_eq!(s.config, local(dir.path()));
    }

    #[test]
    fn overlay_signed_by_a_key_no_longer_trusted_is_dropped_but_its_version_stays() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        save(dir.path(), &applied(&k, OVERLAY), &master()).unwrap();
        let s = at_start(local(dir.path()), &[], &master()).unwrap();
        assert_eq!(s.config.store.retention_days, 7);
        assert_eq!(s.version(), 9, "the high-water mark must survive");
        assert!(s.dropped.unwrap().contains("not among"));
    }

    #[test]
    fn overlay_that_no_longer_fits_the_local_config_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        let o = "[[device]]\nid = \"d2\"\npatient = \"p1\"\ndriver = \"sim\"\n";
        save(dir.path(), &applied(&k, o), &master()).unwrap();
        let mut l = local(dir.path());
        l.patients[0].id = "p7".into();
        l.devices.clear();
        let s = at_start(l, &[k.public().clone()], &master()).unwrap();
        assert!(s.dropped.unwrap().contains("device[0].patient"));
        assert!(s.config.devices.is_empty());
    }

    #[test]
    fn corrupt_state_file_is_an_error_not_version_zero() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{\"version\":").unwrap();
        assert!(matches!(
            load(dir.path(), &master()),
            Err(StateError::Corrupt { .. })
        ));
    }

    /// `key rotate-master` stages the document under both keys before installing the new
    /// one: a crash before the install leaves the old key working, after it the new one, and
    /// the first start keeps only the seal of the key in force.
    #[test]
    fn document_staged_for_a_new_master_opens_under_either_key_until_a_start_settles_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = key(dir.path());
        let (old, new) = (
            MasterKey::ephemeral().unwrap(),
            MasterKey::ephemeral().unwrap(),
        );
        let a = applied(&key, OVERLAY);
        save(dir.path(), &a, &old).unwrap();
        assert!(stage_for_master(dir.path(), &old, &new).unwrap());
        assert_eq!(load(dir.path(), &old).unwrap().unwrap(), a);
        assert_eq!(load(dir.path(), &new).unwrap().unwrap(), a);

        let start = at_start(local(dir.path()), &[key.public().clone()], &new).unwrap();
        assert!(start.dropped.is_none(), "{:?}", start.dropped);
        assert_eq!(load(dir.path(), &new).unwrap().unwrap(), a);
        assert!(
            load(dir.path(), &old).is_err(),
            "the old key still opens the document after the rotation settled"
        );
    }

    #[test]
    fn staging_with_no_stored_document_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let new = MasterKey::ephemeral().unwrap();
        assert!(!stage_for_master(dir.path(), &master(), &new).unwrap());
        assert!(!dir.path().join(STATE_FILE).exists());
    }

    #[test]
    fn leftover_temporary_file_from_a_crash_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        save(dir.path(), &applied(&k, OVERLAY), &master()).unwrap();
        std::fs::write(dir.path().join(TMP_FILE), b"{\"half").unwrap();
        assert_eq!(load(dir.path(), &master()).unwrap().unwrap().version, 9);
    }
}
