//! Signed commands on `cmd`: the payload, and the judgement of one command (signature,
//! gateway, expiry, replay).
//!
//! A command is a JWS of type `vitalgate-command+jws` whose payload names the gateway, an id
//! (echoed on `cmd/result`), the command and its arguments, an issue time, an expiry (required,
//! at most [`MAX_LIFETIME`] after issue) and a random nonce. The hub keeps the nonces of
//! commands it accepted until they expire ([`super::replay`]), so a captured command cannot be
//! run twice, and an expired one is refused outright: the replay store stays small.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::jws::{self, EnvelopeError, TYPE_COMMAND};
use super::keys::{PublicKey, SigningKey};
use super::MAX_DOCUMENT_BYTES;

/// The commands a hub runs.
pub const KNOWN: &[&str] = &[
    "ping",
    "reload",
    "restart-uplink",
    "rotate-key",
    "erase-patient",
    "resync",
];

/// Checks a known command's arguments: `erase-patient` takes exactly one patient id, a
/// pseudonym (never an NHS Number); the others take none that matter.
pub fn check_args(name: &str, args: &[String]) -> Result<(), String> {
    match (name, args) {
        ("erase-patient", [patient])
            if !patient.is_empty()
                && matches!(crate::redact::scrub(patient), std::borrow::Cow::Borrowed(_)) =>
        {
            Ok(())
        }
        ("erase-patient", _) => Err(
            "erase-patient takes exactly one argument: the patient's pseudonymous id (never an NHS Number)"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// A random id (UUID v4) that no NHS Number filter would hide. The audit log masks whatever
/// in an entry reads as a valid NHS Number (`audit::events::scrub_nhs_numbers`: ten digits,
/// a hyphen allowed between groups, passing Modulus 11), and a UUID's hyphens can join its
/// digits across groups: that command's id would be masked in its audit entries and could not
/// be traced there. An id holding any run of ten digits (the stricter `redact::scrub` rule,
/// about one UUID in eleven) is drawn again.
fn fresh_id() -> String {
    loop {
        let id = uuid::Uuid::new_v4().to_string();
        if matches!(crate::redact::scrub(&id), std::borrow::Cow::Borrowed(_)) {
            return id;
        }
    }
}

/// Longest a command may stay valid: bounds the replay store and a delayed delivery.
pub const MAX_LIFETIME: time::Duration = time::Duration::hours(24);

/// The largest command document a hub reads.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;

const _: () = assert!(MAX_COMMAND_BYTES <= MAX_DOCUMENT_BYTES);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandPayload {
    pub gateway: String,
    /// Chosen by the sender; `cmd/result` carries it back.
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Random, unique per command (128 bits from the sender).
    pub nonce: String,
}

impl CommandPayload {
    /// A command for `gateway` valid for `lifetime` from `now`, with a fresh id and nonce.
    pub fn new(
        gateway: &str,
        name: &str,
        args: Vec<String>,
        now: OffsetDateTime,
        lifetime: time::Duration,
    ) -> Self {
        use rand::RngCore;
        let mut nonce = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        CommandPayload {
            gateway: gateway.to_owned(),
            id: fresh_id(),
            name: name.to_owned(),
            args,
            issued_at: now,
            expires_at: now + lifetime,
            nonce: hex::encode(nonce),
        }
    }

    pub fn sign(&self, key: &SigningKey) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        jws::sign(key, TYPE_COMMAND, &json)
    }
}

/// Why a command was refused; [`CommandRefusal::code`] is the `reason` on `cmd/result`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandRefusal {
    #[error("the command is {bytes} bytes, above the limit of {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("{0}")]
    Envelope(EnvelopeError),
    #[error("the signed payload is not a command: {0}")]
    Payload(String),
    #[error("the command is for gateway {got:?}, this is {expected:?}")]
    WrongGateway { expected: String, got: String },
    #[error("the command expired at {expires_at} (now {now})")]
    Expired {
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    },
    #[error("the command is valid for longer than {} hours", MAX_LIFETIME.whole_hours())]
    LifetimeTooLong,
    #[error("this command (nonce) was already received")]
    Replayed,
    #[error("unknown command {0:?}; known: {known}", known = KNOWN.join(", "))]
    Unknown(String),
    #[error("{0}")]
    Arguments(String),
}

impl CommandRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            CommandRefusal::TooLarge { .. } => "too_large",
            CommandRefusal::Envelope(EnvelopeError::Malformed(_)) => "malformed",
            CommandRefusal::Envelope(EnvelopeError::Algorithm(_)) => "unsupported_algorithm",
            CommandRefusal::Envelope(EnvelopeError::Type { .. }) => "wrong_type",
            CommandRefusal::Envelope(EnvelopeError::UntrustedKey(_)) => "untrusted_key",
            CommandRefusal::Envelope(EnvelopeError::BadSignature(_)) => "bad_signature",
            CommandRefusal::Payload(_) => "malformed_payload",
            CommandRefusal::WrongGateway { .. } => "wrong_gateway",
            CommandRefusal::Expired { .. } => "expired",
            CommandRefusal::LifetimeTooLong => "lifetime_too_long",
            CommandRefusal::Replayed => "replayed",
            CommandRefusal::Unknown(_) => "unknown_command",
            CommandRefusal::Arguments(_) => "invalid_arguments",
        }
    }
}

