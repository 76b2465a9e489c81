//! What the packaged unit's root directory shows the service (packaging/vitalgate.service:
//! `RootDirectory=/usr/lib/vitalgate/root` and its bind mounts). A file the config names
//! anywhere else exists for an engineer's shell but not for the service, so the errors and
//! `vitalgate doctor` say so instead of a bare "does not exist".

use std::path::{Path, PathBuf};

use crate::config::Config;

/// The host paths visible inside the service's root (tests/packaging.rs checks the unit
/// names each of them).
pub const SERVICE_VISIBLE: &[&str] = &[
    "/usr",
    "/etc",
    "/bin",
    "/lib",
    "/var/lib/vitalgate",
    "/run/vitalgate",
    "/dev/serial/by-id",
];

/// True when `path` is absolute and outside everything the service's root shows.
pub fn hidden_from_the_service(path: &Path) -> bool {
    path.is_absolute() && !SERVICE_VISIBLE.iter().any(|root| path.starts_with(root))
}

/// Appended to "does not exist" when the process is a systemd service (`INVOCATION_ID`)
/// and the path is one its root directory hides: empty otherwise.
pub fn missing_file_hint(path: &Path) -> &'static str {
    if std::env::var_os("INVOCATION_ID").is_some() && hidden_from_the_service(path) {
        " inside the service's root directory (the packaged unit shows it only /usr, /etc, /var/lib/vitalgate, /run/vitalgate and /dev/serial/by-id): move the file under /etc/vitalgate, or bind it in with `BindReadOnlyPaths=PATH` in a drop-in (`systemctl edit vitalgate`); `vitalgate doctor` lists every such file"
    } else {
        ""
    }
}

/// The files and directories a config names, with the setting that names each.
pub fn named_paths(cfg: &Config) -> Vec<(String, std::path::PathBuf)> {
    let mut out = vec![(
        "gateway.state_dir".to_owned(),
        cfg.gateway.state_dir.clone(),
    )];
    for dir in &cfg.gateway.devices_dirs {
        out.push(("gateway.devices_dirs".to_owned(), dir.clone()));
    }
    if let Some(up) = &cfg.uplink {
        out.push(("uplink.ca_file".to_owned(), up.ca_file.clone()));
        out.push(("uplink.cert_file".to_owned(), up.cert_file.clone()));
        out.push(("uplink.key_file".to_owned(), up.key_file.clone()));
    }
    if let Some(tls) = cfg.hl7.as_ref().and_then(|h| h.tls.as_ref()) {
        out.push(("hl7.tls.cert_file".to_owned(), tls.cert_file.clone()));
        out.push(("hl7.tls.key_file".to_owned(), tls.key_file.clone()));
        out.push((
            "hl7.tls.client_ca_file".to_owned(),
            tls.client_ca_file.clone(),
        ));
    }
    for device in &cfg.devices {
        if let Some(path) = &device.path {
            out.push((format!("device {} path", device.id), path.clone()));
        }
    }
    if let Some(program) = cfg
        .alerts
        .annunciator_command
        .as_ref()
        .and_then(|c| c.first())
    {
        out.push(("alerts.annunciator_command".to_owned(), program.into()));
    }
    out
}

/// Where the package's postinst writes [`HiddenPaths::drop_in`] (never over a file that is
/// there: an operator's edit stays).
pub const CONFIG_PATHS_DROP_IN: &str =
    "/etc/systemd/system/vitalgate.service.d/50-config-paths.conf";

/// The first line of that drop-in: postrm deletes the file on purge only when it starts so.
pub const CONFIG_PATHS_DROP_IN_MARK: &str =
    "# Written by the vitalgate package (vitalgate doctor --sandbox-drop-in).";

/// The files a config names outside the service's root, by what a drop-in can do for them.
///
/// Why: packages before the root directory let the service read the whole file system, so
/// a hub whose config names, say, `/opt/site/manual.jsonl` ran; after an upgrade it would
/// not start. The postinst binds such files back in, read-only, so an unattended hub keeps
/// running, and says so; the operator moves them and deletes the drop-in.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HiddenPaths {
    /// Read by the service: a read-only bind shows them again.
    pub bindable: Vec<PathBuf>,
    /// What no read-only bind can fix, with the setting and the reason: device nodes
    /// (`PrivateDevices=` hides them; serial ports belong under `/dev/serial/by-id`), the
    /// state directory (written), and paths a unit file cannot spell safely.
    pub unbindable: Vec<(String, PathBuf, &'static str)>,
}

impl HiddenPaths {
    /// Sorts the paths `cfg` names that the service's root hides.
    pub fn of(cfg: &Config) -> HiddenPaths {
        let mut out = HiddenPaths::default();
        for (setting, path) in named_paths(cfg) {
            if !hidden_from_the_service(&path) || out.bindable.contains(&path) {
                continue;
            }
            let why = if path.starts_with("/dev") {
                Some("a device node: the unit shows serial ports under /dev/serial/by-id only")
            } else if setting == "gateway.state_dir" {
                Some("the state directory is written: keep it at /var/lib/vitalgate")
            } else if !spellable_in_a_unit(&path) {
                Some("the path holds characters (or a long number) a drop-in should not carry")
            } else {
                None
            };
            match why {
                Some(why) => out.unbindable.push((setting, path, why)),
                None => out.bindable.push(path),
            }
        }
        out
    }

