//! `vitalgate status` as a monitoring probe (issue 17, acceptance 2): exit 0 healthy, 1
//! degraded (a device silent, backlog older than `[status] backlog_max_age_s`, uplink down
//! longer than `[status] uplink_down_max_s`), 2 unreachable; JSON with `--json` or when piped.
//! The daemon runs as a real process and answers over its live socket.

mod live_support;
mod support;

use live_support::*;

#[test]
fn status_exits_0_healthy_while_the_daemon_runs_and_its_device_sends() {
    let g = Gateway::new(&sim_device("ox-1", "stable", 200));
    let _d = g.start();
    let (code, doc) = g.status_until("a healthy verdict from the live socket", |c, d| {
        c == 0
            && d["devices"][0]["last_values"]
                .as_array()
                .is_some_and(|v| !v.is_empty())
    });
    assert_eq!(code, 0);
    assert_eq!(doc["health"]["verdict"], "healthy", "{doc:#}");
    assert_eq!(doc["daemon"]["running"], true);
    assert_eq!(doc["devices"][0]["id"], "ox-1");
    assert_eq!(doc["devices"][0]["state"], "connected");
    assert!(doc["backlog"]["total"].is_u64(), "{doc:#}");
}

#[test]
fn status_exits_1_degraded_naming_the_device_whose_port_is_missing() {
    let g = Gateway::new(
        "[[device]]\nid = \"ox-serial\"\npatient = \"p1\"\ndriver = \"jsonl\"\npath = \"/dev/serial/by-id/usb-no-such-oximeter\"\n",
    );
    let _d = g.start();
    let (_, doc) = g.status_until("degraded (exit 1)", |c, _| c == 1);
    assert_eq!(doc["health"]["verdict"], "degraded");
    let reasons = doc["health"]["reasons"].to_string();
    assert!(reasons.contains("device ox-serial silent"), "{reasons}");
}

