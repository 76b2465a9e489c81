//! The device end of a serial link, simulated: a pseudo-terminal that sends a serial
//! protocol's frames (`vitalgate simulate DRIVER --pty`).
//!
//! It creates a pty pair, makes the slave end (e.g. `/dev/pts/5`) available to the gateway,
//! optionally under a stable symlink (`--link`, like udev's `/dev/serial/by-id/...`), and
//! every interval writes one frame from the driver's pure encoder
//! ([`drivers::serial::encoder`](crate::drivers::serial::encoder)) carrying the values of a
//! simulated patient ([`SimPatient`]), with the faults asked for. Killing the simulator and
//! removing the link is an unplug; starting another with the same link is a replug.
//!
//! The pty is created by `tokio-serial` (`SerialStream::pair`, openpty): no `unsafe` here.
//! The simulator keeps its own handle on the slave end so that the pty stays usable while the
//! gateway is away; while nobody reads, writes stall and frames are dropped (as a real device's
//! bytes are lost on an unread line), never queued without bound.
//!
//! Deliberately not here: line (`driver = "line"`) profiles, answering the gateway's commands
//! (init and keepalive bytes are read and logged, not interpreted), and timing accuracy finer
//! than the tokio timer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use time::{OffsetDateTime, PrimitiveDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPort, SerialStream};
use tokio_util::sync::CancellationToken;

use crate::drivers::serial::{encoder, Encoder, Faults, SimSample};
use crate::drivers::sim::{Scenario, SimPatient};
use crate::reading::{Flag, Metric, Reading, Value};

/// A frame not written within this time (nobody reading the pty) is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// Bytes of line noise sent before a frame by the `garbage` fault. Avoids XON/XOFF (0x11,
/// 0x13), which a port with software flow control would act on.
const GARBAGE: [u8; 6] = [0x00, 0xFF, 0x7E, 0x2A, 0x0D, 0x55];

/// Why the simulator cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("no serial encoder for {driver:?}; simulate one of: {known}")]
    UnknownDriver { driver: String, known: String },
    #[error(
        "unknown fault {0:?}; use a comma-separated list of: garbage, drop, corrupt, sensor-off"
    )]
    UnknownFault(String),
    #[error("cannot create a pseudo-terminal: {0}")]
    Pty(String),
    #[error("{}: {reason}", path.display())]
    Link { path: PathBuf, reason: String },
    #[error("writing to the pseudo-terminal failed: {0}")]
    Write(std::io::Error),
}

/// Which faults to inject. Each fires on a fixed schedule (see [`FaultSet::for_frame`]), so a
/// run is repeatable and every fault shows within 30 frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultSet {
    /// Line noise before every 7th frame (frames 3, 10, 17, ...).
    pub garbage: bool,
    /// Every 5th frame cut off halfway (frames 4, 9, 14, ...): bytes lost on the line.
    pub drop: bool,
    /// Every 6th frame broken the way its protocol detects (bad checksum or sync bit).
    pub corrupt: bool,
    /// The sensor is off for frames 10-14 of every 30: no values, `sensor_off` status.
    pub sensor_off: bool,
}

impl FaultSet {
    /// Parses `garbage,drop,sensor-off` (any order, `corrupt` too; empty = none).
    pub fn parse(list: &str) -> Result<Self, SimError> {
        let mut f = FaultSet::default();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "garbage" => f.garbage = true,
                "drop" => f.drop = true,
                "corrupt" => f.corrupt = true,
                "sensor-off" | "sensor_off" => f.sensor_off = true,
                other => return Err(SimError::UnknownFault(other.to_string())),
            }
        }
        Ok(f)
    }

    /// The wire faults for frame number `n` whose clean encoding is `len` bytes long, and
    /// whether the sensor is off for it.
    pub fn for_frame(&self, n: u64, len: usize) -> (Faults, bool) {
        let mut faults = Faults::default();
        if self.garbage && n % 7 == 3 {
            faults.garbage_before = GARBAGE.to_vec();
        }
        if self.drop && n % 5 == 4 {
            faults.truncate = Some(len / 2);
        }
        if self.corrupt && n % 6 == 5 {
            faults.corrupt = true;
        }
        let sensor_off = self.sensor_off && (10..15).contains(&(n % 30));
        (faults, sensor_off)
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// A serial encoder name (`nonin-fmt2`, `contec-cms50d`, `masimo-ascii`, ...).
    pub driver: String,
    /// Time between frames.
    pub interval: Duration,
    pub faults: FaultSet,
    pub scenario: Scenario,
    pub seed: u64,
    /// Create a symlink here pointing at the pty (replacing an existing symlink).
    pub link: Option<PathBuf>,
}

