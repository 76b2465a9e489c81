//! The `vitalgate` command line: parse, load config, call into the library.
//!
//! Exit codes: 0 success, 2 usage or configuration error (the message names the file, key and
//! reason), 1 runtime failure. Errors print their whole cause chain.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use vitalgate::config::{self, Config};
use vitalgate::drivers::{self, DriverKind};
use vitalgate::store::MasterKey;

mod cli_output;
use cli_output::{ignore_closed_pipe, out, outln};

#[derive(Parser)]
#[command(
    name = "vitalgate",
    version,
    about = "Edge gateway for NHS remote patient monitoring",
    long_about = "vitalgate reads vital-sign devices (serial, Bluetooth LE, files), keeps every reading \
AES-256-GCM-encrypted in a local SQLite outbox until the platform acknowledges it, evaluates alerts \
locally, and forwards FHIR R4 UK Core Observations over mutual-TLS MQTT.\n\n\
Exit codes: 0 success, 2 usage or configuration error, 1 runtime failure."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon (what systemd starts).
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Run the whole pipeline with simulated patients and no set-up, showing what is stored.
    #[cfg_attr(
        not(feature = "demo"),
        command(about = "Not in this build (built without the `demo` feature): exits 2")
    )]
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// Keep the demo's state here instead of a temporary directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Broker: auto (Mosquitto when installed, else the embedded one), embedded or mosquitto.
        #[arg(long, default_value = "auto", value_parser = ["auto", "embedded", "mosquitto"])]
        broker: String,
        /// Simulated time runs this many times faster (0.1 to 20): the patients' courses and
        /// their readings come faster; alert timers stay on the real clock.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Show the demo through `vitalgate top` (q ends it).
        #[arg(long)]
        top: bool,
    },
    /// Validate a configuration file and print the effective configuration (identifiers
    /// redacted); exits 2 on any problem.
    CheckConfig {
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Decode captured frames with a driver and print one JSON reading per line.
    ///
    /// Each argument is one frame or characteristic value in hex (spaces and colons allowed),
    /// or with --text one line of a line-oriented protocol. Drivers: see `vitalgate decode --list`.
    Decode {
        /// Driver name, e.g. jsonl, nonin-fmt2, ble-blood-pressure.
        #[arg(required_unless_present = "list")]
        driver: Option<String>,
        /// Frames (hex) or, with --text, lines.
        frames: Vec<String>,
        /// Arguments are text lines, not hex.
        #[arg(long)]
        text: bool,
        /// List the drivers and exit.
        #[arg(long)]
        list: bool,
        /// Also look for device profiles (NAME.toml) here, before ./devices,
        /// /etc/vitalgate/devices and /usr/share/vitalgate/devices.
        #[arg(long, value_name = "DIR")]
        devices: Option<PathBuf>,
    },
    /// Simulate a serial device on a pseudo-terminal: prints the pty's path (first line of
    /// stdout), then sends the driver's frames with a simulated patient's values until stopped.
    ///
    /// Drivers: nonin-fmt2, nonin-fmt7, nonin-fmt8, contec-cms50d, contec-cms50d-legacy,
    /// masimo-ascii. `hl7-monitor --to HOST:PORT` is a bedside monitor sending HL7 v2
    /// ORU^R01 over MLLP to a gateway's `[hl7]` listener instead (one line per ACK).
    Simulate {
        /// Serial driver whose protocol to speak, or `hl7-monitor`.
        driver: String,
        /// Create a pseudo-terminal (serial drivers; required for them).
        #[arg(long, required_unless_present = "to")]
        pty: bool,
        /// hl7-monitor: the gateway's MLLP listener.
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "pty")]
        to: Option<String>,
        /// hl7-monitor: the bed, as PV1-3.
        #[arg(long, default_value = "3West^301^1")]
        location: String,
        /// hl7-monitor: the monitor's EUI-64 (MSH-3, OBX-18).
        #[arg(long, default_value = "00A0370098006640")]
        eui64: String,
        /// hl7-monitor: stop after this many acknowledged messages.
        #[arg(long)]
        count: Option<u64>,
        /// Also make a symlink here pointing at the pty (a stable path, like /dev/serial/by-id).
        #[arg(long, value_name = "PATH")]
        link: Option<PathBuf>,
        /// Time between frames.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        interval_ms: u64,
        /// Faults to inject, comma-separated: garbage, drop, corrupt, sensor-off.
        #[arg(long, default_value = "")]
        faults: String,
        /// The simulated patient's course: stable, deteriorating or faulty.
        #[arg(long, default_value = "stable")]
        scenario: String,
        /// Random seed, for repeatable values.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Is the gateway healthy? A short summary on a terminal, JSON with --json or when piped:
    /// backlog, oldest undelivered, last ack, devices, patients, uplink, keys.
    ///
    /// Exit codes (a monitoring probe): 0 healthy, 1 degraded (a device silent, backlog older
    /// than [status] backlog_max_age_s, uplink down longer than [status] uplink_down_max_s),
    /// 2 unreachable (the daemon's live socket does not answer) or a configuration error.
    Status {
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// JSON even on a terminal.
        #[arg(long)]
        json: bool,
    },
    /// Live terminal dashboard of the running daemon (over its local socket): devices, latest
    /// values, NEWS2 and open alerts per patient, outbox, uplink, clock, storage.
    /// Keys: q quits, arrows select, ? help. NO_COLOR turns colour off.
    Top {
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Self-check, one line per check with its fix: config, key, certificates, broker (a real
    /// TLS 1.3 mutual-TLS handshake), serial devices, Bluetooth, clock, disk, systemd unit.
    /// Exits 0 only if no check failed.
    Doctor {
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Instead of the checks: print a systemd drop-in that binds in, read-only, the files
        /// the config names outside the service's root directory (nothing when there are none;
        /// what no bind can fix goes to stderr). The package's postinst installs it.
        #[arg(long)]
        sandbox_drop_in: bool,
    },
    /// Fleet operator tools: signing keys, signed configuration documents and commands
    /// (docs/fleet.md).
    Fleet {
        #[command(subcommand)]
        action: FleetAction,
    },
    /// Create a new 256-bit master key file (mode 0600). Refuses to overwrite.
    Keygen {
        /// Where to write the key (default: the key_file of the config, else /etc/vitalgate/master.key).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check or export the audit log (`audit.log` in the state directory).
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Rotate the outbox's data keys or its master key (refused while the daemon runs).
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Erase a patient's stored data (refused while the daemon runs).
    Patient {
        #[command(subcommand)]
        action: PatientAction,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Replace every data key (one per patient, one for the gateway) by a new random one;
    /// old keys are destroyed once no row sealed with them remains.
    RotateData {
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Re-wrap the keyring under a new master key (created with `vitalgate keygen`) and
    /// install it in place of the key file; rows are untouched. Crash-safe.
    RotateMaster {
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        #[arg(long, value_name = "FILE")]
        new_key: PathBuf,
    },
}

#[derive(Subcommand)]
enum PatientAction {
    /// Destroy the patient's data keys and delete their rows and state (audited). Reports
    /// how many rows had not reached the platform yet.
    Erase {
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The patient's pseudonymous id (as in the configuration), never the NHS Number.
        patient_id: String,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check every entry's MAC and link, and the head kept in the outbox. Exits 0 when
    /// intact, 1 when broken (naming the first bad entry by sequence number and line).
    Verify {
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Print entries as JSON lines, as stored (each with its MAC), with
    /// SINCE <= time < UNTIL. Times: RFC 3339 or a date (midnight UTC).
    Export {
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        #[arg(long, value_parser = vitalgate::audit::cli::parse_time)]
        since: Option<time::OffsetDateTime>,
        #[arg(long, value_parser = vitalgate::audit::cli::parse_time)]
        until: Option<time::OffsetDateTime>,
    },
}

#[derive(Subcommand)]
enum FleetAction {
    /// Create a fleet signing key pair in DIR: fleet.key (PKCS#8, mode 0600) and fleet.pub.
    Keygen {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Sign a configuration overlay (TOML) for one gateway; the document goes to stdout.
    Sign {
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        #[arg(long, value_name = "GW")]
        gateway: String,
        /// Strictly increasing per gateway.
        #[arg(long, value_name = "N")]
        version: u64,
        /// The hub refuses the document after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        expires_in: Option<u64>,
        overlay: PathBuf,
    },
    /// Sign a command (ping, reload, restart-uplink) for one gateway; the document
    /// goes to stdout, its id to stderr.
    Command {
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        #[arg(long, value_name = "GW")]
        gateway: String,
        /// The hub refuses the command after this many seconds (at most a day).
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        expires_in: i64,
        name: String,
        args: Vec<String>,
    },
    /// Subscribe as the platform to every gateway's status and config/reported and print a
    /// live table (PLATFORM.toml holds an [uplink] table with the platform's certificate).
    Watch {
        #[arg(long, value_name = "PLATFORM.toml")]
        config: PathBuf,
        /// Stop after this many seconds and print the table once more (default: until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
    },
}

/// `vitalgate fleet ...`: the handlers live in `vitalgate::fleet::cli`.
fn fleet(action: FleetAction) -> anyhow::Result<()> {
    use vitalgate::fleet::cli;
    let usage = |e: cli::CliError| UsageError(e.to_string());
    let now = time::OffsetDateTime::now_utc();
    match action {
        FleetAction::Keygen { out } => {
            let g = cli::keygen(&out).map_err(usage)?;
            outln!("{}", g.key_id)?;
            eprintln!(
                "wrote {} (mode 0600, keep it offline) and {} (give it to hubs as [fleet] trusted_keys); key id {}",
                g.private_key.display(),
                g.public_key.display(),
                g.key_id
            );
        }
        FleetAction::Sign {
            key,
            gateway,
            version,
            expires_in,
            overlay,
        } => {
            let expires =
                expires_in.map(|s| time::Duration::seconds(s.min(i64::MAX as u64) as i64));
            let doc = cli::sign(&key, &gateway, version, &overlay, expires, now).map_err(usage)?;
            outln!("{doc}")?;
        }
        FleetAction::Command {
            key,
            gateway,
            expires_in,
            name,
            args,
        } => {
            let lifetime = time::Duration::seconds(expires_in);
            let (doc, p) =
                cli::command(&key, &gateway, &name, args, lifetime, now).map_err(usage)?;
            outln!("{doc}")?;
            eprintln!("command id {} (answered on cmd/result)", p.id);
        }
        FleetAction::Watch { config, seconds } => {
            use std::io::IsTerminal;
            let cfg = vitalgate::fleet::watch::load_config(&config)
                .map_err(|e| UsageError(e.to_string()))?;
            let (rt, shutdown) = runtime_with_signals(None)?;
            if let Some(s) = seconds {
                let stop = shutdown.clone();
                rt.spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_secs(s)).await;
                    stop.cancel();
                });
            }
            let terminal = std::io::stdout().is_terminal();
            rt.block_on(vitalgate::fleet::watch::run(
                cfg,
                std::io::stdout(),
                terminal,
                shutdown,
            ))
            .map_err(|e| UsageError(e.to_string()))?;
        }
    }
    Ok(())
}

/// An error that exits with 2 (usage or configuration).
#[derive(Debug)]
struct UsageError(String);
impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

/// Ends with this exit code, having already said why (`status`: 1 degraded, 2 unreachable).
#[derive(Debug)]
struct ExitWith(u8);
impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}
impl std::error::Error for ExitWith {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's screen is the live view: only warnings and errors in between.
    // Alert events are shown by the demo's platform view, so not logged there too; with
    // --top, and for `top` itself, nothing may write over the dashboard.
    init_logging(match cli.command {
        Command::Demo { top: true, .. } | Command::Top { .. } => "off",
        Command::Demo { .. } => "warn,vitalgate::alert=off",
        Command::Doctor { .. } => "warn",
        _ => "info",
    });
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout has gone (`vitalgate decode --list | head -1`): it has what
        // it wanted; nothing to say and nothing failed.
        Err(e) if cli_output::is_closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<ExitWith>().is_some() => {
            ExitCode::from(e.downcast_ref::<ExitWith>().map_or(1, |c| c.0))
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// 2 for what the operator fixes in the configuration or the files it names (a master key
/// that does not open the existing outbox included: restarting cannot help), 1 for runtime
/// failures.
fn exit_code(e: &anyhow::Error) -> u8 {
    use vitalgate::daemon::DaemonError;
    use vitalgate::store::{KeyError, StoreError};
    let configuration = e.chain().any(|c| {
        c.is::<UsageError>()
            || c.is::<config::ConfigError>()
            || c.is::<KeyError>()
            || matches!(c.downcast_ref(), Some(StoreError::WrongKey { .. }))
            || matches!(
                c.downcast_ref(),
                Some(DaemonError::Store(StoreError::WrongKey { .. }))
            )
    });
    if configuration {
        2
    } else {
        1
    }
}

/// Under systemd (stderr is the journal, `$JOURNAL_STREAM`), events go to journald with their
/// structured fields (`VG_DEVICE=`, `VG_PATIENT=`, ...); otherwise formatted lines go to stderr.
fn init_logging(default: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (initial, start_filter) = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| Some((f.clone(), vitalgate::logging::parse(&f).ok()?)))
        .unwrap_or_else(|| {
            let f = vitalgate::logging::parse(default).expect("a valid built-in log level");
            (default.to_owned(), f)
        });
    let (filter, handle) = tracing_subscriber::reload::Layer::new(start_filter);
    // `[logging] level` changes it live (vitalgate::logging).
    vitalgate::logging::install(
        &initial,
        Box::new(move |level: &str| {
            let f = vitalgate::logging::parse(level)?;
            handle.reload(f).map_err(|e| e.to_string())
        }),
    );
    if vitalgate::daemon::systemd::stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            // Fields become VG_DEVICE=, VG_PATIENT=, ...: `journalctl -u vitalgate VG_DEVICE=pulse-ox`.
            let journald = journald
                .with_field_prefix(Some("VG".into()))
                .with_syslog_identifier("vitalgate".into());
            tracing_subscriber::registry()
                .with(filter)
                .with(journald)
                .init();
            return;
        }
    }
    use std::io::IsTerminal;
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
        .init();
}

/// How long `run` waits, after its pipeline has stopped, for leftover blocking tasks before
/// exiting anyway (well inside the unit's TimeoutStopSec=15s).
const RUNTIME_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => {
            // A panic is a bug: the hook records what it struck (once `serve` arms it) and
            // aborts, in every build; the next start acts on it (vitalgate::crash).
            vitalgate::crash::install_hook();
            // Signal handlers first: a SIGTERM (or SIGHUP) that arrives while the config,
            // key and outbox are being opened must mean "stop cleanly", not the default
            // action of killing the process mid-start.
            let reload = Arc::new(Notify::new());
            let (rt, shutdown) = runtime_with_signals(Some(reload.clone()))?;
            tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %config.display(), "vitalgate starting");
            // Everything run needs from the file system is checked before anything is
            // created; a problem is a configuration error (2). Certificate expiry is left to
            // the uplink: readings are still collected and alarms still sound without it.
            let cfg = Config::load_and_check(&config, None)?;
            let master =
                MasterKey::load(&cfg.store.key_file).map_err(|e| UsageError(e.to_string()))?;
            // The audit MAC key the keyring keeps (it outlives a master key rotation).
            let master = vitalgate::store::keyring::attach_audit_key(master, &cfg.outbox_path());
            let notifier = vitalgate::daemon::systemd::SdNotify::start()
                .context("cannot start the systemd notification thread")?;
            let served = rt.block_on(vitalgate::daemon::supervisor::serve(
                config,
                cfg,
                master,
                shutdown,
                reload,
                None,
                Some(Arc::new(notifier)),
            ));
            // serve() returns once ingest has committed and the uplink said offline. Dropping
            // the runtime would then wait without limit for blocking-pool stragglers (a stuck
            // device read, a file operation on a hung mount): never let one hold SIGTERM.
            rt.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
            served?;
            Ok(())
        }
        Command::Demo {
            seconds,
            state_dir,
            broker,
            speed,
            top,
        } => {
            #[cfg(feature = "demo")]
            if !vitalgate::demo::SPEED_RANGE.contains(&speed) {
                return Err(UsageError(format!("--speed {speed}: use 0.1 to 20")).into());
            }
            demo(seconds, state_dir, &broker, speed, top)
        }
        Command::CheckConfig { config } => {
            let cfg = Config::load_and_check(&config, Some(time::OffsetDateTime::now_utc()))?;
            outln!("# {}: valid", config.display())?;
            out!("{}", cfg.redacted_toml())?;
            Ok(())
        }
        Command::Decode {
            driver,
            frames,
            text,
            list,
            devices,
        } => decode(driver, frames, text, list, devices),
        Command::Simulate {
            driver,
            to: Some(to),
            location,
            eui64,
            count,
            interval_ms,
            scenario,
            seed,
            ..
        } => simulate_hl7(
            driver,
            to,
            location,
            eui64,
            count,
            interval_ms,
            &scenario,
            seed,
        ),
        Command::Simulate {
            driver,
            pty: _,
            link,
            interval_ms,
            faults,
            scenario,
            seed,
            ..
        } => simulate(driver, link, interval_ms, &faults, &scenario, seed),
        Command::Status { config, json } => {
            use std::io::IsTerminal;
            let cfg = Config::load(&config)?;
            let report = vitalgate::live::report::status(&cfg);
            if json || !std::io::stdout().is_terminal() {
                ignore_closed_pipe(outln!(
                    "{}",
                    serde_json::to_string_pretty(&report.document)?
                ))?;
            } else {
                ignore_closed_pipe(out!("{}", report.human()))?;
            }
            match report.health.verdict.exit_code() {
                0 => Ok(()),
                code => Err(ExitWith(code).into()),
            }
        }
        Command::Top { config } => {
            let cfg = Config::load(&config)?;
            let socket = vitalgate::live::socket_path(&cfg.gateway.state_dir);
            let options = vitalgate::top::TopOptions {
                thresholds: cfg.status.clone(),
                ..vitalgate::top::TopOptions::from_env()
            };
            vitalgate::top::run(&socket, options).map_err(|e| UsageError(e.to_string()))?;
            Ok(())
        }
        Command::Doctor {
            config,
            sandbox_drop_in: true,
        } => {
            let cfg = Config::load(&config).map_err(|e| UsageError(e.to_string()))?;
            let hidden = vitalgate::sandbox::HiddenPaths::of(&cfg);
            for (setting, path, why) in &hidden.unbindable {
                let path = vitalgate::redact::scrub(&path.to_string_lossy()).into_owned();
                eprintln!("vitalgate: {setting} {path} is outside the service's root and not bound in: {why}");
            }
            if let Some(text) = hidden.drop_in() {
                ignore_closed_pipe(out!("{text}"))?;
            }
            Ok(())
        }
        Command::Doctor { config, .. } => {
            let findings = vitalgate::doctor::run(&config, &vitalgate::doctor::Host::system());
            for f in &findings {
                ignore_closed_pipe(outln!("{f}"))?;
            }
            match vitalgate::doctor::exit_code(&findings) {
                0 => Ok(()),
                code => Err(ExitWith(code).into()),
            }
        }
        Command::Fleet { action } => fleet(action),
        Command::Keygen { out, config } => {
            let path = match (out, &config) {
                (Some(p), _) => p,
                (None, Some(c)) => Config::load(c)?.store.key_file,
                (None, None) => PathBuf::from("/etc/vitalgate/master.key"),
            };
            MasterKey::generate_file(&path).map_err(|e| UsageError(e.to_string()))?;
            keygen_audit(config.as_deref(), &path);
            eprintln!("wrote a new master key to {} (mode 0600); back it up: without it the outbox cannot be read", path.display());
            Ok(())
        }
        Command::Audit { action } => audit(action),
        Command::Key { action } => key_command(action),
        Command::Patient { action } => patient_command(action),
    }
}

