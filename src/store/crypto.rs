//! Keys and sealing for the outbox: the master key, HKDF-derived data keys, AES-256-GCM.
//!
//! - The 256-bit **master key** comes from the systemd credential `vitalgate.key` (in
//!   `$CREDENTIALS_DIRECTORY`) when present, else from a key file. It is never generated
//!   implicitly: a missing or wrong key stops the daemon with a message saying what to restore,
//!   because a silent new key over existing data would make every stored reading unreadable.
//! - **Data keys** are derived per key id with HKDF-SHA256, so keys can rotate (a new key id)
//!   without a new master key, well before the ~2^32 random-nonce limit of one AES-GCM key.
//! - Every record is sealed with a fresh random 96-bit nonce and the row's identity (row id,
//!   record kind, key id, format version) as associated data, so a ciphertext copied into
//!   another row fails authentication.
//!
//! Nothing here ever formats key bytes: [`MasterKey`]'s `Debug` is redacted.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

/// Name of the systemd credential holding the master key (`LoadCredential=vitalgate.key:...`).
pub const CREDENTIAL_NAME: &str = "vitalgate.key";

/// Version of the sealing format; bound into the associated data.
const FORMAT_VERSION: u8 = 1;

/// Salt for the HKDF extract step: fixed, public, and specific to this use.
const HKDF_SALT: &[u8] = b"vitalgate/outbox/v1";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no master key: neither the systemd credential {CREDENTIAL_NAME} (in $CREDENTIALS_DIRECTORY) nor the key file {path} exists; create one with `vitalgate keygen --out {path}` (first install only: never over existing data)")]
    Missing { path: PathBuf },
    #[error("{path}: cannot read the master key: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: master key must be 32 raw bytes or 64 hex digits, found {found}")]
    BadFormat { path: PathBuf, found: String },
    #[error("{path}: master key file is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    BadPermissions { path: PathBuf, mode: u32 },
    #[error("{path} already exists; refusing to overwrite a master key (data sealed with it would be lost)")]
    Exists { path: PathBuf },
    #[error("{path}: cannot write the master key: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the system random number generator failed")]
    Random,
    #[error("data key derivation failed")]
    Derive,
}

/// Where the master key came from (reported in `status`, never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum KeySource {
    Credential(PathBuf),
    File(PathBuf),
    /// Generated in memory for `vitalgate demo` (its data is thrown away).
    Ephemeral,
}

/// The 256-bit master key. Its `Debug` is redacted and its bytes are wiped on drop.
pub struct MasterKey {
    bytes: [u8; 32],
    source: KeySource,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(<redacted>, from {:?})", self.source)
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        // Best effort: overwrite before the memory is released.
        self.bytes.iter_mut().for_each(|b| *b = 0);
    }
}

impl MasterKey {
    /// A random key held only in memory (demo and tests).
    pub fn ephemeral() -> Result<Self, KeyError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        Ok(MasterKey {
            bytes,
            source: KeySource::Ephemeral,
        })
    }

    /// A second handle on the same key (the pipeline is restarted on a config reload).
    pub fn duplicate(&self) -> MasterKey {
        MasterKey {
            bytes: self.bytes,
            source: self.source.clone(),
        }
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Loads the key: the systemd credential when `$CREDENTIALS_DIRECTORY` holds one, else `key_file`.
    pub fn load(key_file: &Path) -> Result<Self, KeyError> {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let cred = Path::new(&dir).join(CREDENTIAL_NAME);
            if cred.exists() {
                // systemd owns the credential's permissions; no mode check here.
                let bytes = read_key_bytes(&cred)?;
                return Ok(MasterKey {
                    bytes,
                    source: KeySource::Credential(cred),
                });
            }
        }
        let meta = match fs::metadata(key_file) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyError::Missing {
                    path: key_file.to_path_buf(),
                })
            }
            Err(source) => {
                return Err(KeyError::Unreadable {
                    path: key_file.to_path_buf(),
                    source,
                })
            }
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::BadPermissions {
                path: key_file.to_path_buf(),
                mode,
            });
        }
        let bytes = read_key_bytes(key_file)?;
        Ok(MasterKey {
            bytes,
            source: KeySource::File(key_file.to_path_buf()),
        })
    }

    /// Creates a new key file (hex, mode 0600). Refuses to overwrite an existing file.
    pub fn generate_file(path: &Path) -> Result<(), KeyError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        let text = format!("{}\n", hex::encode(bytes));
        bytes.iter_mut().for_each(|b| *b = 0);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyError::Exists {
                        path: path.to_path_buf(),
                    }
                } else {
                    KeyError::Write {
                        path: path.to_path_buf(),
                        source,
                    }
                }
            })?;
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|source| KeyError::Write {
                path: path.to_path_buf(),
                source,
            })
    }
}

