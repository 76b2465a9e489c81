//! Fleet management: signed remote configuration (and, with it, signed commands), judged and
//! applied by the hub itself.
//!
//! - [`keys`]: Ed25519 key files (PKCS#8 private, SPKI public, PEM), key ids (RFC 7638).
//! - [`jws`]: the envelope, JWS compact with EdDSA (RFC 7515, RFC 8037).
//! - [`overlay`]: what the fleet may set, in the local config's TOML schema, laid over it.
//! - [`document`]: the signed configuration payload and [`document::Judge`], which accepts or
//!   rejects one document with a typed [`document::Rejection`].
//! - [`state`]: the applied document persisted by atomic rename (no rollback across restarts).
//! - [`report`]: the `config/reported` payload.
//! - [`command`]: signed commands on `cmd` and their judgement; [`replay`]: their nonces;
//!   [`resync`]: the `resync` command's arguments and run.
//! - [`agent`]: the hub's side: judge, persist, apply through the supervisor, report, audit.
//! - [`watch`]: `vitalgate fleet watch`, the platform's live table of gateways.
//! - [`cli`]: the operator's `vitalgate fleet ...` commands.
//!
//! The core (`jws`, `overlay`, `document`, `report`) does no IO and never reads the clock.
//! Why JWS and not COSE: docs/fleet.md.

pub mod agent;
pub mod cli;
pub mod command;
pub mod document;
pub mod jws;
pub mod keys;
pub mod overlay;
pub mod replay;
pub mod report;
pub mod resync;
pub mod seal;
pub mod state;
pub mod watch;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The largest document a hub reads (the whole JWS text). A ward gateway's overlay with 50
/// patients and 150 devices is about 40 KiB; this leaves room and bounds the work an
/// unauthenticated message can cause.
pub const MAX_DOCUMENT_BYTES: usize = 128 * 1024;

/// The `[fleet]` section of the local config. Local-only: an overlay can never set it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// Public keys (PEM SubjectPublicKeyInfo, Ed25519) whose signatures this hub accepts;
    /// more than one during a key rollover. Empty: remote configuration is off.
    pub trusted_keys: Vec<PathBuf>,
}

impl FleetConfig {
    /// Every trusted key loaded, or every problem by key (`fleet.trusted_keys[1]`).
    pub fn load_keys(&self) -> Result<Vec<keys::PublicKey>, Vec<crate::config::Problem>> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for (i, p) in self.trusted_keys.iter().enumerate() {
            match keys::PublicKey::load(p) {
                Ok(k) => out.push(k),
                Err(e) => problems.push(crate::config::Problem::new(
                    format!("fleet.trusted_keys[{i}]"),
                    e.to_string(),
                )),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// Problems for `Config::problems` (each key file must load).
    pub fn problems(&self) -> Vec<crate::config::Problem> {
        self.load_keys().err().unwrap_or_default()
    }
}

/// SHA-256 as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// Masks anything shaped like an NHS Number (ten or more digits, optionally grouped 3-3-4 by
/// spaces or dashes): a message that echoes part of a document must never carry one.
pub fn redact(text: &str) -> String {
    static RUNS: std::sync::OnceLock<regex_lite::Regex> = std::sync::OnceLock::new();
    let re = RUNS.get_or_init(|| {
        regex_lite::Regex::new(r"\d{3}[ \-]?\d{3}[ \-]?\d{4,}").expect("a valid static regex")
    });
    re.replace_all(text, "***").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_masks_nhs_number_shapes_and_keeps_small_numbers() {
        assert_eq!(redact("nhs 943 476 5919 v5"), "nhs *** v5");
        assert_eq!(redact("9434765919"), "***");
        assert_eq!(redact("943-476-5919, version 12345"), "***, version 12345");
        assert_eq!(
            redact("expired at 2026-12-01 11:00:00"),
            "expired at 2026-12-01 11:00:00"
        );
    }

    #[test]
    fn trusted_key_that_cannot_be_read_is_a_config_problem() {
        let c = FleetConfig {
            trusted_keys: vec![PathBuf::from("/nonexistent/fleet.pub")],
        };
        let p = c.problems();
        assert_eq!(p[0].key(), "fleet.trusted_keys[0]");
        assert!(p[0].message().contains("/nonexistent/fleet.pub"));
    }
}
