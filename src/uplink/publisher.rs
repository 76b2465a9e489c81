//! The at-least-once publisher: outbox rows -> MQTT 5 QoS 1 -> PUBACK -> `mark_delivered`.
//!
//! One task owns both the rumqttc `AsyncClient` and `EventLoop::poll()` (rust-stack.md §1.3).
//! Rows are handed to rumqttc in order and a FIFO of row tags is matched to packet ids as
//! `Outgoing::Publish(pkid)` events come out, so each PUBACK is matched to its own row; a row
//! is marked delivered only when its PUBACK reason is `Success`.
//!
//! "No matching subscribers" (0x10) means nobody received the message: the platform's consumer
//! is gone (restarting, or its subscription was lost with a broker restart). With
//! `uplink.no_subscribers = "retry"` (the default) such rows stay undelivered: publishing
//! pauses, then one row at a time probes with backoff until a PUBACK `Success` says someone
//! subscribes again, and everything held flows. After `no_subscribers_alarm_s` the status
//! raises the `platform_not_subscribed` technical condition. `"delivered"` takes 0x10 as
//! delivery, for a platform that consumes by other means than a subscription.
//!
//! Deliberately *not* relied upon: rumqttc's session resume and `pending` queue. Every
//! connection is a fresh client with clean start; after any disconnect the window is dropped
//! and unacknowledged rows are re-read from the outbox, so duplicates are bounded by the
//! in-flight window and nothing depends on memory that a crash would lose (§1.2).
//!
//! Alerts always go before readings; payloads too large for the negotiated Maximum Packet Size
//! are refused up front (rumqttc would otherwise fail the connection on them, §1.5); refused
//! rows are kept, reported and retried with backoff; reconnects back off with jitter up to
//! `backoff_max_s`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{ConnAck, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, Incoming};
use rumqttc::Outgoing as MqttOut;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::audit_lane::{AuditEntry, AuditLane, AuditSource};
use super::backoff::Backoff;
use super::config::{ConfigError, NoSubscribers, UplinkConfig};
use super::session;
use super::source::{Lane, OutboxSource};
use super::status_feed::StatusFeed;
use super::tls::{self, LoadedTls};
use super::topics::{publish_packet_len, status_payload, State, Topics};

/// What the status page and `vitalgate status` show about the uplink.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UplinkStatus {
    /// A ConnAck was received and the connection has not failed since.
    pub connected: bool,
    /// The gateway id in use (configured or the certificate CN).
    pub gateway_id: Option<String>,
    /// Successful connections (ConnAcks) since start.
    pub connects: u64,
    /// Rows marked delivered since start.
    pub delivered: u64,
    /// Rows refused (by the broker, or too large) since start; each refusal counts.
    pub refused: u64,
    /// Time of the last successful PUBACK.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_ack: Option<OffsetDateTime>,
    /// The last error, as a sentence (connection, TLS files, refusal, outbox).
    pub last_error: Option<String>,
    /// notAfter of the client certificate in use.
    #[serde(with = "time::serde::rfc3339::option")]
    pub cert_not_after: Option<OffsetDateTime>,
    /// Publishes awaiting PUBACK.
    pub in_flight: usize,
    /// Since when the broker has answered "no matching subscribers" (0x10) without a success
    /// in between: nobody is receiving; rows are kept and retried (`no_subscribers = "retry"`).
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_subscribed_since: Option<OffsetDateTime>,
    /// Technical conditions of the uplink: `platform_not_subscribed` once the above lasted
    /// `no_subscribers_alarm_s`.
    pub conditions: Vec<&'static str>,
}

/// The technical condition raised when the platform has not subscribed for too long.
pub const PLATFORM_NOT_SUBSCRIBED: &str = "platform_not_subscribed";

/// How often a publisher keeping up with live readings records their acknowledgements: a
/// record is a transaction with its own disk sync, and at 1 Hz one a second wrote more
/// than a hundred bytes per reading to the SD card (issue 18). A window's worth (`inflight`,
/// at most `batch_size`) is recorded at once, so redelivery after a crash stays bounded by
/// the in-flight window (HAZ-05), and everything is recorded before a disconnect or stop. Rows acknowledged
/// but not yet recorded when the process dies are sent again after the restart, with the
/// same Observation ids (at least once, as after any crash); none is ever lost.
///
/// A backlog (the source handed over a window's worth or more at once) is different: its
/// last acknowledgements are recorded as soon as its window empties, so a drain ends with
/// its rows marked, not up to this interval later (`record_now`).
pub const ACK_RECORD_EVERY: Duration = Duration::from_secs(5);

/// Whether acknowledged rows are recorded now: a window's worth (`chunk`) is pending, or the
/// window is empty and either a backlog has just drained or [`ACK_RECORD_EVERY`] is over.
fn record_now(
    pending: usize,
    chunk: usize,
    window_empty: bool,
    draining: bool,
    due: Instant,
    now: Instant,
) -> bool {
    pending >= chunk || (window_empty && (draining || due <= now))
}

/// Why the uplink cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The configuration is invalid; each entry names a key.
    #[error("invalid uplink configuration: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Config(Vec<ConfigError>),
}

