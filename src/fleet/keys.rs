//! Fleet signing keys: Ed25519, a PKCS#8 private key (PEM, mode 0600) for the operator and an
//! X.509 SubjectPublicKeyInfo public key (PEM) for every hub's `[fleet] trusted_keys`.
//!
//! Both are the formats OpenSSL writes and reads (`openssl pkey -in fleet.key -pubout`), so a
//! platform that keeps its key in an HSM or KMS can export the public half without our tool.
//! A key is named by its RFC 7638 JWK thumbprint (`key_id`), which is also the JWS `kid`.
//!
//! Key files are read through [`read_capped`] only: one function with a size cap, so a path
//! pointing at a device or a huge file is refused instead of read.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair};

/// No key file we read is larger (a PEM Ed25519 key is about 120 bytes).
pub const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 §4): SEQUENCE { SEQUENCE {
/// OID 1.3.101.112 }, BIT STRING (33 bytes: 0 unused bits + 32 key bytes) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a key file cannot be used. Messages name the file and never hold key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {size} bytes is larger than a key file can be ({MAX_KEY_FILE_BYTES} bytes at most)")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("{path}: readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads a small file whole, refusing anything that is not a regular file or is larger than
/// `cap` bytes. The one place key files are read (the config reader may later replace it).
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, KeyError> {
    use std::io::Read;
    let read = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(KeyError::Invalid {
            path: path.to_path_buf(),
            why: "not a regular file".into(),
        });
    }
    if meta.len() > cap {
        return Err(KeyError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    // `take` guards a file that grows between the metadata and the read.
    file.take(cap + 1).read_to_end(&mut buf).map_err(read)?;
    if buf.len() as u64 > cap {
        return Err(KeyError::TooLarge {
            path: path.to_path_buf(),
            size: buf.len() as u64,
        });
    }
    Ok(buf)
}

/// The body of the one PEM block labelled `label`, decoded.
fn pem_body(text: &[u8], label: &str, path: &Path) -> Result<Vec<u8>, KeyError> {
    let invalid = |why: String| KeyError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    let text = std::str::from_utf8(text).map_err(|_| invalid("not a PEM text file".into()))?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text
        .find(&begin)
        .ok_or_else(|| invalid(format!("no `{begin}` block")))?;
    let rest = &text[start + begin.len()..];
    let stop = rest
        .find(&end)
        .ok_or_else(|| invalid(format!("no `{end}` line")))?;
    let b64: String = rest[..stop].split_whitespace().collect();
    STANDARD
        .decode(b64)
        .map_err(|e| invalid(format!("the {label} block is not valid base64: {e}")))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The RFC 7638 JWK thumbprint of an Ed25519 public key (RFC 8037 `OKP` key): the key id.
pub fn key_id(public: &[u8; 32]) -> String {
    // Members in lexicographic order, no whitespace (RFC 7638 §3.2).
    let jwk = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, jwk.as_bytes()))
}

/// A public key the hub trusts, with its id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub key_id: String,
    pub bytes: [u8; 32],
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PublicKey {
            key_id: key_id(&bytes),
            bytes,
        }
    }

    /// Reads a `PUBLIC KEY` PEM file holding an Ed25519 SubjectPublicKeyInfo.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_capped(path, MAX_KEY_FILE_BYTES)?;
        let der = pem_body(&text, "PUBLIC KEY", path)?;
        let key = der
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or_else(|| KeyError::Invalid {
                path: path.to_path_buf(),
                why: "not an Ed25519 public key (the fleet signs with Ed25519 only)".into(),
            })?;
        Ok(Self::from_bytes(key))
    }

    /// The PEM text of this key (SubjectPublicKeyInfo).
    pub fn to_pem(&self) -> String {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.bytes);
        pem("PUBLIC KEY", &der)
    }
}

/// The operator's signing key. `Debug` shows the key id only.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.public.key_id)
            .finish()
    }
}