/// A key operation's error: usage (2) or runtime (1).
fn key_op_error(e: vitalgate::keyops::KeyOpError) -> anyhow::Error {
    if e.is_usage() {
        UsageError(e.to_string()).into()
    } else {
        anyhow::anyhow!(e)
    }
}

/// `vitalgate key rotate-data|rotate-master`; the work is in `vitalgate::keyops`.
fn key_command(action: KeyAction) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    match action {
        KeyAction::RotateData { config } => {
            let cfg = Config::load(&config)?;
            let done = vitalgate::keyops::rotate_data(&cfg, now).map_err(key_op_error)?;
            println!("{}", serde_json::to_string_pretty(&done)?);
            Ok(())
        }
        KeyAction::RotateMaster { config, new_key } => {
            let cfg = Config::load(&config)?;
            let done =
                vitalgate::keyops::rotate_master(&cfg, &new_key, now).map_err(key_op_error)?;
            println!("{}", serde_json::to_string_pretty(&done)?);
            if !done.completed {
                eprintln!("the keyring is wrapped under both keys; install {} as the credential vitalgate.key, then start the daemon: its first start with the new key completes the rotation (a start with the old key abandons it)", new_key.display());
            }
            Ok(())
        }
    }
}

/// `vitalgate patient erase PATIENT_ID`.
fn patient_command(action: PatientAction) -> anyhow::Result<()> {
    match action {
        PatientAction::Erase { config, patient_id } => {
            let cfg = Config::load(&config)?;
            let done = vitalgate::keyops::erase_patient(&cfg, &patient_id).map_err(key_op_error)?;
            println!("{}", serde_json::to_string_pretty(&done)?);
            eprintln!(
                "patient {}: {} undelivered rows erased (never reached the platform), {} delivered, {} quarantined, {} state values; {} data keys destroyed",
                done.patient,
                done.undelivered_rows,
                done.delivered_rows,
                done.quarantined_rows,
                done.state_values,
                done.keys_destroyed.len()
            );
            Ok(())
        }
    }
}