/// The MQTT uplink task. Build with [`Uplink::new`], then `run` it until cancelled.
pub struct Uplink<S: OutboxSource> {
    cfg: UplinkConfig,
    source: S,
    /// Notified by ingest after each commit: new rows may be waiting.
    wake: Arc<Notify>,
    /// Notified (e.g. on SIGHUP) to reload certificate, key and CA from disk.
    reload: Arc<Notify>,
    status: watch::Sender<UplinkStatus>,
    /// The audit log and its forwarding cursor (`None`: audit entries are not forwarded).
    audit: Option<Box<dyn AuditSource>>,
    /// The status telemetry (`None`: the short online/offline payload only).
    status_feed: Option<StatusFeed>,
}

#[derive(Debug, Clone)]
struct Row {
    id: i64,
    lane: Lane,
    payload: Bytes,
}

#[derive(Debug)]
enum Tag {
    Row(Row),
    Status,
    /// An audit entry, by sequence number.
    Audit(u64),
}

/// Publishes handed to rumqttc and not yet acknowledged.
#[derive(Debug, Default)]
struct Window {
    /// Handed to `try_publish`, packet id not yet known (FIFO, rumqttc keeps request order).
    queued: VecDeque<Tag>,
    /// Written to the network under this packet id.
    sent: HashMap<u16, Tag>,
}