#[test]
fn status_exits_1_degraded_when_the_uplink_is_down_longer_than_the_limit() {
    let ca = support::Ca::new("status-ca");
    let (cert, key) = ca.client("gw-live", false);
    let g = Gateway::new(&sim_device("ox-1", "stable", 500));
    std::fs::write(g.path("ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(g.path("gw.pem"), cert).unwrap();
    support::write_secret(&g.path("gw.key"), &key);
    // Nothing listens on this port: the uplink never connects.
    let port = support::free_port();
    let mut config = std::fs::read_to_string(&g.config).unwrap();
    config.push_str(&format!(
        "\n[status]\nuplink_down_max_s = 10\n\n[uplink]\nbroker = \"127.0.0.1\"\nport = {port}\n\
         server_name = \"localhost\"\nca_file = \"{d}/ca.pem\"\ncert_file = \"{d}/gw.pem\"\n\
         key_file = \"{d}/gw.key\"\nbackoff_max_s = 1\n",
        d = g.dir.path().display()
    ));
    std::fs::write(&g.config, config).unwrap();
    let _d = g.start();
    let (code, doc) = g.status_until("the live socket", |_, d| d["daemon"]["running"] == true);
    assert_eq!(
        code, 0,
        "down for less than 10 s is not yet degraded: {doc:#}"
    );
    let (_, doc) = g.status_until("degraded (exit 1)", |c, _| c == 1);
    let reasons = doc["health"]["reasons"].to_string();
    assert!(reasons.contains("uplink down for"), "{reasons}");
    assert_eq!(doc["uplink"]["connected"], false);
}

#[test]
fn status_exits_1_degraded_when_the_oldest_undelivered_reading_is_older_than_the_limit() {
    // No uplink: every reading stays in the outbox and the backlog ages.
    let g = Gateway::new(&format!(
        "{}\n[status]\nbacklog_max_age_s = 60\n",
        sim_device("ox-1", "stable", 1000)
    ));
    let _d = g.start();
    let (code, _) = g.status_until("a first backlog", |_, d| {
        d["backlog"]["total"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(code, 0, "a young backlog is healthy");
    let (_, doc) = g.status_until(
        "degraded (exit 1) once the backlog is a minute old",
        |c, _| c == 1,
    );
    let reasons = doc["health"]["reasons"].to_string();
    assert!(
        reasons.contains("backlog: oldest undelivered record is"),
        "{reasons}"
    );
}

#[test]
fn status_exits_2_unreachable_without_a_daemon_and_still_reports_the_outbox() {
    let g = Gateway::new(&sim_device("ox-1", "stable", 100));
    let d = g.start();
    g.status_until("readings in the outbox", |c, doc| {
        c == 0 && doc["backlog"]["readings"].as_u64().unwrap_or(0) > 0
    });
    d.stop();
    assert!(
        !g.path("live.sock").exists(),
        "the socket is removed at shutdown"
    );
    let (code, doc) = g.status();
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(doc["health"]["verdict"], "unreachable");
    assert!(
        doc["health"]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("daemon is not running"),
        "{doc:#}"
    );
    assert!(doc["backlog"]["readings"].as_u64().unwrap() > 0, "{doc:#}");
}

#[test]
fn status_json_is_printed_when_stdout_is_piped_even_without_the_flag() {
    let g = Gateway::new(&sim_device("ox-1", "stable", 500));
    let out = run(&["status", "--config", g.config_arg()]);
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["health"]["verdict"], "unreachable");
}

#[test]
fn status_on_a_terminal_prints_a_short_human_summary() {
    let g = Gateway::new(&sim_device("ox-1", "stable", 200));
    let _d = g.start();
    g.status_until("healthy", |c, _| c == 0);
    let t = Tmux::start(
        "status-human",
        &format!("{BIN} status --config {}; echo exit=$?", g.config_arg()),
        &[],
    );
    let screen = t.wait_for("the summary and its exit code", 30, |s| s.contains("exit="));
    assert!(screen.contains("vitalgate gw-live: HEALTHY"), "{screen}");
    assert!(screen.contains("device    ox-1"), "{screen}");
    assert!(screen.contains("exit=0"), "{screen}");
    assert!(!screen.contains('{'), "JSON on a terminal:\n{screen}");
}

#[test]
fn live_socket_is_mode_0660_and_owned_by_the_service_user() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let g = Gateway::new(&sim_device("ox-1", "stable", 500));
    let _d = g.start();
    wait_path(&g.path("live.sock"), 30);
    let meta = std::fs::metadata(g.path("live.sock")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.uid(), std::fs::metadata(g.dir.path()).unwrap().uid());
}

/// Issue 17, acceptance 4: a 50 s demo (under the 60 s promised) tells the whole story: the
/// deteriorating patient crosses NEWS2 bands up to HIGH and raises clinical alerts, the faulty
/// probe raises technical alarms, and the closing summary counts them.
#[test]
fn demo_within_a_minute_crosses_news2_bands_and_counts_clinical_and_technical_alerts() {
    let out = std::process::Command::new(BIN)
        .args(["demo", "--seconds", "50", "--broker", "embedded"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let course = stdout
        .lines()
        .find(|l| l.contains("demo-patient-deteriorating") && l.contains("bands"))
        .unwrap_or_else(|| panic!("no NEWS2 course in the summary:\n{stdout}"));
    assert!(
        course.contains("low -> ") && course.ends_with("HIGH"),
        "{course}"
    );
    let counts = stdout
        .lines()
        .find(|l| l.starts_with("alerts raised:"))
        .unwrap_or_else(|| panic!("no alert count:\n{stdout}"));
    let number_before = |what: &str| -> u64 {
        let head = &counts[..counts.find(what).unwrap_or_else(|| panic!("{counts}"))];
        head.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert!(number_before(" clinical") >= 1, "{counts}");
    assert!(number_before(" technical") >= 1, "{counts}");
    assert!(counts.contains("high"), "{counts}");
}

/// Issue 17, acceptance 4: `--speed 4` runs the simulated course four times faster, so 15 s
/// reach the HIGH band (at speed 1 the course is not yet half-way).
#[test]
fn demo_speed_runs_the_deteriorating_course_faster() {
    let out = std::process::Command::new(BIN)
        .args([
            "demo",
            "--seconds",
            "15",
            "--speed",
            "4",
            "--broker",
            "embedded",
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let course = stdout
        .lines()
        .find(|l| l.contains("demo-patient-deteriorating") && l.contains("bands"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(course.ends_with("HIGH"), "{course}");
}

#[test]
fn demo_speed_outside_its_range_is_a_usage_error() {
    let out = run(&["demo", "--speed", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--speed 0"),
        "{}",
        text(&out.stderr)
    );
}
