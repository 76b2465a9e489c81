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
//! - Sealed device state (the alert engine's per-patient state, file offsets, RACP cursors)
//!   uses the same data keys with its own identity ([`StateIdentity`]: owner, key, key id) as
//!   associated data, so one patient's state cannot be moved under another's name.
//!
//! Nothing here ever formats key bytes: [`MasterKey`]'s `Debug` is redacted. Key bytes, their
//! copies and the buffers they pass through are wiped with `zeroize` (volatile writes the
//! compiler may not drop). `ring`'s own key schedules (`hkdf::Prk`, `LessSafeKey`) are opaque
//! and are not wiped by ring on drop; they live as long as the outbox connection.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, Zeroizing};

/// Name of the systemd credential holding the master key (`LoadCredential=vitalgate.key:...`).
pub const CREDENTIAL_NAME: &str = "vitalgate.key";

/// Version of the sealing format; bound into the associated data.
const FORMAT_VERSION: u8 = 1;

/// Salt for the HKDF extract step: fixed, public, and specific to this use.
const HKDF_SALT: &[u8] = b"vitalgate/outbox/v1";

/// Salt of the key-encryption key that wraps the keyring (`store::keyring`).
const KEK_HKDF_SALT: &[u8] = b"vitalgate/keyring/v1";

/// HKDF output of 32 bytes (a data key or an HMAC-SHA256 key) to be copied out.
struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// 32 fresh random bytes: a new data key.
pub(crate) fn random_key() -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let mut k = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(&mut k[..])
        .map_err(|_| KeyError::Random)?;
    Ok(k)
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no master key: neither the systemd credential {CREDENTIAL_NAME} (in $CREDENTIALS_DIRECTORY) nor the key file {path} exists; create one with `vitalgate keygen --out {path}` (first install only: never over existing data)")]
    Missing { path: PathBuf },
    #[error("{path}: cannot read the master key: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    File(crate::secure_file::FileError),
    #[error("{path}: master key must be 64 hex digits or 32 raw bytes, found {found}")]
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
    /// A row buffer without room for its nonce in front, or too long for AES-GCM.
    #[error("a record could not be sealed: its buffer is not a row's (no room for the nonce, or too long)")]
    Seal,
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
    bytes: Zeroizing<[u8; 32]>,
    source: KeySource,
    /// The audit log's MAC key, when the outbox's keyring holds it (see
    /// [`crate::store::keyring::attach_audit_key`]): it outlives a master key rotation, so
    /// the entries written before it still verify.
    audit_key: Option<Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(<redacted>, from {:?})", self.source)
    }
}