impl Window {
    fn len(&self) -> usize {
        self.queued.len() + self.sent.len()
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

enum Refusal {
    /// Retry at this instant (attempt count for the backoff).
    Broker { attempts: u32, due: Instant },
    /// Too large for this packet size limit: never re-sent while the limit stays.
    TooLarge { limit: usize },
}

/// The platform's consumer is gone: PUBACKs say "no matching subscribers".
struct NotSubscribed {
    since: Instant,
    /// Probes answered 0x10 so far (the backoff's attempt count).
    attempts: u32,
    /// No row is sent before this; then one probe at a time.
    resume_at: Instant,
    /// The row sent as the current probe.
    probe: Option<i64>,
    /// `platform_not_subscribed` is raised in the status.
    raised: bool,
}

/// How one connection ended.
enum End {
    Shutdown,
    Failed { connacked: bool, acked: bool },
    Reload(Box<LoadedTls>),
}

enum Action {
    Cancel,
    Reload,
    Wake,
    Tick,
    /// The status telemetry asks to be published (false: its sender is gone).
    Telemetry(bool),
    Poll(Box<Result<Event, rumqttc::v5::ConnectionError>>),
}

/// What the publisher sends next.
enum Next {
    Row(Row),
    Audit(AuditEntry),
}

/// State that outlives one connection.
struct Pump<S: OutboxSource> {
    cfg: UplinkConfig,
    source: S,
    status: watch::Sender<UplinkStatus>,
    refusals: HashMap<i64, Refusal>,
    /// Acknowledged rows not yet recorded by `mark_delivered`.
    acked: Vec<i64>,
    /// When `acked` was last recorded, and when it must be at the latest (see
    /// [`ACK_RECORD_EVERY`]).
    recorded_at: Instant,
    record_due: Option<Instant>,
    /// The source handed over a window's worth or more in one batch since the window was
    /// last empty: a backlog is draining (see [`ACK_RECORD_EVERY`]).
    draining: bool,
    // per connection:
    topics: Topics,
    after: [i64; 2],
    queues: [VecDeque<Row>; 2],
    exhausted: [bool; 2],
    retry: Vec<(Instant, Row)>,
    rescan_at: Option<Instant>,
    window: Window,
    win_cap: usize,
    max_packet: usize,
    delivered_since_flush: u64,
    last_ack: Option<OffsetDateTime>,
    /// Set while the platform is not subscribed (`no_subscribers = "retry"`); outlives a
    /// connection, as it is the platform's state, not the link's.
    not_subscribed: Option<NotSubscribed>,
    /// The audit lane (`audit_lane.rs`), when audit entries are forwarded.
    audit: Option<AuditLane>,
    /// Audit and readings take turns behind alerts: true when audit goes next.
    audit_turn: bool,
    /// Audit acknowledgements since the cursor was last recorded.
    audit_acked: usize,
    status_feed: Option<StatusFeed>,
    /// When the current connection's ConnAck arrived.
    online_since: OffsetDateTime,
}

fn lane_ix(l: Lane) -> usize {
    match l {
        Lane::Alert => 0,
        Lane::Reading => 1,
    }
}

/// The wire reason code (MQTT 5 §3.4.2.1); `PubAckReason` has no explicit discriminants.
fn wire_code(r: &PubAckReason) -> u8 {
    match r {
        PubAckReason::Success => 0x00,
        PubAckReason::NoMatchingSubscribers => 0x10,
        PubAckReason::UnspecifiedError => 0x80,
        PubAckReason::ImplementationSpecificError => 0x83,
        PubAckReason::NotAuthorized => 0x87,
        PubAckReason::TopicNameInvalid => 0x90,
        PubAckReason::PacketIdentifierInUse => 0x91,
        PubAckReason::QuotaExceeded => 0x97,
        PubAckReason::PayloadFormatInvalid => 0x99,
    }
}

fn now_utc() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

impl<S: OutboxSource> Uplink<S> {
    /// Validates `cfg` and prepares the task; no IO happens until [`Uplink::run`].
    /// `wake` is notified by ingest whenever rows are committed.
    pub fn new(cfg: UplinkConfig, source: S, wake: Arc<Notify>) -> Result<Self, UplinkError> {
        cfg.validate().map_err(UplinkError::Config)?;
        let (status, _) = watch::channel(UplinkStatus::default());
        Ok(Self {
            cfg,
            source,
            wake,
            reload: Arc::new(Notify::new()),
            status,
            audit: None,
            status_feed: None,
        })
    }

    /// Forwards the audit log on `{prefix}/gw/{gw}/audit` (`audit_lane.rs`).
    pub fn with_audit(mut self, source: Box<dyn AuditSource>) -> Self {
        self.audit = Some(source);
        self
    }

    /// Publishes the status telemetry of `feed` on connect and whenever it asks.
    pub fn with_status_feed(mut self, feed: StatusFeed) -> Self {
        self.status_feed = Some(feed);
        self
    }

    /// A live view of the uplink state.
    pub fn status(&self) -> watch::Receiver<UplinkStatus> {
        self.status.subscribe()
    }

    /// Notify this to reload certificate, key and CA from disk and reconnect. Invalid new
    /// files are reported in `last_error` and the working configuration stays in use.
    pub fn reload_handle(&self) -> Arc<Notify> {
        self.reload.clone()
    }

    /// Runs until `shutdown` is cancelled: connects, drains the outbox, reconnects with
    /// backoff. On shutdown it stops sending, waits up to `drain_timeout_ms` for PUBACKs,
    /// publishes the retained `offline` status and disconnects. Never returns an error:
    /// every failure is reported in the status and retried.
    pub async fn run(self, shutdown: CancellationToken) {
        let Uplink {
            cfg,
            source,
            wake,
            reload,
            status,
            audit,
            status_feed,
        } = self;
        let mut backoff = Backoff::new(
            Duration::from_millis(cfg.backoff_initial_ms),
            Duration::from_secs(cfg.backoff_max_s),
        );
        // `uplink.brokers`: the next address after a connection that got no ConnAck.
        let (base, mut turn) = (cfg.clone(), 0usize);
        let mut pump = Pump {
            topics: Topics::new(&cfg.topic_prefix, "-"),
            max_packet: cfg.max_packet_size as usize,
            win_cap: usize::from(cfg.inflight),
            cfg,
            source,
            status,
            refusals: HashMap::new(),
            acked: Vec::new(),
            recorded_at: Instant::now(),
            record_due: None,
            draining: false,
            after: [0; 2],
            queues: [VecDeque::new(), VecDeque::new()],
            exhausted: [false; 2],
            retry: Vec::new(),
            rescan_at: None,
            window: Window::default(),
            delivered_since_flush: 0,
            last_ack: None,
            not_subscribed: None,
            audit: audit.map(AuditLane::new),
            audit_turn: false,
            audit_acked: 0,
            status_feed,
            online_since: now_utc(),
        };
        let mut tls: Option<LoadedTls> = None;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if let Some(t) = &tls {
                if now_utc() > t.not_after {
                    tls = None; // expired while running: re-read the files (maybe renewed)
                }
            }
            if tls.is_none() {
                match tls::load(&pump.cfg, now_utc()) {
                    Ok(t) => {
                        info!(gateway = %t.gateway_id, "uplink TLS material loaded");
                        if !crate::clock::process_synced() {
                            warn!(
                                "{}",
                                crate::clock::judged_on_clock(
                                    "uplink client certificate judged valid".into(),
                                    false
                                )
                            );
                        }
                        pump.status.send_modify(|s| {
                            s.gateway_id = Some(t.gateway_id.clone());
                            s.cert_not_after = Some(t.not_after);
                        });
                        tls = Some(t);
                    }
                    // Not yet valid or expired on a 1970 clock: said so, and tried again after
                    // the backoff, so the uplink connects once time syncs.
                    Err(e) => pump.report(crate::clock::judged_on_clock(
                        e.to_string(),
                        crate::clock::process_synced(),
                    )),
                }
            }
            if let Some(t) = tls.clone() {
                pump.cfg = base.at_address(turn);
                match pump.session(&t, &wake, &reload, &shutdown).await {
                    End::Shutdown => break,
                    End::Reload(new) => {
                        backoff.reset();
                        pump.status.send_modify(|s| {
                            s.gateway_id = Some(new.gateway_id.clone());
                            s.cert_not_after = Some(new.not_after);
                        });
                        tls = Some(*new);
                        continue;
                    }
                    End::Failed { connacked, acked } => {
                        if acked || connacked {
                            backoff.reset();
                        } else {
                            turn += 1;
                        }
                    }
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
                _ = reload.notified() => {
                    match tls::load(&pump.cfg, now_utc()) {
                        Ok(t) => {
                            pump.status.send_modify(|s| {
                                s.gateway_id = Some(t.gateway_id.clone());
                                s.cert_not_after = Some(t.not_after);
                            });
                            tls = Some(t);
                            backoff.reset();
                        }
                        Err(e) => pump.report(format!("reload refused, keeping the current configuration: {e}")),
                    }
                }
            }
        }
        pump.flush_acks();
        pump.status.send_modify(|s| {
            s.connected = false;
            s.in_flight = 0;
        });
    }
}

impl<S: OutboxSource> Pump<S> {
    fn report(&self, msg: String) {
        warn!(error = %msg, "uplink");
        self.status.send_modify(|s| s.last_error = Some(msg));
    }

    fn reset_connection_state(&mut self) {
        self.after = [0; 2];
        self.queues = [VecDeque::new(), VecDeque::new()];
        self.exhausted = [false; 2];
        self.retry.clear();
        self.rescan_at = None;
        self.window = Window::default();
        if let Some(ns) = self.not_subscribed.as_mut() {
            ns.probe = None;
        }
        if let Some(a) = self.audit.as_mut() {
            a.rewind();
        }
        self.audit_acked = 0;
    }

    /// A row was answered "no matching subscribers": keep it, pause, and back off while the
    /// probe keeps getting that answer.
    fn on_not_subscribed(&mut self, row: Row) {
        let now = Instant::now();
        let delay = |attempts: u32, cfg: &UplinkConfig| {
            let mut b = Backoff::new(
                Duration::from_millis(cfg.backoff_initial_ms),
                Duration::from_secs(cfg.backoff_max_s),
            );
            for _ in 1..attempts.min(30) {
                b.next_with(1.0);
            }
            b.next_delay()
        };
        match self.not_subscribed.as_mut() {
            None => {
                warn!(
                    topic = %self.topics.for_lane(row.lane),
                    "broker says no platform client subscribes (PUBACK 0x10): nobody received row {}; holding the outbox and retrying",
                    row.id
                );
                self.not_subscribed = Some(NotSubscribed {
                    since: now,
                    attempts: 1,
                    resume_at: now + delay(1, &self.cfg),
                    probe: None,
                    raised: false,
                });
                let since = now_utc();
                self.status
                    .send_modify(|s| s.not_subscribed_since = Some(since));
            }
            Some(ns) if ns.probe == Some(row.id) => {
                ns.attempts = ns.attempts.saturating_add(1);
                ns.resume_at = now + delay(ns.attempts, &self.cfg);
                ns.probe = None;
            }
            // Sent before the pause began: it only goes back to its queue.
            Some(_) => {}
        }
        // Back into its lane's queue, in id order: sent again (alerts first, as always) once
        // the pause ends.
        let queue = &mut self.queues[lane_ix(row.lane)];
        let at = queue.partition_point(|r| r.id < row.id);
        queue.insert(at, row);
        self.check_not_subscribed(now);
    }

    /// A row was delivered: if the platform had not been subscribed, it is again.
    fn on_subscribed_again(&mut self) {
        if let Some(ns) = self.not_subscribed.take() {
            info!(
                after_s = ns.since.elapsed().as_secs(),
                "the platform subscribes again (PUBACK success); sending what was held"
            );
            self.status.send_modify(|s| {
                s.not_subscribed_since = None;
                s.conditions.retain(|c| *c != PLATFORM_NOT_SUBSCRIBED);
            });
        }
    }

    /// Raises `platform_not_subscribed` once the platform has been gone long enough.
    fn check_not_subscribed(&mut self, now: Instant) {
        let limit = Duration::from_secs(self.cfg.no_subscribers_alarm_s);
        let Some(ns) = self.not_subscribed.as_mut() else {
            return;
        };
        if ns.raised || now.duration_since(ns.since) < limit {
            return;
        }
        ns.raised = true;
        tracing::error!(
            condition = PLATFORM_NOT_SUBSCRIBED,
            for_s = limit.as_secs(),
            "technical condition: the platform has not subscribed for {} s; readings are kept in the outbox, undelivered",
            limit.as_secs()
        );
        self.status.send_modify(|s| {
            if !s.conditions.contains(&PLATFORM_NOT_SUBSCRIBED) {
                s.conditions.push(PLATFORM_NOT_SUBSCRIBED);
            }
        });
    }

    /// When the next timer of the not-subscribed state is due: the end of the pause (while no
    /// probe is out) and the condition's deadline (until raised).
    fn not_subscribed_timer(&self) -> Option<Instant> {
        let ns = self.not_subscribed.as_ref()?;
        // Once past, the next fill sends the probe; if there was nothing to send, new rows wake
        // the publisher anyway (a past timer here would spin).
        let resume = (ns.probe.is_none() && ns.resume_at > Instant::now()).then_some(ns.resume_at);
        let alarm =
            (!ns.raised).then(|| ns.since + Duration::from_secs(self.cfg.no_subscribers_alarm_s));
        resume.into_iter().chain(alarm).min()
    }

    /// Records acknowledged rows in the outbox (durable before return) and publishes status.
    fn flush_acks(&mut self) {
        self.record_due = None;
        if self.window.is_empty() {
            self.draining = false;
        }
        if !self.acked.is_empty() {
            match self.source.mark_delivered(&self.acked) {
                Ok(()) => {
                    self.acked.clear();
                    self.recorded_at = Instant::now();
                }
                Err(e) => {
                    // Kept for the next flush; if we reconnect first they are re-sent (duplicates).
                    self.report(format!("outbox mark_delivered failed: {e}"));
                }
            }
        }
        if let Some(a) = self.audit.as_mut() {
            self.audit_acked = 0;
            if let Err(e) = a.flush() {
                // The cursor stays behind: entries after it are sent again (duplicates).
                self.report(format!("audit forwarding cursor not recorded: {e}"));
            }
        }
        let delivered = std::mem::take(&mut self.delivered_since_flush);
        let in_flight = self.window.len();
        let last_ack = self.last_ack;
        self.status.send_modify(|s| {
            s.delivered += delivered;
            s.in_flight = in_flight;
            if last_ack.is_some() {
                s.last_ack = last_ack;
            }
        });
    }

    /// What to send next: due retries and alerts first; then audit entries and readings take
    /// turns, so neither starves the other. A probe (platform not subscribed) is a row.
    fn next_item(&mut self, now: Instant, probing: bool) -> Option<Next> {
        if probing || self.audit.is_none() {
            return self
                .next_row(now, &[Lane::Alert, Lane::Reading])
                .map(Next::Row);
        }
        if let Some(row) = self.next_row(now, &[Lane::Alert]) {
            return Some(Next::Row(row));
        }
        if self.audit_turn {
            if let Some(e) = self.next_audit(now) {
                self.audit_turn = false;
                return Some(Next::Audit(e));
            }
        }
        if let Some(row) = self.next_row(now, &[Lane::Reading]) {
            self.audit_turn = true;
            return Some(Next::Row(row));
        }
        self.next_audit(now).map(Next::Audit)
    }

    fn next_audit(&mut self, now: Instant) -> Option<AuditEntry> {
        let batch = self.cfg.batch_size;
        match self.audit.as_mut()?.next(now, batch) {
            Ok(e) => e,
            Err(msg) => {
                self.report(msg);
                None
            }
        }
    }

    /// An audit entry was not taken: the lane backs off and resends from its cursor.
    fn audit_failed(&mut self) {
        let (initial, max) = (self.cfg.backoff_initial_ms, self.cfg.backoff_max_s);
        if let Some(a) = self.audit.as_mut() {
            a.on_failure(Instant::now(), |n| {
                let mut b = Backoff::new(Duration::from_millis(initial), Duration::from_secs(max));
                for _ in 1..n.min(30) {
                    b.next_with(1.0);
                }
                b.next_delay()
            });
        }
    }

    /// Hands one audit entry to rumqttc (QoS 1, not retained, the line as written).
    fn send_audit(&mut self, client: &AsyncClient, entry: AuditEntry) -> bool {
        let size = publish_packet_len(self.topics.audit.len(), entry.line.len());
        if size > self.max_packet {
            self.report(format!(
                "audit entry seq {} is {size} bytes as an MQTT packet, above the maximum packet size of {} bytes: audit forwarding is held at it (raise uplink.max_packet_size)",
                entry.seq, self.max_packet
            ));
            self.audit_failed();
            return false;
        }
        match client.try_publish(
            self.topics.audit.clone(),
            QoS::AtLeastOnce,
            false,
            entry.line,
        ) {
            Ok(()) => {
                self.window.queued.push_back(Tag::Audit(entry.seq));
                true
            }
            Err(e) => {
                self.report(format!("could not queue audit entry: {e}"));
                self.audit_failed();
                false
            }
        }
    }

    /// The next row of `lanes` (in that order) to send, due retries first.
    fn next_row(&mut self, now: Instant, lanes: &[Lane]) -> Option<Row> {
        if let Some(i) = self.retry.iter().position(|(due, _)| *due <= now) {
            return Some(self.retry.swap_remove(i).1);
        }
        for &lane in lanes {
            let ix = lane_ix(lane);
            loop {
                if let Some(row) = self.queues[ix].pop_front() {
                    match self.refusals.get(&row.id) {
                        Some(Refusal::TooLarge { limit }) if *limit <= self.max_packet => continue,
                        Some(Refusal::Broker { due, .. }) if *due > now => {
                            self.retry.push((*due, row));
                            continue;
                        }
                        _ => return Some(row),
                    }
                }
                if self.exhausted[ix] {
                    break;
                }
                let limit = self.cfg.batch_size;
                match self.source.next_batch(lane, self.after[ix], limit) {
                    Ok(rows) => {
                        // Only an empty batch says the lane is drained: a source may return
                        // fewer than `limit` with more behind (rows it quarantined or could
                        // not render are not in the batch).
                        if rows.is_empty() {
                            self.exhausted[ix] = true;
                        }
                        if let Some(last) = rows.last() {
                            self.after[ix] = last.row_id;
                        }
                        let got = rows.len();
                        if got >= self.win_cap.min(limit) {
                            self.draining = true;
                        }
                        self.queues[ix].extend(rows.into_iter().map(|o| Row {
                            id: o.row_id,
                            lane: o.lane,
                            payload: Bytes::from(o.payload),
                        }));
                        if got == 0 {
                            break;
                        }
                    }
                    Err(e) => {
                        self.report(format!("outbox read failed, retrying in 1 s: {e}"));
                        self.exhausted[ix] = true;
                        self.rescan_at = Some(now + Duration::from_secs(1));
                        break;
                    }
                }
            }
        }
        None
    }

    /// Hands rows to rumqttc until the window is full or the outbox has nothing more.
    fn fill(&mut self, client: &AsyncClient) {
        let now = Instant::now();
        while self.window.len() < self.win_cap {
            // Not subscribed: nothing until the pause ends, then one probe at a time.
            let probing = match &self.not_subscribed {
                None => false,
                Some(ns) if ns.probe.is_some() || now < ns.resume_at => break,
                Some(_) => true,
            };
            let row = match self.next_item(now, probing) {
                Some(Next::Row(row)) => row,
                Some(Next::Audit(entry)) => {
                    if self.send_audit(client, entry) {
                        continue;
                    }
                    break;
                }
                None => break,
            };
            let topic = self.topics.for_lane(row.lane);
            let size = publish_packet_len(topic.len(), row.payload.len());
            if size > self.max_packet {
                let msg = format!(
                    "row {} is {size} bytes as an MQTT packet, above the maximum packet size of {} bytes: it can never be sent; kept in the outbox, not delivered",
                    row.id, self.max_packet
                );
                self.refuse(row.id, msg);
                self.refusals.insert(
                    row.id,
                    Refusal::TooLarge {
                        limit: self.max_packet,
                    },
                );
                continue;
            }
            match client.try_publish(topic, QoS::AtLeastOnce, false, row.payload.clone()) {
                Ok(()) => {
                    if let (true, Some(ns)) = (probing, self.not_subscribed.as_mut()) {
                        ns.probe = Some(row.id);
                    }
                    self.window.queued.push_back(Tag::Row(row));
                }
                Err(e) => {
                    // The request channel is sized above the window; this is not expected.
                    let ix = lane_ix(row.lane);
                    self.queues[ix].push_front(row);
                    self.report(format!("could not queue publish: {e}"));
                    break;
                }
            }
        }
    }

    fn refuse(&mut self, row_id: i64, msg: String) {
        warn!(row = row_id, reason = %msg, "uplink row refused");
        if let Err(e) = self.source.mark_refused(row_id, &msg) {
            warn!(row = row_id, error = %e, "outbox mark_refused failed");
        }
        self.status.send_modify(|s| {
            s.refused += 1;
            s.last_error = Some(msg);
        });
    }

    fn on_connack(&mut self, ack: &ConnAck, client: &AsyncClient, gateway: &str) {
        let props = ack.properties.as_ref();
        let broker_max = props.and_then(|p| p.max_packet_size).unwrap_or(u32::MAX);
        self.max_packet = self.cfg.max_packet_size.min(broker_max) as usize;
        let recv_max = props.and_then(|p| p.receive_max).unwrap_or(u16::MAX);
        self.win_cap = usize::from(self.cfg.inflight.min(recv_max).max(1));
        self.online_since = now_utc();
        self.publish_online(client, gateway);
        info!(
            gateway,
            window = self.win_cap,
            max_packet = self.max_packet,
            "uplink connected"
        );
        self.status.send_modify(|s| {
            s.connected = true;
            s.connects += 1;
        });
    }

    /// Publishes the retained `online` status: the telemetry when there is a feed.
    fn publish_online(&mut self, client: &AsyncClient, gateway: &str) {
        let online = match &self.status_feed {
            Some(feed) => feed.report.online(gateway, self.online_since),
            None => status_payload(State::Online, gateway, self.online_since),
        };
        match client.try_publish(self.topics.status.clone(), QoS::AtLeastOnce, true, online) {
            Ok(()) => self.window.queued.push_back(Tag::Status),
            Err(e) => self.report(format!("could not queue online status: {e}")),
        }
    }

    /// Handles one event; returns true when a row was acknowledged successfully.
    fn on_event(&mut self, ev: Event) -> bool {
        match ev {
            Event::Outgoing(MqttOut::Publish(pkid)) => {
                if let Some(tag) = self.window.queued.pop_front() {
                    self.window.sent.insert(pkid, tag);
                }
                false
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                let Some(tag) = self.window.sent.remove(&ack.pkid) else {
                    warn!(pkid = ack.pkid, "PUBACK for a packet id not in flight");
                    return false;
                };
                let nobody = matches!(ack.reason, PubAckReason::NoMatchingSubscribers);
                let ok = matches!(ack.reason, PubAckReason::Success)
                    || (nobody && self.cfg.no_subscribers == NoSubscribers::Delivered);
                match tag {
                    // 0x10 is fine here: the retained status waits on the broker for the
                    // platform's next subscription.
                    Tag::Status if !ok && !nobody => {
                        self.report(format!(
                            "broker refused the status publish on {}: PUBACK {:?} (0x{:02x})",
                            self.topics.status,
                            ack.reason,
                            wire_code(&ack.reason)
                        ));
                        false
                    }
                    Tag::Status => false,
                    Tag::Audit(seq) if ok => {
                        if let Some(a) = self.audit.as_mut() {
                            a.on_ack(seq);
                        }
                        self.audit_acked += 1;
                        if self.audit_acked >= self.win_cap.min(self.cfg.batch_size)
                            || self.window.is_empty()
                        {
                            self.flush_acks();
                        }
                        true
                    }
                    Tag::Audit(seq) => {
                        if nobody {
                            warn!(topic = %self.topics.audit, "broker says no platform client subscribes to audit (PUBACK 0x10): audit entry {seq} held; retrying with backoff");
                        } else {
                            self.report(format!(
                                "broker refused audit entry seq {seq} on {}: PUBACK {:?} (0x{:02x}); kept, retrying later",
                                self.topics.audit,
                                ack.reason,
                                wire_code(&ack.reason)
                            ));
                        }
                        self.audit_failed();
                        false
                    }
                    Tag::Row(row) if nobody && !ok => {
                        self.on_not_subscribed(row);
                        if self.window.is_empty() {
                            self.flush_acks();
                        }
                        false
                    }
                    Tag::Row(row) if ok => {
                        if !nobody {
                            self.on_subscribed_again();
                        }
                        self.refusals.remove(&row.id);
                        self.acked.push(row.id);
                        self.delivered_since_flush += 1;
                        self.last_ack = Some(now_utc());
                        let due = self.recorded_at + ACK_RECORD_EVERY;
                        if record_now(
                            self.acked.len(),
                            self.win_cap.min(self.cfg.batch_size),
                            self.window.is_empty(),
                            self.draining,
                            due,
                            Instant::now(),
                        ) {
                            self.flush_acks();
                        } else {
                            // Recorded by the timer at the latest, whatever else is in flight
                            // (a status publish keeps the window from emptying).
                            self.record_due.get_or_insert(due);
                        }
                        true
                    }
                    Tag::Row(row) => {
                        if let Some(ns) = self.not_subscribed.as_mut() {
                            if ns.probe == Some(row.id) {
                                ns.probe = None; // refused for another reason: probe with the next
                            }
                        }
                        let attempts = match self.refusals.get(&row.id) {
                            Some(Refusal::Broker { attempts, .. }) => attempts.saturating_add(1),
                            _ => 1,
                        };
                        let mut b = Backoff::new(
                            Duration::from_millis(self.cfg.backoff_initial_ms),
                            Duration::from_secs(self.cfg.backoff_max_s),
                        );
                        for _ in 1..attempts.min(30) {
                            b.next_with(1.0);
                        }
                        let due = Instant::now() + b.next_delay();
                        let msg = format!(
                            "broker refused row {} on {}: PUBACK {:?} (0x{:02x}); kept, retrying later",
                            row.id,
                            self.topics.for_lane(row.lane),
                            ack.reason,
                            wire_code(&ack.reason)
                        );
                        self.refuse(row.id, msg);
                        self.refusals
                            .insert(row.id, Refusal::Broker { attempts, due });
                        self.retry.push((due, row));
                        false
                    }
                }
            }
            _ => false,
        }
    }

    /// Handles events until the window is empty or `deadline`.
    async fn drain(&mut self, events: &mut Events, deadline: Instant) -> bool {
        while !self.window.is_empty() {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Ok(ev))) => {
                    self.on_event(ev);
                }
                Ok(Some(Err(_)) | None) | Err(_) => return false,
            }
        }
        true
    }

    async fn disconnect(&mut self, client: &AsyncClient, events: &mut Events) {
        if client.try_disconnect().is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Ok(Event::Outgoing(MqttOut::Disconnect))))
                | Ok(Some(Err(_)) | None)
                | Err(_) => return,
                Ok(Some(Ok(ev))) => {
                    self.on_event(ev);
                }
            }
        }
    }

    /// One connection, from connect to failure, reload or shutdown.
    async fn session(
        &mut self,
        tls: &LoadedTls,
        wake: &Notify,
        reload: &Notify,
        shutdown: &CancellationToken,
    ) -> End {
        self.reset_connection_state();
        self.topics = Topics::new(&self.cfg.topic_prefix, &tls.gateway_id);
        let gateway = tls.gateway_id.clone();
        let will = status_payload(State::Offline, &gateway, now_utc());
        let opts = session::options(&self.cfg, tls, will, &self.topics.status);
        let (client, el) = AsyncClient::new(opts, usize::from(self.cfg.inflight) + 8);
        // `EventLoop::poll` is not cancel-safe: dropping it mid-connect drops the connection,
        // and mid-write leaves a half-written packet that the next poll writes again (the
        // broker then closes with "protocol error"). So its future is never dropped: it lives
        // in `Events` until it completes.
        let mut events = Events::new(el);
        let mut connacked = false;
        let mut acked_any = false;
        let drain_for = Duration::from_millis(self.cfg.drain_timeout_ms);
        // Waiting on these is re-armed only after each fires, not built and dropped for each
        // event: registering with a `Notify` and leaving it again takes its lock, and did so
        // four times per reading.
        let cancelled = shutdown.cancelled();
        let reload_signal = reload.notified();
        let wake_signal = wake.notified();
        tokio::pin!(cancelled, reload_signal, wake_signal);
        let mut trigger = self.status_feed.as_ref().map(|f| f.trigger.clone());
        loop {
            if connacked {
                self.fill(&client);
            }
            self.check_not_subscribed(Instant::now());
            let next_timer = self
                .retry
                .iter()
                .map(|(d, _)| *d)
                .chain(self.rescan_at)
                .chain(self.not_subscribed_timer())
                .chain(self.audit.as_ref().and_then(|a| a.timer(Instant::now())))
                .chain(self.record_due)
                .min();
            let action = tokio::select! {
                biased;
                _ = &mut cancelled => Action::Cancel,
                _ = &mut reload_signal => Action::Reload,
                _ = &mut wake_signal => Action::Wake,
                changed = async { trigger.as_mut()?.changed().await.ok() }, if trigger.is_some() && connacked
                    => Action::Telemetry(changed.is_some()),
                // Only while a slot is free: a due timer with a full window would spin.
                _ = tokio::time::sleep_until(next_timer.unwrap_or_else(Instant::now)),
                    if next_timer.is_some() && connacked && self.window.len() < self.win_cap => Action::Tick,
                ev = events.recv() => Action::Poll(Box::new(ev.unwrap_or(Err(ConnectionError::RequestsDone)))),
            };
            match action {
                Action::Cancel => {
                    if connacked {
                        let deadline = Instant::now() + drain_for;
                        self.drain(&mut events, deadline).await;
                        self.flush_acks();
                        let off = status_payload(State::Offline, &gateway, now_utc());
                        if client
                            .try_publish(self.topics.status.clone(), QoS::AtLeastOnce, true, off)
                            .is_ok()
                        {
                            self.window.queued.push_back(Tag::Status);
                            let d = Instant::now() + Duration::from_secs(1);
                            self.drain(&mut events, d).await;
                        }
                        self.disconnect(&client, &mut events).await;
                    }
                    self.flush_acks();
                    return End::Shutdown;
                }
                Action::Reload => {
                    reload_signal.set(reload.notified());
                    match tls::load(&self.cfg, now_utc()) {
                        Ok(new) => {
                            info!("uplink reloading TLS material and reconnecting");
                            if connacked {
                                let deadline = Instant::now() + drain_for;
                                self.drain(&mut events, deadline).await;
                                self.disconnect(&client, &mut events).await;
                            }
                            self.flush_acks();
                            self.status.send_modify(|s| s.connected = false);
                            return End::Reload(Box::new(new));
                        }
                        Err(e) => self.report(format!(
                            "reload refused, keeping the current configuration: {e}"
                        )),
                    }
                }
                Action::Wake => {
                    wake_signal.set(wake.notified());
                    self.exhausted = [false; 2];
                }
                Action::Telemetry(true) => self.publish_online(&client, &gateway),
                Action::Telemetry(false) => trigger = None,
                Action::Tick => {
                    if self.record_due.is_some_and(|t| t <= Instant::now()) {
                        self.flush_acks();
                    }
                    if self.rescan_at.is_some_and(|t| t <= Instant::now()) {
                        self.rescan_at = None;
                        self.exhausted = [false; 2];
                    }
                }
                Action::Poll(ev) => match *ev {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        connacked = true;
                        if let Some(t) = trigger.as_mut() {
                            t.borrow_and_update(); // the connection's own publish covers it
                        }
                        self.on_connack(&ack, &client, &gateway);
                    }
                    Ok(ev) => {
                        acked_any |= self.on_event(ev);
                    }
                    Err(e) => {
                        let msg = session::describe(&e, &self.cfg);
                        self.flush_acks();
                        self.window = Window::default();
                        self.report(msg);
                        self.status.send_modify(|s| {
                            s.connected = false;
                            s.in_flight = 0;
                        });
                        return End::Failed {
                            connacked,
                            acked: acked_any,
                        };
                    }
                },
            }
        }
    }
}

