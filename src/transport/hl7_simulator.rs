//! `vitalgate simulate hl7-monitor --to HOST:PORT`: a simulated bedside monitor sending IHE
//! PCD-01 ORU^R01 over MLLP, for demos and field checks of a ward gateway's HL7 listener.
//!
//! The values come from the simulated patient ([`SimPatient`]); the message has the shape GE
//! and Mindray monitors send (MSH-3 with the EUI-64, MSH-15/16 `AL`/`NE`, PV1-3 the bed, an
//! MDS containment row, one OBX per numeric with its MDC code, unit, OBX-14 time and OBX-18
//! equipment id). A probe-off reading is sent as OBX-11 `X` with no value, as monitors do.
//! Like a GE monitor, it re-sends a message answered `AE`/`CE` (three attempts in all) and
//! any message still unanswered after a reconnect.

use std::time::Duration;

use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::drivers::sim::{Scenario, SimPatient};
use crate::hl7::codes;
use crate::reading::{Metric, Value};
use crate::transport::mllp::{encode, Deframer, Event};

/// A simulated monitor: its bed, its EUI-64 and its patient.
pub struct MonitorSim {
    pub location: String,
    pub eui64: String,
    patient: SimPatient,
    seq: u64,
}

/// The containment channel (MDS.VMD.CHAN) a monitor reports a metric on.
fn channel(metric: Metric) -> &'static str {
    match metric {
        Metric::Spo2 | Metric::PulseRate | Metric::PerfusionIndex => "1.3.1",
        Metric::HeartRate => "1.2.1",
        Metric::RespiratoryRate => "1.4.1",
        Metric::BodyTemperature => "1.5.1",
        _ => "1.1.9",
    }
}

fn hl7_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

impl MonitorSim {
    pub fn new(location: &str, eui64: &str, scenario: Scenario, seed: u64) -> Self {
        MonitorSim {
            location: location.to_string(),
            eui64: eui64.to_string(),
            patient: SimPatient::new(scenario, seed),
            seq: 0,
        }
    }

    /// The next ORU^R01 (segments ended by CR), observed at `now`.
    pub fn next_message(&mut self, now: OffsetDateTime) -> (String, String) {
        self.seq += 1;
        let control = format!(
            "{}-{}",
            &self.eui64[self.eui64.len().saturating_sub(4)..],
            self.seq
        );
        let t = hl7_time(now);
        let eui = &self.eui64;
        let mut s = format!(
            "MSH|^~\\&|VITALGATE_SIM^{eui}^EUI-64||||{t}||ORU^R01^ORU_R01|{control}|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\r\
             PID|||||^^^^^^L\rPV1||I|{loc}\r\
             OBR|1|{control}^VITALGATE_SIM^{eui}^EUI-64|{control}^VITALGATE_SIM^{eui}^EUI-64|182777000^monitoring of patient^SCT|||{t}\r\
             OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{eui}^^{eui}^EUI-64\r",
            loc = self.location,
        );
        let mut n = 1;
        for r in self.patient.next(now).into_iter().flatten() {
            let (Some((code, name)), Some((ucode, uname))) =
                (codes::code_for(r.metric), codes::unit_code_for(r.metric))
            else {
                continue;
            };
            n += 1;
            let (value, status) = match r.value {
                Value::Number(d) => (d.to_string(), "R"),
                _ => (String::new(), "X"),
            };
            let method = if channel(r.metric) == "1.1.9" {
                "^APERIODIC"
            } else {
                ""
            };
            s.push_str(&format!(
                "OBX|{n}|NM|{code}^{name}^MDC|{}.{code}|{value}|{ucode}^{uname}^MDC|||||{status}|||{}|||{method}|{eui}^^{eui}^EUI-64\r",
                channel(r.metric),
                hl7_time(r.device_time.unwrap_or(now)),
            ));
        }
        (control, s)
    }
}

/// How the simulator runs.
#[derive(Debug, Clone)]
pub struct Hl7SimOptions {
    pub to: String,
    pub location: String,
    pub eui64: String,
    pub interval: Duration,
    pub scenario: Scenario,
    pub seed: u64,
    /// Stop after this many acknowledged messages (default: until stopped).
    pub count: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum Hl7SimError {
    #[error("--eui64 {0:?}: use 16 hexadecimal digits")]
    BadEui(String),
    #[error("message {control}: refused by the gateway ({code}): {text}")]
    Refused {
        control: String,
        code: String,
        text: String,
    },
}

/// What the simulator did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hl7SimReport {
    pub sent: u64,
    pub acknowledged: u64,
}

async fn read_ack(stream: &mut TcpStream, deframer: &mut Deframer) -> Option<String> {
    let mut buf = [0u8; 4096];
    let mut events = Vec::new();
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        deframer.feed(&buf[..n], &mut events);
        for e in events.drain(..) {
            if let Event::Frame(f) = e {
                return Some(String::from_utf8_lossy(&f).into_owned());
            }
        }
    }
}

