//! Issue 16 point 4: a monitor's positive ACK is sent only after its readings are committed.
//! The gateway runs in this process with an extra commit hook that holds every ingest
//! transaction open until the test opens a gate: while it is shut no ACK may arrive; once it
//! opens, the ACK comes and the rows are in the outbox on disk.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use vitalgate::config::Config;
use vitalgate::ingest::{CommitHook, HookOutput};
use vitalgate::store::{MasterKey, Record};
use vitalgate::transport::mllp::{encode, Deframer, Event};

/// Blocks each transaction (inside the ingest writer, before its commit) until opened.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }
}

impl CommitHook for Gate {
    fn on_batch(&mut self, _accepted: &[Record], _now: OffsetDateTime) -> HookOutput {
        let (lock, cv) = &*self.0;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        HookOutput::default()
    }
    fn on_reject(&mut self, _rejection: &vitalgate::ingest::Rejection) -> HookOutput {
        HookOutput::default()
    }
    fn on_tick(&mut self, _now: OffsetDateTime, _backlog: u64) -> HookOutput {
        HookOutput::default()
    }
    fn on_storage(
        &mut self,
        _now: OffsetDateTime,
        _alarm: vitalgate::ingest::StorageAlarm,
        _active: bool,
    ) -> HookOutput {
        HookOutput::default()
    }
    fn on_stalled(&mut self, _now: OffsetDateTime) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_is_sent_while_the_readings_are_not_yet_committed() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        "[gateway]\nid = \"gw\"\nstate_dir = \"{d}\"\ndevices_dirs = []\n[store]\nkey_file = \"{d}/k\"\n\
         [[patient]]\nid = \"p1\"\n[hl7]\nlisten = \"127.0.0.1:{port}\"\n[[hl7.bed]]\nlocation = \"3West^301^1\"\npatient = \"p1\"\n",
        d = dir.path().display()
    );
    let config = Config::parse(&text, Path::new("t.toml")).unwrap();
    let gate = Gate::default();
    let token = CancellationToken::new();
    let opts = vitalgate::daemon::RunOptions {
        hooks: vec![Box::new(gate.clone())],
        ..Default::default()
    };
    let daemon = tokio::spawn(vitalgate::daemon::run(
        config.clone(),
        MasterKey::ephemeral().unwrap(),
        token.clone(),
        opts,
    ));

    let mut s = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("listener up");
    let msg = "MSH|^~\\&|M^00A0370098006601^EUI-64||||20261204100000+0000||ORU^R01^ORU_R01|C1|P|2.6|||AL|NE\rPV1||I|3West^301^1\rOBR|1||||||20261204100000+0000\rOBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.150456|97|262688^MDC_DIM_PERCENT^MDC|||||R\r";
    s.write_all(&encode(msg.as_bytes())).await.unwrap();

    // The transaction is held open: nothing may come back (the bound is generous: a wrong
    // implementation answers within milliseconds).
    let mut buf = [0u8; 4096];
    let early = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "an ACK (or close) arrived before the commit: {early:?}"
    );
    let status = vitalgate::daemon::status_json(&config).unwrap();
    assert_eq!(status["backlog"]["readings"], 0, "nothing committed yet");

    gate.open();
    let mut d = Deframer::new(1 << 20);
    let mut ev = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while ev.is_empty() {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            d.feed(&buf[..n], &mut ev);
        }
    })
    .await
    .expect("the ACK after the commit");
    let Event::Frame(ack) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert!(String::from_utf8_lossy(ack).contains("MSA|CA|C1"));
    let status = vitalgate::daemon::status_json(&config).unwrap();
    assert_eq!(
        status["backlog"]["readings"], 1,
        "the ACKed reading is in the outbox"
    );

    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), daemon).await;
}
