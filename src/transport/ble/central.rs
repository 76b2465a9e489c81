//! The btleplug side of the central: adapter, scan loop, watchdog, and one session task per
//! connected device (see the module docs in `mod.rs`).

use crate::crash;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use btleplug::api::{
    Central as _, CentralEvent, CharPropFlags, Characteristic, Manager as _, Peripheral as _,
    ScanFilter, ValueNotification, WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use futures::{Stream, StreamExt};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::bonding::{att_error_code, bonding_hint, needs_bonding};
use super::clock::{apply_policy, measure_offset};
use super::{BleDeviceConfig, BleSink, CentralOptions, RACP_CURSOR_KEY};
use crate::drivers::ble::racp::{
    decode_racp_response, report_all_records, report_records_from, RacpAttError, RacpResponse,
    RacpResponseValue, OP_REPORT_STORED_RECORDS,
};
use crate::drivers::ble::uuids::{
    full_uuid, short_uuid, CURRENT_TIME, GLUCOSE_MEASUREMENT, GLUCOSE_MEASUREMENT_CONTEXT,
    RECORD_ACCESS_CONTROL_POINT,
};
use crate::drivers::ble::{
    decode_current_time, decode_glucose, decode_glucose_context, decoder_for_characteristic,
};
use crate::drivers::DriverKind;
use crate::reading::{Flag, Reading};
use crate::transport::LinkState;

type Events = Pin<Box<dyn Stream<Item = CentralEvent> + Send>>;
type Notifications = Pin<Box<dyn Stream<Item = ValueNotification> + Send>>;

/// Counters for status and tests.
#[derive(Debug, Default)]
pub struct BleCounters {
    /// Discovery restarted by the watchdog because the adapter went quiet.
    pub scan_restarts: AtomicU64,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    /// Advertisers not on the allow-list (counted once per peripheral).
    pub ignored_devices: AtomicU64,
    pub notifications: AtomicU64,
    pub readings_committed: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Stored records received through RACP.
    pub racp_records: AtomicU64,
    /// Times the adapter could not be opened (no adapter, no bluetoothd).
    pub adapter_failures: AtomicU64,
}

impl BleCounters {
    pub fn snapshot(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "scan_restarts": g(&self.scan_restarts),
            "connects": g(&self.connects),
            "disconnects": g(&self.disconnects),
            "ignored_devices": g(&self.ignored_devices),
            "notifications": g(&self.notifications),
            "readings_committed": g(&self.readings_committed),
            "decode_errors": g(&self.decode_errors),
            "racp_records": g(&self.racp_records),
            "adapter_failures": g(&self.adapter_failures),
        })
    }
}

/// The BLE central for a set of allow-listed devices.
pub struct BleCentral {
    devices: Arc<Vec<BleDeviceConfig>>,
    options: CentralOptions,
    counters: Arc<BleCounters>,
}

/// Why a session or the adapter stopped; the text goes to status `last_error`.
#[derive(Debug, thiserror::Error)]
enum BleError {
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("{what} failed: {detail}")]
    Bluetooth { what: &'static str, detail: String },
    #[error("{0}")]
    NeedsBonding(String),
    #[error("none of the configured characteristics {0} was found on the device; check `characteristics` against devices/ble-*.toml")]
    NoCharacteristics(String),
    #[error("readings could not be committed: {0}")]
    Sink(String),
}

