//! The envelope: JWS Compact Serialization (RFC 7515 §7.1) with `EdDSA` over Ed25519
//! (RFC 8037), through `ring`.
//!
//! The protected header is exactly `{"alg":"EdDSA","kid":KEY_ID,"typ":TYPE}`: `kid` is the RFC
//! 7638 thumbprint of the signer's key, `typ` separates configuration documents from commands
//! so a signed command can never be accepted as a configuration (or the reverse). Any other
//! `alg` (notably `none`) and any other header member (notably `crit`) is refused: there is one
//! way to sign, so there is one way to verify.
//!
//! This module knows nothing about what the payload means; [`super::document`] and
//! [`super::command`] do.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::keys::{PublicKey, SigningKey};

/// `typ` of a signed configuration document.
pub const TYPE_CONFIG: &str = "vitalgate-config+jws";
/// `typ` of a signed command.
pub const TYPE_COMMAND: &str = "vitalgate-command+jws";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    kid: String,
    typ: String,
}

/// Why an envelope was refused, before anything in its payload is believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a JWS compact document: {0}")]
    Malformed(String),
    #[error("algorithm {0:?} is not accepted (only EdDSA)")]
    Algorithm(String),
    #[error("type {got:?} where {expected:?} was expected")]
    Type { expected: String, got: String },
    #[error("signed by key {0}, which is not among [fleet] trusted_keys")]
    UntrustedKey(String),
    #[error("the signature does not verify under key {0}")]
    BadSignature(String),
}

/// A verified envelope: who signed it and the exact payload bytes signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub key_id: String,
    pub payload: Vec<u8>,
}

/// Signs `payload` as a JWS compact document of type `typ`.
pub fn sign(key: &SigningKey, typ: &str, payload: &[u8]) -> String {
    let header = Header {
        alg: "EdDSA".into(),
        kid: key.key_id().to_owned(),
        typ: typ.into(),
    };
    // A struct of three strings always serializes.
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let mut out = URL_SAFE_NO_PAD.encode(header);
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let signature = key.sign(out.as_bytes());
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(signature));
    out
}

/// The key id a document claims, without verifying anything (for reports about refusals).
pub fn claimed_key_id(document: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(document).ok()?;
    let header = text.trim().split('.').next()?;
    let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    Some(header.kid)
}

/// The payload a document carries, without verifying anything (only to echo a command id
/// in a refusal, marked as unverified).
pub fn claimed_payload(document: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(document).ok()?;
    URL_SAFE_NO_PAD.decode(text.trim().split('.').nth(1)?).ok()
}

