//! `vitalgate demo`: the whole path with one command and no set-up.
//!
//! ```text
//! simulated patients -> ingest -> encrypted outbox -> uplink (MQTT 5, mTLS 1.3) -> broker -> platform view
//! ```
//!
//! At start it generates a throw-away PKI ([`certs`]), starts a broker on a free loopback port
//! (`--broker auto|embedded|mosquitto`, [`BrokerChoice`]: a Mosquitto it owns, [`broker`], when
//! installed, else its own in-process MQTT 5 broker, [`embedded_broker`]; both with mutual TLS
//! 1.3 and the same per-gateway ACL), subscribes a "platform" client with its own certificate
//! ([`platform`]) and runs the real daemon ([`crate::daemon::run`]) with an `[uplink]` pointing
//! at that broker. The screen shows what the platform receives, line by line, and every
//! [`view::EVERY`] a table of what is sealed in the outbox with the uplink's state.
//!
//! Everything it starts stops at `--seconds` or on Ctrl-C: the daemon first (so the gateway
//! publishes its offline status), then the platform, then the broker is stopped (Mosquitto
//! killed and reaped, the embedded broker's tasks ended), then its temporary directories are
//! removed. If the broker cannot start, it still runs the outbox part and says why.

pub mod broker;
pub mod certs;
pub mod embedded_broker;
pub mod platform;
pub mod view;

/// `println!` that ignores a closed stdout (`vitalgate demo | head -3`): the demo keeps
/// running for its time instead of panicking; nobody is reading its banner any more.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::MasterKey;
use crate::uplink::UplinkConfig;

/// How long the stopping demo waits for the platform to print the gateway's offline status.
const OFFLINE_STATUS_WAIT: Duration = Duration::from_secs(10);

/// Why the demo could not run. Each message names the file or part and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The embedded demo configuration did not load (a build problem).
    #[error("embedded demo configuration: {0}")]
    Config(String),
    /// The throw-away master key could not be made.
    #[error("cannot make the demo's throw-away key: {0}")]
    Key(String),
    /// A file or directory could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// rcgen refused to build a certificate.
    #[error("cannot generate the demo {what}: {reason}")]
    Certificate {
        /// Which certificate or key.
        what: &'static str,
        /// rcgen's reason.
        reason: String,
    },
    /// The broker did not start.
    #[error("demo broker: {0}")]
    Broker(String),
    /// `--broker mosquitto` but Mosquitto is not installed.
    #[error("--broker mosquitto: Mosquitto is not installed (apt-get install mosquitto); use --broker embedded or auto for the built-in broker")]
    NoMosquitto,
    /// The platform subscriber could not connect or subscribe.
    #[error("demo platform subscriber: {0}")]
    Platform(String),
    /// The daemon failed.
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
}

/// Which broker the demo runs (`--broker`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BrokerChoice {
    /// Mosquitto when installed (what tests and real platforms run), else the embedded broker.
    #[default]
    Auto,
    /// The in-process broker ([`embedded_broker`]).
    Embedded,
    /// Mosquitto; an error when it is not installed.
    Mosquitto,
}

impl std::str::FromStr for BrokerChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BrokerChoice::Auto),
            "embedded" => Ok(BrokerChoice::Embedded),
            "mosquitto" => Ok(BrokerChoice::Mosquitto),
            other => Err(format!(
                "unknown broker {other:?}: use auto, embedded or mosquitto"
            )),
        }
    }
}

/// `vitalgate demo`'s options.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Stop after this many seconds (else run until `shutdown`).
    pub seconds: Option<u64>,
    /// Keep the outbox here instead of a temporary directory (removed at the end).
    pub state_dir: Option<PathBuf>,
    /// Which broker to run.
    pub broker: BrokerChoice,
    /// Simulated time runs this many times faster than the wall clock (every simulated
    /// device ticks this much more often, so the patients' courses run faster; the alert
    /// engine's own timers stay on the gateway clock). 1.0 when unset.
    pub speed: Option<f64>,
    /// Show the run through `vitalgate top` instead of the platform's line stream.
    pub top: bool,
}