/// `vitalgate audit verify|export`; the work is in `vitalgate::audit::cli`.
fn audit(action: AuditAction) -> anyhow::Result<()> {
    match action {
        AuditAction::Verify { config } => {
            let cfg = Config::load(&config)?;
            let master =
                MasterKey::load(&cfg.store.key_file).map_err(|e| UsageError(e.to_string()))?;
            let master = vitalgate::store::keyring::attach_audit_key(master, &cfg.outbox_path());
            let dir = &cfg.gateway.state_dir;
            let v = vitalgate::audit::cli::verify(dir, &cfg.outbox_path(), &master)?;
            let path = dir.join(vitalgate::audit::FILE_NAME);
            vitalgate::audit::cli::write_report(&path, &v, &mut std::io::stdout().lock())?;
            match v.walk.breaks.first() {
                None => Ok(()),
                Some(first) => anyhow::bail!("audit log broken: first bad {first}"),
            }
        }
        AuditAction::Export {
            config,
            since,
            until,
        } => {
            let cfg = Config::load(&config)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let done =
                vitalgate::audit::cli::export(&cfg.gateway.state_dir, since, until, &mut out)?;
            std::io::Write::flush(&mut out)?;
            for line in done.unreadable {
                eprintln!("audit.log: line {line}: not an audit entry; skipped");
            }
            Ok(())
        }
    }
}