fn read_key_bytes(path: &Path) -> Result<[u8; 32], KeyError> {
    let raw = fs::read(path).map_err(|source| KeyError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    if raw.len() == 32 {
        let mut out = [0u8; 32];
        out.copy_from_slice(&raw);
        return Ok(out);
    }
    let text = String::from_utf8_lossy(&raw);
    let trimmed = text.trim();
    let mut out = [0u8; 32];
    match hex::decode_to_slice(trimmed, &mut out) {
        Ok(()) => Ok(out),
        // Say what was found without echoing the content.
        Err(_) => Err(KeyError::BadFormat {
            path: path.to_path_buf(),
            found: format!("{} bytes", raw.len()),
        }),
    }
}

/// Authentication failed: the record was tampered with, corrupted, moved, or sealed with
/// another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("record failed authentication (tampered, corrupted, moved to another row, or sealed with another key)")]
pub struct Unauthentic;

/// The identity of a sealed record, bound in as associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordIdentity {
    pub row_id: i64,
    pub kind: u8,
    pub key_id: u32,
}

impl RecordIdentity {
    fn aad(&self) -> [u8; 14] {
        let mut a = [0u8; 14];
        a[0] = FORMAT_VERSION;
        a[1..9].copy_from_slice(&self.row_id.to_be_bytes());
        a[9] = self.kind;
        a[10..14].copy_from_slice(&self.key_id.to_be_bytes());
        a
    }
}

/// Data keys derived from the master key, by key id.
pub struct Keyring {
    prk: hkdf::Prk,
    keys: HashMap<u32, LessSafeKey>,
    rng: SystemRandom,
    /// Random bytes fetched from the OS in bulk; each nonce takes 12 fresh bytes that are
    /// never reused. One `getrandom` call per 4 KiB instead of one per record.
    nonce_pool: Vec<u8>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring(<redacted>, {} data keys)", self.keys.len())
    }
}

impl Keyring {
    pub fn new(master: &MasterKey) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&master.bytes);
        Keyring {
            prk,
            keys: HashMap::new(),
            rng: SystemRandom::new(),
            nonce_pool: Vec::new(),
        }
    }

    fn key(&mut self, key_id: u32) -> Result<&LessSafeKey, KeyError> {
        if !self.keys.contains_key(&key_id) {
            let id = key_id.to_be_bytes();
            let info: [&[u8]; 2] = [b"outbox data key", &id];
            // `expand` fails only for output lengths HKDF cannot produce; 32 bytes is fine.
            let okm = self
                .prk
                .expand(&info, &aead::AES_256_GCM)
                .map_err(|_| KeyError::Derive)?;
            self.keys
                .insert(key_id, LessSafeKey::new(UnboundKey::from(okm)));
        }
        self.keys.get(&key_id).ok_or(KeyError::Derive)
    }

    /// Seals `plaintext` for the row `id`. Returns the fresh nonce and ciphertext (with tag).
    pub fn seal(
        &mut self,
        id: RecordIdentity,
        mut plaintext: Vec<u8>,
    ) -> Result<([u8; NONCE_LEN], Vec<u8>), KeyError> {
        if self.nonce_pool.len() < NONCE_LEN {
            let mut fresh = vec![0u8; NONCE_LEN * 341];
            self.rng.fill(&mut fresh).map_err(|_| KeyError::Random)?;
            self.nonce_pool = fresh;
        }
        let mut nonce = [0u8; NONCE_LEN];
        let at = self.nonce_pool.len() - NONCE_LEN;
        nonce.copy_from_slice(&self.nonce_pool[at..]);
        self.nonce_pool.truncate(at);
        let aad = id.aad();
        self.key(id.key_id)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut plaintext,
            )
            .map_err(|_| KeyError::Random)?;
        Ok((nonce, plaintext))
    }

    /// Opens a sealed record, checking it belongs to row `id`.
    pub fn open(
        &mut self,
        id: RecordIdentity,
        nonce: &[u8],
        mut ciphertext: Vec<u8>,
    ) -> Result<Vec<u8>, Unauthentic> {
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| Unauthentic)?;
        let aad = id.aad();
        let len = self
            .key(id.key_id)
            .map_err(|_| Unauthentic)?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut ciphertext,
            )
            .map_err(|_| Unauthentic)?
            .len();
        ciphertext.truncate(len);
        Ok(ciphertext)
    }
}