impl SigningKey {
    fn from_pkcs8(der: &[u8], path: &Path) -> Result<Self, KeyError> {
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| KeyError::Invalid {
                path: path.to_path_buf(),
                why: format!("not an Ed25519 PKCS#8 private key ({e})"),
            })?;
        let bytes =
            <[u8; 32]>::try_from(pair.public_key().as_ref()).map_err(|_| KeyError::Invalid {
                path: path.to_path_buf(),
                why: "unexpected public key length".into(),
            })?;
        Ok(SigningKey {
            pair,
            public: PublicKey::from_bytes(bytes),
        })
    }

    /// Reads a `PRIVATE KEY` PEM file; refuses one readable by group or others.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = read_capped(path, MAX_KEY_FILE_BYTES)?;
        let der = pem_body(&text, "PRIVATE KEY", path)?;
        Self::from_pkcs8(&der, path)
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn key_id(&self) -> &str {
        &self.public.key_id
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// Files written by [`generate`].
#[derive(Debug)]
pub struct Generated {
    pub private_key: PathBuf,
    pub public_key: PathBuf,
    pub key_id: String,
}

/// The names [`generate`] writes in its directory.
pub const PRIVATE_KEY_FILE: &str = "fleet.key";
pub const PUBLIC_KEY_FILE: &str = "fleet.pub";

/// Creates a new Ed25519 key pair in `dir` (created 0700 if missing): `fleet.key` (PKCS#8,
/// mode 0600) and `fleet.pub` (SubjectPublicKeyInfo, mode 0644). Refuses to overwrite either.
pub fn generate(dir: &Path) -> Result<Generated, KeyError> {
    use std::os::unix::fs::DirBuilderExt;
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeyError::Write { path, source }
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write_err(dir))?;
    }
    let private_key = dir.join(PRIVATE_KEY_FILE);
    let public_key = dir.join(PUBLIC_KEY_FILE);
    for p in [&private_key, &public_key] {
        if p.exists() {
            return Err(KeyError::Write {
                path: p.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists; refusing to overwrite a key (move it away first)",
                ),
            });
        }
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| KeyError::Write {
        path: private_key.clone(),
        source: std::io::Error::other(format!("key generation failed: {e}")),
    })?;
    let key = SigningKey::from_pkcs8(pkcs8.as_ref(), &private_key)?;
    write_new(
        &private_key,
        pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes(),
        0o600,
    )
    .map_err(write_err(&private_key))?;
    write_new(&public_key, key.public().to_pem().as_bytes(), 0o644)
        .map_err(write_err(&public_key))?;
    Ok(Generated {
        private_key,
        public_key,
        key_id: key.key_id().to_owned(),
    })
}

/// Creates `path` with `mode` (never overwriting), writes and syncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_private_key_is_0600_and_loads_with_its_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(&dir.path().join("keys")).unwrap();
        let mode = std::fs::metadata(&g.private_key)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let sk = SigningKey::load(&g.private_key).unwrap();
        let pk = PublicKey::load(&g.public_key).unwrap();
        assert_eq!(sk.public(), &pk);
        assert_eq!(pk.key_id, g.key_id);
    }

    #[test]
    fn generate_refuses_to_overwrite_an_existing_key() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        let before = std::fs::read(dir.path().join(PRIVATE_KEY_FILE)).unwrap();
        let e = generate(dir.path()).unwrap_err().to_string();
        assert!(e.contains("refusing to overwrite"), "{e}");
        assert_eq!(
            std::fs::read(dir.path().join(PRIVATE_KEY_FILE)).unwrap(),
            before
        );
    }

    #[test]
    fn private_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(dir.path()).unwrap();
        std::fs::set_permissions(&g.private_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SigningKey::load(&g.private_key).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn key_id_is_the_rfc_7638_thumbprint() {
        // RFC 8037 Appendix A.3: the thumbprint of the Ed25519 example key.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let id = key_id(&x.try_into().unwrap());
        assert_eq!(id, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn public_key_of_another_algorithm_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rsa.pub");
        // An EC P-256 SubjectPublicKeyInfo header is not Ed25519.
        std::fs::write(&p, pem("PUBLIC KEY", &[0x30, 0x59, 0x30, 0x13, 0x06, 0x07])).unwrap();
        let e = PublicKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("not an Ed25519 public key"), "{e}");
    }

    #[test]
    fn oversized_key_file_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.pub");
        std::fs::write(&p, vec![b'A'; (MAX_KEY_FILE_BYTES + 1) as usize]).unwrap();
        assert!(matches!(
            PublicKey::load(&p),
            Err(KeyError::TooLarge { .. })
        ));
    }
}
