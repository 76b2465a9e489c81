use std::sync::{Arc, Mutex};

use super::*;

/// A head store in memory, shared with the test.
#[derive(Clone, Default)]
struct MemHead(Arc<Mutex<Option<Head>>>);

impl HeadStore for MemHead {
    fn load(&mut self) -> Result<Option<Head>, String> {
        Ok(self.0.lock().unwrap().clone())
    }
    fn save(&mut self, head: &Head) -> Result<(), String> {
        *self.0.lock().unwrap() = Some(head.clone());
        Ok(())
    }
}

fn key() -> MasterKey {
    MasterKey::ephemeral().unwrap()
}

fn walk_of(log: &AuditLog, master: &MasterKey, head: &MemHead) -> Walk {
    let key = master.audit_mac_key(line::MAC_KEY_LABEL).unwrap();
    walk::walk(log.path(), &key, head.0.lock().unwrap().as_ref()).unwrap()
}

/// A log of `n` entries attached to a fresh head; returns it with its head.
fn log_with(dir: &Path, master: &MasterKey, n: u64) -> (AuditLog, MemHead) {
    let log = AuditLog::open(dir, master).unwrap();
    let head = MemHead::default();
    log.attach(Box::new(head.clone())).unwrap();
    for i in 0..n {
        log.record("retention_purge", serde_json::json!({ "rows": i }))
            .unwrap();
    }
    log.detach();
    (log, head)
}

#[test]
fn a_chain_verifies_across_reopen_and_its_head_follows_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let master = key();
    let (_, head) = log_with(dir.path(), &master, 2);
    let log = AuditLog::open(dir.path(), &master).unwrap();
    let check = log.attach(Box::new(head.clone())).unwrap();
    assert_eq!((check.entries, check.new_breaks.len()), (2, 0));
    assert_eq!(log.record("x", serde_json::json!({})).unwrap(), 3);
    log.detach();
    let w = walk_of(&log, &master, &head);
    assert!(w.breaks.is_empty(), "{:?}", w.breaks);
    assert_eq!(head.0.lock().unwrap().as_ref().unwrap().seq, 3);
}

#[test]
fn a_file_ahead_of_its_head_is_a_crash_between_the_two_writes_not_a_break() {
    let dir = tempfile::tempdir().unwrap();
    let master = key();
    let (log, head) = log_with(dir.path(), &master, 3);
    // Entry 3 reached the file, its head never reached the outbox.
    let mut h = head.0.lock().unwrap().clone().unwrap();
    let w = walk_of(&log, &master, &head);
    h.seq = 2;
    h.mac = w_mac_of(&log, 2);
    *head.0.lock().unwrap() = Some(h);
    let log = AuditLog::open(dir.path(), &master).unwrap();
    let check = log.attach(Box::new(head.clone())).unwrap();
    log.detach();
    assert!(check.new_breaks.is_empty(), "{:?}", check.new_breaks);
    assert_eq!(w.entries, 3);
    assert_eq!(
        head.0.lock().unwrap().as_ref().unwrap().seq,
        3,
        "head caught up"
    );
}

fn w_mac_of(log: &AuditLog, seq: u64) -> String {
    let text = std::fs::read_to_string(log.path()).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<line::Entry>(l).unwrap())
        .find(|e| e.seq == seq)
        .and_then(|e| e.mac)
        .unwrap()
}

#[test]
fn a_break_is_recorded_once_and_then_known_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let master = key();
    let (log, head) = log_with(dir.path(), &master, 3);
    let text = std::fs::read_to_string(log.path())
        .unwrap()
        .replace("\"rows\":1", "\"rows\":7");
    std::fs::write(log.path(), text).unwrap();

    let log = AuditLog::open(dir.path(), &master).unwrap();
    let check = log.attach(Box::new(head.clone())).unwrap();
    log.detach();
    assert_eq!(check.new_breaks.len(), 1);
    assert_eq!(
        (check.new_breaks[0].line, check.new_breaks[0].seq),
        (2, Some(2))
    );
    assert!(log.broken_flag().load(Ordering::SeqCst));

    let again = AuditLog::open(dir.path(), &master).unwrap();
    let check = again.attach(Box::new(head.clone())).unwrap();
    again.detach();
    assert_eq!((check.new_breaks.len(), check.known_breaks), (0, 1));
    assert!(!again.broken_flag().load(Ordering::SeqCst));
}

