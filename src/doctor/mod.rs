//! `vitalgate doctor`: what a field engineer would otherwise check by hand, one line per
//! check with what to do about it. Exit 0 only if no check failed (a warning or a check that
//! does not apply does not fail).
//!
//! Each check is a function returning a [`Finding`] (or several, e.g. one per serial device),
//! in [`checks`] (config, key, serial, Bluetooth, clock, disk, systemd, the unit's sandbox) and [`tls`]
//! (certificates and a real TLS 1.3 mutual-TLS handshake with the broker). [`Host`] names the
//! system files the checks read, so tests can point them elsewhere.

pub mod checks;
pub mod tls;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::Config;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    /// Works, but will not for long (a certificate near expiry, disk filling).
    Warn,
    Fail,
    /// Does not apply here (no BLE devices, not running under systemd, no uplink).
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Short check name, e.g. `broker`, `serial`.
    pub check: &'static str,
    pub outcome: Outcome,
    /// What was found, naming the file, device or host.
    pub detail: String,
    /// What to do, for anything but a pass.
    pub fix: Option<String>,
}

impl Finding {
    pub fn pass(check: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            check,
            outcome: Outcome::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn skip(check: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            check,
            outcome: Outcome::Skip,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            outcome: Outcome::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            outcome: Outcome::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self.outcome {
            Outcome::Pass => "ok  ",
            Outcome::Warn => "WARN",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "--  ",
        };
        write!(f, "{word} {:<11} {}", self.check, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// The system files the checks read; [`Host::system`] is the real machine.
#[derive(Debug, Clone)]
pub struct Host {
    /// systemd-timesyncd's flag file, present when the clock is synchronised.
    pub timesync_flag: PathBuf,
    /// Where Bluetooth adapters appear (`hci0`, ...).
    pub bluetooth_class: PathBuf,
    /// The process table, to find `bluetoothd`.
    pub proc: PathBuf,
    /// Present when the machine runs systemd.
    pub systemd_run: PathBuf,
    /// The unit `systemctl is-active` is asked about.
    pub unit: String,
}

impl Host {
    pub fn system() -> Host {
        Host {
            timesync_flag: PathBuf::from("/run/systemd/timesync/synchronized"),
            bluetooth_class: PathBuf::from("/sys/class/bluetooth"),
            proc: PathBuf::from("/proc"),
            systemd_run: PathBuf::from("/run/systemd/system"),
            unit: "vitalgate.service".into(),
        }
    }
}

/// Runs every check for the config at `path`.
pub fn run(path: &Path, host: &Host) -> Vec<Finding> {
    let (config, finding) = checks::config(path);
    let mut out = vec![finding];
    let Some(cfg) = config else {
        out.push(Finding::skip(
            "others",
            "not run: they need a valid configuration",
        ));
        return out;
    };
    out.push(checks::key(&cfg));
    out.extend(tls::certificates(&cfg));
    out.push(tls::broker(&cfg));
    out.extend(checks::serial(&cfg));
    out.push(checks::bluetooth(&cfg, host));
    out.push(checks::clock(host));
    out.push(checks::disk(&cfg));
    out.push(checks::systemd_unit(host));
    out.push(checks::sandbox(&cfg, host));
    out
}

/// 0 when nothing failed, else 1.
pub fn exit_code(findings: &[Finding]) -> u8 {
    u8::from(findings.iter().any(|f| f.outcome == Outcome::Fail))
}

/// The config a check needs, for tests and callers that already loaded one.
pub fn load(path: &Path) -> Option<Config> {
    checks::config(path).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_is_0_only_when_nothing_failed() {
        let ok = Finding::pass("a", "fine");
        let skipped = Finding::skip("b", "n/a");
        let warned = Finding::warn("c", "soon", "renew");
        assert_eq!(exit_code(&[ok.clone(), skipped.clone(), warned.clone()]), 0);
        assert_eq!(
            exit_code(&[ok, skipped, warned, Finding::fail("d", "bad", "fix it")]),
            1
        );
    }

    #[test]
    fn a_finding_is_one_line_with_its_fix() {
        let f = Finding::fail("serial", "/dev/ttyUSB0: not present", "plug it in");
        let line = f.to_string();
        assert_eq!(
            line,
            "FAIL serial      /dev/ttyUSB0: not present; fix: plug it in"
        );
        assert!(!line.contains('\n'));
    }
}
