//! Checks of the gateway itself: configuration, master key, serial devices, Bluetooth, clock,
//! disk and the systemd unit.

use std::path::Path;

use super::{Finding, Host};
use crate::config::Config;
use crate::store::{MasterKey, Outbox, StoreError};

/// Below this much free space the disk check fails (the outbox must be able to grow while
/// the uplink is down).
pub const DISK_FAIL_BYTES: u64 = 200_000_000;
/// Below this fraction free it warns.
pub const DISK_WARN_PERCENT: u64 = 10;

/// The configuration loads and validates.
pub fn config(path: &Path) -> (Option<Config>, Finding) {
    match Config::load(path) {
        Ok(c) => (
            Some(c),
            Finding::pass("config", format!("{}: valid", path.display())),
        ),
        Err(e) => (
            None,
            Finding::fail(
                "config",
                e.to_string().replace('\n', "; "),
                format!(
                    "correct the named key, then `vitalgate check-config --config {}`",
                    path.display()
                ),
            ),
        ),
    }
}

/// The master key is present, readable only by its owner, and the one the outbox was
/// sealed with.
pub fn key(cfg: &Config) -> Finding {
    let file = &cfg.store.key_file;
    let master = match MasterKey::load(file) {
        Ok(k) => k,
        Err(e) => {
            use crate::store::crypto::KeyError;
            let fix = match &e {
                KeyError::Missing { .. } => format!(
                    "restore the key from its backup, or for a new gateway `vitalgate keygen --out {}`",
                    file.display()
                ),
                KeyError::BadPermissions { .. } => format!(
                    "chmod 600 {f} && chown vitalgate:vitalgate {f}",
                    f = file.display()
                ),
                _ => format!("check {} (64 hex digits, owned by vitalgate)", file.display()),
            };
            return Finding::fail("key", e.to_string(), fix);
        }
    };
    let outbox = cfg.outbox_path();
    if !outbox.exists() {
        return Finding::pass(
            "key",
            format!("{}: present, mode 0600; no outbox yet", file.display()),
        );
    }
    match Outbox::open_secondary(&outbox, &master) {
        Ok(_) => Finding::pass(
            "key",
            format!(
                "{}: present, mode 0600, opens {}",
                file.display(),
                outbox.display()
            ),
        ),
        Err(e @ StoreError::WrongKey { .. }) => Finding::fail(
            "key",
            e.to_string(),
            "restore the key this outbox was sealed with (the backup made at keygen); never replace it with a new one",
        ),
        Err(e) => Finding::fail(
            "key",
            format!("cannot check the key against the outbox: {e}"),
            "see the message; `vitalgate status` shows the outbox",
        ),
    }
}

/// Each byte-stream device's path is present and openable by this user.
pub fn serial(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    for d in cfg.devices.iter().filter(|d| !d.is_ble()) {
        let Some(path) = &d.path else { continue };
        out.push(open_device(&d.id, path));
    }
    if out.is_empty() {
        out.push(Finding::skip(
            "serial",
            "no serial or file devices configured",
        ));
    }
    out
}

fn open_device(id: &str, path: &Path) -> Finding {
    use rustix::fs::{Mode, OFlags};
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Finding::fail(
                "serial",
                format!("device {id}: {} is not present", path.display()),
                "plug the device in (or check its cable/adapter) and compare with `ls -l /dev/serial/by-id/`",
            )
        }
        Err(e) => {
            return Finding::fail(
                "serial",
                format!("device {id}: {}: {e}", path.display()),
                "check the path's directories are readable by the vitalgate user",
            )
        }
    };
    let kind = if meta.file_type().is_char_device() {
        "character device"
    } else if meta.file_type().is_fifo() {
        "FIFO"
    } else {
        "file"
    };
    // Read-write for a tty (the profile may send init bytes), without becoming its
    // controlling terminal and without waiting for carrier; read-only for files and FIFOs.
    let flags = if kind == "character device" {
        OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC
    } else {
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC
    };
    match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(_) if kind == "character device" && running_as_root() => {
            // Root opens anything: judge the service user's access (group dialout) instead.
            use std::os::unix::fs::MetadataExt;
            let dialout = crate::live::server::group_id("dialout");
            if service_user_can_open(meta.mode(), meta.gid(), dialout) {
                Finding::pass(
                    "serial",
                    format!("device {id}: {} ({kind}) opens, group dialout can too", path.display()),
                )
            } else {
                Finding::fail(
                    "serial",
                    format!(
                        "device {id}: {}: the service user (group dialout) cannot open it (mode {:o}, gid {})",
                        path.display(),
                        meta.mode() & 0o777,
                        meta.gid()
                    ),
                    "install the udev rule (60-vitalgate-serial.rules: GROUP=\"dialout\", MODE=\"0660\") and replug",
                )
            }
        }
        Ok(_) => Finding::pass(
            "serial",
            format!("device {id}: {} ({kind}) opens", path.display()),
        ),
        Err(e) if e == rustix::io::Errno::ACCESS || e == rustix::io::Errno::PERM => {
            Finding::fail(
                "serial",
                format!("device {id}: {}: permission denied", path.display()),
                "the service user needs group dialout: `usermod -aG dialout vitalgate` (the unit sets SupplementaryGroups=dialout), and the udev rule in /usr/lib/udev/rules.d/60-vitalgate-serial.rules",
            )
        }
        Err(e) => Finding::fail(
            "serial",
            format!("device {id}: {}: cannot open: {e}", path.display()),
            "is another program (ModemManager, a terminal) holding the port? `fuser -v` the path",
        ),
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Whether a member of group dialout (the service user, `SupplementaryGroups=dialout`) may
/// read and write a device of this mode and group.
pub fn service_user_can_open(mode: u32, gid: u32, dialout: Option<u32>) -> bool {
    mode & 0o006 == 0o006 || (Some(gid) == dialout && mode & 0o060 == 0o060)
}

