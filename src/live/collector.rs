//! The daemon task that assembles [`LiveState`] once a second from the parts that already
//! keep it: the device [`Registry`], the ingest counters, the uplink's status channel, the
//! tap's clinical picture, and (every few seconds, read-only, without the key) the outbox
//! counts. Readers get the last assembled document; nobody waits on the ingest path.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::model::*;
use super::tap::ClinicalCell;
use crate::alerts::Priority;
use crate::ingest::IngestCounters;
use crate::status::Registry;
use crate::uplink::UplinkStatus;

/// How often the document is rebuilt.
pub const EVERY: Duration = Duration::from_secs(1);
/// How often the outbox is counted (a read-only query; cheap, but not free on a big backlog).
const COUNT_EVERY: Duration = Duration::from_secs(3);

/// The daemon's live state: the latest document and the tap's shared picture. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Live {
    latest: Arc<RwLock<Option<LiveState>>>,
    clinical: ClinicalCell,
}

impl Live {
    /// The clinical picture the ingest tap writes into.
    pub fn clinical(&self) -> ClinicalCell {
        self.clinical.clone()
    }

    /// The last assembled document (`None` until the collector's first round).
    pub fn latest(&self) -> Option<LiveState> {
        self.latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn publish(&self, state: LiveState) {
        *self.latest.write().unwrap_or_else(|p| p.into_inner()) = Some(state);
    }
}

/// Where the collector reads from.
pub struct Sources {
    pub gateway: String,
    pub started_at: OffsetDateTime,
    pub registry: Registry,
    pub counters: Arc<IngestCounters>,
    pub uplink: Option<watch::Receiver<UplinkStatus>>,
    pub outbox_path: PathBuf,
    pub state_dir: PathBuf,
    pub capacity: u64,
}

/// Per-bucket counts from cumulative counters.
#[derive(Debug)]
struct History {
    buckets: VecDeque<(i64, u64, u64)>, // (bucket index, ingest, delivery)
    last: Option<(u64, u64)>,
}

impl History {
    fn new() -> Self {
        History {
            buckets: VecDeque::with_capacity(BUCKETS + 1),
            last: None,
        }
    }

    /// Adds what the cumulative counters grew by since the last call to `now`'s bucket.
    fn record(&mut self, now: OffsetDateTime, committed: u64, delivered: u64) {
        let (di, dd) = match self.last {
            Some((c, d)) => (committed.saturating_sub(c), delivered.saturating_sub(d)),
            None => (0, 0),
        };
        self.last = Some((committed, delivered));
        let index = now.unix_timestamp().div_euclid(BUCKET_SECS as i64);
        match self.buckets.back_mut() {
            Some(b) if b.0 == index => {
                b.1 += di;
                b.2 += dd;
            }
            _ => self.buckets.push_back((index, di, dd)),
        }
        while self.buckets.len() > BUCKETS {
            self.buckets.pop_front();
        }
    }

    /// The last hour, oldest first, with empty buckets for minutes nothing was recorded in.
    fn render(&self, now: OffsetDateTime) -> RateHistory {
        let current = now.unix_timestamp().div_euclid(BUCKET_SECS as i64);
        let first = current - BUCKETS as i64 + 1;
        let (mut ingest, mut delivery) = (vec![0; BUCKETS], vec![0; BUCKETS]);
        for &(i, n, d) in &self.buckets {
            if i >= first && i <= current {
                let slot = (i - first) as usize;
                ingest[slot] = n;
                delivery[slot] = d;
            }
        }
        RateHistory {
            bucket_secs: BUCKET_SECS,
            ingest,
            delivery,
        }
    }
}

/// Runs until `token` is cancelled.
pub async fn run(live: Live, src: Sources, token: CancellationToken) {
    let mut history = History::new();
    let mut outbox = OutboxLive {
        capacity: src.capacity,
        ..OutboxLive::default()
    };
    let mut storage = StorageLive::default();
    let mut last_count: Option<tokio::time::Instant> = None;
    let mut uplink_state: Option<(bool, OffsetDateTime)> = None;
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = every.tick() => {}
        }
        if last_count.is_none_or(|t| t.elapsed() >= COUNT_EVERY) {
            last_count = Some(tokio::time::Instant::now());
            let (path, dir) = (src.outbox_path.clone(), src.state_dir.clone());
            if let Ok((counted, store)) =
                crate::task::spawn_blocking(move || (count(&path), storage_of(&dir, &path))).await
            {
                if let Some(c) = counted {
                    outbox = OutboxLive {
                        capacity: src.capacity,
                        ..c
                    };
                }
                storage = store;
            }
        }
        let now = OffsetDateTime::now_utc();
        let uplink = src.uplink.as_ref().map(|rx| {
            let s = rx.borrow().clone();
            let since = match uplink_state {
                Some((was, since)) if was == s.connected => since,
                // The first look: a connected uplink counts from now, a down one from start.
                None if !s.connected => src.started_at,
                _ => now,
            };
            uplink_state = Some((s.connected, since));
            UplinkLive {
                connected: s.connected,
                since,
                connects: s.connects,
                delivered: s.delivered,
                refused: s.refused,
                in_flight: s.in_flight,
                last_ack: s.last_ack,
                last_error: s.last_error.clone(),
                cert_not_after: s.cert_not_after,
            }
        });
        let committed = src.counters.readings_committed.load(Ordering::Relaxed);
        history.record(now, committed, uplink.as_ref().map_or(0, |u| u.delivered));
        live.publish(assemble(
            &live,
            &src,
            now,
            outbox.clone(),
            storage.clone(),
            uplink,
            &history,
        ));
    }
}