/// A command that passed every check, with the key that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedCommand {
    pub payload: CommandPayload,
    pub key_id: String,
}

/// A refused command and what could be learnt about it for the answer. `id` is repeated
/// only once the signature verified (an unauthenticated id is still echoed as `claimed_id`
/// so the sender can match the answer, and marked so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedCommand {
    pub refusal: CommandRefusal,
    /// The id, once the signature verified.
    pub id: Option<String>,
    /// The id the payload claims, unverified (so an unsigned sender can still match the
    /// answer); at most 64 characters, NHS-Number-shaped digits masked.
    pub claimed_id: Option<String>,
    pub key_id: Option<String>,
}

/// Judges one command. `seen(nonce)` says whether the nonce was already accepted; the caller
/// records the nonce of an accepted command before running it.
pub fn judge(
    document: &[u8],
    gateway: &str,
    trusted: &[PublicKey],
    now: OffsetDateTime,
    seen: impl Fn(&str) -> bool,
) -> Result<AcceptedCommand, Box<RefusedCommand>> {
    let mut r = RefusedCommand {
        refusal: CommandRefusal::Replayed,
        id: None,
        claimed_id: None,
        key_id: None,
    };
    let refuse = |mut r: RefusedCommand, why| {
        r.refusal = why;
        Err(Box::new(r))
    };
    if document.len() > MAX_COMMAND_BYTES {
        let why = CommandRefusal::TooLarge {
            bytes: document.len(),
            limit: MAX_COMMAND_BYTES,
        };
        return refuse(r, why);
    }
    r.key_id = jws::claimed_key_id(document);
    r.claimed_id = jws::claimed_payload(document)
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
        .and_then(|v| {
            v.get("id")?
                .as_str()
                .map(|id| id.chars().take(64).collect::<String>())
        })
        .map(|id| super::redact(&id));
    let v = match jws::verify(document, TYPE_COMMAND, trusted) {
        Ok(v) => v,
        Err(e) => return refuse(r, CommandRefusal::Envelope(e)),
    };
    let p: CommandPayload = match serde_json::from_slice(&v.payload) {
        Ok(p) => p,
        Err(e) => return refuse(r, CommandRefusal::Payload(super::redact(&e.to_string()))),
    };
    r.id = Some(p.id.clone());
    if p.gateway != gateway {
        let why = CommandRefusal::WrongGateway {
            expected: gateway.to_owned(),
            got: p.gateway,
        };
        return refuse(r, why);
    }
    if p.expires_at <= now {
        let why = CommandRefusal::Expired {
            expires_at: p.expires_at,
            now,
        };
        return refuse(r, why);
    }
    if p.expires_at - p.issued_at > MAX_LIFETIME || p.expires_at - now > MAX_LIFETIME {
        return refuse(r, CommandRefusal::LifetimeTooLong);
    }
    if seen(&p.nonce) {
        return refuse(r, CommandRefusal::Replayed);
    }
    if !KNOWN.contains(&p.name.as_str()) {
        return refuse(r, CommandRefusal::Unknown(p.name));
    }
    if let Err(why) = check_args(&p.name, &p.args) {
        return refuse(r, CommandRefusal::Arguments(why));
    }
    if p.name == "resync" {
        if let Err(why) = super::resync::range(&p.args) {
            return refuse(r, CommandRefusal::Arguments(why));
        }
    }
    Ok(AcceptedCommand {
        payload: p,
        key_id: v.key_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-01 12:00 UTC);

    fn key() -> (tempfile::TempDir, SigningKey) {
        let dir = tempfile::tempdir().unwrap();
        let g = super::super::keys::generate(dir.path()).unwrap();
        let k = SigningKey::load(&g.private_key).unwrap();
        (dir, k)
    }

    fn ping() -> CommandPayload {
        CommandPayload::new("gw-1", "ping", vec![], NOW, time::Duration::minutes(10))
    }

    #[test]
    fn fresh_command_ids_are_never_masked_as_nhs_numbers() {
        // About one random UUID in eleven holds a run of ten digits: 20,000 fresh ids would
        // hold some 1,800 of them if the id were not drawn again.
        for _ in 0..20_000 {
            let id = ping().id;
            assert!(
                matches!(crate::redact::scrub(&id), std::borrow::Cow::Borrowed(_)),
                "{id}"
            );
            let mut audited = serde_json::json!({ "id": id });
            crate::audit::events::scrub_nhs_numbers(&mut audited);
            assert_eq!(audited["id"], id.as_str());
        }
    }

    fn code(k: &SigningKey, p: &CommandPayload, seen: bool) -> &'static str {
        match judge(
            p.sign(k).as_bytes(),
            "gw-1",
            &[k.public().clone()],
            NOW,
            |_| seen,
        ) {
            Ok(_) => "accepted",
            Err(r) => r.refusal.code(),
        }
    }

    #[test]
    fn signed_ping_for_this_gateway_is_accepted() {
        let (_d, k) = key();
        assert_eq!(code(&k, &ping(), false), "accepted");
    }

    #[test]
    fn signed_key_commands_are_accepted_and_erase_patient_names_one_pseudonym() {
        let (_d, k) = key();
        let cmd = |name: &str, args: &[&str]| {
            let args = args.iter().map(|a| a.to_string()).collect();
            CommandPayload::new("gw-1", name, args, NOW, time::Duration::minutes(10))
        };
        assert_eq!(code(&k, &cmd("rotate-key", &[]), false), "accepted");
        assert_eq!(
            code(&k, &cmd("erase-patient", &["p-17"]), false),
            "accepted"
        );
        for bad in [&[][..], &["p1", "p2"][..], &["9434765919"][..], &[""][..]] {
            assert_eq!(
                code(&k, &cmd("erase-patient", bad), false),
                "invalid_arguments",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn new_commands_have_distinct_ids_and_nonces() {
        let (a, b) = (ping(), ping());
        assert_ne!(a.id, b.id);
        assert_ne!(a.nonce, b.nonce);
        assert_eq!(a.nonce.len(), 32);
    }

    #[test]
    fn replayed_command_is_refused() {
        let (_d, k) = key();
        assert_eq!(code(&k, &ping(), true), "replayed");
    }

    #[test]
    fn expired_command_is_refused() {
        let (_d, k) = key();
        let mut p = ping();
        p.expires_at = NOW;
        assert_eq!(code(&k, &p, false), "expired");
    }

    #[test]
    fn command_valid_for_more_than_a_day_is_refused() {
        let (_d, k) = key();
        let p = CommandPayload::new("gw-1", "ping", vec![], NOW, time::Duration::hours(25));
        assert_eq!(code(&k, &p, false), "lifetime_too_long");
    }

    #[test]
    fn wrongly_addressed_command_is_refused_with_its_id() {
        let (_d, k) = key();
        let mut p = ping();
        p.gateway = "gw-2".into();
        let r = judge(
            p.sign(&k).as_bytes(),
            "gw-1",
            &[k.public().clone()],
            NOW,
            |_| false,
        )
        .unwrap_err();
        assert_eq!(r.refusal.code(), "wrong_gateway");
        assert_eq!(r.id, Some(p.id));
    }

    #[test]
    fn unknown_command_is_refused() {
        let (_d, k) = key();
        let mut p = ping();
        p.name = "format-disk".into();
        assert_eq!(code(&k, &p, false), "unknown_command");
    }

    #[test]
    fn unsigned_command_is_refused() {
        let (_d, k) = key();
        let json = serde_json::to_vec(&ping()).unwrap();
        let doc = format!(
            "eyJhbGciOiJub25lIn0.{}.",
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, json)
        );
        let r = judge(doc.as_bytes(), "gw-1", &[k.public().clone()], NOW, |_| {
            false
        })
        .unwrap_err();
        assert!(r.id.is_none(), "an unsigned id is not believed");
        assert!(matches!(r.refusal, CommandRefusal::Envelope(_)));
    }

    #[test]
    fn command_from_an_untrusted_key_is_refused() {
        let (_d, k) = key();
        let (_d2, other) = key();
        let r = judge(
            ping().sign(&other).as_bytes(),
            "gw-1",
            &[k.public().clone()],
            NOW,
            |_| false,
        )
        .unwrap_err();
        assert_eq!(r.refusal.code(), "untrusted_key");
    }

    #[test]
    fn configuration_document_is_not_a_command() {
        let (_d, k) = key();
        let doc = jws::sign(&k, jws::TYPE_CONFIG, &serde_json::to_vec(&ping()).unwrap());
        let r = judge(doc.as_bytes(), "gw-1", &[k.public().clone()], NOW, |_| {
            false
        })
        .unwrap_err();
        assert_eq!(r.refusal.code(), "wrong_type");
    }
}