/// Records a new key in the audit log of the state dir it is for: `gateway.state_dir` of
/// `--config`, else of the default config when there is one (read alone, so a config still
/// being provisioned, e.g. without its certificates, does not stop the audit). Never next to
/// the key: /etc/vitalgate is not where the gateway's audit trail lives. The state dir is
/// created 0700 if missing, and a new audit.log is given to the state dir's owner, so the
/// service (user vitalgate) can go on appending to a log that root started.
fn keygen_audit(config: Option<&std::path::Path>, key: &std::path::Path) {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let config = config.unwrap_or(std::path::Path::new(config::DEFAULT_PATH));
    let state_dir = std::fs::read_to_string(config).ok().and_then(|text| {
        let doc: toml::Table = text.parse().ok()?;
        match doc.get("gateway").and_then(|g| g.get("state_dir")) {
            Some(dir) => dir.as_str().map(PathBuf::from),
            None => Some(config::GatewayConfig::default().state_dir),
        }
    });
    let Some(dir) = state_dir else {
        eprintln!("keygen: not audited: no readable configuration at {} to find the state dir (pass --config)", config.display());
        return;
    };
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    // Audited under the new key: the log's MACs are keyed from the master key.
    let master = match MasterKey::load(key) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("keygen: not audited: {e}");
            return;
        }
    };
    let recorded = vitalgate::audit::AuditLog::open(&dir, &master).and_then(|log| {
        log.record("keygen", serde_json::json!({"path": key}))?;
        Ok(log.path().to_path_buf())
    });
    match recorded {
        Ok(log) => {
            if let Ok(owner) = std::fs::metadata(&dir) {
                let _ = std::os::unix::fs::chown(&log, Some(owner.uid()), Some(owner.gid()));
            }
        }
        Err(e) => eprintln!("keygen: not audited: {e}"),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The runtime, with SIGTERM/SIGINT (and SIGHUP) handled from this point on: the returned
/// token is cancelled by them. Long-running commands call this first, so a signal during
/// their start-up stops them cleanly instead of taking its default, fatal action.
fn runtime_with_signals(
    reload: Option<Arc<Notify>>,
) -> anyhow::Result<(tokio::runtime::Runtime, CancellationToken)> {
    let rt = runtime()?;
    let token = CancellationToken::new();
    {
        let _runtime = rt.enter();
        spawn_signal_handler(token.clone(), reload)?;
    }
    Ok((rt, token))
}

/// SIGTERM and SIGINT cancel `token` (graceful shutdown); SIGHUP notifies `reload`. Only
/// through [`runtime_with_signals`].
///
/// The handlers are installed before this returns (it must be called inside the runtime),
/// so a signal that arrives afterwards is never given its default, fatal action.
fn spawn_signal_handler(
    token: CancellationToken,
    reload: Option<Arc<Notify>>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    vitalgate::task::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM"); break; }
                _ = int.recv() => { tracing::info!("SIGINT"); break; }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading configuration and certificates");
                    if let Some(r) = &reload {
                        r.notify_one();
                    }
                }
            }
        }
        token.cancel();
    });
    Ok(())
}