impl MasterKey {
    /// A random key held only in memory (demo and tests).
    pub fn ephemeral() -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut bytes[..])
            .map_err(|_| KeyError::Random)?;
        Ok(MasterKey {
            bytes,
            source: KeySource::Ephemeral,
            audit_key: None,
        })
    }

    /// A second handle on the same key (the pipeline is restarted on a config reload).
    pub fn duplicate(&self) -> MasterKey {
        MasterKey {
            bytes: self.bytes.clone(),
            source: self.source.clone(),
            audit_key: self.audit_key.clone(),
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
                let bytes = read_key_bytes(&cred, &crate::secure_file::MASTER_KEY_CREDENTIAL)?;
                return Ok(MasterKey {
                    bytes,
                    source: KeySource::Credential(cred),
                    audit_key: None,
                });
            }
        }
        MasterKey::from_file(key_file)
    }

    /// Loads the key in `key_file` only, whatever `$CREDENTIALS_DIRECTORY` holds (the new
    /// key of `vitalgate key rotate-master --new-key FILE`). Same checks as [`MasterKey::load`].
    pub fn from_file(key_file: &Path) -> Result<Self, KeyError> {
        let bytes = read_key_bytes(key_file, &crate::secure_file::MASTER_KEY)?;
        Ok(MasterKey {
            bytes,
            source: KeySource::File(key_file.to_path_buf()),
            audit_key: None,
        })
    }

    /// Whether `other` holds the same key bytes (compared in constant time).
    pub fn same_key_as(&self, other: &MasterKey) -> bool {
        let diff = self
            .bytes
            .iter()
            .zip(other.bytes.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        diff == 0
    }

    /// The key-encryption key that wraps the keyring's data keys: HKDF-SHA256 of the master
    /// key with its own salt, so it never equals an outbox or audit key.
    pub(crate) fn key_encryption_key(&self) -> Result<LessSafeKey, KeyError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, KEK_HKDF_SALT).extract(&self.bytes[..]);
        let info: [&[u8]; 1] = [b"keyring wrap key"];
        let okm = prk
            .expand(&info, &aead::AES_256_GCM)
            .map_err(|_| KeyError::Derive)?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    }

    /// The audit MAC key's bytes as [`MasterKey::audit_mac_key`] derives them from this
    /// master (to be kept, wrapped, in the keyring).
    pub(crate) fn derived_audit_key_bytes(
        &self,
        label: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, AUDIT_HKDF_SALT).extract(&self.bytes[..]);
        let info = [label];
        let mut out = Zeroizing::new([0u8; 32]);
        prk.expand(&info, Len32)
            .and_then(|okm| okm.fill(&mut out[..]))
            .map_err(|_| KeyError::Derive)?;
        Ok(out)
    }

    /// This master with the audit MAC key the keyring keeps (see `audit_key`).
    pub(crate) fn with_audit_key(mut self, key: Zeroizing<[u8; 32]>) -> MasterKey {
        self.audit_key = Some(key);
        self
    }

    /// Creates a new key file (hex, mode 0600). Refuses to overwrite an existing file.
    pub fn generate_file(path: &Path) -> Result<(), KeyError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut bytes[..])
            .map_err(|_| KeyError::Random)?;
        // Hex and newline in a fixed buffer: no growing String leaves a copy behind.
        let mut text = Zeroizing::new([0u8; 65]);
        hex::encode_to_slice(&bytes[..], &mut text[..64]).map_err(|_| KeyError::Random)?;
        text[64] = b'\n';
        drop(bytes);
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
        file.write_all(&text[..])
            .and_then(|_| file.sync_all())
            .map_err(|source| KeyError::Write {
                path: path.to_path_buf(),
                source,
            })
    }
}

/// Reads and parses a master key file: 64 hex digits (what `keygen` writes, surrounding
/// whitespace allowed), or exactly 32 raw bytes that are not hex text.
///
/// The file is read by [`crate::secure_file::read`]: a FIFO, device or directory is refused
/// without blocking, anything over 4 KiB is refused, and a key file open to group or others
/// is refused. Text made only of hex digits is always taken as hex: a hex key cut short to
/// 32 characters is refused as truncated, never used as a raw key. No message quotes the
/// content, and the buffer it was read into is wiped.
fn read_key_bytes(
    path: &Path,
    kind: &crate::secure_file::FileKind,
) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    use crate::secure_file::FileError;
    let raw = crate::secure_file::read(path, kind).map_err(|e| match e {
        FileError::Missing { path, .. } => KeyError::Missing { path },
        FileError::Exposed { path, mode, .. } => KeyError::BadPermissions { path, mode },
        other => KeyError::File(other),
    })?;
    let is_text = raw
        .iter()
        .all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace());
    let mut out = Zeroizing::new([0u8; 32]);
    if !is_text {
        if raw.len() == 32 {
            out.copy_from_slice(&raw);
            return Ok(out);
        }
        return Err(KeyError::BadFormat {
            path: path.to_path_buf(),
            found: format!(
                "{} bytes that are neither hex text nor a 32-byte raw key",
                raw.len()
            ),
        });
    }
    let digits: Zeroizing<Vec<u8>> = Zeroizing::new(
        raw.iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect(),
    );
    let inner_space = raw.trim_ascii().iter().any(|b| b.is_ascii_whitespace());
    if digits.len() == 64 && !inner_space && hex::decode_to_slice(&*digits, &mut out[..]).is_ok() {
        return Ok(out);
    }
    // Say what was found without echoing the content.
    Err(KeyError::BadFormat {
        path: path.to_path_buf(),
        found: if digits.len() < 64 {
            format!("{} hex digits (truncated? a hex key has 64)", digits.len())
        } else {
            format!("{} hex digits", digits.len())
        },
    })
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

