//! Status: what the gateway holds and how its parts are doing.
//!
//! The daemon keeps a [`Registry`] of device states in memory and writes a snapshot
//! (`status.json`, mode 0600) to the state dir only when a state changes ([`SnapshotWriter`]) and
//! at shutdown: a hub's SD card is not rewritten every few seconds to say the same thing,
//! nor for every count; the running daemon's counts are served live (`live/`). `vitalgate status` combines
//! that snapshot with counts read straight from the outbox (no key needed), so it works
//! whether or not the daemon is running, and says which.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::transport::LinkState;

pub const SNAPSHOT_FILE: &str = "status.json";

/// One device as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceStatus {
    pub id: String,
    pub patient: String,
    pub driver: String,
    pub state: LinkState,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_data_at: Option<OffsetDateTime>,
    pub frames: u64,
    pub readings: u64,
    pub decode_errors: u64,
    pub last_error: Option<String>,
    /// Silence longer than this is reported as `no_data`.
    #[serde(skip)]
    pub expected_interval: Option<Duration>,
}

/// Device states shared between device tasks and the snapshot writer.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    devices: Arc<Mutex<BTreeMap<String, DeviceStatus>>>,
}

impl Registry {
    pub fn add(&self, id: &str, patient: &str, driver: &str, expected_interval: Option<Duration>) {
        self.lock().insert(
            id.to_string(),
            DeviceStatus {
                id: id.to_string(),
                patient: patient.to_string(),
                driver: driver.to_string(),
                state: LinkState::Starting,
                last_data_at: None,
                frames: 0,
                readings: 0,
                decode_errors: 0,
                last_error: None,
                expected_interval,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DeviceStatus>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets a device (stopped by a live configuration change).
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Applies `f` to one device's status.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut DeviceStatus)) {
        if let Some(d) = self.lock().get_mut(id) {
            f(d);
        }
    }

    /// Current states; a connected device silent for longer than expected shows `no_data`.
    pub fn snapshot(&self, now: OffsetDateTime) -> Vec<DeviceStatus> {
        self.lock()
            .values()
            .cloned()
            .map(|mut d| {
                if d.state == LinkState::Connected {
                    if let (Some(limit), Some(last)) = (d.expected_interval, d.last_data_at) {
                        if now - last > limit {
                            d.state = LinkState::NoData;
                        }
                    }
                }
                d
            })
            .collect()
    }
}

/// RFC 3339 text for a timestamp (status and logs).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Writes `value` to `dir/status.json` atomically (temp file + rename), mode 0600.
///
/// The file is padded with trailing whitespace (valid JSON) to a multiple of 4 KiB with at
/// least 1 KiB to spare, so that when the file system is full (no room for the temp file)
/// the snapshot is rewritten in place over space the file already holds: status must say
/// `storage_full` exactly when nothing else can be written.
pub fn write_snapshot(dir: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    let padded = (text.len() + 1024).div_ceil(4096) * 4096;
    text.extend(std::iter::repeat_n(' ', padded - text.len() - 1));
    text.push('\n');
    match write_atomically(dir, text.as_bytes()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(28) => {
            let _ = std::fs::remove_file(dir.join(".status.json.tmp"));
            overwrite_in_place(&dir.join(SNAPSHOT_FILE), text.trim_end().as_bytes()).map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

fn write_atomically(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(".status.json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))
}

/// Rewrites `path` in place with `bytes`, blank-padded to the file's current length (no
/// new space needed). Refuses when `bytes` does not fit.
fn overwrite_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    let len = usize::try_from(f.metadata()?.len()).unwrap_or(0);
    if bytes.len() >= len {
        return Err(std::io::Error::other(
            "the snapshot no longer fits in place",
        ));
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(bytes);
    out.resize(len - 1, b' ');
    out.push(b'\n');
    f.write_all(&out)
}

/// Writes the snapshot only when what it says has changed: a device, uplink or storage state,
/// a flag, an error, a device added or removed. Counts are no change (they move with every
/// reading; the live socket serves them, `live/`), nor are timestamps and in-flight gauges:
/// at 10 devices x 1 Hz a rule that also wrote when a count reached a new power of two
/// rewrote the 4 KiB file about 25 times in a minute, some 30 bytes per reading on the SD
/// card (issue 18, `scripts/footprint`). The file written carries every current value; the
/// one written at stop ([`write_snapshot`]) is what `vitalgate status` shows of a stopped
/// daemon. Checked against the last snapshot written, in memory.
#[derive(Debug, Default)]
pub struct SnapshotWriter {
    last: Option<serde_json::Value>,
}

impl SnapshotWriter {
    /// Writes `value` if it differs in substance from the last one written; says whether it did.
    pub fn write_if_changed(
        &mut self,
        dir: &Path,
        value: &serde_json::Value,
    ) -> std::io::Result<bool> {
        let substance = substance(value);
        if self.last.as_ref() == Some(&substance) {
            return Ok(false);
        }
        write_snapshot(dir, value)?;
        self.last = Some(substance);
        Ok(true)
    }
}

/// Fields that change all the time without the state changing.
const VOLATILE: &[&str] = &["updated_at", "last_data_at", "last_ack", "in_flight"];

/// Sections whose counts `vitalgate status` reads only from this file (the live state has no
/// `hl7` part yet): a count there is a change when it reaches a new power of two, so the
/// file follows their order of magnitude (an HL7 listener's connections and refusals are
/// rare next to readings).
const COUNTED: &[&str] = &["hl7"];

/// `value` without [`VOLATILE`] fields and without its numbers (counts, gauges): what is
/// left are states, flags, errors and the set of devices; in [`COUNTED`] sections each
/// count is replaced by its bit length instead.
fn substance(value: &serde_json::Value) -> serde_json::Value {
    without_volatile(value, |_| serde_json::Value::Null)
}

/// `value` without [`VOLATILE`] fields, each number replaced by `number` of it, or by its
/// bit length inside a [`COUNTED`] section.
fn without_volatile(
    value: &serde_json::Value,
    number: fn(&serde_json::Number) -> serde_json::Value,
) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
                .map(|(k, v)| {
                    let number = if COUNTED.contains(&k.as_str()) {
                        bit_length
                    } else {
                        number
                    };
                    (k.clone(), without_volatile(v, number))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| without_volatile(item, number))
                .collect(),
        ),
        Value::Number(n) => number(n),
        other => other.clone(),
    }
}

/// A count's bit length (its order of magnitude); a number that is no count as it is.
fn bit_length(n: &serde_json::Number) -> serde_json::Value {
    match n.as_u64() {
        Some(u) => serde_json::Value::from(u64::BITS - u.leading_zeros()),
        None => serde_json::Value::Number(n.clone()),
    }
}

/// Reads the snapshot, if any.
pub fn read_snapshot(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(SNAPSHOT_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether the process that wrote a snapshot is still alive (Linux `/proc`).
pub fn pid_alive(pid: u64) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::SnapshotWriter;
    use serde_json::json;

    fn doc(readings: u64, state: &str, at: &str) -> serde_json::Value {
        json!({"updated_at": at, "devices": [{"id": "d1", "state": state, "readings": readings, "last_data_at": at}]})
    }

    #[test]
    fn a_snapshot_that_says_the_same_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SnapshotWriter::default();
        assert!(w
            .write_if_changed(dir.path(), &doc(5, "connected", "t1"))
            .unwrap());
        assert!(!w
            .write_if_changed(dir.path(), &doc(6, "connected", "t2"))
            .unwrap());
        assert!(!w
            .write_if_changed(dir.path(), &doc(7, "connected", "t3"))
            .unwrap());
        let on_disk = super::read_snapshot(dir.path()).unwrap();
        assert_eq!(on_disk["devices"][0]["readings"], 5);
    }

    #[test]
    fn a_state_change_is_written_and_a_count_change_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SnapshotWriter::default();
        assert!(w
            .write_if_changed(dir.path(), &doc(0, "starting", "t1"))
            .unwrap());
        assert!(w
            .write_if_changed(dir.path(), &doc(0, "connected", "t2"))
            .unwrap());
        for (n, at) in [(1, "t3"), (2, "t4"), (64, "t5"), (1 << 20, "t6")] {
            assert!(
                !w.write_if_changed(dir.path(), &doc(n, "connected", at))
                    .unwrap(),
                "{n} readings is no change of state"
            );
        }
        assert!(w
            .write_if_changed(dir.path(), &doc(1 << 20, "no_data", "t7"))
            .unwrap());
        let on_disk = super::read_snapshot(dir.path()).unwrap();
        assert_eq!(on_disk["devices"][0]["state"], "no_data");
        assert_eq!(
            on_disk["devices"][0]["readings"],
            1 << 20,
            "the file written carries the current counts"
        );
    }

    #[test]
    fn an_hl7_count_reaching_a_new_power_of_two_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SnapshotWriter::default();
        let hl7 = |n: u64| json!({"updated_at": "t", "hl7": {"connections": {"closed_idle": n}}});
        assert!(w.write_if_changed(dir.path(), &hl7(0)).unwrap());
        assert!(w.write_if_changed(dir.path(), &hl7(1)).unwrap());
        assert!(!w.write_if_changed(dir.path(), &hl7(1)).unwrap());
        assert!(w.write_if_changed(dir.path(), &hl7(2)).unwrap());
        assert!(!w.write_if_changed(dir.path(), &hl7(3)).unwrap());
    }
}