/// Verifies a JWS compact document of type `typ` against `trusted`.
pub fn verify(
    document: &[u8],
    typ: &str,
    trusted: &[PublicKey],
) -> Result<Verified, EnvelopeError> {
    let malformed = |why: &str| EnvelopeError::Malformed(why.to_owned());
    let text = std::str::from_utf8(document).map_err(|_| malformed("not UTF-8 text"))?;
    // A trailing newline (from `fleet sign > file`) is not part of the signature.
    let text = text.trim_end_matches(['\n', '\r']);
    let mut parts = text.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three base64url parts separated by '.'"));
    };
    let header = URL_SAFE_NO_PAD
        .decode(h64)
        .map_err(|_| malformed("the header is not base64url"))?;
    let header: Header = serde_json::from_slice(&header).map_err(|e| {
        EnvelopeError::Malformed(format!("the header must be exactly alg, kid and typ: {e}"))
    })?;
    if header.alg != "EdDSA" {
        return Err(EnvelopeError::Algorithm(header.alg));
    }
    if header.typ != typ {
        return Err(EnvelopeError::Type {
            expected: typ.to_owned(),
            got: header.typ,
        });
    }
    let key = trusted
        .iter()
        .find(|k| k.key_id == header.kid)
        .ok_or_else(|| EnvelopeError::UntrustedKey(header.kid.clone()))?;
    let signature = URL_SAFE_NO_PAD
        .decode(s64)
        .map_err(|_| malformed("the signature is not base64url"))?;
    let signed = &text[..h64.len() + 1 + p64.len()];
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key.bytes)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| EnvelopeError::BadSignature(header.kid.clone()))?;
    let payload = URL_SAFE_NO_PAD
        .decode(p64)
        .map_err(|_| malformed("the payload is not base64url"))?;
    Ok(Verified {
        key_id: header.kid,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (tempfile::TempDir, SigningKey) {
        let dir = tempfile::tempdir().unwrap();
        let g = super::super::keys::generate(dir.path()).unwrap();
        let k = SigningKey::load(&g.private_key).unwrap();
        (dir, k)
    }

    fn reencode(doc: &str, part: usize, f: impl FnOnce(Vec<u8>) -> Vec<u8>) -> String {
        let mut parts: Vec<String> = doc.split('.').map(str::to_owned).collect();
        let bytes = URL_SAFE_NO_PAD.decode(&parts[part]).unwrap();
        parts[part] = URL_SAFE_NO_PAD.encode(f(bytes));
        parts.join(".")
    }

    #[test]
    fn signed_document_verifies_and_returns_its_payload_and_key() {
        let (_d, k) = key();
        let doc = sign(&k, TYPE_CONFIG, b"{\"a\":1}");
        let v = verify(doc.as_bytes(), TYPE_CONFIG, &[k.public().clone()]).unwrap();
        assert_eq!(v.payload, b"{\"a\":1}");
        assert_eq!(v.key_id, k.key_id());
    }

    #[test]
    fn changed_payload_fails_the_signature() {
        let (_d, k) = key();
        let doc = sign(&k, TYPE_CONFIG, b"{\"version\":1}");
        let forged = reencode(&doc, 1, |_| b"{\"version\":2}".to_vec());
        assert_eq!(
            verify(forged.as_bytes(), TYPE_CONFIG, &[k.public().clone()]),
            Err(EnvelopeError::BadSignature(k.key_id().to_owned()))
        );
    }

    #[test]
    fn key_not_trusted_is_refused_by_its_id() {
        let (_d, k) = key();
        let (_d2, other) = key();
        let doc = sign(&k, TYPE_CONFIG, b"{}");
        assert_eq!(
            verify(doc.as_bytes(), TYPE_CONFIG, &[other.public().clone()]),
            Err(EnvelopeError::UntrustedKey(k.key_id().to_owned()))
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let (_d, k) = key();
        let doc = sign(&k, TYPE_CONFIG, b"{}");
        let none = reencode(&doc, 0, |h| {
            String::from_utf8(h)
                .unwrap()
                .replace("EdDSA", "none")
                .into_bytes()
        });
        assert_eq!(
            verify(none.as_bytes(), TYPE_CONFIG, &[k.public().clone()]),
            Err(EnvelopeError::Algorithm("none".into()))
        );
    }

    #[test]
    fn extra_header_member_such_as_crit_is_refused() {
        let (_d, k) = key();
        let doc = sign(&k, TYPE_CONFIG, b"{}");
        let crit = reencode(&doc, 0, |h| {
            String::from_utf8(h)
                .unwrap()
                .replace("{", "{\"crit\":[\"exp\"],")
                .into_bytes()
        });
        assert!(matches!(
            verify(crit.as_bytes(), TYPE_CONFIG, &[k.public().clone()]),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn command_is_not_accepted_as_a_configuration() {
        let (_d, k) = key();
        let doc = sign(&k, TYPE_COMMAND, b"{}");
        assert!(matches!(
            verify(doc.as_bytes(), TYPE_CONFIG, &[k.public().clone()]),
            Err(EnvelopeError::Type { .. })
        ));
    }

    #[test]
    fn not_three_parts_is_malformed() {
        for bad in ["", "a.b", "a.b.c.d", "\u{0}..", "%%.%%.%%"] {
            assert!(
                matches!(
                    verify(bad.as_bytes(), TYPE_CONFIG, &[]),
                    Err(EnvelopeError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn second_trusted_key_verifies_during_rollover() {
        let (_d, old) = key();
        let (_d2, new) = key();
        let doc = sign(&new, TYPE_CONFIG, b"{}");
        let trusted = [old.public().clone(), new.public().clone()];
        assert!(verify(doc.as_bytes(), TYPE_CONFIG, &trusted).is_ok());
    }
}
