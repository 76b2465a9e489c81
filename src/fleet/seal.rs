//! Fleet state sealed at rest: the signed document in `fleet-applied.json` carries the
//! overlay, whose `[[patient]]` entries may hold NHS Numbers in clear. It is kept sealed with
//! AES-256-GCM under a data key derived from the master key (`store::crypto`, the same HKDF
//! scheme as the outbox's), its file name bound in as associated data (`StateIdentity` with
//! owner `fleet`), so a sealed value moved to another file or edited fails authentication.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::store::crypto::{Keyring, StateIdentity};
use crate::store::MasterKey;

/// The data key id of fleet state: its own, apart from the outbox's data keys (which count up
/// from 1), and never rotated with them (the clear version beside the sealed document keeps
/// the high-water mark even if the document can no longer be opened).
pub const FLEET_DATA_KEY: u32 = 0;
const OWNER: &str = "fleet";

/// A sealed value as stored in JSON: nonce and ciphertext (with its tag), base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    pub nonce: String,
    pub ciphertext: String,
}

/// Why a sealed value cannot be opened (never says anything about its content).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("cannot seal: {0}")]
    Seal(String),
    #[error("the sealed value is not base64")]
    Encoding,
    #[error("the sealed value failed authentication (another master key, moved or edited)")]
    Unauthentic,
}

/// Seals `plaintext` for the state file `file`.
pub fn seal(master: &MasterKey, file: &str, plaintext: &[u8]) -> Result<Sealed, SealError> {
    let (nonce, ciphertext) = Keyring::new(master)
        .seal_state(identity(file), plaintext)
        .map_err(|e| SealError::Seal(e.to_string()))?;
    Ok(Sealed {
        nonce: STANDARD.encode(nonce),
        ciphertext: STANDARD.encode(ciphertext),
    })
}

/// Opens a value sealed for `file`.
pub fn open(
    master: &MasterKey,
    file: &str,
    sealed: &Sealed,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let nonce = STANDARD
        .decode(&sealed.nonce)
        .map_err(|_| SealError::Encoding)?;
    let ciphertext = STANDARD
        .decode(&sealed.ciphertext)
        .map_err(|_| SealError::Encoding)?;
    Keyring::new(master)
        .open_state(identity(file), &nonce, ciphertext)
        .map_err(|_| SealError::Unauthentic)
}

fn identity(file: &str) -> StateIdentity<'_> {
    StateIdentity {
        owner: OWNER,
        key: file,
        key_id: FLEET_DATA_KEY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_value_opens_under_the_same_key_and_file() {
        let k = MasterKey::ephemeral().unwrap();
        let s = seal(&k, "a.json", b"9434765919").unwrap();
        assert!(!s.ciphertext.contains("9434765919"));
        assert_eq!(&open(&k, "a.json", &s).unwrap()[..], b"9434765919");
    }

    #[test]
    fn sealed_value_moved_to_another_file_or_key_fails() {
        let k = MasterKey::ephemeral().unwrap();
        let s = seal(&k, "a.json", b"x").unwrap();
        assert_eq!(open(&k, "b.json", &s), Err(SealError::Unauthentic));
        let other = MasterKey::ephemeral().unwrap();
        assert_eq!(open(&other, "a.json", &s), Err(SealError::Unauthentic));
    }
}
