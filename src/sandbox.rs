//! What the packaged unit's root directory shows the service (packaging/vitalgate.service:
//! `RootDirectory=/usr/lib/vitalgate/root` and its bind mounts). A file the config names
//! anywhere else exists for an engineer's shell but not for the service, so the errors and
//! `vitalgate doctor` say so instead of a bare "does not exist".

use std::path::Path;

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
}
