//! The operator's side of the fleet, behind `vitalgate fleet ...` (main.rs parses the
//! arguments and maps errors to exit codes; the work is here).
//!
//! - `keygen --out DIR`: a new Ed25519 key pair (`fleet.key` 0600, `fleet.pub`).
//! - `sign --key KEY --gateway GW --version N OVERLAY.toml`: the signed document on stdout.
//! - `command --key KEY --gateway GW NAME [ARGS]`: a signed command on stdout.
//!
//! Each checks what it can before signing (an overlay with a local-only key or a type error
//! is refused here, not only at the hub) and records what it signed in `audit.log` beside the
//! key: which document for which gateway under which key, never the overlay's content.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::command::{CommandPayload, KNOWN, MAX_LIFETIME};
use super::document::ConfigPayload;
use super::keys::{self, Generated, KeyError, SigningKey};
use super::overlay::{Overlay, OverlayError};
use super::{sha256_hex, MAX_DOCUMENT_BYTES};

/// Why a fleet command cannot do its job; all are usage or configuration errors (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{path}: the overlay cannot be sent: {source}")]
    Overlay { path: PathBuf, source: OverlayError },
    #[error("{0}")]
    Usage(String),
}

/// `vitalgate fleet keygen --out DIR`.
pub fn keygen(out: &Path) -> Result<Generated, CliError> {
    let g = keys::generate(out)?;
    audit(
        out,
        "fleet_keygen",
        serde_json::json!({"key_id": g.key_id, "public_key": g.public_key}),
    );
    Ok(g)
}

fn check_gateway(gateway: &str) -> Result<(), CliError> {
    let ok = (1..=64).contains(&gateway.len())
        && gateway
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "--gateway {gateway:?}: a gateway id is 1-64 of A-Z a-z 0-9 - _ . (its certificate CN)"
        )))
    }
}

/// `vitalgate fleet sign`: the signed configuration document for `gateway`.
pub fn sign(
    key: &Path,
    gateway: &str,
    version: u64,
    overlay_path: &Path,
    expires_in: Option<time::Duration>,
    now: OffsetDateTime,
) -> Result<String, CliError> {
    check_gateway(gateway)?;
    if version == 0 {
        return Err(CliError::Usage(
            "--version 0: versions start at 1 and must increase with every document for a gateway"
                .into(),
        ));
    }
    let signer = SigningKey::load(key)?;
    let bytes = keys::read_capped(overlay_path, MAX_DOCUMENT_BYTES as u64)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| CliError::Usage(format!("{}: not UTF-8 text", overlay_path.display())))?;
    Overlay::parse(&text).map_err(|source| CliError::Overlay {
        path: overlay_path.to_path_buf(),
        source,
    })?;
    let payload = ConfigPayload {
        gateway: gateway.to_owned(),
        version,
        issued_at: now,
        expires_at: expires_in.map(|d| now + d),
        overlay: text,
    };
    let doc = payload.sign(&signer);
    if doc.len() > MAX_DOCUMENT_BYTES {
        return Err(CliError::Usage(format!(
            "{}: the signed document would be {} bytes, above the hubs' limit of {MAX_DOCUMENT_BYTES}",
            overlay_path.display(),
            doc.len()
        )));
    }
    let json = serde_json::to_vec(&payload).unwrap_or_default();
    audit_beside(
        key,
        "fleet_sign",
        serde_json::json!({"gateway": gateway, "version": version, "sha256": sha256_hex(&json), "key_id": signer.key_id()}),
    );
    Ok(doc)
}

/// `vitalgate fleet command`: a signed command for `gateway`, valid for `lifetime`.
pub fn command(
    key: &Path,
    gateway: &str,
    name: &str,
    args: Vec<String>,
    lifetime: time::Duration,
    now: OffsetDateTime,
) -> Result<(String, CommandPayload), CliError> {
    check_gateway(gateway)?;
    if !KNOWN.contains(&name) {
        return Err(CliError::Usage(format!(
            "unknown command {name:?}; known: {}",
            KNOWN.join(", ")
        )));
    }
    if name == "resync" {
        super::resync::range(&args).map_err(CliError::Usage)?;
    }
    if lifetime <= time::Duration::ZERO || lifetime > MAX_LIFETIME {
        return Err(CliError::Usage(format!(
            "--expires-in: a command is valid for 1 second to {} hours",
            MAX_LIFETIME.whole_hours()
        )));
    }
    let signer = SigningKey::load(key)?;
    let payload = CommandPayload::new(gateway, name, args, now, lifetime);
    let doc = payload.sign(&signer);
    audit_beside(
        key,
        "fleet_command_signed",
        serde_json::json!({"gateway": gateway, "id": payload.id, "name": name, "key_id": signer.key_id()}),
    );
    Ok((doc, payload))
}

/// Records an event in the audit log in the directory of the signing key `key`.
fn audit_beside(key: &Path, event: &str, details: serde_json::Value) {
    let dir = match key.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    audit(dir, event, details);
}

/// The operator's log of fleet key operations, `fleet-operations.log` beside the signing key:
/// one JSON line per keygen, signature and command (time, event, details), mode 0600. It is
/// not the hub's MAC-chained audit log: that one is keyed from a hub's master key, which an
/// operator's workstation does not hold; the hub audits every document and command it
/// receives in its own chain.
fn audit(dir: &Path, event: &str, details: serde_json::Value) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let line = serde_json::json!({
        "time": crate::status::rfc3339(time::OffsetDateTime::now_utc()),
        "event": event,
        "details": details,
    });
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.join("fleet-operations.log"))
        .and_then(|mut f| writeln!(f, "{line}").and_then(|()| f.sync_data()));
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot write the operator log of fleet key operations");
    }
}