/// The identity of a sealed device-state value (`owner`, `key`, data key id), bound in as
/// associated data: a value copied under another owner or key fails authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateIdentity<'a> {
    pub owner: &'a str,
    pub key: &'a str,
    pub key_id: u32,
}

/// First byte of a state identity's associated data; never a record's `FORMAT_VERSION`, so
/// a record's AAD and a state's can never be equal.
const STATE_AAD_TAG: u8 = 0x80 | FORMAT_VERSION;

impl StateIdentity<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut a = Vec::with_capacity(9 + self.owner.len() + self.key.len());
        a.push(STATE_AAD_TAG);
        a.extend_from_slice(&self.key_id.to_be_bytes());
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        a.extend_from_slice(&(self.owner.len() as u32).to_be_bytes());
        a.extend_from_slice(self.owner.as_bytes());
        a.extend_from_slice(self.key.as_bytes());
        a
    }
}

/// Data keys derived from the master key, by key id.
pub struct Keyring {
    prk: hkdf::Prk,
    keys: HashMap<u32, LessSafeKey, BuildHasherDefault<KeyIdHasher>>,
    /// Whether a key id not installed is derived from the master (schema 3 and before).
    /// Off once the envelope keyring holds every data key: a destroyed key is never
    /// re-created by derivation.
    derive_missing: bool,
    rng: SystemRandom,
    /// Random bytes fetched from the OS in bulk; each nonce takes 12 fresh bytes that are
    /// never reused. One `getrandom` call per 4 KiB instead of one per record.
    nonce_pool: Vec<u8>,
}

/// The AES-256-GCM tag's length, after a row's ciphertext.
pub const TAG_LEN: usize = 16;

/// The nonce's length (96 bits), in front of a row's ciphertext since schema 7.
pub use ring::aead::NONCE_LEN;

/// What a row's `nonce` column holds when its nonce leads its ciphertext (schema 7, the
/// form the ingest writer stores; [`Keyring::seal_row`]): nothing. A real nonce is
/// always [`NONCE_LEN`] bytes.
pub const INLINE_NONCE: &[u8] = &[];

/// Hashes a data key id for [`Keyring`]'s map: one multiplication. The writer looks a key up
/// for every row it seals, and the default SipHash cost about a tenth of sealing a reading
/// (issue 18, acceptance 4). Key ids are the outbox's own, never an attacker's choice, so
/// there is no flooding to resist.
#[derive(Default)]
struct KeyIdHasher(u64);

impl Hasher for KeyIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.write_u64(u64::from(id));
    }

    fn write_u64(&mut self, v: u64) {
        // Multiplicative (Fibonacci) hashing: the map takes its bucket from the low bits,
        // distinct for ids handed out in sequence, and its tag from the high bits, which
        // every bit of the id moves.
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring(<redacted>, {} data keys)", self.keys.len())
    }
}

