//! Device tasks: one per `[[device]]`, from bytes (or the simulator) to ingest frames.
//!
//! For each device this picks
//! - the **decoder**: a built-in stream driver by name (`nonin-fmt2`, `jsonl`, ...), or a
//!   device profile `NAME.toml` from `gateway.devices_dirs` (a built-in serial driver with the
//!   profile's link settings, or a data-driven line decoder);
//! - the **transport**: a serial port ([`SerialSource`]: link settings, init, keepalive) when
//!   the path is a terminal device, or a character device (or a path not there yet) read with a
//!   serial driver or profile; otherwise [`StreamSource`] (regular files followed from their
//!   committed offset, FIFOs). The link settings come from the profile, else the driver's
//!   usual settings ([`builtin_settings`]); the config's `baud` overrides the rate.
//!
//! Both transports give the same events, so one loop ([`run_stream`]) decodes, submits frames
//! with the committed file offset as cursor, and keeps the device's state in the status
//! registry (`connected`, `disconnected` with the reason; the registry derives `no_data`).
//! A failing device never stops ingest or the other devices.
//!
//! Deliberately not here: BLE devices (another transport), udev matching of USB ids, and any
//! decoding (the drivers do it, purely).

use crate::task::TrackBoxed;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{clock_synced, offset_key};
use crate::config::{Config, DeviceConfig};
use crate::drivers::serial::profile::{self, Profile, SerialSettings};
use crate::drivers::{self, sim::SimPatient, DriverKind, Step, StreamDecoder};
use crate::ingest::{self, Frame, IngestHandle, RateLimit};
use crate::status::Registry;
use crate::transport::serial::{self, SerialSource};
use crate::transport::stream::{Event, StreamSource};
use crate::transport::{LinkState, Source};

/// Starts one task per configured device on `tracker`, each registered in `registry` and
/// stopped by `token`. `cursors`: committed offsets of followed files, by device id.
/// Returns each started device's binding (BLE devices are served by `spawn_ble`).
pub fn spawn_all(
    config: &Config,
    ingest: &IngestHandle,
    registry: &Registry,
    cursors: &HashMap<String, Option<u64>>,
    token: &CancellationToken,
    tracker: &TaskTracker,
) -> Vec<(String, SharedBinding)> {
    let mut bindings = Vec::new();
    for d in &config.devices {
        let resume = cursors.get(&d.id).copied().flatten();
        if let Some(b) = spawn_one(config, d, ingest, registry, resume, token, tracker) {
            bindings.push((d.id.clone(), b));
        }
    }
    bindings
}

/// Who a device's readings belong to. Shared with the device's task and read for every
/// frame, so a rebind applied live (`daemon::live_apply`) takes effect at the next frame
/// without touching the device's connection. `Debug` is written by hand: it masks the NHS
/// Number (see [`crate::redact::MaskedNhs`]).
#[derive(Clone, PartialEq)]
pub struct Binding {
    pub patient_id: Arc<str>,
    pub nhs_number: Option<Arc<str>>,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("patient_id", &self.patient_id)
            .field(
                "nhs_number",
                &crate::redact::MaskedNhs(self.nhs_number.as_deref()),
            )
            .finish()
    }
}

/// A device's binding as its task sees it.
pub type SharedBinding = Arc<std::sync::RwLock<Binding>>;

impl Binding {
    /// `d`'s binding under `config` (its patient and that patient's NHS Number).
    pub fn of(config: &Config, d: &DeviceConfig) -> Binding {
        Binding {
            patient_id: Arc::from(d.patient.as_str()),
            nhs_number: config
                .patient(&d.patient)
                .and_then(|p| p.nhs_number.clone())
                .map(Arc::from),
        }
    }
}