/// Fastest and slowest `--speed`.
pub const SPEED_RANGE: std::ops::RangeInclusive<f64> = 0.1..=20.0;

/// Applies `--speed` to every simulated device's interval (at least 1 ms).
pub fn apply_speed(cfg: &mut Config, speed: f64) {
    for d in cfg.devices.iter_mut().filter(|d| d.driver == "sim") {
        let ms = d.interval_ms.unwrap_or(1000) as f64 / speed;
        d.interval_ms = Some(ms.round().max(1.0) as u64);
    }
}

/// The closing summary: alerts raised, by kind and the highest priority each reached, and
/// each patient's NEWS2 course.
pub fn summary(tally: &crate::live::Tally) -> Vec<String> {
    use crate::alerts::Priority;
    let by_priority = |kinds: &[&str]| -> (u64, String) {
        let mut parts = Vec::new();
        let mut total = 0;
        for p in [Priority::High, Priority::Medium, Priority::Low] {
            let n = tally.raised_at(kinds, p);
            total += n;
            if n > 0 {
                parts.push(format!("{n} {}", p.as_str()));
            }
        }
        (total, parts.join(", "))
    };
    let (clinical, clinical_parts) = by_priority(&["news2", "threshold"]);
    let (technical, technical_parts) = by_priority(&["technical"]);
    let paren = |s: String| if s.is_empty() { s } else { format!(" ({s})") };
    let mut lines = vec![format!(
        "alerts raised: {clinical} clinical{}, {technical} technical{}",
        paren(clinical_parts),
        paren(technical_parts)
    )];
    for (patient, bands) in &tally.bands {
        let course: Vec<&str> = bands
            .iter()
            .map(|b| crate::live::report::band_text(*b))
            .collect();
        lines.push(format!(
            "  {:<28} NEWS2 up to {}, bands {}",
            patient,
            tally.highest_news2.get(patient).copied().unwrap_or(0),
            course.join(" -> ")
        ));
    }
    lines
}