impl Keyring {
    pub fn new(master: &MasterKey) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&master.bytes[..]);
        Keyring {
            prk,
            keys: HashMap::default(),
            derive_missing: true,
            rng: SystemRandom::new(),
            nonce_pool: Vec::new(),
        }
    }

    fn derive(&self, key_id: u32) -> Result<LessSafeKey, KeyError> {
        derive_data_key(&self.prk, key_id)
    }

    /// The bytes of the schema 3 data key `key_id` (HKDF of the master), to be wrapped into
    /// the envelope keyring when an older outbox is migrated.
    pub(crate) fn legacy_key_bytes(&self, key_id: u32) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        let id = key_id.to_be_bytes();
        let info: [&[u8]; 2] = [b"outbox data key", &id];
        let mut out = Zeroizing::new([0u8; 32]);
        self.prk
            .expand(&info, Len32)
            .and_then(|okm| okm.fill(&mut out[..]))
            .map_err(|_| KeyError::Derive)?;
        Ok(out)
    }

    /// Makes `key` (unwrapped from the keyring) the data key of `key_id`.
    pub(crate) fn install(&mut self, key_id: u32, key: &[u8; 32]) -> Result<(), KeyError> {
        let unbound = UnboundKey::new(&aead::AES_256_GCM, key).map_err(|_| KeyError::Derive)?;
        self.keys.insert(key_id, LessSafeKey::new(unbound));
        Ok(())
    }

    /// Drops the data key `key_id` (destroyed in the keyring).
    pub(crate) fn forget(&mut self, key_id: u32) {
        self.keys.remove(&key_id);
    }

    /// The ids of the installed keys.
    pub(crate) fn ids(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    pub(crate) fn has(&self, key_id: u32) -> bool {
        self.keys.contains_key(&key_id)
    }

    /// From now on only installed keys exist (see `derive_missing`).
    pub(crate) fn stop_deriving(&mut self) {
        self.derive_missing = false;
    }

    /// The data key `key_id`: one hash of the id when installed (the writer asks once per
    /// row), derived first where the schema allows it.
    fn key(&mut self, key_id: u32) -> Result<&LessSafeKey, KeyError> {
        match self.keys.entry(key_id) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(_) if !self.derive_missing => Err(KeyError::Derive),
            Entry::Vacant(e) => Ok(e.insert(derive_data_key(&self.prk, key_id)?)),
        }
    }

    fn next_nonce(&mut self) -> Result<[u8; NONCE_LEN], KeyError> {
        if self.nonce_pool.len() < NONCE_LEN {
            let mut fresh = vec![0u8; NONCE_LEN * 341];
            self.rng.fill(&mut fresh).map_err(|_| KeyError::Random)?;
            self.nonce_pool = fresh;
        }
        let mut nonce = [0u8; NONCE_LEN];
        let at = self.nonce_pool.len() - NONCE_LEN;
        nonce.copy_from_slice(&self.nonce_pool[at..]);
        self.nonce_pool.truncate(at);
        Ok(nonce)
    }

    fn seal_with(
        &mut self,
        key_id: u32,
        aad: &[u8],
        mut plaintext: Vec<u8>,
    ) -> Result<([u8; NONCE_LEN], Vec<u8>), KeyError> {
        let nonce = self.seal_buffer(key_id, aad, &mut plaintext)?;
        Ok((nonce, plaintext))
    }

    /// Encrypts `buffer` in place and appends the tag; returns the fresh nonce.
    fn seal_buffer(
        &mut self,
        key_id: u32,
        aad: &[u8],
        buffer: &mut Vec<u8>,
    ) -> Result<[u8; NONCE_LEN], KeyError> {
        let nonce = self.next_nonce()?;
        self.key(key_id)?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buffer)
            .map_err(|_| KeyError::Random)?;
        Ok(nonce)
    }

    /// Seals a row in the form the writer stores since schema 7 ([`INLINE_NONCE`]): `row`
    /// holds [`NONCE_LEN`] bytes of room, the plaintext, and [`TAG_LEN`] bytes of room, and
    /// is left holding the fresh nonce, the ciphertext and the tag, one value for one column.
    /// The ingest writer seals every row of a batch in one buffer this way; a row's nonce in
    /// a column of its own cost a second blob bound per row (issue 18, acceptance 4).
    pub fn seal_row(&mut self, id: RecordIdentity, row: &mut [u8]) -> Result<(), KeyError> {
        let Some(plaintext_len) = row.len().checked_sub(NONCE_LEN + TAG_LEN) else {
            return Err(KeyError::Seal);
        };
        let nonce = self.next_nonce()?;
        let (nonce_room, rest) = row.split_at_mut(NONCE_LEN);
        let (plaintext, tag_room) = rest.split_at_mut(plaintext_len);
        let tag = self
            .key(id.key_id)?
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id.aad()),
                plaintext,
            )
            .map_err(|_| KeyError::Seal)?;
        nonce_room.copy_from_slice(&nonce);
        tag_room.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Seals `plaintext` for the row `id`. Returns the fresh nonce and ciphertext (with tag).
    pub fn seal(
        &mut self,
        id: RecordIdentity,
        plaintext: Vec<u8>,
    ) -> Result<([u8; NONCE_LEN], Vec<u8>), KeyError> {
        self.seal_with(id.key_id, &id.aad(), plaintext)
    }

    /// Seals a device-state value. The copy it takes is encrypted in place, so no second
    /// plaintext copy is left behind.
    pub fn seal_state(
        &mut self,
        id: StateIdentity<'_>,
        plaintext: &[u8],
    ) -> Result<([u8; NONCE_LEN], Vec<u8>), KeyError> {
        self.seal_with(id.key_id, &id.aad(), plaintext.to_vec())
    }

    /// Opens a sealed record, checking it belongs to row `id`. Takes both stored forms: a
    /// row's `nonce` column holding its nonce (every row written before schema 7, and
    /// re-sealed legacy rows), or empty, the nonce then leading `ciphertext`
    /// ([`INLINE_NONCE`], [`Keyring::seal_row`]). No nonce is ever empty, so the two
    /// cannot be confused; an emptied nonce column makes a row fail authentication, as any
    /// other change does.
    pub fn open(
        &mut self,
        id: RecordIdentity,
        nonce: &[u8],
        mut ciphertext: Vec<u8>,
    ) -> Result<Vec<u8>, Unauthentic> {
        let key = self.key(id.key_id).map_err(|_| Unauthentic)?;
        let (nonce, from) = if nonce.is_empty() {
            let inline = ciphertext.get(..NONCE_LEN).ok_or(Unauthentic)?;
            (nonce_of(inline)?, NONCE_LEN)
        } else {
            (nonce_of(nonce)?, 0)
        };
        open_within(key, &id.aad(), nonce, &mut ciphertext, from)?;
        Ok(ciphertext)
    }

    /// Opens a sealed device-state value, checking it belongs to `id`. Takes `&self` (the
    /// data key is derived afresh when not cached): state is read at start-up only.
    pub fn open_state(
        &self,
        id: StateIdentity<'_>,
        nonce: &[u8],
        mut ciphertext: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, Unauthentic> {
        let derived;
        let key = match self.keys.get(&id.key_id) {
            Some(k) => k,
            None if !self.derive_missing => return Err(Unauthentic),
            None => {
                derived = self.derive(id.key_id).map_err(|_| Unauthentic)?;
                &derived
            }
        };
        let opened =
            nonce_of(nonce).and_then(|n| open_within(key, &id.aad(), n, &mut ciphertext, 0));
        match opened {
            Ok(()) => Ok(Zeroizing::new(ciphertext)),
            Err(e) => {
                ciphertext.zeroize();
                Err(e)
            }
        }
    }
}