/// Where `vitalgate decode` looks for device profiles: `--devices DIR` first, then the
/// working directory's `devices/`, then the installed ones.
fn profile_dirs(extra: Option<PathBuf>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = extra.into_iter().collect();
    dirs.extend(
        [
            "devices",
            "/etc/vitalgate/devices",
            "/usr/share/vitalgate/devices",
        ]
        .map(PathBuf::from),
    );
    dirs
}

/// How `decode` decodes: a built-in driver, or a device profile's stream decoder.
enum DecodeWith {
    Value(drivers::ValueDecoder),
    Stream(Box<dyn Fn() -> Box<dyn drivers::StreamDecoder>>),
}

fn decode(
    driver: Option<String>,
    frames: Vec<String>,
    text: bool,
    list: bool,
    devices: Option<PathBuf>,
) -> anyhow::Result<()> {
    let dirs = profile_dirs(devices);
    if list {
        for d in drivers::registry() {
            outln!(
                "{:<22} {}{}",
                d.name,
                d.summary,
                if d.text { " (--text)" } else { "" }
            )?;
        }
        for dir in &dirs {
            // Line profiles are drivers of their own; other profiles name a built-in driver.
            if let Ok(entries) = std::fs::read_dir(dir) {
                let mut names: Vec<String> = entries
                    .filter_map(|e| {
                        e.ok()?
                            .path()
                            .file_stem()
                            .map(|s| s.to_string_lossy().into_owned())
                    })
                    .collect();
                names.sort();
                for name in names {
                    if let Some(Ok(p)) =
                        drivers::serial::profile::find_profile(&name, std::slice::from_ref(dir))
                    {
                        outln!(
                            "{:<22} profile {} ({} {}, driver {}){}",
                            p.name,
                            p.path.display(),
                            p.manufacturer,
                            p.model,
                            p.driver,
                            if p.is_text() { " (--text)" } else { "" }
                        )?;
                    }
                }
            }
        }
        return Ok(());
    }
    let name = driver.unwrap_or_default();
    let (with, is_text) = match drivers::find(&name) {
        Some(info) => (
            match info.kind {
                DriverKind::Value(f) => DecodeWith::Value(f),
                DriverKind::Stream(make) => DecodeWith::Stream(Box::new(make)),
            },
            info.text,
        ),
        None => match drivers::serial::profile::find_profile(&name, &dirs) {
            Some(Ok(profile)) => {
                let text = profile.is_text();
                (
                    DecodeWith::Stream(Box::new(move || profile.decoder())),
                    text,
                )
            }
            Some(Err(e)) => return Err(UsageError(e.to_string()).into()),
            None => {
                let names: Vec<&str> = drivers::registry().iter().map(|d| d.name).collect();
                let where_: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                return Err(UsageError(format!(
                    "unknown driver {name:?}; known drivers: {}; nor is there a profile {name}.toml in {}",
                    names.join(", "),
                    where_.join(", ")
                ))
                .into());
            }
        },
    };
    let inputs: Vec<Vec<u8>> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if text || is_text {
                let mut line = f.clone().into_bytes();
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                Ok(line)
            } else {
                let clean: String = f
                    .chars()
                    .filter(|c| !matches!(c, ' ' | ':' | '-' | '_'))
                    .collect();
                hex::decode(&clean)
                    .map_err(|e| UsageError(format!("frame {}: {f:?} is not hex: {e}", i + 1)))
            }
        })
        .collect::<Result<_, _>>()?;
    let mut failures = 0;
    let mut stdout = std::io::stdout().lock();
    use std::io::Write;
    match with {
        DecodeWith::Value(decode) => {
            for (i, bytes) in inputs.iter().enumerate() {
                match decode(bytes) {
                    Ok(readings) => {
                        for r in readings {
                            writeln!(stdout, "{}", serde_json::to_string(&r)?)?;
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        eprintln!("frame {}: {e}", i + 1);
                    }
                }
            }
        }
        DecodeWith::Stream(make) => {
            // Frames are fed in order to one decoder, as the transport would.
            let mut decoder = make();
            let all: Vec<u8> = inputs.concat();
            let (mut out, mut errors) = (Vec::new(), Vec::new());
            let used = drivers::drain(decoder.as_mut(), &all, &mut out, &mut errors);
            for r in out {
                writeln!(stdout, "{}", serde_json::to_string(&r)?)?;
            }
            for e in &errors {
                eprintln!("skipped: {e}");
            }
            failures += errors.len();
            if used < all.len() {
                eprintln!(
                    "{} trailing byte(s) do not complete a frame",
                    all.len() - used
                );
                failures += 1;
            }
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} frame(s) could not be decoded");
    }
    Ok(())
}

