//! `vitalgate status`: the verdict, a short human summary for a terminal and the JSON
//! document for scripts and probes.
//!
//! The running daemon is asked over the live socket. When the socket is absent or does not
//! answer, the gateway is *unreachable* (exit 2) and the document falls back to what can be
//! read without it: the outbox counts and the last `status.json` snapshot, marked stale.

use serde_json::{json, Value as Json};
use time::OffsetDateTime;

use super::health::{age, evaluate, human_secs, Health, Verdict};
use super::model::LiveState;
use crate::config::Config;

/// What `status` prints and how it exits.
#[derive(Debug, Clone)]
pub struct StatusReport {
    pub health: Health,
    pub live: Option<LiveState>,
    /// The JSON document (`--json` or when piped).
    pub document: Json,
}

/// Asks the daemon (or falls back) and judges.
pub fn status(config: &Config) -> StatusReport {
    let mut document = crate::daemon::status_json(config).unwrap_or_else(
        |e| json!({ "gateway": config.gateway_id().ok(), "outbox": { "error": e.to_string() } }),
    );
    let socket = super::socket_path(&config.gateway.state_dir);
    match super::fetch(&socket) {
        Ok(live) => {
            let health = evaluate(&live, &config.status);
            document["daemon"]["running"] = json!(true);
            document["daemon"]["pid"] = json!(live.pid);
            document["daemon"]["updated_at"] = json!(crate::status::rfc3339(live.now));
            document["daemon"]["clock_synced"] = json!(live.clock_synced);
            for (key, value) in [
                ("devices", serde_json::to_value(&live.devices)),
                ("patients", serde_json::to_value(&live.patients)),
                ("uplink", serde_json::to_value(&live.uplink)),
                ("ingest", serde_json::to_value(&live.ingest)),
                ("storage", serde_json::to_value(&live.storage)),
            ] {
                document[key] = value.unwrap_or(Json::Null);
            }
            document["health"] = serde_json::to_value(&health).unwrap_or(Json::Null);
            StatusReport {
                health,
                live: Some(live),
                document,
            }
        }
        Err(e) => {
            let health = Health {
                verdict: Verdict::Unreachable,
                reasons: vec![e.to_string()],
            };
            document["health"] = serde_json::to_value(&health).unwrap_or(Json::Null);
            StatusReport {
                health,
                live: None,
                document,
            }
        }
    }
}

impl StatusReport {
    /// A few lines for a person at a terminal.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let gateway = self.document["gateway"].as_str().unwrap_or("gateway");
        let verdict = match self.health.verdict {
            Verdict::Healthy => "HEALTHY",
            Verdict::Degraded => "DEGRADED",
            Verdict::Unreachable => "UNREACHABLE",
        };
        out.push_str(&format!("vitalgate {gateway}: {verdict}\n"));
        for r in &self.health.reasons {
            out.push_str(&format!("  ! {r}\n"));
        }
        let d = &self.document;
        let backlog = d["backlog"]["total"].as_u64().unwrap_or(0);
        let alerts = d["backlog"]["alerts"].as_u64().unwrap_or(0);
        let when = |k: &str, now: OffsetDateTime| -> String {
            d[k].as_str()
                .and_then(|t| {
                    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
                })
                .map(|t| format!("{} ago", age(now, t)))
                .unwrap_or_else(|| "never".into())
        };
        let now = self
            .live
            .as_ref()
            .map(|l| l.now)
            .unwrap_or_else(OffsetDateTime::now_utc);
        out.push_str(&format!(
            "outbox    backlog {backlog} ({alerts} alerts), oldest undelivered {}, last ack {}\n",
            when("oldest_undelivered", now).replace("never", "none"),
            when("last_ack", now)
        ));
        let Some(live) = &self.live else {
            out.push_str("daemon    not reachable: figures above are from the outbox on disk\n");
            return out;
        };
        match &live.uplink {
            Some(u) => {
                let state = if u.connected { "connected" } else { "DOWN" };
                let cert = u
                    .cert_not_after
                    .map(|t| {
                        let days = (t - now).whole_days();
                        if days < 0 {
                            "certificate EXPIRED".to_owned()
                        } else {
                            format!("certificate expires in {days} d")
                        }
                    })
                    .unwrap_or_default();
                out.push_str(&format!(
                    "uplink    {state} for {}, {} delivered, {cert}\n",
                    age(now, u.since),
                    u.delivered
                ));
            }
            None => out.push_str("uplink    none configured: readings stay in the outbox\n"),
        }
        for dev in &live.devices {
            let last = dev
                .last_data_at
                .map(|t| format!("last data {} ago", age(now, t)))
                .unwrap_or_else(|| "no data yet".into());
            out.push_str(&format!(
                "device    {:<20} {:<12} {last}\n",
                dev.id, dev.state
            ));
        }
        for p in &live.patients {
            let news2 = p
                .news2
                .as_ref()
                .map(|n| format!("NEWS2 {} ({})", n.total, band_text(n.band)))
                .unwrap_or_else(|| "NEWS2 -".into());
            let alerts = match p.alerts.first() {
                Some(top) => format!(
                    ", {} open alert(s), highest {} {}",
                    p.alerts.len(),
                    top.priority.as_str().to_uppercase(),
                    top.rule
                ),
                None => String::new(),
            };
            out.push_str(&format!("patient   {:<20} {news2}{alerts}\n", p.id));
        }
        out.push_str(&format!(
            "clock     {}\n",
            if live.clock_synced {
                "synchronised"
            } else {
                "NOT synchronised"
            }
        ));
        if let Some(free) = live.storage.free_bytes {
            out.push_str(&format!(
                "storage   {} free, outbox {}\n",
                bytes(free),
                bytes(live.storage.outbox_bytes)
            ));
        }
        out.push_str(&format!(
            "daemon    pid {}, up {}\n",
            live.pid,
            human_secs((now - live.started_at).whole_seconds().max(0) as u64)
        ));
        out
    }
}

/// A NEWS2 band as words (never colour alone).
pub fn band_text(b: crate::alerts::RiskBand) -> &'static str {
    use crate::alerts::RiskBand;
    match b {
        RiskBand::Low => "low",
        RiskBand::LowMedium => "low-medium",
        RiskBand::Medium => "MEDIUM",
        RiskBand::High => "HIGH",
    }
}

/// `12.3 GB`, `4.1 MB`, `512 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