/// Starts one device's task (registered in `registry`, stopped by `token`); `None` for a BLE
/// device (the BLE central serves those).
pub fn spawn_one(
    config: &Config,
    d: &DeviceConfig,
    ingest: &IngestHandle,
    registry: &Registry,
    resume: Option<u64>,
    token: &CancellationToken,
    tracker: &TaskTracker,
) -> Option<SharedBinding> {
    let expected = d.expected_interval_s.map(Duration::from_secs);
    registry.add(&d.id, &d.patient, &d.driver, expected);
    if d.is_ble() {
        return None;
    }
    let binding = Arc::new(std::sync::RwLock::new(Binding::of(config, d)));
    let ctx = DeviceCtx {
        cfg: d.clone(),
        devices_dirs: config.gateway.devices_dirs.clone(),
        device_id: Arc::from(d.id.as_str()),
        binding: binding.clone(),
        ingest: ingest.clone(),
        registry: registry.clone(),
        token: token.clone(),
    };
    tracker.spawn_boxed(run_device(ctx, resume));
    Some(binding)
}

/// Where a device's decoder comes from.
#[derive(Clone)]
pub enum Decoding {
    /// A built-in stream driver.
    Builtin {
        name: &'static str,
        make: fn() -> Box<dyn StreamDecoder>,
    },
    /// A device profile (built-in serial driver or line decoder, plus link settings).
    Profile(Box<Profile>),
}

impl Decoding {
    /// A fresh decoder (after every reconnect: no half frame survives a reopen).
    pub fn make(&self) -> Box<dyn StreamDecoder> {
        match self {
            Decoding::Builtin { make, .. } => make(),
            Decoding::Profile(p) => p.decoder(),
        }
    }

    /// Whether the bytes come from a serial device (a serial driver, or any profile).
    fn is_serial(&self) -> bool {
        match self {
            Decoding::Builtin { name, .. } => {
                drivers::serial::drivers().iter().any(|d| d.name == *name)
            }
            Decoding::Profile(_) => true,
        }
    }

    /// The link settings: the profile's, else the driver's usual ones.
    fn settings(&self) -> SerialSettings {
        match self {
            Decoding::Profile(p) => p.serial.clone(),
            Decoding::Builtin { name, .. } => builtin_settings(name),
        }
    }
}