fn simulate(
    driver: String,
    link: Option<PathBuf>,
    interval_ms: u64,
    faults: &str,
    scenario: &str,
    seed: u64,
) -> anyhow::Result<()> {
    use vitalgate::transport::simulator::{FaultSet, PtySimulator, SimOptions};
    let faults = FaultSet::parse(faults).map_err(|e| UsageError(e.to_string()))?;
    let scenario = match scenario {
        "stable" => vitalgate::drivers::sim::Scenario::Stable,
        "deteriorating" => vitalgate::drivers::sim::Scenario::Deteriorating,
        "faulty" => vitalgate::drivers::sim::Scenario::Faulty,
        other => {
            return Err(UsageError(format!(
                "unknown scenario {other:?}; use stable, deteriorating or faulty"
            ))
            .into())
        }
    };
    let opts = SimOptions {
        driver,
        interval: std::time::Duration::from_millis(interval_ms),
        faults,
        scenario,
        seed,
        link,
    };
    let (rt, token) = runtime_with_signals(None)?;
    rt.block_on(async {
        let sim = PtySimulator::open(opts).map_err(|e| match e {
            vitalgate::transport::simulator::SimError::UnknownDriver { .. } => anyhow::Error::new(UsageError(e.to_string())),
            other => anyhow::Error::new(other),
        })?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", sim.slave_path().display())?;
            out.flush()?;
        }
        tracing::info!(pty = %sim.slave_path().display(), "simulating; stop with Ctrl-C or SIGTERM");
        let frames = sim.run(token).await?;
        tracing::info!(frames, "simulator stopped");
        Ok(())
    })
}

