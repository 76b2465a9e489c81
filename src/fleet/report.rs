//! The `config/reported` payload: what the hub decided about the last document and what it
//! runs. Retained, so the platform reads a hub's state without waiting for it.
//!
//! `{gateway, result: "applied"|"rejected", version, sha256, key_id, applied_at | rejected_at,
//! reason?, detail?, running_version}`: `version`, `sha256` and `key_id` describe the document
//! judged (`version` only when its signature verified); `running_version` is what runs after
//! the decision, so a rejection still says which configuration is in force.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::document::Rejected;
use super::state::Applied;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Applied,
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub gateway: String,
    pub result: Outcome,
    pub version: Option<u64>,
    pub sha256: Option<String>,
    pub key_id: Option<String>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub applied_at: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub rejected_at: Option<OffsetDateTime>,
    /// A stable code (`bad_signature`, `not_newer`, ...; see docs/fleet.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The sentence behind the code, identifiers redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub running_version: u64,
}

impl Report {
    pub fn applied(gateway: &str, a: &Applied) -> Report {
        Report {
            gateway: gateway.to_owned(),
            result: Outcome::Applied,
            version: Some(a.version),
            sha256: Some(a.sha256.clone()),
            key_id: Some(a.key_id.clone()),
            applied_at: Some(a.applied_at),
            rejected_at: None,
            reason: None,
            detail: None,
            running_version: a.version,
        }
    }

    pub fn rejected(
        gateway: &str,
        r: &Rejected,
        at: OffsetDateTime,
        running_version: u64,
    ) -> Report {
        Report {
            gateway: gateway.to_owned(),
            result: Outcome::Rejected,
            version: r.version,
            sha256: r.sha256.clone(),
            key_id: r.key_id.clone(),
            applied_at: None,
            rejected_at: Some(at),
            reason: Some(r.reason.code().to_owned()),
            detail: Some(r.reason.detail()),
            running_version,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Strings, integers and timestamps always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::document::Rejection;
    use time::macros::datetime;

    #[test]
    fn rejection_report_carries_code_detail_and_the_running_version() {
        let r = Rejected {
            reason: Rejection::NotNewer {
                version: 3,
                running: 4,
            },
            version: Some(3),
            sha256: Some("ab".into()),
            key_id: Some("k".into()),
        };
        let rep = Report::rejected("gw-1", &r, datetime!(2026-12-01 12:00 UTC), 4);
        let v: serde_json::Value = serde_json::from_slice(&rep.to_json()).unwrap();
        assert_eq!(v["result"], "rejected");
        assert_eq!(v["reason"], "not_newer");
        assert_eq!(v["version"], 3);
        assert_eq!(v["running_version"], 4);
        assert_eq!(v["rejected_at"], "2026-12-01T12:00:00Z");
        assert!(v.get("applied_at").is_none());
    }

    #[test]
    fn applied_report_has_version_sha256_applied_at_and_key_id() {
        let a = Applied {
            version: 7,
            sha256: "cd".into(),
            key_id: "k".into(),
            applied_at: datetime!(2026-12-01 12:00 UTC),
            document: String::new(),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&Report::applied("gw-1", &a).to_json()).unwrap();
        assert_eq!(v["result"], "applied");
        assert_eq!(v["version"], 7);
        assert_eq!(v["sha256"], "cd");
        assert_eq!(v["key_id"], "k");
        assert_eq!(v["applied_at"], "2026-12-01T12:00:00Z");
        assert!(v.get("reason").is_none());
    }
}
