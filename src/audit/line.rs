//! One line of the audit log: its JSON form, its HMAC and, for logs written before MACs, the
//! old plain SHA-256 hash.
//!
//! A MACed line is `{"seq":..,"time":..,"event":..,"details":..,"prev":..,"mac":".."}`. The
//! MAC is HMAC-SHA256 over the exact bytes of the line without its `,"mac":".."` tail, so
//! nothing depends on re-serializing JSON the same way (numbers, key order) when verifying,
//! and any change to any byte of the entry (including `seq` and `prev`, the previous entry's
//! MAC) is detected.

use ring::digest::{digest, SHA256};
use ring::hmac;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What the first entry of a chain names as its predecessor.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The HKDF info label of the audit MAC key (see `MasterKey::audit_mac_key`).
pub const MAC_KEY_LABEL: &[u8] = b"vitalgate audit log hmac-sha256 v1";

/// `,"mac":"` + 64 hex digits + `"}`.
const MAC_TAIL_LEN: usize = 8 + 64 + 2;

/// An entry as read back (for `export`, the walk and tests). Exactly one of `mac` (this
/// format) and `hash` (the plain SHA-256 chain of earlier versions) is present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub event: String,
    pub details: serde_json::Value,
    pub prev: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    event: &'a str,
    details: &'a serde_json::Value,
    prev: &'a str,
}

/// The line (without newline) for a new entry, and its MAC in hex.
pub fn seal(
    key: &hmac::Key,
    seq: u64,
    time: OffsetDateTime,
    event: &str,
    details: &serde_json::Value,
    prev: &str,
) -> Result<(String, String), serde_json::Error> {
    let body = serde_json::to_string(&Body {
        seq,
        time,
        event,
        details,
        prev,
    })?;
    let mac = hex::encode(hmac::sign(key, body.as_bytes()).as_ref());
    let mut line = body;
    line.pop(); // the closing brace; the MAC goes inside the object
    line.push_str(",\"mac\":\"");
    line.push_str(&mac);
    line.push_str("\"}");
    Ok((line, mac))
}

/// Whether `line` carries a MAC that `key` verifies over the rest of the line.
pub fn mac_verifies(key: &hmac::Key, line: &str) -> bool {
    let Some(cut) = line.len().checked_sub(MAC_TAIL_LEN) else {
        return false;
    };
    let (Some(body), Some(tail)) = (line.get(..cut), line.get(cut..)) else {
        return false;
    };
    let Some(mac_hex) = tail
        .strip_prefix(",\"mac\":\"")
        .and_then(|t| t.strip_suffix("\"}"))
    else {
        return false;
    };
    let Ok(mac) = hex::decode(mac_hex) else {
        return false;
    };
    let mut signed = String::with_capacity(cut + 1);
    signed.push_str(body);
    signed.push('}');
    hmac::verify(key, signed.as_bytes(), &mac).is_ok()
}

/// The plain SHA-256 of an entry of the earlier, unkeyed format.
pub fn legacy_hash(e: &Entry) -> String {
    let time = e.time.unix_timestamp_nanos();
    let body = serde_json::json!([e.seq, time.to_string(), e.event, e.details, e.prev]).to_string();
    hex::encode(digest(&SHA256, body.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &[b; 32])
    }

    #[test]
    fn a_sealed_line_verifies_and_parses_back() {
        let details = serde_json::json!({"rows": 3, "ratio": 0.1});
        let (line, mac) = seal(
            &key(1),
            7,
            OffsetDateTime::UNIX_EPOCH,
            "x",
            &details,
            GENESIS,
        )
        .unwrap();
        assert!(mac_verifies(&key(1), &line));
        let e: Entry = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (e.seq, e.mac.as_deref(), e.details),
            (7, Some(&*mac), details)
        );
    }

    #[test]
    fn a_line_fails_under_another_key_or_with_any_byte_changed() {
        let (line, _) = seal(
            &key(1),
            1,
            OffsetDateTime::UNIX_EPOCH,
            "x",
            &serde_json::json!({}),
            GENESIS,
        )
        .unwrap();
        assert!(!mac_verifies(&key(2), &line));
        assert!(!mac_verifies(
            &key(1),
            &line.replacen("\"seq\":1", "\"seq\":2", 1)
        ));
        assert!(!mac_verifies(&key(1), &line.replacen("{", "{ ", 1)));
        assert!(!mac_verifies(&key(1), &line[..line.len() - 1]));
    }
}
