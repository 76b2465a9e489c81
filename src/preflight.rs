//! What `run` needs from the file system, checked before anything is created.
//!
//! [`crate::config::Config::problems`] checks what a config means; this checks what it points
//! at: the master key, the uplink's CA, certificate and key (read, parsed, key matching the
//! certificate, certificate accepted under the CA), the device profile directories, device
//! paths, the state directory and outbox path, and the local annunciator command. Every
//! problem is reported, each under the key that names the file.
//!
//! `check-config` and `run` run the same checks ([`crate::config::Config::load_and_check`]),
//! so a config that passes `check-config` does not fail `run` on a missing file, and `run`
//! refuses (exit 2) before it creates the state directory or an outbox: under systemd's
//! `Restart=` a broken installation does not loop creating files.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use time::OffsetDateTime;

use crate::config::{Config, Problem};
use crate::secure_file;
use crate::store::crypto::CREDENTIAL_NAME;
use crate::store::{KeyError, MasterKey};
use crate::uplink::TlsError;

/// Every problem with the files `config` points at. `validity_at`: also check the client
/// certificate's validity period at this time (`check-config`); `run` passes `None`, see
/// [`crate::uplink::tls::check_files`].
pub fn problems(config: &Config, validity_at: Option<OffsetDateTime>) -> Vec<Problem> {
    let mut out = Vec::new();
    master_key(config, &mut out);
    uplink(config, validity_at, &mut out);
    directories(config, validity_at.is_some(), &mut out);
    devices(config, &mut out);
    annunciator(config, &mut out);
    out
}

fn master_key(config: &Config, out: &mut Vec<Problem>) {
    let key_file = &config.store.key_file;
    let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|d| Path::new(&d).join(CREDENTIAL_NAME))
        .is_some_and(|p| p.exists());
    // docs/install.md: with `LoadCredentialEncrypted=` the plain key file is shredded and
    // only systemd can decrypt `master.key.cred`; `run` checks the credential then.
    let encrypted = Path::new(&format!("{}.cred", key_file.display())).is_file();
    match MasterKey::load(key_file) {
        Ok(_) => {}
        Err(KeyError::Missing { .. }) if !credential && encrypted => {}
        Err(e) => out.push(Problem::new("store.key_file", e.to_string())),
    }
}

fn uplink(config: &Config, validity_at: Option<OffsetDateTime>, out: &mut Vec<Problem>) {
    let Some(up) = &config.uplink else { return };
    let mut up = up.clone();
    // The certificate's CN is needed only when no id is configured.
    up.gateway_id = up.gateway_id.or_else(|| config.gateway.id.clone());
    for e in crate::uplink::tls::check_files(&up, validity_at) {
        let key = match &e {
            TlsError::File(f) if f.path() == up.ca_file => "uplink.ca_file",
            TlsError::File(f) if f.path() == up.key_file => "uplink.key_file",
            TlsError::File(_) => "uplink.cert_file",
            TlsError::BadPem { file, .. } | TlsError::NoCertificate { file, .. }
                if *file == up.ca_file =>
            {
                "uplink.ca_file"
            }
            TlsError::BadCa { .. } => "uplink.ca_file",
            TlsError::BadPem { file, .. } if *file == up.key_file => "uplink.key_file",
            TlsError::NoKey { .. }
            | TlsError::UnsupportedKey { .. }
            | TlsError::KeyMismatch { .. } => "uplink.key_file",
            _ => "uplink.cert_file",
        };
        let message = match e {
            // A validity judgement on a clock that may be wrong (no RTC) says so.
            TlsError::Expired { .. } | TlsError::NotYetValid { .. } => {
                crate::clock::judged_on_clock(e.to_string(), crate::clock::process_synced())
            }
            _ => e.to_string(),
        };
        out.push(Problem::new(key, message));
    }
}

fn directories(config: &Config, check_outbox: bool, out: &mut Vec<Problem>) {
    for (i, dir) in config.gateway.devices_dirs.iter().enumerate() {
        // A search path: a directory that does not exist is skipped, but a file there, or
        // one that cannot be listed, is a mistake.
        match std::fs::metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => out.push(Problem::new(
                format!("gateway.devices_dirs[{i}]"),
                format!("{}: {e}", dir.display()),
            )),
            Ok(m) if !m.is_dir() => out.push(Problem::new(
                format!("gateway.devices_dirs[{i}]"),
                format!(
                    "{} is {}, not a directory",
                    dir.display(),
                    secure_file::type_name(m.file_type())
                ),
            )),
            Ok(_) => {
                if let Err(e) = std::fs::read_dir(dir) {
                    out.push(Problem::new(
                        format!("gateway.devices_dirs[{i}]"),
                        format!("{}: cannot list it: {e}", dir.display()),
                    ));
                }
            }
        }
    }
    let state = &config.gateway.state_dir;
    match std::fs::metadata(state) {
        Ok(m) if !m.is_dir() => out.push(Problem::new(
            "gateway.state_dir",
            format!(
                "{} is {}, not a directory",
                state.display(),
                secure_file::type_name(m.file_type())
            ),
        )),
        _ => {}
    }
    // `check-config` names an outbox path that is not a file; `run` leaves it to the store's
    // own open, which stops start-up with exit 1 and touches nothing (it is the state dir's
    // fault at run time, not the configuration's: issue 12 point 4).
    let outbox = config.outbox_path();
    if !check_outbox {
        return;
    }
    if let Ok(m) = std::fs::metadata(&outbox) {
        if !m.is_file() {
            out.push(Problem::new(
                "store.path",
                format!(
                    "{} is {}, not an outbox database file",
                    outbox.display(),
                    secure_file::type_name(m.file_type())
                ),
            ));
        }
    }
}