/// `simulate hl7-monitor --to HOST:PORT`: a bedside monitor over MLLP.
#[allow(clippy::too_many_arguments)]
fn simulate_hl7(
    driver: String,
    to: String,
    location: String,
    eui64: String,
    count: Option<u64>,
    interval_ms: u64,
    scenario: &str,
    seed: u64,
) -> anyhow::Result<()> {
    use vitalgate::transport::hl7_simulator::{run, Hl7SimError, Hl7SimOptions};
    if driver != "hl7-monitor" {
        return Err(UsageError(format!(
            "--to is for `simulate hl7-monitor`, not {driver:?}; serial drivers take --pty"
        ))
        .into());
    }
    let scenario = match scenario {
        "stable" => vitalgate::drivers::sim::Scenario::Stable,
        "deteriorating" => vitalgate::drivers::sim::Scenario::Deteriorating,
        "faulty" => vitalgate::drivers::sim::Scenario::Faulty,
        other => {
            return Err(UsageError(format!(
                "unknown scenario {other:?}; use stable, deteriorating or faulty"
            ))
            .into())
        }
    };
    let opts = Hl7SimOptions {
        to,
        location,
        eui64,
        interval: std::time::Duration::from_millis(interval_ms),
        scenario,
        seed,
        count,
    };
    let (rt, token) = runtime_with_signals(None)?;
    let report = rt.block_on(run(opts, token)).map_err(|e| match e {
        Hl7SimError::BadEui(_) => anyhow::Error::new(UsageError(e.to_string())),
        other => anyhow::Error::new(other),
    })?;
    tracing::info!(
        sent = report.sent,
        acknowledged = report.acknowledged,
        "simulator stopped"
    );
    Ok(())
}

