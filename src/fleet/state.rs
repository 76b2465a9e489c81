//! The applied document, persisted: `fleet-applied.json` in the state directory.
//!
//! One file holds the signed document with its version, hash, key id and time of applying,
//! written to a temporary file, synced, renamed over the old one and the directory synced. A
//! crash (kill -9, power cut) at any point leaves the old file or the new one, never a mix, so
//! the effective config after a restart is the old or the new one. The version in it is the
//! high-water mark that refuses a replayed or older document across restarts.
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
use crate::config::Config;

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

/// Reads the applied document, if any.
pub fn load(state_dir: &Path) -> Result<Option<Applied>, StateError> {
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
            why: e.to_string(),
        })
}

/// Persists `applied` atomically (temporary file, fsync, rename, fsync of the directory).
pub fn save(state_dir: &Path, applied: &Applied) -> Result<(), StateError> {
    let tmp = state_dir.join(TMP_FILE);
    let path = state_dir.join(STATE_FILE);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StateError::Io { path: p, source }
    };
    let json = serde_json::to_vec_pretty(applied).map_err(|e| StateError::Io {
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

/// The effective config from `local` and the stored document.
pub fn at_start(local: Config, trusted: &[PublicKey]) -> Result<AtStart, StateError> {
    let applied = load(&local.gateway.state_dir)?;
    let Some(a) = applied else {
        return Ok(AtStart {
            config: local,
            applied: None,
            dropped: None,
        });
    };
    let effective = jws::verify(a.document.as_bytes(), TYPE_CONFIG, trusted)
        .map_err(|e| e.to_string())
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

    const OVERLAY: &str = "[store]\nretention_days = 30\n";

    #[test]
    fn saved_document_is_in_force_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        save(dir.path(), &applied(&k, OVERLAY)).unwrap();
        let s = at_start(local(dir.path()), &[k.public().clone()]).unwrap();
        assert_eq!(s.config.store.retention_days, 30);
        assert_eq!(s.version(), 9);
        assert_eq!(s.dropped, None);
    }

    #[test]
    fn state_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        save(dir.path(), &applied(&k, OVERLAY)).unwrap();
        let mode = std::fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn no_state_means_local_config_and_version_zero() {
        let dir = tempfile::tempdir().unwrap();
        let s = at_start(local(dir.path()), &[]).unwrap();
        assert_eq!(s.version(), 0);
        assert_eq!(s.config, local(dir.path()));
    }

    #[test]
    fn overlay_signed_by_a_key_no_longer_trusted_is_dropped_but_its_version_stays() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        save(dir.path(), &applied(&k, OVERLAY)).unwrap();
        let s = at_start(local(dir.path()), &[]).unwrap();
        assert_eq!(s.config.store.retention_days, 7);
        assert_eq!(s.version(), 9, "the high-water mark must survive");
        assert!(s.dropped.unwrap().contains("not among"));
    }

    #[test]
    fn overlay_that_no_longer_fits_the_local_config_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        let o = "[[device]]\nid = \"d2\"\npatient = \"p1\"\ndriver = \"sim\"\n";
        save(dir.path(), &applied(&k, o)).unwrap();
        let mut l = local(dir.path());
        l.patients[0].id = "p7".into();
        l.devices.clear();
        let s = at_start(l, &[k.public().clone()]).unwrap();
        assert!(s.dropped.unwrap().contains("device[0].patient"));
        assert!(s.config.devices.is_empty());
    }

    #[test]
    fn corrupt_state_file_is_an_error_not_version_zero() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{\"version\":").unwrap();
        assert!(matches!(load(dir.path()), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn leftover_temporary_file_from_a_crash_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        save(dir.path(), &applied(&k, OVERLAY)).unwrap();
        std::fs::write(dir.path().join(TMP_FILE), b"{\"half").unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().version, 9);
    }
}