/// The oximeter sample a simulated patient gives at one tick: SpO2, pulse rate and perfusion
/// index from its readings (absent ones become the protocol's missing marker), their flags,
/// and the device clock set to `now`.
pub fn sample_from(readings: &[Reading], now: OffsetDateTime) -> SimSample {
    let number = |m: Metric| {
        readings
            .iter()
            .find(|r| r.metric == m)
            .and_then(|r| match &r.value {
                Value::Number(d) => Some(*d),
                _ => None,
            })
    };
    let whole = |m: Metric| {
        readings
            .iter()
            .find(|r| r.metric == m)
            .and_then(Reading::canonical_value)
            .map(f64::round)
    };
    let mut flags: Vec<Flag> = Vec::new();
    for f in readings.iter().flat_map(|r| r.flags.iter()) {
        if !flags.contains(f) {
            flags.push(*f);
        }
    }
    SimSample {
        spo2: whole(Metric::Spo2)
            .filter(|v| (0.0..=100.0).contains(v))
            .map(|v| v as u8),
        pulse: whole(Metric::PulseRate)
            .filter(|v| (0.0..=500.0).contains(v))
            .map(|v| v as u16),
        pi: number(Metric::PerfusionIndex),
        flags,
        time: Some(PrimitiveDateTime::new(now.date(), now.time())),
    }
}

/// A running pty device. See the module docs.
pub struct PtySimulator {
    master: SerialStream,
    /// Held so the pty stays open while the gateway is away.
    _slave: SerialStream,
    slave_path: PathBuf,
    encode: Encoder,
    opts: SimOptions,
}

impl PtySimulator {
    /// Creates the pty and the link. Must be called inside a tokio runtime.
    pub fn open(opts: SimOptions) -> Result<Self, SimError> {
        let encode = encoder(&opts.driver).ok_or_else(|| SimError::UnknownDriver {
            driver: opts.driver.clone(),
            known: crate::drivers::serial::drivers()
                .iter()
                .map(|d| d.name)
                .chain(["contec-cms50d-legacy"])
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let (master, slave) = SerialStream::pair().map_err(|e| SimError::Pty(e.to_string()))?;
        let slave_path = slave
            .name()
            .map(PathBuf::from)
            .ok_or_else(|| SimError::Pty("the pty has no slave path".into()))?;
        if let Some(link) = &opts.link {
            make_link(link, &slave_path)?;
        }
        Ok(PtySimulator {
            master,
            _slave: slave,
            slave_path,
            encode,
            opts,
        })
    }

    /// The path the gateway opens, e.g. `/dev/pts/5`.
    pub fn slave_path(&self) -> &Path {
        &self.slave_path
    }

    /// Sends frames until `token` is cancelled; then removes the link if it still points at
    /// this pty. Returns the number of frames written whole.
    pub async fn run(self, token: CancellationToken) -> Result<u64, SimError> {
        let PtySimulator {
            master,
            _slave,
            slave_path,
            encode,
            opts,
        } = self;
        let result = send_frames(master, encode, &opts, &token).await;
        if let Some(link) = &opts.link {
            if std::fs::read_link(link).is_ok_and(|t| t == slave_path) {
                let _ = std::fs::remove_file(link);
            }
        }
        drop(_slave);
        result
    }
}

async fn send_frames(
    master: SerialStream,
    encode: Encoder,
    opts: &SimOptions,
    token: &CancellationToken,
) -> Result<u64, SimError> {
    let (mut rd, mut wr) = tokio::io::split(master);
    let mut patient = SimPatient::new(opts.scenario, opts.seed);
    let mut tick = tokio::time::interval(opts.interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scratch = [0u8; 256];
    let mut host_readable = true;
    let (mut n, mut written) = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = token.cancelled() => return Ok(written),
            r = rd.read(&mut scratch), if host_readable => match r {
                Ok(k) if k > 0 => {
                    let got = scratch.get(..k).unwrap_or_default();
                    tracing::info!(bytes = %hex::encode(got), "the gateway wrote to the device");
                }
                _ => host_readable = false,
            },
            _ = tick.tick() => {
                let now = OffsetDateTime::now_utc();
                let frames = patient.next(now);
                let mut sample = sample_from(frames.first().map(Vec::as_slice).unwrap_or_default(), now);
                let len = encode(&sample, &Faults::default()).len();
                let (faults, sensor_off) = opts.faults.for_frame(n, len);
                if sensor_off {
                    sample.spo2 = None;
                    sample.pulse = None;
                    sample.pi = None;
                    sample.flags.push(Flag::SensorOff);
                }
                let bytes = encode(&sample, &faults);
                n += 1;
                match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&bytes)).await {
                    Ok(Ok(())) => written += 1,
                    Ok(Err(e)) => return Err(SimError::Write(e)),
                    Err(_) => tracing::debug!(frame = n, "nobody is reading the pty; frame dropped"),
                }
            }
        }
    }
}