/// MSA-1 and MSA-3 of an ACK.
fn msa(ack: &str) -> (String, String) {
    let line = ack
        .split(['\r', '\n'])
        .find(|l| l.starts_with("MSA|"))
        .unwrap_or("");
    let f: Vec<&str> = line.split('|').collect();
    (
        f.get(1).unwrap_or(&"").to_string(),
        f.get(3).unwrap_or(&"").to_string(),
    )
}

/// Sends the monitor's stream to `opts.to` until `token` (or `count` messages acknowledged).
/// Reconnects with backoff; a message is re-sent until acknowledged (three attempts when the
/// gateway answers `AE`/`CE`). An `AR`/`CR` stops the simulator with the gateway's reason.
pub async fn run(
    opts: Hl7SimOptions,
    token: CancellationToken,
) -> Result<Hl7SimReport, Hl7SimError> {
    if opts.eui64.len() != 16 || !opts.eui64.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Hl7SimError::BadEui(opts.eui64.clone()));
    }
    let mut sim = MonitorSim::new(&opts.location, &opts.eui64, opts.scenario, opts.seed);
    let mut report = Hl7SimReport::default();
    let mut pending: Option<(String, String, u32)> = None;
    let mut backoff = Duration::from_millis(250);
    'connect: while !token.is_cancelled() {
        let mut stream = tokio::select! {
            _ = token.cancelled() => break,
            r = TcpStream::connect(&opts.to) => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(to = %opts.to, error = %e, "cannot connect; retrying");
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(250);
        tracing::info!(to = %opts.to, location = %opts.location, "connected");
        let mut deframer = Deframer::new(1 << 20);
        loop {
            if opts.count.is_some_and(|c| report.acknowledged >= c) {
                break 'connect;
            }
            let (control, msg, attempt) = match pending.take() {
                Some(p) => p,
                None => {
                    let (c, m) = sim.next_message(OffsetDateTime::now_utc());
                    (c, m, 1)
                }
            };
            if stream.write_all(&encode(msg.as_bytes())).await.is_err() {
                pending = Some((control, msg, attempt));
                continue 'connect;
            }
            report.sent += 1;
            let Some(ack) = read_ack(&mut stream, &mut deframer).await else {
                tracing::warn!(%control, "no ACK; reconnecting to re-send");
                pending = Some((control, msg, attempt));
                continue 'connect;
            };
            let (code, text) = msa(&ack);
            match code.as_str() {
                "CA" | "AA" => {
                    report.acknowledged += 1;
                    // Ignores a closed stdout (`... | head -1`): sending goes on regardless.
                    let _ = std::io::Write::write_fmt(
                        &mut std::io::stdout(),
                        format_args!("{control} {code}\n"),
                    );
                }
                "AE" | "CE" if attempt < 3 => {
                    tracing::warn!(%control, %code, reason = %text, "gateway error; re-sending");
                    pending = Some((control, msg, attempt + 1));
                }
                _ => {
                    return Err(Hl7SimError::Refused {
                        control,
                        code,
                        text,
                    })
                }
            }
            if pending.is_none() {
                tokio::select! {
                    _ = token.cancelled() => break 'connect,
                    _ = tokio::time::sleep(opts.interval) => {}
                }
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::{decode, MonitorZone, RowOutcome};

    #[test]
    fn simulated_messages_decode_to_the_simulated_patient_readings() {
        let mut sim = MonitorSim::new("3West^301^1", "00A0370098006640", Scenario::Stable, 7);
        let now = time::macros::datetime!(2026-12-04 10:00 UTC);
        let (control, text) = sim.next_message(now);
        let oru = decode(&text, MonitorZone::EuropeLondon).unwrap();
        assert_eq!(oru.header.control_id, control);
        assert_eq!(oru.location.as_deref(), Some("3West^301^1"));
        assert_eq!(oru.device.as_deref(), Some("00A0370098006640"));
        assert_eq!(oru.rows[0].outcome, RowOutcome::Containment);
        let mut expected: Vec<Metric> = SimPatient::new(Scenario::Stable, 7)
            .next(now)
            .into_iter()
            .flatten()
            .map(|r| r.metric)
            .filter(|m| codes::code_for(*m).is_some())
            .collect();
        let mut got: Vec<Metric> = oru.readings().map(|(_, r)| r.metric).collect();
        expected.sort();
        got.sort();
        assert_eq!(got, expected);
        assert!(oru.readings().all(|(_, r)| r.device_time == Some(now)));
    }

    #[test]
    fn each_message_has_a_new_control_id() {
        let mut sim = MonitorSim::new("b", "00A0370098006640", Scenario::Stable, 7);
        let now = time::macros::datetime!(2026-12-04 10:00 UTC);
        assert_ne!(sim.next_message(now).0, sim.next_message(now).0);
    }
}