fn devices(config: &Config, out: &mut Vec<Problem>) {
    for (i, d) in config.devices.iter().enumerate() {
        let Some(path) = &d.path else { continue };
        // A device that is not there yet (unplugged, a FIFO made at boot) is waited for;
        // something that can never be one is a mistake. Nothing is opened: opening a
        // serial port can reset the device on it.
        if let Ok(m) = std::fs::metadata(path) {
            let t = m.file_type();
            if !(t.is_file() || t.is_fifo() || t.is_char_device()) {
                out.push(Problem::new(
                    format!("device[{i}].path"),
                    format!(
                        "{} is {}; a device path is a serial port, a FIFO or a file",
                        path.display(),
                        secure_file::type_name(t)
                    ),
                ));
            }
        }
    }
}

fn annunciator(config: &Config, out: &mut Vec<Problem>) {
    let Some(command) = &config.alerts.annunciator_command else {
        return;
    };
    let Some(program) = command.first() else {
        out.push(Problem::new(
            "alerts.annunciator_command",
            "is empty: give the program and its arguments, or remove the key",
        ));
        return;
    };
    let found = if program.contains('/') {
        is_executable(Path::new(program))
    } else {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(program)))
        })
    };
    if !found {
        out.push(Problem::new(
            "alerts.annunciator_command",
            format!(
                "{program:?} is not an executable file{}: local alarms would not sound",
                if program.contains('/') {
                    ""
                } else {
                    " on PATH"
                }
            ),
        ));
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A config in `dir` with a master key, plus `extra` TOML.
    fn config(dir: &Path, extra: &str, device: &str) -> Config {
        let key = dir.join("master.key");
        if !key.exists() {
            MasterKey::generate_file(&key).unwrap();
        }
        let text = format!(
            "[gateway]\nid = \"g\"\nstate_dir = \"{d}/state\"\ndevices_dirs = [\"{d}/devices\"]\n\
             [store]\nkey_file = \"{d}/master.key\"\n{extra}\n[[patient]]\nid = \"p1\"\n\
             [[device]]\nid = \"d1\"\npatient = \"p1\"\n{device}\n",
            d = dir.display()
        );
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    fn keys(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(Problem::key).collect()
    }

    #[test]
    fn a_complete_installation_has_no_problems() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "", "driver = \"sim\"");
        assert_eq!(problems(&c, None), vec![]);
    }

    #[test]
    fn a_missing_key_file_is_accepted_when_its_encrypted_credential_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "", "driver = \"sim\"");
        std::fs::remove_file(dir.path().join("master.key")).unwrap();
        assert_eq!(keys(&problems(&c, None)), vec!["store.key_file"]);
        std::fs::write(dir.path().join("master.key.cred"), "sealed").unwrap();
        assert_eq!(problems(&c, None), vec![]);
    }

    #[test]
    fn things_that_can_never_work_are_named_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("devices"), "not a dir").unwrap();
        std::fs::create_dir_all(d.join("state/outbox.db")).unwrap();
        std::fs::create_dir(d.join("input")).unwrap();
        let c = config(
            d,
            "[alerts]\nannunciator_command = [\"/nonexistent/buzzer\"]",
            &format!("driver = \"jsonl\"\npath = \"{}/input\"", d.display()),
        );
        let found = problems(&c, Some(OffsetDateTime::now_utc()));
        assert_eq!(
            keys(&found),
            vec![
                "gateway.devices_dirs[0]",
                "store.path",
                "device[0].path",
                "alerts.annunciator_command"
            ],
            "{found:#?}"
        );
    }

    #[test]
    fn an_annunciator_that_is_not_executable_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("buzzer");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let extra = format!("[alerts]\nannunciator_command = [\"{}\"]", script.display());
        let c = config(dir.path(), &extra, "driver = \"sim\"");
        assert_eq!(
            keys(&problems(&c, None)),
            vec!["alerts.annunciator_command"]
        );
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(problems(&c, None), vec![]);
    }

    #[test]
    fn a_device_path_that_does_not_exist_yet_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(
            dir.path(),
            "",
            "driver = \"jsonl\"\npath = \"/dev/serial/by-id/not-plugged-in\"",
        );
        assert_eq!(problems(&c, None), vec![]);
    }
}