fn assemble(
    live: &Live,
    src: &Sources,
    now: OffsetDateTime,
    outbox: OutboxLive,
    storage: StorageLive,
    uplink: Option<UplinkLive>,
    history: &History,
) -> LiveState {
    let clinical = live.clinical.lock();
    let registry = src.registry.snapshot(now);
    let devices = registry
        .into_iter()
        .map(|d| DeviceLive {
            last_values: clinical
                .values
                .get(&d.id)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default(),
            state: serde_json::to_value(d.state)
                .ok()
                .and_then(|s| s.as_str().map(str::to_owned))
                .unwrap_or_default(),
            id: d.id,
            patient: d.patient,
            driver: d.driver,
            last_data_at: d.last_data_at,
            frames: d.frames,
            readings: d.readings,
            decode_errors: d.decode_errors,
            last_error: d.last_error,
        })
        .collect::<Vec<_>>();
    let mut patient_ids: Vec<String> = devices.iter().map(|d| d.patient.clone()).collect();
    patient_ids.extend(clinical.open.keys().cloned());
    patient_ids.extend(clinical.news2.keys().cloned());
    patient_ids.sort();
    patient_ids.dedup();
    let patients = patient_ids
        .into_iter()
        .map(|id| {
            let mut alerts: Vec<AlertLive> = clinical
                .open
                .get(&id)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            alerts.sort_by(|a, b| {
                b.priority
                    .cmp(&a.priority)
                    .then(a.raised_at.cmp(&b.raised_at))
            });
            PatientLive {
                news2: clinical.news2.get(&id).cloned(),
                alerts,
                id,
            }
        })
        .collect();
    LiveState {
        protocol: PROTOCOL,
        gateway: src.gateway.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        started_at: src.started_at,
        now,
        clock_synced: crate::daemon::clock_synced(),
        devices,
        patients,
        outbox,
        rates: history.render(now),
        uplink,
        storage,
        ingest: IngestLive {
            frames_received: src.counters.frames_received.load(Ordering::Relaxed),
            readings_committed: src.counters.readings_committed.load(Ordering::Relaxed),
            readings_rejected: src.counters.readings_rejected.load(Ordering::Relaxed),
            transactions: src.counters.transactions.load(Ordering::Relaxed),
            commit_failures: src.counters.commit_failures.load(Ordering::Relaxed),
        },
    }
}

fn count(path: &std::path::Path) -> Option<OutboxLive> {
    if !path.exists() {
        return None;
    }
    match crate::store::outbox::stats_readonly(path) {
        Ok(s) => Some(OutboxLive {
            backlog_readings: s.backlog_readings,
            backlog_alerts: s.backlog_alerts,
            oldest_undelivered: s.oldest_undelivered,
            last_ack: s.last_ack,
            quarantined: s.quarantined,
            capacity: 0,
            counted_at: Some(OffsetDateTime::now_utc()),
        }),
        Err(e) => {
            tracing::debug!(error = %e, "live view cannot count the outbox");
            None
        }
    }
}

/// Free and total space of the state directory's file system, and the outbox's size.
pub fn storage_of(dir: &std::path::Path, outbox: &std::path::Path) -> StorageLive {
    let (free, total) = match rustix::fs::statvfs(dir) {
        Ok(s) => (
            Some(s.f_bavail.saturating_mul(s.f_frsize)),
            Some(s.f_blocks.saturating_mul(s.f_frsize)),
        ),
        Err(_) => (None, None),
    };
    let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = outbox.as_os_str().to_owned();
    wal.push("-wal");
    StorageLive {
        free_bytes: free,
        total_bytes: total,
        outbox_bytes: size(outbox.to_path_buf()) + size(PathBuf::from(wal)),
    }
}

/// The highest priority among open alerts, for a one-word summary.
pub fn highest_priority(state: &LiveState) -> Option<Priority> {
    state
        .patients
        .iter()
        .flat_map(|p| p.alerts.iter().map(|a| a.priority))
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> OffsetDateTime {
        // 1_800_000_000 is a whole minute.
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn history_puts_counter_growth_in_the_minute_it_happened() {
        let mut h = History::new();
        h.record(at(0), 100, 10);
        h.record(at(30), 160, 40);
        h.record(at(61), 200, 40);
        let r = h.render(at(61));
        assert_eq!(r.ingest.len(), BUCKETS);
        assert_eq!(&r.ingest[BUCKETS - 2..], &[60, 40]);
        assert_eq!(&r.delivery[BUCKETS - 2..], &[30, 0]);
    }

    #[test]
    fn history_forgets_buckets_older_than_an_hour() {
        let mut h = History::new();
        h.record(at(0), 0, 0);
        h.record(at(1), 5, 0);
        let r = h.render(at(3600));
        assert!(r.ingest.iter().all(|&n| n == 0), "{:?}", r.ingest);
    }
}