    /// A systemd drop-in binding every bindable path in, read-only, or `None` when there is
    /// none. Each bind is optional (`-`): a file removed later does not stop the service.
    pub fn drop_in(&self) -> Option<String> {
        if self.bindable.is_empty() {
            return None;
        }
        let mut text = format!(
            "{CONFIG_PATHS_DROP_IN_MARK}\n\
             # The config names these outside the service's root directory (/usr/lib/vitalgate/root).\n\
             # Move them under /etc/vitalgate or /run/vitalgate, then delete this file and run\n\
             # `systemctl daemon-reload`; `vitalgate doctor` lists what is still outside.\n\
             [Service]\n"
        );
        for path in &self.bindable {
            text.push_str(&format!("BindReadOnlyPaths=-{}\n", path.display()));
        }
        Some(text)
    }
}

/// Plain path characters only: no whitespace (a list separator), `:` (source:destination),
/// `%` (a specifier), quotes or backslashes; and no run of 10 or more digits, which could be an
/// NHS Number and would then sit in a world-readable unit file.
fn spellable_in_a_unit(path: &Path) -> bool {
    path.to_str().is_some_and(|p| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._+@,=-".contains(&b))
            && !crate::redact::has_long_number(p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_the_bound_directories_are_visible_and_others_hidden() {
        assert!(!hidden_from_the_service(Path::new("/etc/vitalgate/ca.pem")));
        assert!(!hidden_from_the_service(Path::new(
            "/run/vitalgate/manual.jsonl"
        )));
        assert!(!hidden_from_the_service(Path::new(
            "/dev/serial/by-id/usb-FTDI-if00"
        )));
        assert!(
            !hidden_from_the_service(Path::new("outbox.db")),
            "relative: in the state dir"
        );
        assert!(hidden_from_the_service(Path::new("/opt/site/ca.pem")));
        assert!(hidden_from_the_service(Path::new("/dev/ttyUSB0")));
        assert!(hidden_from_the_service(Path::new(
            "/var/lib/vitalgate-old/ca.pem"
        )));
    }

    fn config_naming(path: &str, state_dir: &str) -> Config {
        let text = format!(
            "[gateway]\nid = \"gw-test\"\nstate_dir = \"{state_dir}\"\n\n\
             [store]\nkey_file = \"/etc/vitalgate/master.key\"\n\n\
             [[patient]]\nid = \"patient-1\"\n\n\
             [[device]]\nid = \"manual\"\npatient = \"patient-1\"\ndriver = \"jsonl\"\npath = \"{path}\"\n"
        );
        Config::parse(&text, Path::new("test.toml")).expect("a valid test config")
    }

    #[test]
    fn a_file_named_outside_the_root_is_bound_back_in_read_only_by_the_drop_in() {
        let hidden = HiddenPaths::of(&config_naming(
            "/opt/site/manual.jsonl",
            "/var/lib/vitalgate",
        ));
        assert_eq!(
            hidden.bindable,
            vec![PathBuf::from("/opt/site/manual.jsonl")]
        );
        let text = hidden.drop_in().expect("a drop-in");
        assert!(text.starts_with(CONFIG_PATHS_DROP_IN_MARK), "{text}");
        assert!(
            text.contains("\n[Service]\nBindReadOnlyPaths=-/opt/site/manual.jsonl\n"),
            "{text}"
        );
    }

    #[test]
    fn a_config_naming_only_visible_files_needs_no_drop_in() {
        let hidden = HiddenPaths::of(&config_naming(
            "/run/vitalgate/manual.jsonl",
            "/var/lib/vitalgate",
        ));
        assert_eq!(hidden, HiddenPaths::default());
        assert_eq!(hidden.drop_in(), None);
    }

    #[test]
    fn device_nodes_the_state_dir_and_unspellable_paths_are_named_not_bound() {
        for (path, state_dir, setting) in [
            ("/dev/ttyUSB0", "/var/lib/vitalgate", "device manual path"),
            (
                "/run/vitalgate/m.jsonl",
                "/srv/vitalgate",
                "gateway.state_dir",
            ),
            (
                "/opt/site/a b.jsonl",
                "/var/lib/vitalgate",
                "device manual path",
            ),
            (
                "/opt/x:/etc/shadow",
                "/var/lib/vitalgate",
                "device manual path",
            ),
            (
                "/opt/site/9434765919.jsonl",
                "/var/lib/vitalgate",
                "device manual path",
            ),
        ] {
            let hidden = HiddenPaths::of(&config_naming(path, state_dir));
            assert!(hidden.bindable.is_empty(), "{path}: {hidden:?}");
            assert_eq!(hidden.unbindable.len(), 1, "{path}: {hidden:?}");
            assert_eq!(hidden.unbindable[0].0, setting, "{path}");
            assert_eq!(hidden.drop_in(), None, "{path}");
        }
    }
}