/// Finds the decoder for a `driver` name: a built-in stream driver, else the profile
/// `NAME.toml` in the first of `dirs` that has one. Errors say what was wrong.
pub fn resolve(driver: &str, dirs: &[PathBuf]) -> Result<Decoding, String> {
    if let Some(d) = drivers::find(driver) {
        return match d.kind {
            DriverKind::Stream(make) => Ok(Decoding::Builtin { name: d.name, make }),
            DriverKind::Value(_) => Err(format!(
                "driver {driver:?} decodes Bluetooth LE values, not a byte stream; it needs a BLE device, not `path`"
            )),
        };
    }
    match profile::find_profile(driver, dirs) {
        Some(Ok(p)) => Ok(Decoding::Profile(Box::new(p))),
        Some(Err(e)) => Err(e.to_string()),
        None => Err(format!(
            "driver {driver:?} is neither a built-in driver nor a profile in {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The usual link settings of a built-in serial driver, for a device configured without a
/// profile (`protocols.md` §2 and the shipped `devices/` profiles): Nonin and Masimo 9600 8N1;
/// the Contec CMS50D+ V7 protocol at 115200 8N1, started by `A1` and kept alive by `AF` every
/// 5 s (§2.2 B). Anything else (e.g. `jsonl` on a tty): 9600 8N1. A device that differs
/// (the Contec legacy stream at 19200 odd parity) needs its profile.
pub fn builtin_settings(driver: &str) -> SerialSettings {
    match driver {
        "contec-cms50d" => {
            let cmd = |c: u8| vec![0x7D, 0x81, c, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80];
            let mut s = serial::plain_settings(115_200);
            s.init = vec![cmd(0xA1)];
            s.keepalive = Some((cmd(0xAF), 5));
            s
        }
        _ => serial::plain_settings(9600),
    }
}

/// How a device's path is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportChoice {
    /// Files, FIFOs, character devices that are not serial ports.
    Stream,
    /// A serial port, opened with these settings.
    Serial(SerialSettings),
}

/// Chooses the transport for `path`: a tty is always a serial port; with a serial decoder, so
/// is any character device, and a path that is not there yet (an unplugged adapter). Files and
/// FIFOs are streams. `baud` (from the config) overrides the settings' rate.
pub fn choose_transport(path: &Path, decoding: &Decoding, baud: Option<u32>) -> TransportChoice {
    use std::os::unix::fs::FileTypeExt;
    let serial_port = match std::fs::metadata(path) {
        Ok(meta) => {
            serial::is_tty(path) || (decoding.is_serial() && meta.file_type().is_char_device())
        }
        Err(_) => decoding.is_serial(),
    };
    if !serial_port {
        return TransportChoice::Stream;
    }
    let mut settings = decoding.settings();
    if let Some(b) = baud {
        settings.baud = b;
    }
    TransportChoice::Serial(settings)
}

struct DeviceCtx {
    cfg: DeviceConfig,
    devices_dirs: Vec<PathBuf>,
    device_id: Arc<str>,
    binding: SharedBinding,
    ingest: IngestHandle,
    registry: Registry,
    token: CancellationToken,
}

impl DeviceCtx {
    fn frame(
        &self,
        readings: Vec<crate::reading::Reading>,
        cursor: Option<(String, String)>,
    ) -> Frame {
        let binding = self
            .binding
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Frame {
            device_id: self.device_id.clone(),
            patient_id: binding.patient_id,
            nhs_number: binding.nhs_number,
            readings,
            received_at: OffsetDateTime::now_utc(),
            clock_synced: clock_synced(),
            cursor,
            done: None,
        }
    }

    /// Hands a frame to ingest, waiting for room in its queue only until the device is
    /// cancelled: a writer held up by a full disk must not keep SIGTERM from completing.
    /// `Ok(false)`: cancelled first; the frame was not stored (said in the log; a followed
    /// file's cursor did not move, so its bytes are read again at the next start).
    async fn submit(&self, frame: Frame) -> Result<bool, ingest::IngestError> {
        let readings = frame.readings.len();
        tokio::select! {
            biased;
            r = self.ingest.submit(frame) => r.map(|()| true),
            _ = self.token.cancelled() => {
                if readings > 0 {
                    tracing::warn!(device = %self.device_id, readings, "stopping while ingest is held up: a frame was NOT stored");
                }
                Ok(false)
            }
        }
    }

    fn unavailable(&self, error: String) {
        tracing::error!(device = %self.device_id, %error, "device cannot run");
        self.registry.update(&self.device_id, |d| {
            d.state = LinkState::Unavailable;
            d.last_error = Some(error);
        });
    }
}

async fn run_device(ctx: DeviceCtx, resume_offset: Option<u64>) {
    let id = ctx.device_id.clone();
    if !wait_out_crash_pause(&ctx.registry, &id, &ctx.token).await {
        return;
    }
    let result = if ctx.cfg.driver == "sim" {
        run_sim(&ctx).await
    } else {
        run_stream(&ctx, resume_offset).await
    };
    if let Err(e) = result {
        tracing::error!(device = %id, error = %e, "device task ended");
        ctx.registry.update(&id, |d| {
            d.state = LinkState::Unavailable;
            d.last_error = Some(e.to_string());
        });
    }
}

/// A device whose decoding crashed the gateway twice within the hour ([`crate::crash`]) waits,
/// shown as `paused` with the reason, until its pause ends; the other devices run meanwhile.
/// `false`: stopped while waiting.
pub(crate) async fn wait_out_crash_pause(
    registry: &Registry,
    id: &str,
    token: &CancellationToken,
) -> bool {
    let Some(pause) = crate::crash::device_pause(id) else {
        return true;
    };
    registry.update(id, |d| {
        d.state = LinkState::Paused;
        d.last_error = Some(pause.reason.clone());
    });
    tokio::select! {
        _ = token.cancelled() => return false,
        _ = tokio::time::sleep(pause.wait) => {}
    }
    tracing::info!(device = %id, "device pause over; starting it again");
    registry.update(id, |d| {
        d.state = LinkState::Starting;
        d.last_error = None;
    });
    true
}

async fn run_sim(ctx: &DeviceCtx) -> Result<(), ingest::IngestError> {
    let cfg = &ctx.cfg;
    let mut patient = SimPatient::new(cfg.scenario.unwrap_or_default(), cfg.seed.unwrap_or(0));
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.interval_ms.unwrap_or(1000)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ctx.registry
        .update(&cfg.id, |d| d.state = LinkState::Connected);
    loop {
        tokio::select! {
            _ = ctx.token.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let now = OffsetDateTime::now_utc();
        let frames = patient.next(now);
        let (n_frames, n_readings) = (
            frames.len() as u64,
            frames.iter().map(Vec::len).sum::<usize>() as u64,
        );
        for readings in frames {
            if !ctx.submit(ctx.frame(readings, None)).await? {
                return Ok(());
            }
        }
        ctx.registry.update(&cfg.id, |d| {
            d.last_data_at = Some(now);
            d.frames += n_frames;
            d.readings += n_readings;
        });
    }
}

/// Largest amount of undecoded bytes kept for one device; beyond it the oldest are dropped
/// as garbage (a decoder that never resyncs must not grow memory).
const MAX_PENDING_BYTES: usize = 256 * 1024;

async fn run_stream(
    ctx: &DeviceCtx,
    resume_offset: Option<u64>,
) -> Result<(), ingest::IngestError> {
    let cfg = &ctx.cfg;
    let Some(path) = cfg.path.clone() else {
        return Ok(()); // config validation guarantees a path
    };
    let decoding = match resolve(&cfg.driver, &ctx.devices_dirs) {
        Ok(d) => d,
        Err(e) => {
            ctx.unavailable(e);
            return Ok(());
        }
    };
    let mut source = match choose_transport(&path, &decoding, cfg.baud) {
        TransportChoice::Stream => Source::Stream(StreamSource::new(&path, resume_offset)),
        TransportChoice::Serial(settings) => {
            tracing::info!(
                device = %cfg.id,
                path = %path.display(),
                baud = settings.baud,
                data_bits = settings.data_bits,
                parity = ?settings.parity,
                stop_bits = settings.stop_bits,
                flow_control = ?settings.flow_control,
                "serial device"
            );
            Source::Serial(SerialSource::new(&path, settings))
        }
    };
    let mut decoder = decoding.make();
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_offset: Option<u64> = None; // file offset of buf[0] (regular files)
    let mut errors_logged = RateLimit::new(Duration::from_secs(10));
    let key = offset_key(&path);
    loop {
        let event = tokio::select! {
            _ = ctx.token.cancelled() => return Ok(()),
            e = source.next() => e,
        };
        match event {
            Event::Opened { kind, resumed_at } => {
                tracing::info!(device = %cfg.id, path = %source.path().display(), ?kind, ?resumed_at, "device connected");
                buf.clear();
                buf_offset = resumed_at;
                decoder = decoding.make();
                ctx.registry.update(&cfg.id, |d| {
                    d.state = LinkState::Connected;
                    d.last_error = None;
                });
            }
            Event::Lost { error, retry_in } => {
                ctx.registry.update(&cfg.id, |d| {
                    if d.state != LinkState::Disconnected {
                        tracing::warn!(device = %cfg.id, %error, "device disconnected; retrying");
                    }
                    d.state = LinkState::Disconnected;
                    d.last_error = Some(error.clone());
                });
                tokio::select! {
                    _ = ctx.token.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(retry_in) => {}
                }
            }
            Event::Data {
                bytes,
                offset_after,
            } => {
                buf.extend_from_slice(&bytes);
                if let Some(after) = offset_after {
                    buf_offset = Some(after.saturating_sub(buf.len() as u64));
                }
                let now = OffsetDateTime::now_utc();
                let mut pos = 0;
                let (mut frames, mut readings, mut errors) = (0u64, 0u64, 0u64);
                while pos < buf.len() {
                    let input = buf.get(pos..).unwrap_or_default();
                    let device = crate::crash::Current::Device(ctx.device_id.clone());
                    match crate::crash::during(device, || decoder.feed(input)) {
                        Step::NeedMore => break,
                        Step::Frame {
                            consumed,
                            readings: rs,
                        } => {
                            pos += consumed.clamp(1, buf.len() - pos);
                            frames += 1;
                            readings += rs.len() as u64;
                            let cursor =
                                buf_offset.map(|o| (key.clone(), (o + pos as u64).to_string()));
                            if (!rs.is_empty() || cursor.is_some())
                                && !ctx.submit(ctx.frame(rs, cursor)).await?
                            {
                                return Ok(());
                            }
                        }
                        Step::Skip { consumed, error } => {
                            pos += consumed.clamp(1, buf.len() - pos);
                            errors += 1;
                            if errors_logged.allow() {
                                tracing::warn!(device = %cfg.id, %error, "undecodable input skipped");
                            }
                        }
                    }
                }
                buf.drain(..pos);
                if let Some(o) = buf_offset.as_mut() {
                    *o += pos as u64;
                }
                if buf.len() > MAX_PENDING_BYTES {
                    let drop_n = buf.len() - MAX_PENDING_BYTES;
                    buf.drain(..drop_n);
                    if let Some(o) = buf_offset.as_mut() {
                        *o += drop_n as u64;
                    }
                    errors += 1;
                }
                ctx.registry.update(&cfg.id, |d| {
                    d.last_data_at = Some(now);
                    d.frames += frames;
                    d.readings += readings;
                    d.decode_errors += errors;
                });
            }
        }
    }
}

/// The BLE devices of `config`, for the central (config validation has checked them).
pub fn ble_devices(config: &Config) -> Vec<crate::transport::ble::BleDeviceConfig> {
    config
        .devices
        .iter()
        .filter(|d| d.is_ble())
        .filter_map(|d| match d.ble() {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!(device = %d.id, error = %e, "BLE device not usable");
                None
            }
        })
        .collect()
}

/// Starts the BLE central for `devices` (none: nothing starts). Readings are committed
/// through ingest before the central moves on, so a cuff that connects for a moment after a
/// measurement never loses it.
#[allow(clippy::too_many_arguments)]
pub fn spawn_ble(
    config: &Config,
    devices: Vec<crate::transport::ble::BleDeviceConfig>,
    last_seqs: HashMap<String, u16>,
    ingest: &IngestHandle,
    registry: &Registry,
    token: &CancellationToken,
    tracker: &TaskTracker,
) {
    use crate::transport::ble::{BleCentral, CentralOptions, IngestBleSink, PatientOf};
    if devices.is_empty() {
        return;
    }
    let patients = config
        .devices
        .iter()
        .filter(|d| d.is_ble())
        .map(|d| {
            let nhs = config
                .patient(&d.patient)
                .and_then(|p| p.nhs_number.clone())
                .map(Arc::from);
            (
                d.id.clone(),
                PatientOf {
                    patient_id: Arc::from(d.patient.as_str()),
                    nhs_number: nhs,
                },
            )
        })
        .collect();
    let sink = IngestBleSink::new(
        ingest.clone(),
        registry.clone(),
        patients,
        last_seqs,
        super::clock_synced,
    );
    let options = CentralOptions {
        scan_watchdog: Duration::from_secs(config.ble.scan_watchdog_s),
        adapter_retry: Duration::from_secs(config.ble.adapter_retry_s),
        clock_tolerance: Duration::from_secs(config.ble.clock_tolerance_s),
        ..CentralOptions::default()
    };
    let central = BleCentral::new(devices).with_options(options);
    tracker.spawn_boxed(central.run(sink, token.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::serial::profile::{FlowControl, Parity};

    fn shipped() -> Vec<PathBuf> {
        vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("devices")]
    }

    #[test]
    fn builtin_driver_name_resolves_to_its_decoder() {
        assert!(matches!(
            resolve("nonin-fmt2", &[]),
            Ok(Decoding::Builtin {
                name: "nonin-fmt2",
                ..
            })
        ));
    }

    #[test]
    fn profile_name_resolves_with_its_link_settings() {
        // devices/contec-cms50d-plus-legacy.toml: 19200 baud, odd parity, XON/XOFF.
        let Ok(Decoding::Profile(p)) = resolve("contec-cms50d-plus-legacy", &shipped()) else {
            panic!("the shipped legacy Contec profile resolves")
        };
        assert_eq!(
            (p.serial.baud, p.serial.parity, p.serial.flow_control),
            (19200, Parity::Odd, FlowControl::Software)
        );
    }

    #[test]
    fn ble_value_driver_with_a_path_is_refused_saying_why() {
        let e = resolve("ble-heart-rate", &[]).err().unwrap_or_default();
        assert!(e.contains("Bluetooth LE"), "{e}");
    }

    #[test]
    fn unknown_driver_is_refused_naming_the_directories() {
        let e = resolve("no-such-device", &shipped())
            .err()
            .unwrap_or_default();
        assert!(e.contains("no-such-device") && e.contains("devices"), "{e}");
    }

    #[test]
    fn bad_profile_is_refused_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("broken.toml"),
            "name = \"broken\"\nbaud = [",
        )
        .unwrap();
        let e = resolve("broken", &[dir.path().to_path_buf()])
            .err()
            .unwrap_or_default();
        assert!(e.contains("broken.toml"), "{e}");
    }

    #[test]
    fn regular_file_is_read_as_a_stream_even_with_a_serial_driver() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let d = resolve("nonin-fmt2", &[]).unwrap();
        assert_eq!(
            choose_transport(f.path(), &d, None),
            TransportChoice::Stream
        );
    }

    #[test]
    fn missing_path_with_a_serial_driver_waits_as_a_serial_port() {
        let d = resolve("masimo-ascii", &[]).unwrap();
        assert_eq!(
            choose_transport(Path::new("/nonexistent/ttyUSB0"), &d, None),
            TransportChoice::Serial(serial::plain_settings(9600))
        );
    }

    #[test]
    fn missing_path_with_jsonl_stays_a_stream() {
        let d = resolve("jsonl", &[]).unwrap();
        assert_eq!(
            choose_transport(Path::new("/nonexistent/in.jsonl"), &d, None),
            TransportChoice::Stream
        );
    }

    #[test]
    fn config_baud_overrides_the_profile_rate() {
        let Ok(d) = resolve("contec-cms50d-plus", &shipped()) else {
            panic!()
        };
        let TransportChoice::Serial(s) =
            choose_transport(Path::new("/nonexistent/ttyUSB0"), &d, Some(57_600))
        else {
            panic!("a profile is a serial device")
        };
        assert_eq!(s.baud, 57_600);
        assert_eq!(s.init.len(), 1, "the profile's init is kept");
    }

    #[test]
    fn builtin_contec_settings_match_the_shipped_v7_profile() {
        // protocols.md §2.2 B: V7 starts on A1 and needs AF about every 5 s.
        let Ok(Decoding::Profile(p)) = resolve("contec-cms50d-plus", &shipped()) else {
            panic!()
        };
        assert_eq!(builtin_settings("contec-cms50d"), p.serial);
    }

    #[tokio::test]
    async fn pty_is_a_serial_port_even_for_jsonl() {
        let (_master, slave) = tokio_serial::SerialStream::pair().unwrap();
        let path = PathBuf::from(tokio_serial::SerialPort::name(&slave).unwrap());
        let d = resolve("jsonl", &[]).unwrap();
        assert!(
            matches!(choose_transport(&path, &d, Some(19_200)), TransportChoice::Serial(s) if s.baud == 19_200)
        );
    }
}
