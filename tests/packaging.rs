//! The packaging files as the Debian package installs them (issue "Packaging and operations",
//! rust-stack.md §7 and §8): the systemd unit's hardening score, and the names that must agree
//! across the unit, sysusers.d, tmpfiles.d, the key loader and the shipped default config.
//!
//! Needs `systemd-analyze` (Debian package `systemd`); scripts/test installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Values of `key=` in a unit file (one per occurrence, comments skipped).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
        .collect()
}

/// Parses "Overall exposure level for vitalgate.service: 1.5 OK".
fn exposure(output: &str) -> Option<f64> {
    let line = output
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    let after = line.rsplit_once(": ")?.1;
    after.split_whitespace().next()?.parse().ok()
}

#[test]
fn exposure_parses_the_overall_line() {
    let out =
        "✗ PrivateNetwork= ... 0.5\n\n→ Overall exposure level for vitalgate.service: 1.5 OK 🙂\n";
    assert_eq!(exposure(out), Some(1.5));
}

#[test]
fn unit_security_exposure_is_at_most_1_9() {
    // rust-stack.md §7: the reference unit scored 1.7 (1.2 with IP allow lists and
    // PrivateUsers=); stock daemons score 8-10. The gate is 1.9.
    let unit = root().join("packaging/vitalgate.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): install the Debian package `systemd` (scripts/test does)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let score = exposure(&text)
        .unwrap_or_else(|| panic!("no overall exposure in systemd-analyze output:\n{text}"));
    eprintln!("systemd-analyze security --offline=true packaging/vitalgate.service: {score}");
    assert!(
        score <= 1.9,
        "exposure {score} > 1.9; what is still exposed:\n{text}"
    );
}

#[test]
fn unit_credential_is_the_name_the_key_loader_reads() {
    let unit = read("packaging/vitalgate.service");
    let creds = unit_values(&unit, "LoadCredential");
    let want = format!(
        "{}:/etc/vitalgate/master.key",
        vitalgate::store::crypto::CREDENTIAL_NAME
    );
    assert_eq!(creds, [want]);
}

#[test]
fn unit_user_is_created_by_sysusers_and_owns_the_state_dir() {
    let unit = read("packaging/vitalgate.service");
    let user = unit_values(&unit, "User");
    assert_eq!(user.len(), 1, "one User= in the unit");
    let sysusers = read("packaging/sysusers.d/vitalgate.conf");
    let created: Vec<&str> = sysusers
        .lines()
        .filter_map(|l| l.strip_prefix('u'))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        created,
        [user[0].as_str()],
        "sysusers.d creates the unit's User="
    );
    let tmpfiles = read("packaging/tmpfiles.d/vitalgate.conf");
    let state = tmpfiles
        .lines()
        .find(|l| l.starts_with('d') && l.contains("/var/lib/vitalgate"))
        .expect("tmpfiles.d creates /var/lib/vitalgate");
    let fields: Vec<&str> = state.split_whitespace().collect();
    assert_eq!(
        &fields[2..5],
        ["0700", user[0].as_str(), user[0].as_str()],
        "{state}"
    );
    assert_eq!(unit_values(&unit, "StateDirectory"), ["vitalgate"]);
}

#[test]
fn unit_runs_the_packaged_binary_with_the_packaged_config() {
    let unit = read("packaging/vitalgate.service");
    let exec = unit_values(&unit, "ExecStart");
    assert_eq!(
        exec,
        ["/usr/bin/vitalgate run --config /etc/vitalgate/vitalgate.toml"]
    );
    let cargo = read("Cargo.toml");
    assert!(
        cargo.contains(r#"["target/release/vitalgate", "usr/bin/", "755"]"#),
        "binary asset"
    );
    assert!(
        cargo.contains(r#"["config/vitalgate.toml", "etc/vitalgate/vitalgate.toml", "640"]"#),
        "config asset"
    );
}

/// The conffile installed to /etc/vitalgate/vitalgate.toml is valid as shipped; before the
/// installer provisions the key and certificates (docs/install.md), `check-config` names
/// exactly those files and nothing else.
#[test]
fn packaged_default_config_is_valid_but_for_the_files_provisioned_at_install() {
    let out = Command::new(env!("CARGO_BIN_EXE_vitalgate"))
        .args(["check-config", "--config"])
        .arg(root().join("config/vitalgate.toml"))
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return; // this machine has them
    }
    let provisioned = [
        "store.key_file: ",
        "uplink.ca_file: ",
        "uplink.cert_file: ",
        "uplink.key_file: ",
    ];
    for line in err.lines() {
        assert!(
            provisioned.iter().any(|k| line.contains(k)),
            "check-config found more than the files provisioned at install: {line}\n{err}"
        );
    }
}

#[test]
fn maintainer_scripts_are_valid_sh_and_keep_the_debhelper_token() {
    // cargo-deb splices its systemd/sysusers snippets at #DEBHELPER# (rust-stack.md §8).
    for name in ["postinst", "postrm"] {
        let path = root().join("packaging/debian").join(name);
        let text = read(&format!("packaging/debian/{name}"));
        assert!(
            text.lines().any(|l| l.trim() == "#DEBHELPER#"),
            "{name}: no #DEBHELPER# line"
        );
        let st = Command::new("sh").arg("-n").arg(&path).status().unwrap();
        assert!(st.success(), "{name}: sh -n failed");
    }
}

#[test]
fn postrm_deletes_the_state_dir_only_on_purge() {
    // Runs postrm with the state dir redirected into a temporary directory: `remove` keeps
    // the outbox (undelivered readings), `purge` deletes it.
    let script = read("packaging/debian/postrm");
    assert!(script.contains("/var/lib/vitalgate"));
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("var-lib-vitalgate");
    let patched = script
        .replace("/var/lib/vitalgate", &state.display().to_string())
        .replace("#DEBHELPER#", ":");
    let path = tmp.path().join("postrm");
    std::fs::write(&path, patched).unwrap();
    let run = |arg: &str| {
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("outbox.db"), b"x").unwrap();
        let st = Command::new("sh").arg(&path).arg(arg).status().unwrap();
        assert!(st.success(), "postrm {arg}: {st}");
        exists(&state.join("outbox.db"))
    };
    assert!(run("remove"), "postrm remove deleted the outbox");
    assert!(!run("purge"), "postrm purge kept the outbox");
}

fn exists(p: &Path) -> bool {
    p.exists()
}
