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

/// `systemd-analyze security --offline=true` of the unit file `unit` (with the drop-ins in
/// `<unit>.d/` beside it): the overall exposure and the whole report.
fn security_score(unit: &Path) -> (f64, String) {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
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
    (score, text)
}

#[test]
fn unit_security_exposure_is_at_most_1_0() {
    // rust-stack.md §7: the reference unit scored 1.7 (1.2 with IP allow lists and
    // PrivateUsers=); stock daemons score 8-10. This unit scores 1.0 (PrivateUsers=yes,
    // PrivateDevices=yes with the udev-made serial nodes, no supplementary group, its own
    // root directory); what remains is listed, with the reason for each, in the unit's header.
    let (score, text) = security_score(&root().join("packaging/vitalgate.service"));
    eprintln!("systemd-analyze security --offline=true packaging/vitalgate.service: {score}");
    assert!(
        score <= 1.0,
        "exposure {score} > 1.0; what is still exposed:\n{text}"
    );
    assert!(
        !text.contains("Service runs within the host's root directory"),
        "the unit runs in its own root directory:\n{text}"
    );
}

#[test]
fn unit_with_the_sites_ip_allow_list_drop_in_scores_at_most_0_9() {
    // The shipped example drop-in (a site with fixed broker and resolver addresses), where
    // systemctl would read it: vitalgate.service.d/ beside the unit.
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("vitalgate.service");
    std::fs::copy(root().join("packaging/vitalgate.service"), &unit).unwrap();
    let dropins = tmp.path().join("vitalgate.service.d");
    std::fs::create_dir(&dropins).unwrap();
    std::fs::copy(
        root().join("packaging/systemd/ip-allow.conf"),
        dropins.join("ip-allow.conf"),
    )
    .unwrap();
    let (score, text) = security_score(&unit);
    eprintln!("with packaging/systemd/ip-allow.conf: {score}");
    assert!(
        text.contains("allow list with non-localhost entries"),
        "the drop-in's allow list was not read:\n{text}"
    );
    assert!(
        score <= 0.9,
        "exposure {score} > 0.9; what is still exposed:\n{text}"
    );
    let cargo = read("Cargo.toml");
    assert!(
        cargo.contains(r#"["packaging/systemd/ip-allow.conf", "usr/share/doc/vitalgate/examples/systemd/ip-allow.conf", "644"]"#),
        "the example drop-in is packaged"
    );
}

/// The service sees serial ports only through the directory udev fills: the unit binds
/// the helper's directory over /dev/serial/by-id (the names vitalgate.toml uses), the
/// package installs rules and helper where the rules call it, tmpfiles.d makes the
/// directory at boot, and the service needs no dialout group.
#[test]
fn unit_sees_serial_ports_through_the_node_directory_udev_keeps() {
    let unit = read("packaging/vitalgate.service");
    assert_eq!(unit_values(&unit, "PrivateDevices"), ["yes"]);
    assert!(
        unit_values(&unit, "SupplementaryGroups").is_empty(),
        "no supplementary group (dialout is every serial port's group)"
    );
    let helper = read("packaging/udev/vitalgate-serial-node");
    let dir = helper
        .lines()
        .find_map(|l| l.strip_prefix("DIR="))
        .expect("DIR= in the helper");
    assert_eq!(
        unit_values(&unit, "BindPaths"),
        [format!("-{dir}:/dev/serial/by-id")]
    );
    let tmpfiles = read("packaging/tmpfiles.d/vitalgate.conf");
    assert!(
        tmpfiles
            .lines()
            .any(|l| l.starts_with('d') && l.split_whitespace().nth(1) == Some(dir)),
        "tmpfiles.d makes {dir}"
    );
    let rules = read("packaging/udev/69-vitalgate-nodes.rules");
    assert!(rules.contains("RUN+=\"/usr/lib/vitalgate/serial-node add $major $minor $links\""));
    assert!(rules.contains("RUN+=\"/usr/lib/vitalgate/serial-node remove $major $minor\""));
    let cargo = read("Cargo.toml");
    for asset in [
        r#"["packaging/udev/69-vitalgate-nodes.rules", "usr/lib/udev/rules.d/69-vitalgate-nodes.rules", "644"]"#,
        r#"["packaging/udev/vitalgate-serial-node", "usr/lib/vitalgate/serial-node", "755"]"#,
    ] {
        assert!(cargo.contains(asset), "package asset {asset}");
    }
}

#[test]
fn unit_logs_to_a_journal_namespace_the_package_makes_volatile() {
    // Alert messages carry reading values: the service's journal stays in RAM (docs/install.md §7).
    let unit = read("packaging/vitalgate.service");
    let namespace = unit_values(&unit, "LogNamespace");
    assert_eq!(namespace, ["vitalgate"], "LogNamespace= in the unit");
    let dropin = read("packaging/journald/volatile.conf");
    let settings: Vec<&str> = dropin
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    for want in ["[Journal]", "Storage=volatile", "ForwardToSyslog=no"] {
        assert!(
            settings.contains(&want),
            "{want} missing from volatile.conf"
        );
    }
    // systemd 252 reads a namespace's main file from /etc only; vendor drop-ins from /usr/lib.
    let asset = format!(
        r#"["packaging/journald/volatile.conf", "usr/lib/systemd/journald@{}.conf.d/volatile.conf", "644"]"#,
        namespace[0]
    );
    assert!(read("Cargo.toml").contains(&asset), "package asset {asset}");
}

#[test]
fn debian_packages_are_built_without_the_demo() {
    let cargo: toml::Table = read("Cargo.toml").parse().unwrap();
    let deb = &cargo["package"]["metadata"]["deb"];
    assert_eq!(
        deb.get("default-features").and_then(|v| v.as_bool()),
        Some(false),
        "[package.metadata.deb] default-features = false"
    );
    assert!(
        deb.get("features").is_none(),
        "no features re-enabled for the package"
    );
    let default = cargo["features"]["default"].as_array().unwrap();
    assert!(
        default.iter().any(|f| f.as_str() == Some("demo")),
        "`cargo run -- demo` (README) needs demo in the default features"
    );
}

/// The production binary (`--no-default-features`, as the .deb builds it).
#[cfg(not(feature = "demo"))]
#[test]
fn production_build_demo_exits_2_saying_it_was_built_without_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_vitalgate"))
        .args(["demo", "--seconds", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("built without the demo"), "{stderr}");
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

/// What cargo-deb splices in at `#DEBHELPER#` for this package's unit (cargo-deb 3.8.0,
/// `autoscripts/postinst-systemd-dont-enable`, with `#UNITFILE#` filled in): several lines of
/// shell, the last one code (`fi`), not a comment.
const DEBHELPER_SNIPPET: &str = r#"# Automatically added by cargo-deb
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ] ; then
	if deb-systemd-helper debian-installed 'vitalgate.service'; then
		deb-systemd-helper unmask 'vitalgate.service' >/dev/null || true
	fi
	deb-systemd-helper update-state 'vitalgate.service' >/dev/null || true
fi"#;

/// cargo-deb replaces *every* occurrence of the token, comments included (rust-stack.md §8);
/// a token in a comment then leaves code on the comment's line and the built script does not
/// parse (`postinst: 44: Syntax error: word unexpected`, issue 12 point 12). So: the token
/// once, alone on its line, and the script as built parses with `sh -n`. `ci-package` checks
/// the same on the built .deb.
#[test]
fn maintainer_scripts_parse_after_cargo_deb_replaces_every_debhelper_token() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["postinst", "postrm"] {
        let text = read(&format!("packaging/debian/{name}"));
        assert_eq!(
            text.matches("#DEBHELPER#").count(),
            1,
            "{name}: the token must appear once (cargo-deb replaces each occurrence)"
        );
        assert!(
            text.lines().any(|l| l.trim() == "#DEBHELPER#"),
            "{name}: the token must stand alone on its line"
        );
        let built = tmp.path().join(name);
        std::fs::write(&built, text.replace("#DEBHELPER#", DEBHELPER_SNIPPET)).unwrap();
        let out = Command::new("sh").arg("-n").arg(&built).output().unwrap();
        assert!(
            out.status.success(),
            "{name} as built does not parse: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The shipped config's `manual-entry` device reads a FIFO under the unit's RuntimeDirectory
/// (issue 12 point 13): the unit's ExecStartPre creates it. Run here with /run/vitalgate
/// redirected to a temporary directory, twice (a restart keeps the directory and the FIFO).
#[test]
fn unit_creates_the_fifo_of_the_shipped_manual_entry_device() {
    let config = read("config/vitalgate.toml");
    let doc: toml::Table = config.parse().unwrap();
    let fifos: Vec<String> = doc["device"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["driver"].as_str() == Some("jsonl"))
        .filter_map(|d| d.get("path")?.as_str().map(str::to_string))
        .filter(|p| p.starts_with("/run/"))
        .collect();
    assert_eq!(
        fifos,
        ["/run/vitalgate/manual.jsonl"],
        "shipped FIFO devices"
    );
    let unit = read("packaging/vitalgate.service");
    assert_eq!(unit_values(&unit, "RuntimeDirectory"), ["vitalgate"]);
    let pre = unit_values(&unit, "ExecStartPre");
    assert_eq!(pre.len(), 1, "one ExecStartPre: {pre:?}");
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run-vitalgate");
    std::fs::create_dir(&run_dir).unwrap();
    let cmd = pre[0].replace("/run/vitalgate", &run_dir.display().to_string());
    let args = shell_words(&cmd);
    for _ in 0..2 {
        let st = Command::new(&args[0]).args(&args[1..]).status().unwrap();
        assert!(st.success(), "{cmd}: {st}");
    }
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(run_dir.join("manual.jsonl")).unwrap();
    assert!(meta.file_type().is_fifo(), "manual.jsonl is not a FIFO");
    assert_eq!(meta.permissions().mode() & 0o777, 0o620);
}

/// Splits a unit's command line on spaces, keeping single-quoted words whole (enough for
/// the unit's own lines).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    for (i, part) in line.split('\'').enumerate() {
        if i % 2 == 1 {
            words.push(part.to_string());
        } else {
            words.extend(part.split_whitespace().map(str::to_string));
        }
    }
    words
}

/// `keygen` records the key operation in the audit log of the state dir its config names,
/// not in an audit.log next to the key (issue 12 point 12): /etc/vitalgate is not where the
/// gateway's audit trail lives.
#[test]
fn keygen_audits_in_the_config_state_dir_not_next_to_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("etc");
    let state = tmp.path().join("state");
    std::fs::create_dir(&keys).unwrap();
    let key = keys.join("master.key");
    let config = tmp.path().join("vitalgate.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"gw-keygen\"\nstate_dir = \"{}\"\n\n[store]\nkey_file = \"{}\"\n",
            state.display(),
            key.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vitalgate"))
        .args(["keygen", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(key.exists(), "no key written");
    assert!(
        !exists(&keys.join("audit.log")),
        "keygen wrote an audit.log next to the key"
    );
    let log = std::fs::read_to_string(state.join("audit.log")).expect("audit.log in the state dir");
    assert!(log.contains("\"keygen\""), "{log}");
    assert_eq!(
        vitalgate::audit::verify(
            &state.join("audit.log"),
            &vitalgate::store::MasterKey::load(&key).unwrap()
        )
        .unwrap(),
        1
    );
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

/// The unit runs in its own root directory (RootDirectory=, exposure item "Service runs
/// within the host's root directory"): tmpfiles.d makes that directory at install and at
/// every boot, with a mount point for each host directory the unit binds in, so systemd
/// never has to create one on a read-only /usr. (That the service then starts, reads its
/// credential, reaches the broker and BlueZ is scripts/ci-systemd, under a real systemd.)
#[test]
fn unit_root_directory_has_a_mount_point_for_every_host_path_it_binds() {
    let unit = read("packaging/vitalgate.service");
    let tmpfiles = read("packaging/tmpfiles.d/vitalgate.conf");
    let made: Vec<&str> = tmpfiles
        .lines()
        .filter(|l| l.starts_with("d "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let root = unit_values(&unit, "RootDirectory");
    assert_eq!(root, ["/usr/lib/vitalgate/root"], "one root directory");
    assert!(
        made.contains(&root[0].as_str()),
        "tmpfiles.d makes {}",
        root[0]
    );
    let binds: Vec<String> = unit_values(&unit, "BindReadOnlyPaths")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    assert!(
        binds.iter().any(|b| b == "/usr"),
        "the binary and its libraries: {binds:?}"
    );
    for bind in &binds {
        let target = bind.trim_start_matches('-');
        let target = target.split(':').nth(1).unwrap_or(target);
        // /run and /dev are file systems systemd mounts afresh inside the root (MountAPIVFS=,
        // PrivateDevices=), where it makes the mount points itself.
        if target.starts_with("/run/") || target.starts_with("/dev/") {
            continue;
        }
        let point = format!("{}{target}", root[0]);
        assert!(
            made.contains(&point.as_str()),
            "no tmpfiles.d line makes the mount point {point}"
        );
    }
    for state in [
        "/var/lib/vitalgate",
        "/tmp",
        "/var/tmp",
        "/proc",
        "/sys",
        "/dev",
        "/run",
    ] {
        let point = format!("{}{state}", root[0]);
        assert!(
            made.contains(&point.as_str()),
            "no tmpfiles.d line makes {point}"
        );
    }
    assert_eq!(
        unit_values(&unit, "MountAPIVFS"),
        ["yes"],
        "/proc, /sys, /dev and /run inside the root"
    );
}

/// Every file the shipped config names is inside what the service sees from its root
/// (the same list `vitalgate doctor` checks a site's config against).
#[test]
fn packaged_config_names_only_files_the_sandboxed_service_can_see() {
    let config = read("config/vitalgate.toml");
    for line in config.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for quoted in line.split('"').skip(1).step_by(2) {
            if quoted.starts_with('/') {
                assert!(
                    vitalgate::sandbox::SERVICE_VISIBLE
                        .iter()
                        .any(|root| std::path::Path::new(quoted).starts_with(root)),
                    "config/vitalgate.toml names {quoted}, which the service cannot see"
                );
            }
        }
    }
    let unit = read("packaging/vitalgate.service");
    for visible in vitalgate::sandbox::SERVICE_VISIBLE {
        assert!(unit.contains(visible), "{visible} is not named in the unit");
    }
}

/// The postinst's upgrade drop-in (docs/install.md, "Upgrading a hub provisioned before the
/// root directory"): the command it runs binds in what it can and names the rest on stderr,
/// without the long number a path may hold (no NHS Number in any output).
#[test]
fn sandbox_drop_in_binds_a_file_under_opt_and_names_a_path_it_cannot_spell_without_its_digits() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vitalgate.toml");
    let text = read("config/vitalgate.toml").replace(
        "path = \"/run/vitalgate/manual.jsonl\"",
        "path = \"/opt/site/manual.jsonl\"",
    )
        + "\n[[device]]\nid = \"ward-feed\"\npatient = \"patient-1\"\ndriver = \"jsonl\"\n\
           path = \"/opt/site/9434765919 b.jsonl\"\n";
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vitalgate"))
        .args(["doctor", "--sandbox-drop-in", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("\n[Service]\nBindReadOnlyPaths=-/opt/site/manual.jsonl\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("b.jsonl"), "{stdout}");
    assert!(
        stderr.contains("/opt/site/<10+ digits, not shown> b.jsonl"),
        "{stderr}"
    );
    assert!(!stderr.contains("9434765919"), "{stderr}");
}

/// The postinst runs that command, and only where the package's own drop-in is not there yet.
#[test]
fn postinst_installs_the_sandbox_drop_in_without_overwriting_one() {
    let postinst = read("packaging/debian/postinst");
    assert!(postinst.contains("vitalgate doctor --sandbox-drop-in"));
    assert!(postinst.contains(&format!(
        "dropin={}",
        vitalgate::sandbox::CONFIG_PATHS_DROP_IN
    )));
    assert!(postinst.contains("[ ! -e \"$dropin\" ]"));
    let postrm = read("packaging/debian/postrm");
    assert!(postrm.contains(vitalgate::sandbox::CONFIG_PATHS_DROP_IN));
    assert!(postrm.contains(
        vitalgate::sandbox::CONFIG_PATHS_DROP_IN_MARK
            .split(" (")
            .next()
            .unwrap()
    ));
}