/// Salt for the audit log's key derivation: its own, so no outbox data key can equal it.
const AUDIT_HKDF_SALT: &[u8] = b"vitalgate/audit/v1";

impl MasterKey {
    /// The audit log's HMAC-SHA256 key: HKDF-SHA256 of the master key with the audit salt and
    /// `label` as info. Only the derived key leaves this module; it cannot yield the master key.
    pub fn audit_mac_key(&self, label: &[u8]) -> Result<ring::hmac::Key, KeyError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, AUDIT_HKDF_SALT).extract(&self.bytes[..]);
        let info = [label];
        // `expand` fails only for lengths HKDF cannot produce; an HMAC-SHA256 key is 32 bytes.
        prk.expand(&info, ring::hmac::HMAC_SHA256)
            .map(ring::hmac::Key::from)
            .map_err(|_| KeyError::Derive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::new(&MasterKey::ephemeral().unwrap())
    }

    fn id(row_id: i64) -> RecordIdentity {
        RecordIdentity {
            row_id,
            kind: 1,
            key_id: 1,
        }
    }

    #[test]
    fn seal_then_open_round_trips() {
        let mut k = ring();
        let (n, c) = k.seal(id(7), b"hello".to_vec()).unwrap();
        assert_eq!(k.open(id(7), &n, c).unwrap(), b"hello");
    }

    #[test]
    fn ciphertext_moved_to_another_row_fails() {
        let mut k = ring();
        let (n, c) = k.seal(id(7), b"hello".to_vec()).unwrap();
        assert_eq!(k.open(id(8), &n, c), Err(Unauthentic));
    }

    #[test]
    fn nonces_are_fresh_per_record() {
        let mut k = ring();
        let (n1, _) = k.seal(id(1), b"x".to_vec()).unwrap();
        let (n2, _) = k.seal(id(1), b"x".to_vec()).unwrap();
        assert_ne!(n1, n2);
    }

    #[test]
    fn different_key_ids_give_different_keys() {
        let mut k = ring();
        let (n, c) = k.seal(id(1), b"x".to_vec()).unwrap();
        let other = RecordIdentity { key_id: 2, ..id(1) };
        assert_eq!(k.open(other, &n, c), Err(Unauthentic));
    }

    #[test]
    fn master_key_debug_is_redacted() {
        let k = MasterKey::ephemeral().unwrap();
        let s = format!("{k:?}");
        assert!(s.contains("redacted"));
        assert!(!s.contains(&hex::encode(k.bytes)));
    }

    #[test]
    fn keygen_creates_0600_file_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        MasterKey::generate_file(&p).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            MasterKey::generate_file(&p),
            Err(KeyError::Exists { .. })
        ));
        assert!(MasterKey::load(&p).is_ok());
    }

    #[test]
    fn key_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        MasterKey::generate_file(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = MasterKey::load(&p).unwrap_err();
        assert!(matches!(e, KeyError::BadPermissions { .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"));
    }

    #[test]
    fn missing_key_file_says_how_to_create_one() {
        let e = MasterKey::load(Path::new("/nonexistent/vg.key")).unwrap_err();
        assert!(e.to_string().contains("vitalgate keygen"), "{e}");
    }

    #[test]
    fn malformed_key_file_is_refused_without_echoing_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)
            .unwrap()
            .write_all(b"secret-not-hex")
            .unwrap();
        let e = MasterKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("64 hex digits") && !e.contains("secret"), "{e}");
    }
}