/// Points `link` at `target`, replacing an existing symlink but never a file or directory.
fn make_link(link: &Path, target: &Path) -> Result<(), SimError> {
    let err = |reason: String| SimError::Link {
        path: link.to_path_buf(),
        reason,
    };
    match std::fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::remove_file(link)
                .map_err(|e| err(format!("cannot replace the old link: {e}")))?;
        }
        Ok(_) => {
            return Err(err(
                "exists and is not a symlink; refusing to replace it (choose another --link path)"
                    .into(),
            ))
        }
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, link)
        .map_err(|e| err(format!("cannot create the link: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::{drain, StreamDecoder};
    use crate::reading::{Absent, Decimal};
    use crate::transport::serial::{plain_settings, SerialSource};
    use crate::transport::stream::Event;

    fn t0() -> OffsetDateTime {
        time::macros::datetime!(2026-11-23 10:00 UTC)
    }

    #[test]
    fn fault_list_parses_the_cli_names() {
        let f = FaultSet::parse("garbage,drop,sensor-off").unwrap();
        assert!(f.garbage && f.drop && f.sensor_off && !f.corrupt);
        assert_eq!(FaultSet::parse("").unwrap(), FaultSet::default());
    }

    #[test]
    fn fault_list_with_unknown_name_is_refused_naming_it() {
        let e = FaultSet::parse("garbage,noise").unwrap_err();
        assert!(e.to_string().contains("\"noise\""), "{e}");
    }

    #[test]
    fn each_fault_fires_within_thirty_frames() {
        let all = FaultSet::parse("garbage,drop,corrupt,sensor-off").unwrap();
        let frames: Vec<_> = (0..30).map(|n| all.for_frame(n, 10)).collect();
        assert!(frames.iter().any(|(f, _)| !f.garbage_before.is_empty()));
        assert!(frames.iter().any(|(f, _)| f.truncate == Some(5)));
        assert!(frames.iter().any(|(f, _)| f.corrupt));
        assert_eq!(frames.iter().filter(|(_, off)| *off).count(), 5);
        assert_eq!(
            FaultSet::default().for_frame(4, 10),
            (Faults::default(), false)
        );
    }

    #[test]
    fn sample_takes_oximeter_values_and_flags() {
        let rs = vec![
            Reading::canonical(Metric::Spo2, Decimal::int(96)),
            Reading::canonical(Metric::PulseRate, Decimal::int(73)),
            Reading::canonical(Metric::PerfusionIndex, Decimal::new(352, -2))
                .with_flags([Flag::LowBattery]),
        ];
        let s = sample_from(&rs, t0());
        assert_eq!(
            (s.spo2, s.pulse, s.pi),
            (Some(96), Some(73), Some(Decimal::new(352, -2)))
        );
        assert_eq!(s.flags, vec![Flag::LowBattery]);
        assert_eq!(s.time.map(|t| t.hour()), Some(10));
    }

    #[test]
    fn sample_of_absent_readings_is_the_missing_marker() {
        let rs = vec![Reading::absent(Metric::Spo2, Absent::Missing).with_flags([Flag::SensorOff])];
        let s = sample_from(&rs, t0());
        assert_eq!((s.spo2, s.pulse, s.pi), (None, None, None));
        assert_eq!(s.flags, vec![Flag::SensorOff]);
    }

    #[tokio::test]
    async fn unknown_driver_is_refused_listing_the_encoders() {
        let _pty = crate::transport::PTY_TESTS.lock().await;
        let opts = SimOptions {
            driver: "ble-heart-rate".into(),
            interval: Duration::from_millis(10),
            faults: FaultSet::default(),
            scenario: Scenario::Stable,
            seed: 1,
            link: None,
        };
        let e = PtySimulator::open(opts)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("nonin-fmt2") && e.contains("masimo-ascii"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn link_that_is_a_regular_file_is_not_replaced() {
        let _pty = crate::transport::PTY_TESTS.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("ttyX");
        std::fs::write(&link, b"keep me").unwrap();
        let opts = SimOptions {
            driver: "nonin-fmt8".into(),
            interval: Duration::from_millis(10),
            faults: FaultSet::default(),
            scenario: Scenario::Stable,
            seed: 1,
            link: Some(link.clone()),
        };
        assert!(matches!(
            PtySimulator::open(opts),
            Err(SimError::Link { .. })
        ));
        assert_eq!(std::fs::read(&link).unwrap(), b"keep me");
    }

    #[tokio::test]
    async fn pty_device_frames_decode_through_the_serial_transport() {
        let _pty = crate::transport::PTY_TESTS.lock().await;
        // protocols.md §2.1 (Nonin #8): what the simulator writes, the serial transport reads
        // and the nonin-fmt8 decoder turns into SpO2 and pulse readings.
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("ttyNONIN");
        let sim = PtySimulator::open(SimOptions {
            driver: "nonin-fmt8".into(),
            interval: Duration::from_millis(20),
            faults: FaultSet::default(),
            scenario: Scenario::Stable,
            seed: 3,
            link: Some(link.clone()),
        })
        .unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), sim.slave_path());
        let token = CancellationToken::new();
        let running = tokio::spawn(sim.run(token.clone()));
        let mut source = SerialSource::new(&link, plain_settings(9600));
        let crate::drivers::DriverKind::Stream(make) =
            crate::drivers::serial::nonin::DRIVER_FMT8.kind
        else {
            panic!("nonin-fmt8 is a stream driver")
        };
        let mut decoder: Box<dyn StreamDecoder> = make();
        let (mut buf, mut out, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        tokio::time::timeout(Duration::from_secs(30), async {
            while !out.iter().any(|r: &Reading| r.metric == Metric::Spo2) {
                if let Event::Data { bytes, .. } = source.next().await {
                    buf.extend(bytes);
                    let used = drain(decoder.as_mut(), &buf, &mut out, &mut errors);
                    buf.drain(..used);
                }
            }
        })
        .await
        .expect("SpO2 decoded within 30 s");
        assert!(out.iter().any(|r| r.metric == Metric::PulseRate), "{out:?}");
        assert!(errors.is_empty(), "{errors:?}");
        token.cancel();
        assert!(running.await.unwrap().unwrap() > 0);
        assert!(
            std::fs::symlink_metadata(&link).is_err(),
            "the link is removed on a clean stop"
        );
    }
}
