//! Binding a monitor's message to a patient (issue 16 point 5): by bed (PV1-3) or device
//! (MSH-3 / OBX-18 EUI-64); PID-3 only with `trust_pid`; a conflict is never guessed.

use std::path::Path;

use vitalgate::config::Config;
use vitalgate::hl7::config::{device_id, Binding};
use vitalgate::hl7::{self, MonitorZone};

fn config(hl7: &str) -> Config {
    let text = format!(
        "[gateway]\nid = \"gw\"\n\n[[patient]]\nid = \"p1\"\nnhs_number = \"943 476 5919\"\n\n[[patient]]\nid = \"p2\"\n\n[hl7]\nlisten = \"127.0.0.1:2575\"\n{hl7}"
    );
    Config::parse(&text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn message(msh3: &str, location: &str, pid3: &str, obx18: &str) -> hl7::Oru {
    let text = format!(
        "MSH|^~\\&|{msh3}||||20261204100000||ORU^R01^ORU_R01|1|P|2.6|||AL|NE\rPID|||{pid3}\rPV1||I|{location}\rOBR|1||||||20261204100000\rOBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.150456|97|262688^MDC_DIM_PERCENT^MDC|||||R|||||||{obx18}\r"
    );
    hl7::decode(&text, MonitorZone::EuropeLondon).unwrap()
}

fn bind(c: &Config, m: &hl7::Oru) -> Binding {
    c.hl7.as_ref().unwrap().bind(m, &c.patients)
}

#[test]
fn a_bed_binds_by_its_pv1_3_location_exactly_as_sent() {
    let c = config("[[hl7.bed]]\nlocation = \"3West^301^1\"\npatient = \"p1\"\n");
    assert_eq!(
        bind(&c, &message("M", "3West^301^1", "", "")),
        Binding::Patient("p1".into())
    );
    assert_eq!(
        bind(&c, &message("M", "3West^301^2", "", "")),
        Binding::Unbound
    );
    assert_eq!(bind(&c, &message("M", "", "", "")), Binding::Unbound);
}

#[test]
fn a_device_binding_matches_msh3_as_sent_or_its_eui64_in_msh3_or_obx18() {
    let c = config("[[hl7.bed]]\ndevice = \"MINDRAY^00A037009A0053DE^EUI-64\"\npatient = \"p1\"\n\n[[hl7.bed]]\ndevice = \"080019fffe0b4020\"\npatient = \"p2\"\n");
    assert_eq!(
        bind(&c, &message("MINDRAY^00A037009A0053DE^EUI-64", "x", "", "")),
        Binding::Patient("p1".into())
    );
    // The same EUI-64 under another application name, from OBX-18 only.
    assert_eq!(
        bind(
            &c,
            &message(
                "OTHER",
                "x",
                "",
                "00a037009a0053de^^00A037009A0053DE^EUI-64"
            )
        ),
        Binding::Patient("p1".into())
    );
    // GE puts the EUI-64 only in OBX-18; the config gave it in lower case.
    assert_eq!(
        bind(&c, &message("B40", "x", "", "080019FFFE0B4020^B40_GE")),
        Binding::Patient("p2".into())
    );
}

#[test]
fn a_device_binding_wins_over_a_location_binding() {
    let c = config("[[hl7.bed]]\nlocation = \"3West^301^1\"\npatient = \"p1\"\n\n[[hl7.bed]]\ndevice = \"080019FFFE0B4020\"\npatient = \"p2\"\n");
    assert_eq!(
        bind(
            &c,
            &message("B40", "3West^301^1", "", "080019FFFE0B4020^B40_GE")
        ),
        Binding::Patient("p2".into())
    );
}

#[test]
fn pid3_is_ignored_unless_trust_pid_is_set() {
    let m = message("M", "nowhere", "9434765919^^^NHS^NH", "");
    assert_eq!(bind(&config(""), &m), Binding::Unbound);
    assert_eq!(
        bind(&config("trust_pid = true\n"), &m),
        Binding::Patient("p1".into())
    );
    assert_eq!(
        bind(
            &config("trust_pid = true\n"),
            &message("M", "nowhere", "p2", "")
        ),
        Binding::Patient("p2".into())
    );
}

#[test]
fn a_pid3_naming_another_patient_than_the_bed_is_a_conflict() {
    let c = config("trust_pid = true\n[[hl7.bed]]\nlocation = \"3West^301^1\"\npatient = \"p2\"\n");
    assert_eq!(
        bind(&c, &message("M", "3West^301^1", "9434765919^^^NHS^NH", "")),
        Binding::Conflict
    );
    assert_eq!(
        bind(&c, &message("M", "3West^301^1", "unknown-mrn", "")),
        Binding::Patient("p2".into())
    );
}

#[test]
fn readings_are_stored_under_the_monitor_eui64_and_channel_else_the_location() {
    let m = message("M^00A037009A0053DE^EUI-64", "3West^301^1", "", "");
    assert_eq!(device_id(&m, "1.3"), "hl7-00A037009A0053DE-1.3");
    let m = message("M", "3West^301^1", "", "");
    assert_eq!(device_id(&m, "1.3"), "hl7-3West_301_1-1.3");
}

#[test]
fn the_same_location_or_device_bound_twice_is_a_config_error() {
    let text = "[gateway]\nid = \"gw\"\n[[patient]]\nid = \"p1\"\n[hl7]\nlisten = \"127.0.0.1:2575\"\n[[hl7.bed]]\nlocation = \"a\"\npatient = \"p1\"\n[[hl7.bed]]\nlocation = \"a\"\npatient = \"p1\"\n[[hl7.bed]]\ndevice = \"M^00A037009A0053DE^EUI-64\"\npatient = \"p1\"\n[[hl7.bed]]\ndevice = \"00a037009a0053de\"\npatient = \"p1\"\n";
    let e = Config::parse(text, Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("hl7.bed[1].location"), "{e}");
    assert!(e.contains("hl7.bed[3].device"), "{e}");
}

#[test]
fn unknown_hl7_keys_are_refused() {
    let text = "[gateway]\nid = \"gw\"\n[hl7]\nlisten = \"127.0.0.1:2575\"\nlisen = 1\n";
    assert!(Config::parse(text, Path::new("t.toml")).is_err());
}
