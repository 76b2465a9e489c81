//! The signed configuration document: its payload, and the judgement of one document against
//! the hub's trusted keys, gateway id, running version, clock and local config.
//!
//! Pure: no IO, no clock (time and state are arguments), so every rejection is a unit test.
//! The order of the checks matters: nothing in the payload is believed before the signature
//! verifies, so a refusal for a bad signature reports no version.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::jws::{self, EnvelopeError, TYPE_CONFIG};
use super::keys::{PublicKey, SigningKey};
use super::overlay::{Overlay, OverlayError};
use super::{redact, sha256_hex, MAX_DOCUMENT_BYTES};
use crate::config::Config;

/// What the platform signs: `{gateway, version, issued_at, expires_at?, overlay}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigPayload {
    /// The one gateway this document is for.
    pub gateway: String,
    /// Strictly increasing per gateway; a hub applies only a version above the one it runs.
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// After this the document is refused (a delayed or replayed delivery).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<OffsetDateTime>,
    /// The fleet overlay: TOML in the local config's schema (see [`Overlay`]).
    pub overlay: String,
}

impl ConfigPayload {
    /// Signs this payload: the JWS compact document to publish on `config/desired`.
    pub fn sign(&self, key: &SigningKey) -> String {
        // Strings, integers and timestamps always serialize.
        let json = serde_json::to_vec(self).unwrap_or_default();
        jws::sign(key, TYPE_CONFIG, &json)
    }
}

/// Why a document was refused. [`Rejection::code`] is the stable `reason` on
/// `config/reported`; `Display` is the sentence (identifiers redacted) beside it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the document is {bytes} bytes, above the limit of {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("{0}")]
    Envelope(EnvelopeError),
    #[error("the signed payload is not a configuration document: {0}")]
    Payload(String),
    #[error("the document is for gateway {got:?}, this is {expected:?}")]
    WrongGateway { expected: String, got: String },
    #[error(
        "version {version} is not above the running version {running} (no rollback, no replay)"
    )]
    NotNewer { version: u64, running: u64 },
    #[error("the document expired at {expires_at} (now {now})")]
    Expired {
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    },
    #[error("{0}")]
    LocalOnly(OverlayError),
    #[error("the configuration is invalid: {0}")]
    Invalid(OverlayError),
    /// Valid, but it could not be persisted (the hub keeps the running config).
    #[error("the document could not be stored: {0}")]
    Storage(String),
    /// Valid and stored, but the pipeline refused to start under it: the hub went back to
    /// the last configuration that ran (`daemon::supervisor`, never a crash loop).
    #[error("the pipeline did not start under it, so the last good configuration runs: {0}")]
    FailedToStart(String),
}

impl Rejection {
    /// The machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::TooLarge { .. } => "too_large",
            Rejection::Envelope(EnvelopeError::Malformed(_)) => "malformed",
            Rejection::Envelope(EnvelopeError::Algorithm(_)) => "unsupported_algorithm",
            Rejection::Envelope(EnvelopeError::Type { .. }) => "wrong_type",
            Rejection::Envelope(EnvelopeError::UntrustedKey(_)) => "untrusted_key",
            Rejection::Envelope(EnvelopeError::BadSignature(_)) => "bad_signature",
            Rejection::Payload(_) => "malformed_payload",
            Rejection::WrongGateway { .. } => "wrong_gateway",
            Rejection::NotNewer { .. } => "not_newer",
            Rejection::Expired { .. } => "expired",
            Rejection::LocalOnly(_) => "local_only_key",
            Rejection::Invalid(_) => "invalid",
            Rejection::Storage(_) => "storage_failed",
            Rejection::FailedToStart(_) => "failed_to_start",
        }
    }

    /// The sentence for reports and the audit log, with digit runs that could be an NHS
    /// Number masked.
    pub fn detail(&self) -> String {
        redact(&self.to_string())
    }
}

/// A refused document, with what could be learnt about it (for the report).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub reason: Rejection,
    /// Only once the signature verified: an unauthenticated claim is not repeated.
    pub version: Option<u64>,
    /// SHA-256 of the signed payload, when the envelope could be decoded.
    pub sha256: Option<String>,
    /// The signer's key id as claimed in the header.
    pub key_id: Option<String>,
}