#[test]
fn a_plain_sha_chain_is_verified_then_continued_as_a_mac_chain_naming_the_old_head() {
    let dir = tempfile::tempdir().unwrap();
    let master = key();
    // Two entries in the format of earlier versions.
    let mut prev = line::GENESIS.to_string();
    let mut text = String::new();
    for seq in 1..=2u64 {
        let mut e = line::Entry {
            seq,
            time: OffsetDateTime::UNIX_EPOCH,
            event: "keygen".into(),
            details: serde_json::json!({}),
            prev: prev.clone(),
            mac: None,
            hash: None,
        };
        e.hash = Some(line::legacy_hash(&e));
        prev = e.hash.clone().unwrap();
        text.push_str(&serde_json::to_string(&e).unwrap());
        text.push('\n');
    }
    std::fs::write(dir.path().join(FILE_NAME), text).unwrap();
    let log = AuditLog::open(dir.path(), &master).unwrap();
    let head = MemHead::default();
    let check = log.attach(Box::new(head.clone())).unwrap();
    log.detach();
    assert!(check.migrated && check.new_breaks.is_empty());
    let last: line::Entry = serde_json::from_str(
        std::fs::read_to_string(log.path())
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!((last.seq, last.event.as_str()), (3, "audit_chain_migrated"));
    assert_eq!(last.details["legacy_head_hash"], serde_json::json!(prev));
    let w = walk_of(&log, &master, &head);
    assert!(w.breaks.is_empty(), "{:?}", w.breaks);
    assert_eq!((w.legacy, w.mac_from), (2, Some(3)));
}

#[test]
fn an_entry_written_under_another_key_is_a_break_for_the_hubs_key() {
    let dir = tempfile::tempdir().unwrap();
    let hub_key = key();
    let (_, head) = log_with(dir.path(), &hub_key, 1);
    let other = AuditLog::open(dir.path(), &key()).unwrap();
    assert_eq!(
        other
            .record("wrong_key_refused", serde_json::json!({}))
            .unwrap(),
        2
    );
    let log = AuditLog::open(dir.path(), &hub_key).unwrap();
    let check = log.attach(Box::new(head)).unwrap();
    log.detach();
    assert_eq!(check.new_breaks.len(), 1, "{:?}", check.new_breaks);
    assert_eq!(
        (check.new_breaks[0].line, check.new_breaks[0].seq),
        (2, Some(2))
    );
}

#[test]
fn verify_counts_an_intact_file_and_names_the_first_break() {
    let dir = tempfile::tempdir().unwrap();
    let master = key();
    let (log, _) = log_with(dir.path(), &master, 3);
    assert_eq!(verify(log.path(), &master).unwrap(), 3);
    let text = std::fs::read_to_string(log.path()).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(log.path(), kept.join("\n") + "\n").unwrap();
    let e = verify(log.path(), &master).unwrap_err().to_string();
    assert!(e.contains("first bad entry seq 3 (line 2)"), "{e}");
}

#[test]
fn a_state_directory_created_for_the_log_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    AuditLog::open(&state, &key()).unwrap();
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn audit_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = log_with(dir.path(), &key(), 1);
    assert_eq!(
        std::fs::metadata(log.path()).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn a_torn_last_line_is_a_break_and_the_next_entry_starts_on_a_line_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let master = key();
    let (log, head) = log_with(dir.path(), &master, 2);
    let mut text = std::fs::read_to_string(log.path()).unwrap();
    text.push_str("{\"seq\":3,\"ti");
    std::fs::write(log.path(), text).unwrap();
    let log = AuditLog::open(dir.path(), &master).unwrap();
    let check = log.attach(Box::new(head.clone())).unwrap();
    log.detach();
    assert_eq!(check.new_breaks.len(), 1);
    assert_eq!(check.new_breaks[0].line, 3);
    assert!(
        check.new_breaks[0].why.contains("incomplete"),
        "{:?}",
        check.new_breaks
    );
    let lines: Vec<String> = std::fs::read_to_string(log.path())
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let recorded: line::Entry = serde_json::from_str(&lines[3]).unwrap();
    assert_eq!(
        (recorded.seq, recorded.event.as_str()),
        (3, walk::BROKEN_EVENT)
    );
}

#[test]
fn an_over_long_line_is_a_break_without_being_held_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let master = key();
    let (log, head) = log_with(dir.path(), &master, 1);
    let mut text = std::fs::read_to_string(log.path()).unwrap();
    text.push_str(&"x".repeat(walk::MAX_LINE + 10));
    text.push('\n');
    std::fs::write(log.path(), text).unwrap();
    let w = walk_of(&log, &master, &head);
    assert_eq!(w.breaks.len(), 1);
    assert_eq!((w.breaks[0].line, w.lines), (2, 2));
    assert!(w.breaks[0].why.contains("longer than"), "{:?}", w.breaks);
}