/// For BLE devices: an adapter and bluetoothd.
pub fn bluetooth(cfg: &Config, host: &Host) -> Finding {
    let n = cfg.devices.iter().filter(|d| d.is_ble()).count();
    if n == 0 {
        return Finding::skip("bluetooth", "no BLE devices configured");
    }
    let adapters: Vec<String> = std::fs::read_dir(&host.bluetooth_class)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("hci"))
                .collect()
        })
        .unwrap_or_default();
    if adapters.is_empty() {
        return Finding::fail(
            "bluetooth",
            format!("{n} BLE device(s) configured but no Bluetooth adapter"),
            "plug in or enable the adapter (`rfkill unblock bluetooth`; `bluetoothctl list`)",
        );
    }
    if !process_running(&host.proc, "bluetoothd") {
        return Finding::fail(
            "bluetooth",
            format!(
                "adapter {} present but bluetoothd is not running",
                adapters.join(", ")
            ),
            "`systemctl enable --now bluetooth`",
        );
    }
    Finding::pass(
        "bluetooth",
        format!(
            "adapter {} and bluetoothd for {n} BLE device(s)",
            adapters.join(", ")
        ),
    )
}

fn process_running(proc: &Path, name: &str) -> bool {
    std::fs::read_dir(proc)
        .map(|d| {
            d.filter_map(Result::ok).any(|e| {
                std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name)
            })
        })
        .unwrap_or(false)
}

/// The clock is synchronised (readings carry gateway time; alerts judge freshness by it).
pub fn clock(host: &Host) -> Finding {
    if host.timesync_flag.exists() {
        Finding::pass("clock", "synchronised (systemd-timesyncd)")
    } else {
        Finding::fail(
            "clock",
            "not synchronised: reading times may be wrong",
            "`timedatectl set-ntp true` and allow NTP (UDP 123) out; `timedatectl timesync-status`",
        )
    }
}

/// The state directory's file system has room for the outbox to grow.
pub fn disk(cfg: &Config) -> Finding {
    let dir = &cfg.gateway.state_dir;
    let storage = crate::live::collector::storage_of(dir, &cfg.outbox_path());
    let (Some(free), Some(total)) = (storage.free_bytes, storage.total_bytes) else {
        return Finding::fail(
            "disk",
            format!("{}: cannot read free space", dir.display()),
            format!(
                "create {} (the daemon does, mode 0700) or correct gateway.state_dir",
                dir.display()
            ),
        );
    };
    let shown = crate::live::report::bytes;
    let detail = format!(
        "{}: {} free of {}",
        dir.display(),
        shown(free),
        shown(total)
    );
    if free < DISK_FAIL_BYTES {
        Finding::fail(
            "disk",
            detail,
            "free space: old logs (`journalctl --vacuum-size=100M`), or a larger card",
        )
    } else if total > 0 && free * 100 / total < DISK_WARN_PERCENT {
        Finding::warn("disk", detail, "less than 10 % free: plan to free space")
    } else {
        Finding::pass("disk", detail)
    }
}

/// Every file the config names lies where the packaged service can see it (only where
/// systemd runs: elsewhere no unit confines the gateway).
pub fn sandbox(cfg: &Config, host: &Host) -> Finding {
    if !host.systemd_run.exists() {
        return Finding::skip("sandbox", "this machine is not running systemd");
    }
    let hidden: Vec<String> = crate::sandbox::named_paths(cfg)
        .into_iter()
        .filter(|(_, path)| crate::sandbox::hidden_from_the_service(path))
        .map(|(what, path)| format!("{what} {}", path.display()))
        .collect();
    if hidden.is_empty() {
        return Finding::pass(
            "sandbox",
            "every file the config names is inside the service's root",
        );
    }
    Finding::fail(
        "sandbox",
        format!(
            "the service cannot see {}: its root holds only {}",
            hidden.join(", "),
            crate::sandbox::SERVICE_VISIBLE.join(", ")
        ),
        "move the file under /etc/vitalgate (serial ports: /dev/serial/by-id/...), or bind it in with `BindReadOnlyPaths=PATH` in a drop-in (`systemctl edit vitalgate`)",
    )
}