/// A private (0700) temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Result<TempDir, DemoError> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos() % 1_000_000_000;
        let path = std::env::temp_dir().join(format!(
            "vitalgate-demo-{label}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| DemoError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The broker the demo started.
enum RunningBroker {
    Mosquitto(broker::Broker),
    Embedded(embedded_broker::EmbeddedBroker),
}

impl RunningBroker {
    fn port(&self) -> u16 {
        match self {
            RunningBroker::Mosquitto(b) => b.port,
            RunningBroker::Embedded(b) => b.port(),
        }
    }

    /// The header line naming the broker actually used (at most 80 columns).
    fn describe(&self) -> String {
        match self {
            RunningBroker::Mosquitto(b) => format!(
                "mosquitto pid {} on 127.0.0.1:{}, mTLS 1.3, per-gateway ACL",
                b.pid(),
                b.port
            ),
            RunningBroker::Embedded(b) => format!(
                "embedded (in-process) on 127.0.0.1:{}, mTLS 1.3, per-gateway ACL",
                b.port()
            ),
        }
    }

    /// Stops it; returns what was stopped, for the closing line.
    async fn stop(self) -> String {
        match self {
            RunningBroker::Mosquitto(b) => {
                let pid = b.pid();
                drop(b);
                format!("mosquitto pid {pid}")
            }
            RunningBroker::Embedded(b) => {
                let port = b.port();
                b.stop().await;
                format!("embedded, port {port}")
            }
        }
    }
}

/// The demo's uplink: its broker, platform subscriber and the files they use.
struct Uplink {
    config: UplinkConfig,
    broker: RunningBroker,
    platform: tokio::task::JoinHandle<()>,
    platform_stop: CancellationToken,
    received: std::sync::Arc<platform::Received>,
    _dir: TempDir,
}

/// Generates the PKI, starts the broker and the platform subscriber.
async fn start_uplink(
    mosquitto: Option<&Path>,
    cfg: &Config,
    gateway_id: &str,
    print: bool,
) -> Result<Uplink, DemoError> {
    let dir = TempDir::new("pki")?;
    let pki = certs::DemoPki::generate(&dir.0, gateway_id, OffsetDateTime::now_utc())?;
    let prefix = UplinkConfig::default().topic_prefix;
    let broker = match mosquitto {
        Some(m) => {
            RunningBroker::Mosquitto(broker::Broker::start(m, &dir.0, &pki, gateway_id, &prefix)?)
        }
        None => RunningBroker::Embedded(embedded_broker::EmbeddedBroker::start(
            &pki, gateway_id, &prefix,
        )?),
    };
    let without_nhs: Vec<String> = cfg
        .patients
        .iter()
        .filter(|p| p.nhs_number.is_none())
        .map(|p| p.id.clone())
        .collect();
    let directory = platform::Directory {
        device_patient: cfg
            .devices
            .iter()
            .map(|d| (format!("{gateway_id}/{}", d.id), d.patient.clone()))
            .collect(),
        gateway_patient: match without_nhs.as_slice() {
            [only] => Some(only.clone()),
            _ => None,
        },
    };
    let style = platform::Style {
        colour: std::io::stdout().is_terminal(),
    };
    let platform_stop = CancellationToken::new();
    let (platform, received) = match platform::start(
        &pki,
        broker.port(),
        &prefix,
        directory,
        style,
        print,
        platform_stop.clone(),
    )
    .await
    {
        Ok(x) => x,
        Err(e) => {
            broker.stop().await;
            return Err(e);
        }
    };
    let config = UplinkConfig {
        broker: "127.0.0.1".into(),
        port: broker.port(),
        server_name: Some("localhost".into()),
        ca_file: pki.ca.clone(),
        cert_file: pki.gateway_cert.clone(),
        key_file: pki.gateway_key.clone(),
        backoff_initial_ms: 200,
        backoff_max_s: 2,
        ..UplinkConfig::default()
    };
    Ok(Uplink {
        config,
        broker,
        platform,
        platform_stop,
        received,
        _dir: dir,
    })
}

/// Runs `vitalgate top` on the demo's live socket in a thread of its own; `q` there ends the
/// demo, and the demo's end (the returned flag) ends it.
fn start_top(
    cfg: &Config,
    speed: f64,
    shutdown: CancellationToken,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<Result<(), crate::top::TopError>>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let socket = crate::live::socket_path(&cfg.gateway.state_dir);
    let options = crate::top::TopOptions {
        banner: Some(format!(
            " demo x{speed}: watch deteriorating's NEWS2 climb; q ends the demo"
        )),
        stop: Some(stop.clone()),
        thresholds: cfg.status.clone(),
        ..crate::top::TopOptions::from_env()
    };
    let task = tokio::task::spawn_blocking(move || {
        let r = crate::top::run(&socket, options);
        shutdown.cancel();
        r
    });
    (stop, task)
}

/// Runs the demo until `shutdown` is cancelled or `opts.seconds` have passed.
pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> Result<(), DemoError> {
    let (state_dir, _temp_state) = match opts.state_dir {
        Some(d) => (d, None),
        None => {
            let t = TempDir::new("state")?;
            (t.0.clone(), Some(t))
        }
    };
    let mut cfg = Config::demo(&state_dir).map_err(|e| DemoError::Config(e.to_string()))?;
    let speed = opts.speed.unwrap_or(1.0);
    apply_speed(&mut cfg, speed);
    let gateway_id = cfg.gateway_id().map_err(DemoError::Config)?;
    let master = MasterKey::ephemeral().map_err(|e| DemoError::Key(e.to_string()))?;

    say!(
        "vitalgate demo: gateway {gateway_id}, {} simulated patients",
        cfg.patients.len()
    );
    say!("  outbox   {}", cfg.outbox_path().display());
    say!("           each record sealed with AES-256-GCM under a throw-away key");
    let mosquitto = match opts.broker {
        BrokerChoice::Embedded => None,
        BrokerChoice::Auto => broker::find_mosquitto(),
        BrokerChoice::Mosquitto => Some(broker::find_mosquitto().ok_or(DemoError::NoMosquitto)?),
    };
    let mut uplink = match start_uplink(mosquitto.as_deref(), &cfg, &gateway_id, !opts.top).await {
        Ok(u) => {
            say!("  broker   {}", u.broker.describe());
            say!(
                "  platform subscribed to {}/gw/+/# with its own certificate",
                u.config.topic_prefix
            );
            Some(u)
        }
        Err(e) => {
            say!("  uplink   NOT running: {e}");
            say!("           readings stay encrypted in the outbox");
            None
        }
    };
    if let Some(u) = &uplink {
        cfg.uplink = Some(u.config.clone());
    }
    say!(
        "(Ctrl-C to stop{})\n",
        match opts.seconds {
            Some(s) => format!("; stops by itself after {s} s"),
            None => String::new(),
        }
    );

    if let Some(s) = opts.seconds {
        let t = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = t.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(s)) => t.cancel(),
            }
        });
    }
    let live = crate::live::Live::default();
    let mut hooks: Vec<Box<dyn crate::ingest::CommitHook>> = Vec::new();
    let mut top = None;
    if opts.top {
        top = Some(start_top(&cfg, speed, shutdown.clone()));
    } else {
        hooks.push(Box::new(view::DemoView::start(
            cfg.clone(),
            uplink.is_some(),
            shutdown.clone(),
        )));
    }
    let run_opts = crate::daemon::RunOptions {
        hooks,
        live: Some(live.clone()),
        ..Default::default()
    };
    let result = crate::daemon::run(cfg.clone(), master, shutdown, run_opts).await;
    if let Some((stop, task)) = top {
        stop.store(true, Ordering::Relaxed);
        if let Ok(Err(e)) = task.await {
            say!("top: {e}");
        }
    }

    // The daemon has stopped and published its offline status: let the platform print it.
    let mut received = None;
    if let Some(u) = uplink.take() {
        // Until the platform has printed it (a fixed pause was too short on a busy machine);
        // bounded, for a gateway that never got through to the broker has none to print.
        let deadline = tokio::time::Instant::now() + OFFLINE_STATUS_WAIT;
        while !u.received.gateway_offline.load(Ordering::Relaxed)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        u.platform_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), u.platform).await;
        received = Some((
            u.received.observations.load(Ordering::Relaxed),
            u.received.alerts.load(Ordering::Relaxed),
        ));
        let what = u.broker.stop().await;
        say!("\nbroker stopped ({what})");
    }
    if let Some((obs, alerts)) = received {
        say!("platform received {obs} observations and {alerts} alert events");
    }
    for line in summary(&live.clinical().lock().tally) {
        say!("{line}");
    }
    if let Ok(s) = crate::store::outbox::stats_readonly(&cfg.outbox_path()) {
        say!(
            "demo stopped: outbox holds {} undelivered readings and {} alerts",
            s.backlog_readings,
            s.backlog_alerts
        );
        say!(
            "              ({} delivered and held, {} quarantined)",
            s.delivered_held,
            s.quarantined
        );
    }
    result?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::BrokerChoice;

    // Issue 3: `--broker auto|embedded|mosquitto`, auto by default.
    #[test]
    fn broker_choice_parses_the_three_names_and_defaults_to_auto() {
        assert_eq!("auto".parse(), Ok(BrokerChoice::Auto));
        assert_eq!("embedded".parse(), Ok(BrokerChoice::Embedded));
        assert_eq!("mosquitto".parse(), Ok(BrokerChoice::Mosquitto));
        assert_eq!(BrokerChoice::default(), BrokerChoice::Auto);
    }

    #[test]
    fn broker_choice_unknown_name_says_what_is_accepted() {
        let err = "rumqttd".parse::<BrokerChoice>().unwrap_err();
        assert!(err.contains("auto, embedded or mosquitto"), "{err}");
    }
}
