//! Audit entries for what other connections do to the outbox: a record that fails
//! authentication is moved to quarantine by whichever connection reads it (the publisher's),
//! so the count is watched here and each increase audited as `quarantine`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::AuditLog;
use crate::store::Outbox;

/// How often the quarantine count is read (a few indexed counts; see `Outbox::stats`).
const EVERY: Duration = Duration::from_secs(10);

/// Until `token` is cancelled, and once more after it: audits rows newly quarantined since
/// the count read at start.
pub async fn quarantine(outbox: Outbox, audit: Arc<AuditLog>, token: CancellationToken) {
    let outbox = Arc::new(std::sync::Mutex::new(outbox));
    let count = || {
        let outbox = outbox.clone();
        async move {
            crate::task::spawn_blocking(move || {
                let ob = outbox.lock().unwrap_or_else(|p| p.into_inner());
                ob.stats().map(|s| s.quarantined)
            })
            .await
            .ok()
            .and_then(|r| {
                r.map_err(|e| tracing::warn!(error = %e, "cannot read the quarantine count"))
                    .ok()
            })
        }
    };
    let Some(mut seen) = count().await else {
        return;
    };
    loop {
        let stop = tokio::select! {
            _ = token.cancelled() => true,
            _ = tokio::time::sleep(EVERY) => false,
        };
        if let Some(now) = count().await {
            if now > seen {
                audit.note(
                    "quarantine",
                    serde_json::json!({ "rows": now - seen, "total": now }),
                );
            }
            seen = seen.max(now);
        }
        if stop {
            return;
        }
    }
}