/// Runs one btleplug call with a timeout, mapping both failures to [`BleError`].
async fn call<T>(
    what: &'static str,
    after: Duration,
    fut: impl Future<Output = btleplug::Result<T>>,
) -> Result<T, BleError> {
    match timeout(after, fut).await {
        Err(_) => Err(BleError::Timeout { what, after }),
        Ok(Err(e)) => Err(BleError::Bluetooth {
            what,
            detail: error_text(&e),
        }),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Display plus Debug: the Debug form of a D-Bus error carries the error name
/// (`org.bluez.Error.NotPermitted`) that [`needs_bonding`] looks for.
fn error_text(e: &btleplug::Error) -> String {
    match e {
        btleplug::Error::Other(inner) => format!("{inner} [{inner:?}]"),
        other => other.to_string(),
    }
}

/// A running session task and how long to wait before the next attempt once it ends.
struct Session {
    link_lost: CancellationToken,
    handle: JoinHandle<Duration>,
}

impl BleCentral {
    /// A central for these devices with default [`CentralOptions`].
    pub fn new(devices: Vec<BleDeviceConfig>) -> Self {
        BleCentral {
            devices: Arc::new(devices),
            options: CentralOptions::default(),
            counters: Arc::default(),
        }
    }

    pub fn with_options(mut self, options: CentralOptions) -> Self {
        self.options = options;
        self
    }

    /// Shared counters (clone before `run`).
    pub fn counters(&self) -> Arc<BleCounters> {
        self.counters.clone()
    }

    /// Runs until `token` is cancelled. Never panics and never gives up: without an adapter
    /// or bluetoothd every device shows [`LinkState::Unavailable`] with the reason and the
    /// adapter is retried every `adapter_retry`.
    pub async fn run(self, sink: impl BleSink, token: CancellationToken) {
        let sink = Arc::new(sink);
        if self.devices.is_empty() {
            return;
        }
        loop {
            let reason = match self.open_adapter().await {
                Ok((adapter, events)) => {
                    for d in self.devices.iter() {
                        sink.state(&d.id, LinkState::Disconnected, None);
                    }
                    match self.scan_loop(&adapter, events, &sink, &token).await {
                        Ok(()) => return,
                        Err(reason) => reason,
                    }
                }
                Err(reason) => reason,
            };
            self.counters
                .adapter_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(reason = %reason, retry_in = ?self.options.adapter_retry, "Bluetooth LE unavailable; BLE devices are marked unavailable");
            for d in self.devices.iter() {
                sink.state(&d.id, LinkState::Unavailable, Some(reason.clone()));
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(self.options.adapter_retry) => {}
            }
        }
    }

    async fn open_adapter(&self) -> Result<(Adapter, Events), String> {
        let op = self.options.op_timeout;
        let hint = "is bluetoothd running (`systemctl status bluetooth`) and the adapter present and powered (`bluetoothctl list`, `rfkill list`)?";
        let manager = call(
            "connecting to BlueZ on the D-Bus system bus",
            op,
            Manager::new(),
        )
        .await
        .map_err(|e| format!("{e}; {hint}"))?;
        let adapters = call("listing Bluetooth adapters", op, manager.adapters())
            .await
            .map_err(|e| format!("{e}; {hint}"))?;
        let adapter = adapters
            .into_iter()
            .next()
            .ok_or_else(|| format!("no Bluetooth adapter found; {hint}"))?;
        let events = call("subscribing to adapter events", op, adapter.events())
            .await
            .map_err(|e| format!("{e}; {hint}"))?;
        call(
            "starting discovery",
            op,
            adapter.start_scan(ScanFilter::default()),
        )
        .await
        .map_err(|e| format!("{e}; {hint}"))?;
        tracing::info!(devices = self.devices.len(), "BLE central scanning");
        Ok((adapter, events))
    }

    /// Handles adapter events until cancelled (`Ok`) or the adapter is lost (`Err(reason)`).
    async fn scan_loop<S: BleSink>(
        &self,
        adapter: &Adapter,
        mut events: Events,
        sink: &Arc<S>,
        token: &CancellationToken,
    ) -> Result<(), String> {
        let opts = &self.options;
        let mut sessions: HashMap<usize, Session> = HashMap::new();
        let mut not_before: HashMap<usize, Instant> = HashMap::new();
        let mut known: HashMap<PeripheralId, usize> = HashMap::new();
        let mut ignored: HashSet<PeripheralId> = HashSet::new();
        // Allow-listed devices that advertised and have no session yet.
        let mut pending: HashMap<usize, PeripheralId> = HashMap::new();
        let mut last_event = Instant::now();
        let tick_every = opts
            .link_check
            .min(opts.scan_watchdog)
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let result = loop {
            tokio::select! {
                _ = token.cancelled() => break Ok(()),
                ev = events.next() => {
                    let Some(ev) = ev else {
                        break Err("the Bluetooth adapter's event stream ended (bluetoothd stopped or restarted?)".to_string());
                    };
                    last_event = Instant::now();
                    match ev {
                        CentralEvent::DeviceDisconnected(id) => {
                            if let Some(s) = known.get(&id).and_then(|i| sessions.get(i)) {
                                s.link_lost.cancel();
                            }
                        }
                        CentralEvent::StateUpdate(state) => {
                            tracing::info!(?state, "Bluetooth adapter state changed");
                        }
                        CentralEvent::DeviceDiscovered(id)
                        | CentralEvent::DeviceUpdated(id)
                        | CentralEvent::DeviceConnected(id)
                        | CentralEvent::RssiUpdate { id, .. }
                        | CentralEvent::ManufacturerDataAdvertisement { id, .. }
                        | CentralEvent::ServiceDataAdvertisement { id, .. }
                        | CentralEvent::ServicesAdvertisement { id, .. }
                        | CentralEvent::DeviceServicesModified(id) => {
                            if ignored.contains(&id) {
                                continue;
                            }
                            let index = match known.get(&id) {
                                Some(&i) => i,
                                None => match self.identify(adapter, &id).await {
                                    Some(i) => {
                                        known.insert(id.clone(), i);
                                        i
                                    }
                                    None => {
                                        ignored.insert(id);
                                        continue;
                                    }
                                },
                            };
                            // A live session already has the device; anything else (no
                            // session, one ending after a lost link, a backoff) connects as soon
                            // as the session is gone and the backoff allows.
                            let live = sessions
                                .get(&index)
                                .is_some_and(|s| !s.link_lost.is_cancelled() && !s.handle.is_finished());
                            if live {
                                continue;
                            }
                            pending.insert(index, id);
                            self.start_pending(adapter, &mut pending, &mut sessions, &mut not_before, sink, token).await;
                        }
                    }
                }
                _ = tick.tick() => {
                    self.start_pending(adapter, &mut pending, &mut sessions, &mut not_before, sink, token).await;
                    if last_event.elapsed() >= opts.scan_watchdog {
                        self.counters.scan_restarts.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(quiet_for = ?last_event.elapsed(), "no Bluetooth events for longer than the watchdog allows; restarting discovery");
                        // Stop may fail silently on BlueZ (peers.md "BLE reliability"): ignore it.
                        let _ = call("stopping discovery", opts.op_timeout, adapter.stop_scan()).await;
                        if let Err(e) = call("restarting discovery", opts.op_timeout, adapter.start_scan(ScanFilter::default())).await {
                            break Err(e.to_string());
                        }
                        last_event = Instant::now();
                    }
                }
            }
        };
        for s in sessions.values() {
            s.link_lost.cancel();
        }
        for (_, s) in sessions.drain() {
            let _ = timeout(opts.op_timeout, s.handle).await;
        }
        result
    }

    /// Starts a session for every pending device whose previous session has ended and whose
    /// backoff has passed.
    async fn start_pending<S: BleSink>(
        &self,
        adapter: &Adapter,
        pending: &mut HashMap<usize, PeripheralId>,
        sessions: &mut HashMap<usize, Session>,
        not_before: &mut HashMap<usize, Instant>,
        sink: &Arc<S>,
        token: &CancellationToken,
    ) {
        reap(sessions, not_before);
        let now = Instant::now();
        let ready: Vec<usize> = pending
            .keys()
            .copied()
            .filter(|i| !sessions.contains_key(i) && not_before.get(i).is_none_or(|t| now >= *t))
            .collect();
        for index in ready {
            let Some(id) = pending.remove(&index) else {
                continue;
            };
            let Ok(peripheral) = call(
                "looking up the peripheral",
                self.options.op_timeout,
                adapter.peripheral(&id),
            )
            .await
            else {
                continue;
            };
            not_before.insert(index, Instant::now() + self.options.reconnect_backoff);
            sessions.insert(index, self.spawn_session(index, peripheral, sink, token));
        }
    }

    /// The allow-list index of a peripheral, or `None` (logged at debug) when it is not listed.
    async fn identify(&self, adapter: &Adapter, id: &PeripheralId) -> Option<usize> {
        let peripheral = call(
            "looking up the peripheral",
            self.options.op_timeout,
            adapter.peripheral(id),
        )
        .await
        .ok()?;
        let address = peripheral.address().to_string().to_ascii_uppercase();
        let index = self.devices.iter().position(|d| d.address == address);
        if index.is_none() {
            self.counters
                .ignored_devices
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%address, "ignoring BLE device: not on the allow-list");
        }
        index
    }

    fn spawn_session<S: BleSink>(
        &self,
        index: usize,
        peripheral: Peripheral,
        sink: &Arc<S>,
        token: &CancellationToken,
    ) -> Session {
        let link_lost = token.child_token();
        let Some(device) = self.devices.get(index).cloned() else {
            // `index` comes from `position` over this same list; unreachable.
            return Session {
                link_lost,
                handle: crate::task::spawn(async { Duration::ZERO }),
            };
        };
        let ctx = SessionCtx {
            device,
            options: self.options.clone(),
            counters: self.counters.clone(),
            sink: sink.clone(),
            link_lost: link_lost.clone(),
        };
        Session {
            link_lost,
            handle: crate::task::spawn(ctx.run(peripheral)),
        }
    }
}

/// Drops finished sessions, applying the retry delay each one asked for.
fn reap(sessions: &mut HashMap<usize, Session>, not_before: &mut HashMap<usize, Instant>) {
    let done: Vec<usize> = sessions
        .iter()
        .filter(|(_, s)| s.handle.is_finished())
        .map(|(i, _)| *i)
        .collect();
    for i in done {
        if let Some(s) = sessions.remove(&i) {
            // A finished task's output is ready; `now_or_never` cannot block.
            let wait = futures::FutureExt::now_or_never(s.handle)
                .and_then(Result::ok)
                .unwrap_or_default();
            let earliest = Instant::now() + wait;
            let entry = not_before.entry(i).or_insert(earliest);
            if *entry < earliest {
                *entry = earliest;
            }
        }
    }
}

/// Everything one connection needs.
struct SessionCtx<S> {
    device: BleDeviceConfig,
    options: CentralOptions,
    counters: Arc<BleCounters>,
    sink: Arc<S>,
    link_lost: CancellationToken,
}

/// Per-connection state.
struct Conn {
    /// Device clock minus gateway clock, when the device has Current Time.
    clock_offset: Option<time::Duration>,
    /// The last RACP sequence number committed (from the sink, then advanced here).
    last_seq: Option<u16>,
    /// Inside an RACP download: records are flagged `Stored`.
    downloading: bool,
}

impl<S: BleSink> SessionCtx<S> {
    fn device(&self) -> &BleDeviceConfig {
        &self.device
    }

    /// One connection, start to end; returns how long to wait before the next attempt.
    async fn run(self, peripheral: Peripheral) -> Duration {
        let id = self.device().id.clone();
        let address = self.device().address.clone();
        // Its decoding crashed the gateway twice within the hour (crate::crash).
        if let Some(pause) = crash::device_pause(&id) {
            self.sink.state(&id, LinkState::Paused, Some(pause.reason));
            return pause.wait;
        }
        let result = self.serve(&peripheral).await;
        self.counters.disconnects.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                tracing::info!(device = %id, %address, "BLE device disconnected");
                self.sink.state(&id, LinkState::Disconnected, None);
                self.options.reconnect_backoff
            }
            Err(e) => {
                let bonding = matches!(e, BleError::NeedsBonding(_));
                tracing::warn!(device = %id, %address, error = %e, "BLE session ended");
                self.sink
                    .state(&id, LinkState::Disconnected, Some(e.to_string()));
                // Free the device for its next advertisement; it may already be gone.
                let _ = call(
                    "disconnecting",
                    self.options.op_timeout,
                    peripheral.disconnect(),
                )
                .await;
                if bonding {
                    self.options.bonding_backoff
                } else {
                    self.options.reconnect_backoff
                }
            }
        }
    }

    async fn serve(&self, p: &Peripheral) -> Result<(), BleError> {
        let dev = self.device();
        let op = self.options.op_timeout;
        // The stream first, so nothing indicated right after subscribing is missed.
        let mut notes: Notifications =
            call("opening the notification stream", op, p.notifications()).await?;
        if !call("checking the connection", op, p.is_connected()).await? {
            call("connecting", self.options.connect_timeout, p.connect()).await?;
        }
        call(
            "discovering services",
            self.options.connect_timeout,
            p.discover_services(),
        )
        .await?;
        self.counters.connects.fetch_add(1, Ordering::Relaxed);

        let chars = p.characteristics();
        tracing::debug!(device = %dev.id, characteristics = ?chars.iter().map(|c| c.uuid.to_string()).collect::<Vec<_>>(), "services discovered");
        let find = |uuid16: u16| chars.iter().find(|c| c.uuid == full_uuid(uuid16));
        let mut conn = Conn {
            clock_offset: None,
            last_seq: if dev.has_racp {
                self.sink.last_seq(&dev.id)
            } else {
                None
            },
            downloading: false,
        };

        if let Some(ct) = find(CURRENT_TIME) {
            conn.clock_offset = self.read_clock(p, ct).await?;
        }

        let mut subscribed = 0;
        let mut wanted = dev.characteristics.clone();
        if dev.has_racp && !wanted.contains(&RECORD_ACCESS_CONTROL_POINT) {
            wanted.push(RECORD_ACCESS_CONTROL_POINT);
        }
        for uuid16 in &wanted {
            match find(*uuid16) {
                Some(c)
                    if !c
                        .properties
                        .intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE) =>
                {
                    // Read-only companions listed in devices/ble-*.toml (features, Date Time).
                    tracing::debug!(device = %dev.id, characteristic = format!("{uuid16:04x}"), "characteristic neither notifies nor indicates; not subscribed");
                }
                Some(c) => {
                    self.subscribe(p, c).await?;
                    if *uuid16 != RECORD_ACCESS_CONTROL_POINT {
                        subscribed += 1;
                    }
                }
                None => {
                    tracing::warn!(device = %dev.id, characteristic = format!("{uuid16:04x}"), "configured characteristic not found on the device")
                }
            }
        }
        if subscribed == 0 {
            let list: Vec<String> = dev
                .characteristics
                .iter()
                .map(|c| format!("{c:04x}"))
                .collect();
            return Err(BleError::NoCharacteristics(list.join(", ")));
        }
        tracing::info!(device = %dev.id, address = %dev.address, subscribed, "BLE device connected and subscribed");
        self.sink.state(&dev.id, LinkState::Connected, None);

        if dev.has_racp {
            match find(RECORD_ACCESS_CONTROL_POINT) {
                Some(racp) => self.racp_download(p, racp, &mut notes, &mut conn).await?,
                None => {
                    tracing::warn!(device = %dev.id, "has_racp is set but the device has no Record Access Control Point (0x2A52); stored records are not downloaded")
                }
            }
        }

        loop {
            tokio::select! {
                _ = self.link_lost.cancelled() => return Ok(()),
                n = notes.next() => match n {
                    Some(n) => { self.on_value(&n, &mut conn).await?; }
                    None => return Ok(()),
                },
                _ = tokio::time::sleep(self.options.link_check) => {
                    if !call("checking the connection", op, p.is_connected()).await.unwrap_or(false) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Maps an error from a read/subscribe/write to [`BleError::NeedsBonding`] when it is one.
    fn classify(&self, e: BleError) -> BleError {
        if let BleError::Bluetooth { detail, .. } = &e {
            if needs_bonding(detail) {
                let hint = bonding_hint(&self.device().address);
                tracing::warn!(device = %self.device().id, error = %detail, "{hint}");
                return BleError::NeedsBonding(hint);
            }
        }
        e
    }

    async fn subscribe(&self, p: &Peripheral, c: &Characteristic) -> Result<(), BleError> {
        call("subscribing", self.options.op_timeout, p.subscribe(c))
            .await
            .map_err(|e| self.classify(e))
    }

    async fn read_clock(
        &self,
        p: &Peripheral,
        ct: &Characteristic,
    ) -> Result<Option<time::Duration>, BleError> {
        let dev = self.device();
        let value = match call("reading Current Time", self.options.op_timeout, p.read(ct)).await {
            Ok(v) => v,
            Err(e) => {
                let e = self.classify(e);
                if matches!(e, BleError::NeedsBonding(_)) {
                    return Err(e);
                }
                tracing::warn!(device = %dev.id, error = %e, "could not read the device clock; timestamps are used as sent");
                return Ok(None);
            }
        };
        let offset = decode_current_time(&value)
            .map_err(
                |e| tracing::warn!(device = %dev.id, error = %e, "unreadable Current Time value"),
            )
            .ok()
            .and_then(|ct| measure_offset(&ct, OffsetDateTime::now_utc()));
        match offset {
            Some(off) => {
                tracing::info!(device = %dev.id, offset_seconds = off.whole_seconds(), policy = ?dev.time_policy, "device clock offset measured");
                self.sink.clock_offset(&dev.id, off);
            }
            None => {
                tracing::warn!(device = %dev.id, "device clock does not know the date; timestamps are used as sent")
            }
        }
        Ok(offset)
    }

    /// Writes "report stored records >= last + 1" (or all) and handles values until the RACP
    /// response, a gap longer than `racp_idle_timeout`, or the end of the link.
    async fn racp_download(
        &self,
        p: &Peripheral,
        racp: &Characteristic,
        notes: &mut Notifications,
        conn: &mut Conn,
    ) -> Result<(), BleError> {
        let dev = self.device();
        let request = match conn.last_seq {
            None => report_all_records(),
            Some(last) => match last.checked_add(1) {
                Some(next) => report_records_from(next),
                None => {
                    tracing::warn!(device = %dev.id, "last RACP sequence number is 65535; the meter cannot have newer records without a reset; not downloading");
                    return Ok(());
                }
            },
        };
        tracing::info!(device = %dev.id, from = ?conn.last_seq.map(|s| u32::from(s) + 1), "RACP: requesting stored records");
        conn.downloading = true;
        let written = call(
            "writing the RACP request",
            self.options.op_timeout,
            p.write(racp, &request, WriteType::WithResponse),
        )
        .await
        .map_err(|e| self.classify(e));
        if let Err(e) = written {
            conn.downloading = false;
            return Err(self.racp_write_error(e));
        }
        let outcome = loop {
            let next = tokio::select! {
                _ = self.link_lost.cancelled() => break None,
                n = timeout(self.options.racp_idle_timeout, notes.next()) => n,
            };
            match next {
                Err(_) => {
                    tracing::warn!(device = %dev.id, after = ?self.options.racp_idle_timeout, "RACP: no response from the meter; records received so far are committed, the rest follow on the next connection");
                    self.sink.state(
                        &dev.id,
                        LinkState::Connected,
                        Some("RACP download timed out; resuming on the next connection".into()),
                    );
                    break None;
                }
                Ok(None) => break None,
                Ok(Some(n)) => {
                    if let Some(response) = self.on_value(&n, conn).await? {
                        break Some(response);
                    }
                }
            }
        };
        conn.downloading = false;
        match outcome {
            Some(RacpResponse::ResponseCode {
                request_op_code: OP_REPORT_STORED_RECORDS,
                value: RacpResponseValue::Success,
            }) => {
                tracing::info!(device = %dev.id, last_seq = ?conn.last_seq, "RACP: stored records downloaded");
            }
            Some(RacpResponse::ResponseCode {
                request_op_code: OP_REPORT_STORED_RECORDS,
                value: RacpResponseValue::NoRecordsFound,
            }) => {
                tracing::info!(device = %dev.id, "RACP: no new stored records");
            }
            Some(other) => {
                let msg = format!("RACP request refused by the meter: {other:?}; records are retried on the next connection");
                tracing::warn!(device = %dev.id, "{msg}");
                self.sink.state(&dev.id, LinkState::Connected, Some(msg));
            }
            None => {}
        }
        Ok(())
    }

    /// Names the RACP's own ATT errors (protocols.md §1.10) so status says what happened.
    fn racp_write_error(&self, e: BleError) -> BleError {
        let BleError::Bluetooth { detail, .. } = &e else {
            return e;
        };
        let what = match att_error_code(detail).and_then(RacpAttError::from_att_code) {
            Some(RacpAttError::ProcedureAlreadyInProgress) => "the meter is busy with another record transfer (ATT 0xFE/0x80, procedure already in progress); retried on the next connection",
            Some(RacpAttError::CccdImproperlyConfigured) => "the meter says RACP indications are not enabled (ATT 0xFD/0x81, CCCD improperly configured); retried on the next connection, re-pair the meter if it persists",
            None => return e,
        };
        BleError::Bluetooth {
            what: "writing the RACP request",
            detail: what.to_string(),
        }
    }

    /// Decodes one value and commits its readings; returns an RACP response when the value was
    /// one. A value that does not decode is logged and counted, never fatal.
    async fn on_value(
        &self,
        n: &ValueNotification,
        conn: &mut Conn,
    ) -> Result<Option<RacpResponse>, BleError> {
        let dev = self.device();
        self.counters.notifications.fetch_add(1, Ordering::Relaxed);
        let Some(uuid16) = short_uuid(n.uuid) else {
            tracing::debug!(device = %dev.id, uuid = %n.uuid, "value from a vendor characteristic ignored");
            return Ok(None);
        };
        let decode_error = |what: &str, e: &dyn std::fmt::Display| {
            self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(device = %dev.id, characteristic = format!("{uuid16:04x}"), value = %hex::encode(&n.value), error = %e, "{what}");
        };
        match uuid16 {
            RECORD_ACCESS_CONTROL_POINT => {
                match crash::decoding(&dev.id, || decode_racp_response(&n.value)) {
                    Ok(r) => Ok(Some(r)),
                    Err(e) => {
                        decode_error("unreadable RACP response", &e);
                        Ok(None)
                    }
                }
            }
            GLUCOSE_MEASUREMENT => {
                let m = match crash::decoding(&dev.id, || decode_glucose(&n.value)) {
                    Ok(m) => m,
                    Err(e) => {
                        decode_error("unreadable Glucose Measurement", &e);
                        return Ok(None);
                    }
                };
                let seq = m.sequence_number;
                if let Some(last) = conn.last_seq.filter(|last| seq <= *last) {
                    if conn.downloading {
                        // We asked for >= last + 1: a compliant meter never sends this. Most
                        // likely its memory was reset and numbering restarted.
                        let msg = format!("glucose meter sent record {seq} although {last} is already committed (meter reset or renumbered?); record skipped to avoid duplicates: check the meter's memory and clear the device's racp_last_seq to re-sync");
                        tracing::warn!(device = %dev.id, "{msg}");
                        self.sink.state(&dev.id, LinkState::Connected, Some(msg));
                    } else {
                        tracing::debug!(device = %dev.id, seq, "glucose record already committed; skipped");
                    }
                    return Ok(None);
                }
                if m.is_control_solution() {
                    tracing::info!(device = %dev.id, seq, "control-solution result: not a patient reading");
                }
                let mut readings = m.to_readings();
                if conn.downloading {
                    for r in &mut readings {
                        r.flags.push(Flag::Stored);
                    }
                    self.counters.racp_records.fetch_add(1, Ordering::Relaxed);
                }
                // Even with no reading (control solution) the cursor moves past the record.
                self.commit(
                    readings,
                    conn,
                    Some((RACP_CURSOR_KEY.to_string(), seq.to_string())),
                )
                .await?;
                conn.last_seq = Some(seq);
                Ok(None)
            }
            GLUCOSE_MEASUREMENT_CONTEXT => {
                match crash::decoding(&dev.id, || decode_glucose_context(&n.value)) {
                    Ok(c) => {
                        tracing::debug!(device = %dev.id, context = ?c, "glucose measurement context")
                    }
                    Err(e) => decode_error("unreadable Glucose Measurement Context", &e),
                }
                Ok(None)
            }
            _ => {
                let Some(driver) = decoder_for_characteristic(uuid16) else {
                    tracing::debug!(device = %dev.id, characteristic = format!("{uuid16:04x}"), "value carries no reading; ignored");
                    return Ok(None);
                };
                let DriverKind::Value(decode) = driver.kind else {
                    return Ok(None);
                };
                match crash::decoding(&dev.id, || decode(&n.value)) {
                    Ok(readings) if readings.is_empty() => {
                        tracing::info!(device = %dev.id, driver = driver.name, "value is not patient data (demonstration, test or control); not stored");
                    }
                    Ok(readings) => self.commit(readings, conn, None).await?,
                    Err(e) => decode_error("undecodable measurement", &e),
                }
                Ok(None)
            }
        }
    }

    async fn commit(
        &self,
        mut readings: Vec<Reading>,
        conn: &Conn,
        cursor: Option<(String, String)>,
    ) -> Result<(), BleError> {
        let dev = self.device();
        apply_policy(
            &mut readings,
            conn.clock_offset,
            dev.time_policy,
            self.options.clock_tolerance,
        );
        let n = readings.len() as u64;
        self.sink
            .readings(&dev.id, readings, cursor)
            .await
            .map_err(|e| {
                tracing::error!(device = %dev.id, error = %e, "BLE readings could not be committed");
                BleError::Sink(e.0)
            })?;
        self.counters
            .readings_committed
            .fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}