/// The event loop's events, polled by whoever awaits [`Events::recv`].
///
/// The `EventLoop::poll` future in progress lives inside the stream, not in the caller's
/// `select!`, so a `recv` dropped by a losing branch or a timeout cancels nothing: the next
/// `recv` goes on polling the same future. Polling in the publisher's own task, rather than in
/// a task of its own behind a channel, saves two cross-thread wake-ups per reading.
struct Events(
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Event, ConnectionError>> + Send>>,
);

impl Events {
    /// Ends after the first error (the connection is then gone).
    fn new(el: EventLoop) -> Self {
        let stream = futures::stream::unfold(Some(el), |el| async move {
            let mut el = el?;
            let ev = el.poll().await;
            let next = if ev.is_err() { None } else { Some(el) };
            Some((ev, next))
        });
        Events(Box::pin(stream))
    }

    async fn recv(&mut self) -> Option<Result<Event, ConnectionError>> {
        futures::StreamExt::next(&mut self.0).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: usize = 64;

    #[test]
    fn a_drained_backlogs_last_acknowledgements_are_recorded_as_soon_as_its_window_empties() {
        let now = Instant::now();
        let due = now + ACK_RECORD_EVERY;
        assert!(record_now(32, CHUNK, true, true, due, now));
    }

    #[test]
    fn live_readings_are_recorded_once_the_interval_is_over_not_each_time_the_window_empties() {
        let now = Instant::now();
        assert!(!record_now(
            10,
            CHUNK,
            true,
            false,
            now + ACK_RECORD_EVERY,
            now
        ));
        assert!(record_now(10, CHUNK, true, false, now, now));
    }

    #[test]
    fn a_window_s_worth_of_acknowledgements_is_recorded_at_once_even_with_publishes_in_flight() {
        let now = Instant::now();
        assert!(record_now(
            CHUNK,
            CHUNK,
            false,
            false,
            now + ACK_RECORD_EVERY,
            now
        ));
        assert!(!record_now(CHUNK - 1, CHUNK, false, true, now, now));
    }
}
