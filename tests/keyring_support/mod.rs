//! A hub's state dir with an outbox of several patients, for the key and erasure tests
//! (tests/keys.rs, tests/erase.rs): real files, the real binary, the library's outbox.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use time::OffsetDateTime;
use vitalgate::reading::{Decimal, Metric, Reading};
use vitalgate::store::{MasterKey, Outbox, ReadingRecord, Record};

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vitalgate"));
    c.env("RUST_LOG", "warn")
        .env_remove("CREDENTIALS_DIRECTORY");
    c
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A state dir: config (patients `patients`, a device `ox-<p>` each), master key, outbox.
pub struct Hub {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub key_file: PathBuf,
    pub outbox: PathBuf,
}

impl Hub {
    pub fn new(patients: &[&str]) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let mut text = format!(
            "[gateway]\nid = \"keys-test-gw\"\nstate_dir = \"{d}\"\ndevices_dirs = []\n\n[store]\nkey_file = \"{d}/master.key\"\n"
        );
        for p in patients {
            text.push_str(&format!(
                "\n[[patient]]\nid = \"{p}\"\n\n[[device]]\nid = \"ox-{p}\"\npatient = \"{p}\"\ndriver = \"sim\"\n"
            ));
        }
        let config = dir.path().join("vitalgate.toml");
        std::fs::write(&config, text).unwrap();
        let key_file = dir.path().join("master.key");
        let out = run(&["keygen", "--out", key_file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let outbox = dir.path().join("outbox.db");
        Hub {
            dir,
            config,
            key_file,
            outbox,
        }
    }

    pub fn master(&self) -> MasterKey {
        MasterKey::from_file(&self.key_file).unwrap()
    }

    /// A new key file (not yet in use) in the state dir.
    pub fn new_key(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        let out = run(&["keygen", "--out", p.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        p
    }

    /// Appends `per_patient` readings for each patient (one batch), returns ids by patient.
    pub fn fill(&self, patients: &[&str], per_patient: usize) -> Vec<(String, Vec<i64>)> {
        let (mut outbox, _) = Outbox::open(&self.outbox, &self.master()).unwrap();
        let mut records = Vec::new();
        for p in patients {
            for i in 0..per_patient {
                records.push(reading(p, 80 + (i % 20) as i64));
            }
        }
        let ids = outbox.append(&records, OffsetDateTime::now_utc()).unwrap();
        outbox.close_clean().unwrap();
        patients
            .iter()
            .enumerate()
            .map(|(n, p)| {
                (
                    p.to_string(),
                    ids[n * per_patient..(n + 1) * per_patient].to_vec(),
                )
            })
            .collect()
    }

    pub fn args<'a>(&'a self, verb: &[&'a str]) -> Vec<&'a str> {
        let mut v = verb.to_vec();
        v.extend(["--config", self.config.to_str().unwrap()]);
        v
    }
}

pub fn reading(patient: &str, value: i64) -> Record {
    Record::Reading(ReadingRecord {
        device_id: format!("ox-{patient}").into(),
        patient_id: patient.into(),
        nhs_number: Some("9434765919".into()),
        received_at: OffsetDateTime::now_utc(),
        clock_synced: true,
        boot: None,
        readings: vec![Reading::canonical(Metric::Spo2, Decimal::int(value))],
    })
}

/// Ids that open and decode with `key` (rows that fail are quarantined by the read).
pub fn readable(outbox: &Path, key: &MasterKey) -> Vec<i64> {
    let (mut o, _) = Outbox::open(outbox, key).unwrap();
    o.verify_all().unwrap()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