/// The schema 3 data key `key_id`: HKDF of the master's `prk`.
fn derive_data_key(prk: &hkdf::Prk, key_id: u32) -> Result<LessSafeKey, KeyError> {
    let id = key_id.to_be_bytes();
    let info: [&[u8]; 2] = [b"outbox data key", &id];
    // `expand` fails only for output lengths HKDF cannot produce; 32 bytes is fine.
    let okm = prk
        .expand(&info, &aead::AES_256_GCM)
        .map_err(|_| KeyError::Derive)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// A stored nonce, which is exactly [`NONCE_LEN`] bytes or a tampered row.
fn nonce_of(bytes: &[u8]) -> Result<[u8; NONCE_LEN], Unauthentic> {
    bytes.try_into().map_err(|_| Unauthentic)
}

/// Opens the sealed bytes `buffer[from..]` in place and leaves `buffer` holding just the
/// plaintext (what lies before `from`, an inline nonce, is dropped with the tag).
fn open_within(
    key: &LessSafeKey,
    aad: &[u8],
    nonce: [u8; NONCE_LEN],
    buffer: &mut Vec<u8>,
    from: usize,
) -> Result<(), Unauthentic> {
    let len = key
        .open_within(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            buffer,
            from..,
        )
        .map_err(|_| Unauthentic)?
        .len();
    buffer.truncate(len);
    Ok(())
}

/// Salt for the audit log's key derivation: its own, so no outbox data key can equal it.
const AUDIT_HKDF_SALT: &[u8] = b"vitalgate/audit/v1";

impl MasterKey {
    /// The audit log's HMAC-SHA256 key: HKDF-SHA256 of the master key with the audit salt and
    /// `label` as info. Only the derived key leaves this module; it cannot yield the master key.
    pub fn audit_mac_key(&self, label: &[u8]) -> Result<ring::hmac::Key, KeyError> {
        if let Some(kept) = &self.audit_key {
            return Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &kept[..]));
        }
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
    use std::os::unix::fs::PermissionsExt;

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

    /// A row as the writer stores it since schema 7: room for the nonce, the plaintext,
    /// room for the tag, sealed in place.
    fn inline(k: &mut Keyring, row: RecordIdentity, plaintext: &[u8]) -> Vec<u8> {
        let mut buffer = vec![0u8; NONCE_LEN];
        buffer.extend_from_slice(plaintext);
        buffer.extend_from_slice(&[0u8; TAG_LEN]);
        k.seal_row(row, &mut buffer).unwrap();
        buffer
    }

    #[test]
    fn a_row_sealed_with_its_nonce_inline_opens_with_an_empty_nonce_column() {
        let mut k = ring();
        let sealed = inline(&mut k, id(7), b"hello");
        assert_eq!(sealed.len(), NONCE_LEN + 5 + 16);
        assert_eq!(
            k.open(id(7), INLINE_NONCE, sealed.clone()).unwrap(),
            b"hello"
        );
        // The same bytes as a nonce column and a ciphertext: the forms agree.
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        assert_eq!(k.open(id(7), nonce, ciphertext.to_vec()).unwrap(), b"hello");
        assert_eq!(k.open(id(8), INLINE_NONCE, sealed), Err(Unauthentic));
    }

    #[test]
    fn inline_nonces_are_fresh_per_row() {
        let mut k = ring();
        let a = inline(&mut k, id(1), b"x");
        let b = inline(&mut k, id(1), b"x");
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
    }

    #[test]
    fn an_inline_row_altered_or_cut_short_fails_authentication_without_panicking() {
        let mut k = ring();
        let sealed = inline(&mut k, id(3), b"reading");
        for at in [0, NONCE_LEN - 1, NONCE_LEN, sealed.len() - 1] {
            let mut altered = sealed.clone();
            altered[at] ^= 0x80;
            assert_eq!(
                k.open(id(3), INLINE_NONCE, altered),
                Err(Unauthentic),
                "{at}"
            );
        }
        for end in 0..sealed.len() {
            let cut = sealed[..end].to_vec();
            assert_eq!(k.open(id(3), INLINE_NONCE, cut), Err(Unauthentic), "{end}");
        }
    }

    #[test]
    fn a_row_without_room_for_its_nonce_and_tag_is_refused() {
        let mut k = ring();
        let mut short = vec![0u8; NONCE_LEN + TAG_LEN - 1];
        assert!(matches!(k.seal_row(id(1), &mut short), Err(KeyError::Seal)));
        assert_eq!(short, vec![0u8; NONCE_LEN + TAG_LEN - 1], "left as it was");
        let mut empty_plaintext = vec![0u8; NONCE_LEN + TAG_LEN];
        k.seal_row(id(1), &mut empty_plaintext).unwrap();
        assert_eq!(k.open(id(1), INLINE_NONCE, empty_plaintext).unwrap(), b"");
    }

    #[test]
    fn each_of_many_installed_keys_seals_under_itself_alone() {
        let mut k = ring();
        k.stop_deriving();
        // Ids in sequence and far apart, as a keyring's rotations and erasures leave them.
        let ids: Vec<u32> = (1..=300).chain([1 << 16, 1 << 31, u32::MAX]).collect();
        for &key_id in &ids {
            k.install(key_id, &[(key_id % 251) as u8 ^ (key_id >> 24) as u8; 32])
                .unwrap();
        }
        for &key_id in &ids {
            let own = RecordIdentity { key_id, ..id(9) };
            let (n, c) = k.seal(own, b"x".to_vec()).unwrap();
            assert_eq!(k.open(own, &n, c.clone()).unwrap(), b"x", "key {key_id}");
            let neighbour = RecordIdentity {
                key_id: key_id.wrapping_add(1),
                ..own
            };
            assert_eq!(k.open(neighbour, &n, c), Err(Unauthentic), "key {key_id}");
        }
        k.forget(7);
        assert!(k
            .seal(RecordIdentity { key_id: 7, ..id(9) }, b"x".to_vec())
            .is_err());
        assert!(k.has(8) && !k.has(7) && !k.has(301));
    }

    fn state(owner: &str, key: &str) -> StateIdentity<'static> {
        StateIdentity {
            owner: Box::leak(owner.to_string().into_boxed_str()),
            key: Box::leak(key.to_string().into_boxed_str()),
            key_id: 1,
        }
    }

    #[test]
    fn sealed_state_opens_only_under_its_own_owner_and_key() {
        let mut k = ring();
        let (n, c) = k
            .seal_state(state("patient:p1", "alerts_state"), b"{\"spo2\":87}")
            .unwrap();
        assert_eq!(
            &k.open_state(state("patient:p1", "alerts_state"), &n, c.clone())
                .unwrap()[..],
            b"{\"spo2\":87}"
        );
        for other in [
            state("patient:p2", "alerts_state"),
            state("patient:p1", "other"),
            state("patient:p1a", "lerts_state"),
        ] {
            assert_eq!(k.open_state(other, &n, c.clone()), Err(Unauthentic));
        }
    }

    #[test]
    fn a_sealed_state_never_opens_as_a_record_nor_a_record_as_state() {
        let mut k = ring();
        let (n, c) = k.seal_state(state("o", "k"), b"x").unwrap();
        assert_eq!(k.open(id(1), &n, c), Err(Unauthentic));
        let (n, c) = k.seal(id(1), b"x".to_vec()).unwrap();
        assert_eq!(k.open_state(state("o", "k"), &n, c), Err(Unauthentic));
    }

    #[test]
    fn master_key_debug_is_redacted() {
        let k = MasterKey::ephemeral().unwrap();
        let s = format!("{k:?}");
        assert!(s.contains("redacted"));
        assert!(!s.contains(&hex::encode(&k.bytes[..])));
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

    fn private_file(dir: &Path, data: &[u8]) -> PathBuf {
        let p = dir.join("master.key");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .unwrap()
            .write_all(data)
            .unwrap();
        p
    }

    #[test]
    fn hex_key_cut_to_32_characters_is_refused_not_taken_as_raw() {
        let dir = tempfile::tempdir().unwrap();
        let full = hex::encode([0x5au8; 32]);
        let p = private_file(dir.path(), &full.as_bytes()[..32]);
        let e = MasterKey::load(&p).unwrap_err();
        assert!(matches!(e, KeyError::BadFormat { .. }), "{e}");
        assert!(e.to_string().contains("32 hex digits (truncated?"), "{e}");
    }

    #[test]
    fn hex_key_cut_to_31_characters_and_a_newline_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = hex::encode([0x5au8; 32]).into_bytes();
        text.truncate(31);
        text.push(b'\n');
        let p = private_file(dir.path(), &text);
        assert!(matches!(
            MasterKey::load(&p),
            Err(KeyError::BadFormat { .. })
        ));
    }

    #[test]
    fn raw_32_byte_key_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = [0u8; 32];
        raw.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let p = private_file(dir.path(), &raw);
        assert_eq!(MasterKey::load(&p).unwrap().bytes, Zeroizing::new(raw));
    }

    #[test]
    fn hex_key_with_trailing_newline_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let p = private_file(
            dir.path(),
            format!("{}\n", hex::encode([7u8; 32])).as_bytes(),
        );
        assert_eq!(
            MasterKey::load(&p).unwrap().bytes,
            Zeroizing::new([7u8; 32])
        );
    }

    #[test]
    fn key_file_that_is_a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        assert!(std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap()
            .success());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(MasterKey::load(&p).map(drop).map_err(|e| e.to_string()));
        });
        // Generous bound: a blocking open would wait for a writer forever.
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("loading a FIFO key file blocked")
            .unwrap_err();
        assert!(
            e.contains("FIFO") && e.contains("not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn key_file_over_4_kib_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = private_file(dir.path(), &vec![b'a'; 5000]);
        let e = MasterKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("larger than 4096 bytes"), "{e}");
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