#[cfg(feature = "demo")]
fn demo(
    seconds: Option<u64>,
    state_dir: Option<PathBuf>,
    broker: &str,
    speed: f64,
    top: bool,
) -> anyhow::Result<()> {
    let broker: vitalgate::demo::BrokerChoice = broker.parse().map_err(UsageError)?;
    if broker == vitalgate::demo::BrokerChoice::Mosquitto
        && vitalgate::demo::broker::find_mosquitto().is_none()
    {
        return Err(UsageError(vitalgate::demo::DemoError::NoMosquitto.to_string()).into());
    }
    let (rt, shutdown) = runtime_with_signals(None)?;
    rt.block_on(vitalgate::demo::run(
        vitalgate::demo::DemoOptions {
            seconds,
            state_dir,
            broker,
            speed: Some(speed),
            top,
        },
        shutdown,
    ))?;
    Ok(())
}

/// A production build (the Debian packages: `--no-default-features`) carries no demo CA or
/// broker; asking for the demo is a usage error (2) that says how to get it.
#[cfg(not(feature = "demo"))]
fn demo(
    _seconds: Option<u64>,
    _state_dir: Option<PathBuf>,
    _broker: &str,
    _speed: f64,
    _top: bool,
) -> anyhow::Result<()> {
    Err(UsageError(
        "this vitalgate was built without the demo (cargo feature `demo`; the Debian packages leave it out). \
Run the demo from a source checkout: cargo run --release -- demo"
            .into(),
    )
    .into())
}