/// A document to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub version: u64,
    pub sha256: String,
    pub key_id: String,
    pub payload: ConfigPayload,
    /// The local config with the overlay laid over it, validated whole.
    pub effective: Config,
}

/// The verdict on one document.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Apply(Box<Accepted>),
    /// The document already running (a retained `config/desired` seen again after a
    /// reconnect or restart): nothing to do, and not a replay.
    AlreadyRunning,
    Reject(Box<Rejected>),
}

/// What the hub runs, as the judge needs it.
#[derive(Debug, Clone, Copy)]
pub struct Running<'a> {
    /// Version of the applied document; 0 when none was ever applied.
    pub version: u64,
    /// SHA-256 of its payload.
    pub sha256: Option<&'a str>,
}

/// The hub's side of a judgement.
pub struct Judge<'a> {
    pub gateway: &'a str,
    pub trusted: &'a [PublicKey],
    pub local: &'a Config,
    pub running: Running<'a>,
    pub now: OffsetDateTime,
}

impl Judge<'_> {
    /// Judges `document` (the bytes of a `config/desired` message).
    pub fn judge(&self, document: &[u8]) -> Verdict {
        let mut r = Rejected {
            reason: Rejection::Payload(String::new()),
            version: None,
            sha256: None,
            key_id: None,
        };
        let reject = |mut r: Rejected, reason| {
            r.reason = reason;
            Verdict::Reject(Box::new(r))
        };
        if document.len() > MAX_DOCUMENT_BYTES {
            let reason = Rejection::TooLarge {
                bytes: document.len(),
                limit: MAX_DOCUMENT_BYTES,
            };
            return reject(r, reason);
        }
        r.key_id = jws::claimed_key_id(document);
        let verified = match jws::verify(document, TYPE_CONFIG, self.trusted) {
            Ok(v) => v,
            Err(e) => return reject(r, Rejection::Envelope(e)),
        };
        let sha256 = sha256_hex(&verified.payload);
        r.sha256 = Some(sha256.clone());
        r.key_id = Some(verified.key_id.clone());
        let payload: ConfigPayload = match serde_json::from_slice(&verified.payload) {
            Ok(p) => p,
            Err(e) => return reject(r, Rejection::Payload(e.to_string())),
        };
        r.version = Some(payload.version);
        if payload.gateway != self.gateway {
            let reason = Rejection::WrongGateway {
                expected: self.gateway.to_owned(),
                got: payload.gateway,
            };
            return reject(r, reason);
        }
        if payload.version == self.running.version && self.running.sha256 == Some(sha256.as_str()) {
            return Verdict::AlreadyRunning;
        }
        if payload.version <= self.running.version {
            let reason = Rejection::NotNewer {
                version: payload.version,
                running: self.running.version,
            };
            return reject(r, reason);
        }
        if let Some(expires_at) = payload.expires_at {
            if expires_at <= self.now {
                let reason = Rejection::Expired {
                    expires_at,
                    now: self.now,
                };
                return reject(r, reason);
            }
        }
        let overlay = match Overlay::parse(&payload.overlay) {
            Ok(o) => o,
            Err(e @ OverlayError::LocalOnly(_)) => return reject(r, Rejection::LocalOnly(e)),
            Err(e) => return reject(r, Rejection::Invalid(e)),
        };
        let effective = match overlay.effective(self.local) {
            Ok(c) => c,
            Err(e) => return reject(r, Rejection::Invalid(e)),
        };
        Verdict::Apply(Box::new(Accepted {
            version: payload.version,
            sha256,
            key_id: verified.key_id,
            payload,
            effective,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-01 12:00 UTC);

    struct Fixture {
        _dir: tempfile::TempDir,
        key: SigningKey,
        local: Config,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let g = super::super::keys::generate(dir.path()).unwrap();
        let key = SigningKey::load(&g.private_key).unwrap();
        let local = Config::parse(
            "[gateway]\nid = \"gw-1\"\n[[patient]]\nid = \"p1\"\n[[device]]\nid = \"d1\"\npatient = \"p1\"\ndriver = \"sim\"\n",
            Path::new("local.toml"),
        )
        .unwrap();
        Fixture {
            _dir: dir,
            key,
            local,
        }
    }

    const REBIND: &str = "[[patient]]\nid = \"p1\"\n[[patient]]\nid = \"p2\"\nnhs_number = \"9434765919\"\n[[device]]\nid = \"d1\"\npatient = \"p2\"\ndriver = \"sim\"\n";

    fn payload(version: u64, overlay: &str) -> ConfigPayload {
        ConfigPayload {
            gateway: "gw-1".into(),
            version,
            issued_at: NOW - time::Duration::minutes(1),
            expires_at: None,
            overlay: overlay.into(),
        }
    }

    fn judge_with(f: &Fixture, running: Running, doc: &[u8]) -> Verdict {
        Judge {
            gateway: "gw-1",
            trusted: &[f.key.public().clone()],
            local: &f.local,
            running,
            now: NOW,
        }
        .judge(doc)
    }

    fn judge(f: &Fixture, doc: &[u8]) -> Verdict {
        judge_with(
            f,
            Running {
                version: 4,
                sha256: Some("running"),
            },
            doc,
        )
    }

    fn rejected(v: Verdict) -> Rejected {
        match v {
            Verdict::Reject(r) => *r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn good_document_is_accepted_with_its_effective_config() {
        let f = fixture();
        let doc = payload(5, REBIND).sign(&f.key);
        let Verdict::Apply(a) = judge(&f, doc.as_bytes()) else {
            panic!("not accepted")
        };
        assert_eq!(a.version, 5);
        assert_eq!(a.key_id, f.key.key_id());
        assert_eq!(a.effective.devices[0].patient, "p2");
        assert_eq!(a.sha256.len(), 64);
    }

    #[test]
    fn bad_signature_is_rejected_without_believing_the_version() {
        let f = fixture();
        let doc = payload(5, REBIND).sign(&f.key);
        let mut bytes = doc.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let r = rejected(judge(&f, &bytes));
        assert_eq!(r.reason.code(), "bad_signature");
        assert_eq!(r.version, None);
    }

    #[test]
    fn untrusted_key_is_rejected_naming_the_key() {
        let f = fixture();
        let other = fixture();
        let doc = payload(5, REBIND).sign(&other.key);
        let r = rejected(judge(&f, doc.as_bytes()));
        assert_eq!(r.reason.code(), "untrusted_key");
        assert_eq!(r.key_id.as_deref(), Some(other.key.key_id()));
    }

    #[test]
    fn another_gateways_document_is_rejected() {
        let f = fixture();
        let mut p = payload(5, REBIND);
        p.gateway = "gw-2".into();
        let r = rejected(judge(&f, p.sign(&f.key).as_bytes()));
        assert_eq!(
            r.reason,
            Rejection::WrongGateway {
                expected: "gw-1".into(),
                got: "gw-2".into()
            }
        );
    }

    #[test]
    fn older_version_is_rejected() {
        let f = fixture();
        let r = rejected(judge(&f, payload(3, REBIND).sign(&f.key).as_bytes()));
        assert_eq!(
            r.reason,
            Rejection::NotNewer {
                version: 3,
                running: 4
            }
        );
    }

    #[test]
    fn same_version_with_other_content_is_rejected() {
        let f = fixture();
        let r = rejected(judge(&f, payload(4, REBIND).sign(&f.key).as_bytes()));
        assert_eq!(r.reason.code(), "not_newer");
    }

    #[test]
    fn the_running_document_seen_again_is_not_a_rejection() {
        let f = fixture();
        let doc = payload(5, REBIND).sign(&f.key);
        let Verdict::Apply(a) = judge(&f, doc.as_bytes()) else {
            panic!()
        };
        let running = Running {
            version: 5,
            sha256: Some(&a.sha256),
        };
        assert_eq!(
            judge_with(&f, running, doc.as_bytes()),
            Verdict::AlreadyRunning
        );
    }

    #[test]
    fn expired_document_is_rejected() {
        let f = fixture();
        let mut p = payload(5, REBIND);
        p.expires_at = Some(NOW - time::Duration::seconds(1));
        let r = rejected(judge(&f, p.sign(&f.key).as_bytes()));
        assert_eq!(r.reason.code(), "expired");
        assert_eq!(r.version, Some(5));
    }

    #[test]
    fn document_expiring_later_is_accepted() {
        let f = fixture();
        let mut p = payload(5, REBIND);
        p.expires_at = Some(NOW + time::Duration::hours(1));
        assert!(matches!(
            judge(&f, p.sign(&f.key).as_bytes()),
            Verdict::Apply(_)
        ));
    }

    #[test]
    fn oversized_document_is_rejected_before_it_is_parsed() {
        let f = fixture();
        let big = vec![b'A'; MAX_DOCUMENT_BYTES + 1];
        let r = rejected(judge(&f, &big));
        assert_eq!(r.reason.code(), "too_large");
        assert_eq!(r.key_id, None);
    }

    #[test]
    fn oversized_overlay_in_a_signed_document_is_rejected() {
        let f = fixture();
        let padding = format!("# {}\n", "x".repeat(MAX_DOCUMENT_BYTES));
        let doc = payload(5, &format!("{padding}{REBIND}")).sign(&f.key);
        assert_eq!(
            rejected(judge(&f, doc.as_bytes())).reason.code(),
            "too_large"
        );
    }

    #[test]
    fn invalid_field_is_rejected_naming_the_key() {
        let f = fixture();
        let doc = payload(5, "[store]\nretention_days = 0\n").sign(&f.key);
        let r = rejected(judge(&f, doc.as_bytes()));
        assert_eq!(r.reason.code(), "invalid");
        assert!(
            r.reason.detail().contains("store.retention_days"),
            "{}",
            r.reason.detail()
        );
    }

    #[test]
    fn invalid_nhs_number_is_rejected_and_not_repeated() {
        let f = fixture();
        let doc = payload(5, &REBIND.replace("9434765919", "9434765918")).sign(&f.key);
        let r = rejected(judge(&f, doc.as_bytes()));
        assert_eq!(r.reason.code(), "invalid");
        let d = r.reason.detail();
        assert!(
            d.contains("patient[1].nhs_number") && !d.contains("9434765918"),
            "{d}"
        );
    }

    #[test]
    fn local_only_key_is_rejected() {
        let f = fixture();
        let doc = payload(5, "[store]\nkey_file = \"/tmp/k\"\n").sign(&f.key);
        let r = rejected(judge(&f, doc.as_bytes()));
        assert_eq!(r.reason.code(), "local_only_key");
        assert!(r.reason.detail().contains("store.key_file"));
    }

    #[test]
    fn payload_with_an_unknown_member_is_malformed() {
        let f = fixture();
        let json = br#"{"gateway":"gw-1","version":5,"issued_at":"2026-12-01T11:00:00Z","overlay":"","rollback":true}"#;
        let doc = jws::sign(&f.key, TYPE_CONFIG, json);
        assert_eq!(
            rejected(judge(&f, doc.as_bytes())).reason.code(),
            "malformed_payload"
        );
    }

    #[test]
    fn every_rejection_has_a_distinct_code() {
        let codes = [
            Rejection::TooLarge { bytes: 0, limit: 0 }.code(),
            Rejection::Envelope(EnvelopeError::Malformed(String::new())).code(),
            Rejection::Envelope(EnvelopeError::Algorithm(String::new())).code(),
            Rejection::Envelope(EnvelopeError::UntrustedKey(String::new())).code(),
            Rejection::Envelope(EnvelopeError::BadSignature(String::new())).code(),
            Rejection::Payload(String::new()).code(),
            Rejection::WrongGateway {
                expected: String::new(),
                got: String::new(),
            }
            .code(),
            Rejection::NotNewer {
                version: 0,
                running: 0,
            }
            .code(),
            Rejection::Expired {
                expires_at: NOW,
                now: NOW,
            }
            .code(),
            Rejection::LocalOnly(OverlayError::LocalOnly(vec![])).code(),
            Rejection::Invalid(OverlayError::Invalid(vec![])).code(),
            Rejection::Storage(String::new()).code(),
        ];
        let set: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(set.len(), codes.len());
    }
}
