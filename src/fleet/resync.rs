//! The `resync` command: `resync FROM UNTIL` (RFC 3339, whole minutes, half-open) re-opens
//! the delivered readings the hub received in that range and still holds, so the publisher
//! sends them again with the same Observation ids (`store::delivery`). Answered with exact
//! counts, audited as `outbox_resync`, and the publisher is made to re-read the outbox.

use std::path::Path;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::audit::AuditLog;
use crate::store::delivery::{self, MinuteRange};

/// The range the arguments name, or why they name none (`invalid_arguments`).
pub fn range(args: &[String]) -> Result<MinuteRange, String> {
    let [from, until] = args else {
        return Err(format!(
            "resync takes two arguments, FROM and UNTIL (RFC 3339, whole minutes), got {}",
            args.len()
        ));
    };
    let parse = |which: &str, text: &str| {
        OffsetDateTime::parse(text, &Rfc3339)
            .map_err(|e| format!("{which} is not an RFC 3339 time ({e})"))
    };
    MinuteRange::new(parse("FROM", from)?, parse("UNTIL", until)?).map_err(|e| e.to_string())
}

/// Runs a resync on the outbox at `outbox`: the `answer` of `cmd/result`, or why it failed
/// (nothing changed then: the store's transaction rolled back).
pub fn run(
    outbox: &Path,
    args: &[String],
    command_id: &str,
    audit: &AuditLog,
) -> Result<serde_json::Value, String> {
    let range = range(args)?;
    let done = delivery::reopen_delivered(outbox, range).map_err(|e| e.to_string())?;
    let answer = serde_json::json!({
        "from": args[0], "until": args[1],
        "reopened": done.reopened, "already_pending": done.already_pending,
        "not_held": done.not_held, "purged": done.purged, "quarantined": done.quarantined,
    });
    audit.note(
        "outbox_resync",
        serde_json::json!({"command_id": command_id, "counts": answer}),
    );
    tracing::info!(
        id = command_id,
        reopened = done.reopened,
        not_held = done.not_held,
        "resync: delivered readings re-opened"
    );
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::range;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn resync_arguments_are_two_rfc3339_times_on_whole_minutes() {
        assert!(range(&args(&[
            "2026-12-01T10:00:00Z",
            "2026-12-01T11:00:00+01:00"
        ]))
        .is_err());
        assert!(range(&args(&["2026-12-01T10:00:00Z", "2026-12-01T10:05:00Z"])).is_ok());
        assert!(range(&args(&["2026-12-01T10:00:00Z"]))
            .unwrap_err()
            .contains("two arguments"));
        assert!(range(&args(&["yesterday", "2026-12-01T10:05:00Z"]))
            .unwrap_err()
            .contains("FROM is not an RFC 3339"));
        assert!(
            range(&args(&["2026-12-01T10:00:30Z", "2026-12-01T10:05:00Z"]))
                .unwrap_err()
                .contains("whole minute")
        );
    }
}