/// The service is active (only where systemd runs).
pub fn systemd_unit(host: &Host) -> Finding {
    if !host.systemd_run.exists() {
        return Finding::skip("systemd", "this machine is not running systemd");
    }
    let out = std::process::Command::new("systemctl")
        .args(["is-active", &host.unit])
        .output();
    match out {
        Ok(o) => {
            let state = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            if state == "active" {
                Finding::pass("systemd", format!("{} is active", host.unit))
            } else {
                Finding::fail(
                    "systemd",
                    format!("{} is {state}", host.unit),
                    format!(
                        "`systemctl enable --now {u}`; why it stopped: `journalctl -u {u} -n 50`",
                        u = host.unit
                    ),
                )
            }
        }
        Err(e) => Finding::fail(
            "systemd",
            format!("cannot run systemctl: {e}"),
            "run doctor on the gateway itself",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Outcome;

    fn host(dir: &Path) -> Host {
        Host {
            timesync_flag: dir.join("synchronized"),
            bluetooth_class: dir.join("bluetooth"),
            proc: dir.join("proc"),
            systemd_run: dir.join("systemd"),
            unit: "vitalgate.service".into(),
        }
    }

    fn with_ble() -> Config {
        Config::parse(
            "[gateway]\nid = \"g\"\n[[patient]]\nid = \"p1\"\n[[device]]\nid = \"cuff\"\npatient = \"p1\"\ndriver = \"ble-blood-pressure\"\naddress = \"A4:C1:38:12:34:56\"\n",
            Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn bluetooth_check_fails_without_an_adapter_then_without_bluetoothd_then_passes() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        let f = bluetooth(&with_ble(), &h);
        assert_eq!(f.outcome, Outcome::Fail);
        assert!(f.detail.contains("no Bluetooth adapter"), "{f}");
        std::fs::create_dir_all(h.bluetooth_class.join("hci0")).unwrap();
        let f = bluetooth(&with_ble(), &h);
        assert!(
            f.outcome == Outcome::Fail && f.detail.contains("bluetoothd is not running"),
            "{f}"
        );
        std::fs::create_dir_all(h.proc.join("412")).unwrap();
        std::fs::write(h.proc.join("412/comm"), "bluetoothd\n").unwrap();
        assert_eq!(bluetooth(&with_ble(), &h).outcome, Outcome::Pass);
    }

    #[test]
    fn bluetooth_check_does_not_apply_without_ble_devices() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::parse("[gateway]\nid = \"g\"\n", Path::new("t.toml")).unwrap();
        assert_eq!(bluetooth(&cfg, &host(dir.path())).outcome, Outcome::Skip);
    }

    #[test]
    fn clock_check_follows_timesyncd_flag() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        assert_eq!(clock(&h).outcome, Outcome::Fail);
        std::fs::write(&h.timesync_flag, "").unwrap();
        assert_eq!(clock(&h).outcome, Outcome::Pass);
    }

    #[test]
    fn service_user_access_needs_group_dialout_read_write_or_world_access() {
        assert!(service_user_can_open(0o20660, 20, Some(20)));
        assert!(!service_user_can_open(0o20600, 20, Some(20)), "owner only");
        assert!(!service_user_can_open(0o20660, 0, Some(20)), "group root");
        assert!(
            !service_user_can_open(0o20640, 20, Some(20)),
            "group read only"
        );
        assert!(service_user_can_open(0o20666, 0, None), "/dev/null style");
    }

    fn with_paths(device_path: &str) -> Config {
        Config::parse(
            &format!("[gateway]\nid = \"g\"\nstate_dir = \"/var/lib/vitalgate\"\n[[patient]]\nid = \"p1\"\n[[device]]\nid = \"entry\"\npatient = \"p1\"\ndriver = \"jsonl\"\npath = \"{device_path}\"\n"),
            Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn sandbox_check_fails_naming_a_file_the_service_cannot_see() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path());
        std::fs::create_dir(&host.systemd_run).unwrap();
        let f = sandbox(&with_paths("/opt/site/readings.jsonl"), &host);
        assert_eq!(f.outcome, Outcome::Fail, "{f}");
        assert!(f.detail.contains("/opt/site/readings.jsonl"), "{f}");
        assert!(f.fix.unwrap().contains("BindReadOnlyPaths="));
    }

    #[test]
    fn sandbox_check_passes_files_under_the_services_root() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path());
        std::fs::create_dir(&host.systemd_run).unwrap();
        let f = sandbox(&with_paths("/run/vitalgate/manual.jsonl"), &host);
        assert_eq!(f.outcome, Outcome::Pass, "{f}");
        let f = sandbox(&with_paths("/dev/ttyUSB0"), &host);
        assert_eq!(
            f.outcome,
            Outcome::Fail,
            "a port outside /dev/serial/by-id: {f}"
        );
    }

    #[test]
    fn systemd_check_does_not_apply_off_systemd() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(systemd_unit(&host(dir.path())).outcome, Outcome::Skip);
    }
}
