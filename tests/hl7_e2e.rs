//! Ward monitors end to end (issue 16): real TCP clients speaking MLLP to a spawned
//! `vitalgate run`, the encrypted outbox on disk (`vitalgate status`), and, for the uplink,
//! a real Mosquitto with mutual TLS 1.3 (tests/support). protocols.md §3.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::Daemon;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");
const NHS: &str = "9434765919";

/// A gateway in a temp dir with an `[hl7]` listener on a free loopback port.
struct Gateway {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    uplink: String,
}

impl Gateway {
    fn new(uplink: String) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        let out = Command::new(BIN)
            .args(["keygen", "--out"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = dir.path().join("vitalgate.toml");
        Gateway {
            dir,
            config,
            port: free_port(),
            uplink,
        }
    }

    /// Writes the config with these `[hl7]` extra keys and `[[hl7.bed]]` tables.
    fn write(&self, hl7_extra: &str, beds: &str) {
        let d = self.dir.path().display();
        let text = format!(
            "[gateway]\nid = \"gw-hl7\"\nsetting = \"clinical\"\nstate_dir = \"{d}\"\ndevices_dirs = []\n\n\
             [store]\nkey_file = \"{d}/master.key\"\n\n[ingest]\nmax_batch_wait_ms = 20\n\n{up}\n\
             [[patient]]\nid = \"p1\"\nnhs_number = \"{NHS}\"\n\n[[patient]]\nid = \"p2\"\n\n[[patient]]\nid = \"p3\"\n\n\
             [hl7]\nlisten = \"127.0.0.1:{port}\"\n{hl7_extra}\n{beds}\n",
            up = self.uplink,
            port = self.port,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    fn status(&self) -> Value {
        let out = Command::new(BIN)
            .args(["status", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status ({e}): {}", String::from_utf8_lossy(&out.stderr)))
    }

    async fn status_until(&self, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {s:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Connects once the listener is up.
    async fn connect(&self) -> TcpStream {
        within(30, "the MLLP listener", async {
            loop {
                if let Ok(s) = TcpStream::connect(("127.0.0.1", self.port)).await {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    }
}

fn bed(location: &str, patient: &str) -> String {
    format!("[[hl7.bed]]\nlocation = \"{location}\"\npatient = \"{patient}\"\n")
}

/// A PCD-01 ORU^R01 in the GE/Mindray shape: SpO2, pulse rate, ECG heart rate, respiration
/// rate and temperature, each on its own channel, observed at `minute` past 10:00 UTC.
fn oru(control: &str, location: &str, eui: &str, minute: u32, sep: &str) -> String {
    let t = format!("20261204{:02}{:02}00+0000", 10 + minute / 60, minute % 60);
    let obx = [
        (
            1,
            "150456^MDC_PULS_OXIM_SAT_O2^MDC",
            "1.3.1.150456",
            "97",
            "262688^MDC_DIM_PERCENT^MDC",
        ),
        (
            2,
            "149530^MDC_PULS_OXIM_PULS_RATE^MDC",
            "1.3.1.149530",
            "72",
            "264864^MDC_DIM_BEAT_PER_MIN^MDC",
        ),
        (
            3,
            "147842^MDC_ECG_HEART_RATE^MDC",
            "1.2.1.147842",
            "71",
            "264864^MDC_DIM_BEAT_PER_MIN^MDC",
        ),
        (
            4,
            "151562^MDC_RESP_RATE^MDC",
            "1.4.1.151562",
            "16",
            "264928^MDC_DIM_RESP_PER_MIN^MDC",
        ),
        (
            5,
            "150344^MDC_TEMP^MDC",
            "1.5.1.150344",
            "36.9",
            "268192^MDC_DIM_DEGC^MDC",
        ),
    ];
    let mut s = format!(
        "MSH|^~\\&|SIMMON^{eui}^EUI-64||||{t}||ORU^R01^ORU_R01|{control}|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO{sep}\
         PID|||||^^^^^^L{sep}PV1||I|{location}{sep}\
         OBR|1|{control}^SIMMON|{control}^SIMMON|182777000^monitoring of patient^SCT|||{t}{sep}\
         OBX|0||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X{sep}"
    );
    for (i, code, path, v, unit) in obx {
        s.push_str(&format!(
            "OBX|{i}|NM|{code}|{path}|{v}|{unit}|||||R|||{t}||||{eui}^^{eui}^EUI-64{sep}"
        ));
    }
    s
}

fn frame(msg: &str) -> Vec<u8> {
    vitalgate::transport::mllp::encode(msg.as_bytes())
}

/// Reads one MLLP frame (the ACK) and returns its MSA-1, MSA-2 and the whole text.
async fn read_ack(s: &mut TcpStream) -> (String, String, String) {
    let mut d = vitalgate::transport::mllp::Deframer::new(1 << 20);
    let mut ev = Vec::new();
    let mut buf = [0u8; 4096];
    within(60, "an ACK", async {
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before the ACK");
            d.feed(&buf[..n], &mut ev);
            if ev
                .iter()
                .any(|e| matches!(e, vitalgate::transport::mllp::Event::Frame(_)))
            {
                break;
            }
        }
    })
    .await;
    let text = ev
        .into_iter()
        .find_map(|e| match e {
            vitalgate::transport::mllp::Event::Frame(f) => Some(String::from_utf8(f).unwrap()),
            _ => None,
        })
        .unwrap();
    let msa = text
        .split('\r')
        .find(|l| l.starts_with("MSA|"))
        .unwrap_or_else(|| panic!("no MSA: {text:?}"));
    let f: Vec<&str> = msa.split('|').collect();
    (f[1].to_string(), f.get(2).unwrap_or(&"").to_string(), text)
}

/// Sends the bed 3West^301^1 monitor's next message (control id `control`) on `s` and
/// asserts it is acknowledged `CA`: the connection still serves after what came before.
async fn the_next_message_is_stored(s: &mut TcpStream, control: &str) {
    let msg = oru(control, "3West^301^1", "00A0370098006601", 2, "\r");
    s.write_all(&frame(&msg)).await.unwrap();
    let (code, id, _) = read_ack(s).await;
    assert_eq!((code.as_str(), id.as_str()), ("CA", control));
}

/// Waits until the peer closes the connection (read returns 0 or an error).
async fn closed_by_peer(s: &mut TcpStream, secs: u64) {
    let mut buf = [0u8; 1024];
    within(secs, "the gateway to close the connection", async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
}

/// Issue 16 points 2, 4, 6: three monitors at once (one sending its frames in pieces, one with
/// LF segment ends, one with CRLF and garbage before each frame) and a fourth dropping
/// mid-frame; every message is acknowledged `CA` only
/// once its readings are in the outbox, and the Observations reach the platform.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_monitors_at_once_are_acknowledged_after_commit_and_reach_the_platform() {
    let broker = Broker::start(Acl::gateways(&["gw-hl7"]));
    let (cert, key) = broker.write_client("gw-hl7", false);
    let uplink = format!(
        "[uplink]\nbroker = \"127.0.0.1\"\nport = {}\nserver_name = \"localhost\"\nca_file = \"{}\"\n\
         cert_file = \"{}\"\nkey_file = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_s = 1\n",
        broker.port,
        broker.path("ca.pem").display(),
        cert.display(),
        key.display()
    );
    let (rx, _sub) = subscribe(&broker, "platform-hl7", "rpm/v1/gw/gw-hl7/obs").await;
    let g = Gateway::new(uplink);
    g.write(
        "",
        &[
            bed("3West^301^1", "p1"),
            bed("3West^302^1", "p2"),
            bed("3West^303^1", "p3"),
        ]
        .concat(),
    );
    let _d = Daemon::start(&g.config);

    // The dropper: half a message, then gone.
    let mut dropper = g.connect().await;
    let half = frame(&oru("X1", "3West^303^1", "00A0370098006603", 59, "\r"));
    dropper.write_all(&half[..half.len() / 2]).await.unwrap();
    drop(dropper);

    let monitors = [
        ("3West^301^1", "00A0370098006601", "\r"),
        ("3West^302^1", "00A0370098006602", "\n"),
        ("3West^303^1", "00A0370098006603", "\r\n"),
    ];
    let mut tasks = Vec::new();
    for (m, (loc, eui, sep)) in monitors.into_iter().enumerate() {
        let mut s = g.connect().await;
        let g_status = g.config.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for k in 0..2u32 {
                let control = format!("M{m}-{k}");
                let mut bytes = frame(&oru(&control, loc, eui, k, sep));
                if m == 2 {
                    // Garbage before the start byte (a terminal's line noise) is skipped.
                    bytes.splice(0..0, b"\r\n+++noise\r\n".iter().copied());
                }
                if m == 0 {
                    for piece in bytes.chunks(7) {
                        s.write_all(piece).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                } else {
                    s.write_all(&bytes).await.unwrap();
                }
                let (code, id, _) = read_ack(&mut s).await;
                // The ACK means committed: the outbox already holds this message's rows.
                let out = Command::new(BIN)
                    .args(["status", "--config"])
                    .arg(&g_status)
                    .output()
                    .unwrap();
                let st: Value = serde_json::from_slice(&out.stdout).unwrap();
                let stored = st["backlog"]["readings"].as_u64().unwrap()
                    + st["outbox"]["delivered_held"].as_u64().unwrap_or(0);
                acks.push((code, id, stored));
            }
            acks
        }));
    }
    for (m, t) in tasks.into_iter().enumerate() {
        let acks = t.await.unwrap();
        for (k, (code, id, stored)) in acks.into_iter().enumerate() {
            assert_eq!((code.as_str(), id), ("CA", format!("M{m}-{k}")));
            assert!(
                stored >= 5 * (k as u64 + 1),
                "ACK for M{m}-{k} came with only {stored} rows in the outbox"
            );
        }
    }
    // 3 monitors x 2 messages x 5 readings; the dropped half message is not among them.
    rx.wait_for("/obs", 30, 60).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let obs = rx.on("/obs");
    assert_eq!(
        obs.len(),
        30,
        "exactly the acknowledged readings are published"
    );
    for p in &obs {
        let o: Value = serde_json::from_slice(p).unwrap();
        assert_eq!(o["resourceType"], "Observation");
        assert!(
            o["code"]["coding"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["system"] == "http://loinc.org"),
            "{o}"
        );
        assert!(
            o["valueQuantity"]["system"] == "http://unitsofmeasure.org",
            "{o}"
        );
        assert!(
            o["effectiveDateTime"]
                .as_str()
                .unwrap()
                .starts_with("2026-12-04T10:0"),
            "{o}"
        );
        let dev = o["device"].to_string();
        assert!(dev.contains("hl7-00A03700980066"), "{o}");
    }
    // Patient p1 has an NHS Number: its Observations carry it; p2/p3's do not exist in FHIR terms.
    let p1: Vec<&Vec<u8>> = obs
        .iter()
        .filter(|p| String::from_utf8_lossy(p).contains("6601"))
        .collect();
    assert_eq!(p1.len(), 10);
    for p in p1 {
        let o: Value = serde_json::from_slice(p).unwrap();
        assert_eq!(o["subject"]["identifier"]["value"], NHS);
        assert_eq!(
            o["subject"]["identifier"]["system"],
            "https://fhir.nhs.uk/Id/nhs-number"
        );
    }
    let st = g
        .status_until(30, "the status snapshot to show all six messages", |s| {
            s["hl7"]["messages"]["stored"] == 6
        })
        .await;
    assert_eq!(st["hl7"]["connections"]["frames_cut_short"], 1, "{st:#}");
}

fn local_gateway(hl7_extra: &str, beds: &str) -> Gateway {
    let g = Gateway::new(String::new());
    g.write(hl7_extra, beds);
    g
}

/// Issue 16 point 5: a monitor no bed binds is answered AE (ERR 204 naming its location),
/// its readings are held (not stored), counted and shown in status with the location, and
/// released into the outbox under the right patient when a SIGHUP reload adds its bed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbound_monitor_is_held_shown_in_status_and_released_when_its_bed_is_bound() {
    let g = local_gateway("", &bed("3West^301^1", "p1"));
    let d = Daemon::start(&g.config);
    let mut s = g.connect().await;
    s.write_all(&frame(&oru("U1", "4East^9^2", "00A0370098006699", 1, "\r")))
        .await
        .unwrap();
    let (code, id, text) = read_ack(&mut s).await;
    assert_eq!(
        (code.as_str(), id.as_str()),
        ("CE", "U1"),
        "not stored, may retry; MSH-15 AL asks for the accept-ACK form"
    );
    assert!(text.contains("ERR|||204^"), "{text:?}");
    assert!(
        text.contains("4East\\S\\9\\S\\2"),
        "the reason names the location: {text:?}"
    );
    let st = g
        .status_until(30, "held readings in status", |s| {
            s["hl7"]["held"]["readings"] == 5
        })
        .await;
    let m = &st["hl7"]["held"]["monitors"][0];
    assert_eq!(m["location"], "4East^9^2");
    assert_eq!(m["sender"], "SIMMON^00A0370098006699^EUI-64");
    assert_eq!(
        st["backlog"]["readings"], 0,
        "held readings are not in the outbox"
    );

    g.write(
        "",
        &[bed("3West^301^1", "p1"), bed("4East^9^2", "p2")].concat(),
    );
    d.signal("HUP");
    let st = g
        .status_until(60, "held readings released", |s| {
            s["backlog"]["readings"] == 5
        })
        .await;
    d.wait_log("held readings released").await;
    let st2 = g
        .status_until(30, "held count back to 0", |s| {
            s["hl7"]["held"]["readings"] == 0
        })
        .await;
    assert_eq!(st2["hl7"]["held"]["released"], 5);
    let devices = st["devices"].as_array().unwrap();
    assert!(
        devices.iter().any(|d| d["patient"] == "p2"
            && d["id"]
                .as_str()
                .unwrap()
                .starts_with("hl7-00A0370098006699")),
        "{st:#}"
    );
    // The reloaded listener serves the now-bound monitor directly.
    let mut s = g.connect().await;
    s.write_all(&frame(&oru("U2", "4East^9^2", "00A0370098006699", 2, "\r")))
        .await
        .unwrap();
    let (code, id, _) = read_ack(&mut s).await;
    assert_eq!((code.as_str(), id.as_str()), ("CA", "U2"));
}

/// Issue 16 point 3, protocols.md §4 pitfall 10: the Mindray demo-mode sample is refused
/// with AR and nothing is stored, even for a bound bed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_mode_data_is_refused_with_ar_and_never_stored() {
    let g = local_gateway("", &bed("INTER^^1^1", "p1"));
    let _d = Daemon::start(&g.config);
    let demo = "MSH|^~\\&|MINDRAY_VS900^00A0370098006640^EUI-64||||20200212125541||ORU^R01^ORU_R01|13|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\rPID|||2eefgghy^^^Hospital^PI||TEST^SR T3ST^^^^^L||19891023|M\rPV1||I|INTER^^1^1|||||||||||||||||||||||||||||||||||||||||20200212\rOBR|1|13^MINDRAY_VS900^00A0370098006640^EUI-64|13^MINDRAY_VS900^00A0370098006640^EUI-64|182777000^monitoring of patient^SCT|||20200212125541\rOBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.150456|100|262688^MDC_DIM_PERCENT^MDC||DEMO|||R|||20200212125541||||00A0370098006640^^00A0370098006640^EUI-64\rOBX|2|NM|149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.3.1.149530|80|264864^MDC_DIM_BEAT_PER_MIN^MDC||DEMO|||R|||20200212125541\r";
    let mut s = g.connect().await;
    s.write_all(&frame(demo)).await.unwrap();
    let (code, id, text) = read_ack(&mut s).await;
    assert_eq!(
        (code.as_str(), id.as_str()),
        ("CR", "13"),
        "Mindray asks for accept ACKs: the reject is CR"
    );
    assert!(text.contains("ERR|||202^"), "{text:?}");
    let st = g
        .status_until(30, "the demo counter", |s| {
            s["hl7"]["messages"]["demo_rejected"] == 1
        })
        .await;
    assert_eq!(st["backlog"]["readings"], 0);
}

/// Issue 16 point 2: a connection sending nonsense is closed; a monitor beside it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_sending_nonsense_is_closed_without_affecting_another_monitor() {
    let g = local_gateway("", &bed("3West^301^1", "p1"));
    let _d = Daemon::start(&g.config);
    let mut good = g.connect().await;
    let mut bad = g.connect().await;
    for _ in 0..3 {
        bad.write_all(&frame("this is not HL7")).await.unwrap();
    }
    let _ = bad.write_all(&[b'x'; 8192]).await;
    closed_by_peer(&mut bad, 30).await;
    good.write_all(&frame(&oru(
        "G1",
        "3West^301^1",
        "00A0370098006601",
        1,
        "\r",
    )))
    .await
    .unwrap();
    assert_eq!(read_ack(&mut good).await.0, "CA");
    g.status_until(30, "the nonsense connection counted", |s| {
        s["hl7"]["connections"]["closed_nonsense"] == 1
    })
    .await;
}

/// Issue 16 point 2: a frame over max_frame_bytes is answered AR; the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_cap_is_refused_with_ar() {
    let g = local_gateway("max_frame_bytes = 2048\n", &bed("3West^301^1", "p1"));
    let _d = Daemon::start(&g.config);
    let mut s = g.connect().await;
    let big = format!(
        "{}NTE|1||{}\r",
        oru("B1", "3West^301^1", "00A0370098006601", 1, "\r"),
        "x".repeat(4000)
    );
    s.write_all(&frame(&big)).await.unwrap();
    let (code, _, text) = read_ack(&mut s).await;
    assert_eq!(code, "AR");
    assert!(text.contains("exceeds max_frame_bytes 2048"), "{text:?}");
    the_next_message_is_stored(&mut s, "B2").await;
}

/// Issue 16 point 2: idle connections time out; connections beyond the cap are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_time_out_and_connections_beyond_the_cap_are_closed() {
    let g = local_gateway(
        "idle_timeout_s = 1\nmax_connections = 2\n",
        &bed("3West^301^1", "p1"),
    );
    let _d = Daemon::start(&g.config);
    let mut a = g.connect().await;
    let _b = g.connect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = g.connect().await;
    closed_by_peer(&mut c, 30).await;
    closed_by_peer(&mut a, 30).await;
    let st = g
        .status_until(30, "counters", |s| {
            s["hl7"]["connections"]["closed_idle"].as_u64() >= Some(1)
        })
        .await;
    assert!(
        st["hl7"]["connections"]["refused_over_limit"]
            .as_u64()
            .unwrap()
            >= 1,
        "{st:#}"
    );
}

/// Issue 16 point 1: `check-config` refuses a bed bound to no patient, a bed with neither
/// location nor device, and a bad listen address, naming each key.
#[test]
fn check_config_names_each_hl7_problem() {
    let g = Gateway::new(String::new());
    g.write("timezone = \"Mars/Olympus\"\n", "[[hl7.bed]]\nlocation = \"3West^301^1\"\npatient = \"nobody\"\n\n[[hl7.bed]]\npatient = \"p1\"\n");
    let text = std::fs::read_to_string(&g.config)
        .unwrap()
        .replace("127.0.0.1:", "nowhere:");
    std::fs::write(&g.config, text).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&g.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "hl7.listen",
        "hl7.timezone",
        "hl7.bed[0].patient",
        "hl7.bed[1].location",
    ] {
        assert!(err.contains(key), "{key} not named in: {err}");
    }
}

/// Issue 16 point 6: `vitalgate simulate hl7-monitor --to HOST:PORT` sends a monitor's stream
/// that the gateway stores under the bound bed's patient, one `CA` per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hl7_monitor_simulator_feeds_a_bound_bed() {
    let g = local_gateway("", &bed("3West^301^1", "p1"));
    let _d = Daemon::start(&g.config);
    drop(g.connect().await); // the listener is up
    let to = format!("127.0.0.1:{}", g.port);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "simulate",
                "hl7-monitor",
                "--to",
                &to,
                "--count",
                "3",
                "--interval-ms",
                "50",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "simulator: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().all(|l| l.ends_with(" CA")), "{lines:?}");
    let st = g
        .status_until(30, "the simulated readings", |s| {
            s["hl7"]["messages"]["stored"] == 3
        })
        .await;
    assert!(
        st["backlog"]["readings"].as_u64().unwrap() >= 3 * 4,
        "{st:#}"
    );
    let devices = st["devices"].as_array().unwrap();
    assert!(
        devices
            .iter()
            .any(|d| d["patient"] == "p1" && d["id"] == "hl7-00A0370098006640-1.3"),
        "{st:#}"
    );
}

#[test]
fn simulate_hl7_monitor_without_to_or_with_a_bad_eui_is_a_usage_error() {
    let out = Command::new(BIN)
        .args([
            "simulate",
            "hl7-monitor",
            "--to",
            "127.0.0.1:9",
            "--eui64",
            "xyz",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["simulate", "nonin-fmt2", "--to", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 16 point 1: with `[hl7] tls`, a monitor presenting a certificate from the
/// configured CA is served over TLS 1.3; one without a certificate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_only_monitors_with_a_client_certificate_are_served() {
    use std::sync::Arc;
    let ca = Ca::new("ward-ca");
    let g = Gateway::new(String::new());
    let d = g.dir.path();
    let (scert, skey) = ca.server();
    let (ccert, ckey) = ca.client("monitor-301", false);
    for (name, pem) in [
        ("ca.pem", &ca.cert_pem),
        ("server.pem", &scert),
        ("server.key", &skey),
        ("client.pem", &ccert),
        ("client.key", &ckey),
    ] {
        // Keys 0600, as secure_file requires of a private key.
        write_secret(&d.join(name), pem);
    }
    g.write(
        &format!(
            "tls = {{ cert_file = \"{0}/server.pem\", key_file = \"{0}/server.key\", client_ca_file = \"{0}/ca.pem\" }}\n",
            d.display()
        ),
        &bed("3West^301^1", "p1"),
    );
    let _daemon = Daemon::start(&g.config);
    let with_cert = vitalgate::uplink::tls::load(
        &vitalgate::uplink::UplinkConfig {
            broker: "localhost".into(),
            ca_file: d.join("ca.pem"),
            cert_file: d.join("client.pem"),
            key_file: d.join("client.key"),
            ..Default::default()
        },
        time::OffsetDateTime::now_utc(),
    )
    .unwrap()
    .config;
    let server_name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = g.connect().await;
    let mut tls = tokio_rustls::TlsConnector::from(with_cert)
        .connect(server_name.clone(), tcp)
        .await
        .expect("handshake with a client certificate");
    tls.write_all(&frame(&oru(
        "T1",
        "3West^301^1",
        "00A0370098006601",
        1,
        "\r",
    )))
    .await
    .unwrap();
    let mut d2 = vitalgate::transport::mllp::Deframer::new(1 << 20);
    let mut ev = Vec::new();
    let mut buf = [0u8; 4096];
    within(30, "the ACK over TLS", async {
        while ev.is_empty() {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0);
            d2.feed(&buf[..n], &mut ev);
        }
    })
    .await;
    let vitalgate::transport::mllp::Event::Frame(ack) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert!(String::from_utf8_lossy(ack).contains("MSA|CA|T1"));

    // No client certificate: the handshake (or the first read after it) fails.
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let no_cert = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = g.connect().await;
    let refused = match tokio_rustls::TlsConnector::from(Arc::new(no_cert))
        .connect(server_name, tcp)
        .await
    {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s
                .write_all(&frame(&oru(
                    "T2",
                    "3West^301^1",
                    "00A0370098006601",
                    2,
                    "\r",
                )))
                .await;
            matches!(
                within(30, "a refusal", s.read(&mut buf)).await,
                Ok(0) | Err(_)
            )
        }
    };
    assert!(
        refused,
        "a monitor without a certificate must not be served"
    );
    g.status_until(30, "the TLS failure counted", |s| {
        s["hl7"]["connections"]["tls_failures"] == 1
    })
    .await;
}

/// HAZ-16, src/crash.rs: a message whose decoding panics (a bug; injected in this debug
/// build) stops the gateway once. Sent again after the restart, it is refused with `CR`
/// naming the bug instead of crashing it again, and the monitor's next message is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_decoding_panics_stops_the_gateway_once_and_is_refused_when_sent_again() {
    use std::os::unix::process::ExitStatusExt;
    let g = local_gateway("", &bed("3West^301^1", "p1"));
    let poison = oru("P1", "3West^301^1", "00A0370098006601", 1, "\r");
    let inject = format!(
        "decoding HL7 message {}",
        vitalgate::crash::hl7_digest(poison.as_bytes())
    );
    let env = [("VITALGATE_INJECT_PANIC", inject.as_str())];
    let mut first = Daemon::start_with_env(&g.config, &env);
    let mut s = g.connect().await;
    s.write_all(&frame(&poison)).await.unwrap();
    closed_by_peer(&mut s, 60).await;
    let exit = first.wait_exit(60).await;
    assert_eq!(exit.signal(), Some(6), "aborted: {exit:?}");

    // Started again, as systemd would; the monitor re-sends what was not acknowledged.
    let _d = Daemon::start_with_env(&g.config, &env);
    let mut s = g.connect().await;
    s.write_all(&frame(&poison)).await.unwrap();
    let (code, id, text) = read_ack(&mut s).await;
    assert_eq!((code.as_str(), id.as_str()), ("CR", "P1"), "{text:?}");
    assert!(text.contains("crashed the gateway"), "{text:?}");
    the_next_message_is_stored(&mut s, "P2").await;
    g.status_until(30, "the refusal counted, the next readings stored", |s| {
        s["hl7"]["messages"]["crashed_decoding"] == 1 && s["backlog"]["readings"] == 5
    })
    .await;
}
