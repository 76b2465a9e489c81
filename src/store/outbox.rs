//! The outbox: every record sealed in SQLite (WAL, `synchronous=FULL`) until the platform's
//! PUBACK. The single source of truth between the devices and the platform.
//!
//! Invariants (ARCHITECTURE.md):
//! - A row is never deleted before it is marked delivered, except by [`Outbox::purge_delivered_before`]
//!   (retention of already delivered rows, audited by the caller) or by moving it to the
//!   quarantine table when it fails authentication (kept there, never dropped).
//! - Row ids only grow (a high-water mark in `meta`), so an id is never reused and a
//!   ciphertext can never authenticate in another row.
//! - A record that fails authentication is moved aside in its own transaction; it never stops
//!   the rest from being read or delivered.
//!
//! One connection per `Outbox`; ingest owns one (the only writer of new rows) and the
//! publisher another (reads, marks delivered). WAL lets them work side by side.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use time::OffsetDateTime;

use super::crypto::{KeyError, Keyring, MasterKey, RecordIdentity, Unauthentic};
use super::record::{Lane, Record};

/// The schema version this build writes; `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;

/// Migrations, in order: `MIGRATIONS[n]` moves a database from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: initial schema.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
     CREATE TABLE keys (
         key_id INTEGER PRIMARY KEY,
         created_at INTEGER NOT NULL,
         check_nonce BLOB NOT NULL,
         check_ciphertext BLOB NOT NULL);
     CREATE TABLE outbox (
         id INTEGER PRIMARY KEY,
         lane INTEGER NOT NULL,
         kind INTEGER NOT NULL,
         created_at INTEGER NOT NULL,
         key_id INTEGER NOT NULL,
         nonce BLOB NOT NULL,
         ciphertext BLOB NOT NULL,
         delivered_at INTEGER,
         refused_at INTEGER,
         refused_reason TEXT);
     CREATE INDEX outbox_undelivered ON outbox(lane, id) WHERE delivered_at IS NULL;
     CREATE INDEX outbox_delivered ON outbox(delivered_at) WHERE delivered_at IS NOT NULL;
     CREATE TABLE quarantine (
         id INTEGER PRIMARY KEY,
         lane INTEGER NOT NULL,
         kind INTEGER NOT NULL,
         created_at INTEGER NOT NULL,
         key_id INTEGER NOT NULL,
         nonce BLOB NOT NULL,
         ciphertext BLOB NOT NULL,
         reason TEXT NOT NULL,
         quarantined_at INTEGER NOT NULL);
     CREATE TABLE device_state (
         device_id TEXT NOT NULL,
         key TEXT NOT NULL,
         value TEXT NOT NULL,
         PRIMARY KEY (device_id, key)) WITHOUT ROWID;",
];

/// A known plaintext sealed under each data key, to tell a wrong master key at start.
const KEY_CHECK: &[u8] = b"vitalgate key check v1";

/// A data key is retired after this many records (random 96-bit nonces stay far below the
/// 2^32 bound for one AES-GCM key).
pub const ROTATE_AFTER_RECORDS: i64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: SQLite error: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: cannot prepare the database file: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the master key does not match the one this outbox was sealed with (key id {key_id} fails its check); restore the original key (credential vitalgate.key or the configured key file). Never generate a new key over existing data")]
    WrongKey { path: PathBuf, key_id: u32 },
    #[error("{path}: schema version {found} was written by a newer vitalgate (this build knows up to {SCHEMA_VERSION}); refusing to downgrade")]
    TooNew { path: PathBuf, found: i64 },
    #[error("{path}: {0}", path = .1.display())]
    Key(#[source] KeyError, PathBuf),
    #[error("cannot encode record: {0}")]
    Encode(String),
}

/// What [`Outbox::open`] found and did.
#[derive(Debug, Default, Clone)]
pub struct OpenReport {
    /// The database failed `quick_check` (or was not a database) and was renamed to this path.
    pub corrupt_moved_to: Option<PathBuf>,
    /// `user_version` before migration (0 for a new database).
    pub migrated_from: i64,
    pub created: bool,
}

/// Counts for `status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OutboxStats {
    pub backlog_alerts: u64,
    pub backlog_readings: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub oldest_undelivered: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_ack: Option<OffsetDateTime>,
    pub delivered_held: u64,
    pub refused: u64,
    pub quarantined: u64,
    pub corrupt_files_set_aside: u64,
    pub current_key_id: u32,
    pub key_ids: Vec<u32>,
    pub schema_version: i64,
}

/// A row as read from disk: id, kind, key id, nonce, ciphertext.
type SealedRow = (i64, u8, u32, Vec<u8>, Vec<u8>);

/// A device-state value to set atomically with a batch of records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStateUpdate {
    pub device_id: String,
    pub key: String,
    pub value: String,
}

/// A row that failed authentication or decoding and was moved to quarantine.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    pub id: i64,
    pub reason: String,
}

pub struct Outbox {
    conn: Connection,
    keyring: Keyring,
    path: PathBuf,
    /// Next row id to hand out; persisted as a high-water mark in the same transaction.
    next_id: i64,
    current_key: u32,
    /// Records sealed under `current_key` (for rotation).
    sealed_under_current: i64,
    /// Rows quarantined by this connection since open (also persisted in `meta`).
    pub quarantined_now: Vec<Quarantined>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_ms(v: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(v as i128 * 1_000_000).ok()
}

impl Outbox {
    /// Opens (creating or migrating) the outbox at `path`: runs `quick_check`, sets a corrupt
    /// file aside (renamed, never deleted) and starts a new one, and refuses a wrong key.
    pub fn open(path: &Path, master: &MasterKey) -> Result<(Outbox, OpenReport), StoreError> {
        let mut report = OpenReport::default();
        if path.exists() && !passes_quick_check(path) {
            let aside = set_aside(path)?;
            tracing::error!(
                path = %path.display(),
                moved_to = %aside.display(),
                "OUTBOX DATABASE CORRUPT: failed PRAGMA quick_check; set aside (not deleted) and starting a new outbox. Recover readings from the file set aside with `sqlite3 .recover`"
            );
            report.corrupt_moved_to = Some(aside);
        }
        if !path.exists() {
            create_private_file(path)?;
            report.created = true;
        }
        let conn = connect(path)?;
        let err = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        report.migrated_from = version;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found: version,
            });
        }
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.unchecked_transaction().map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", from as i64 + 1)
                .map_err(err)?;
            tx.commit().map_err(err)?;
            tracing::info!(path = %path.display(), to = from + 1, "outbox schema migrated");
        }
        let outbox = Outbox::finish_open(conn, path, master)?;
        Ok((outbox, report))
    }

    /// Opens a second connection to an outbox that [`Outbox::open`] already prepared (the
    /// publisher's). Checks the key but runs no `quick_check` or migration.
    pub fn open_secondary(path: &Path, master: &MasterKey) -> Result<Outbox, StoreError> {
        let conn = connect(path)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|source| StoreError::Sqlite {
                path: path.to_path_buf(),
                source,
            })?;
        if version != SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found: version,
            });
        }
        Outbox::finish_open(conn, path, master)
    }

    fn finish_open(
        conn: Connection,
        path: &Path,
        master: &MasterKey,
    ) -> Result<Outbox, StoreError> {
        let mut outbox = Outbox {
            conn,
            keyring: Keyring::new(master),
            path: path.to_path_buf(),
            next_id: 1,
            current_key: 0,
            sealed_under_current: 0,
            quarantined_now: Vec::new(),
        };
        outbox.check_keys()?;
        outbox.next_id = outbox.load_next_id()?;
        Ok(outbox)
    }

    fn sql_err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Verifies every data key against its check value; creates key 1 in a new database.
    fn check_keys(&mut self) -> Result<(), StoreError> {
        let rows: Vec<(u32, Vec<u8>, Vec<u8>)> = {
            let mut st = self
                .conn
                .prepare("SELECT key_id, check_nonce, check_ciphertext FROM keys ORDER BY key_id")
                .map_err(self.sql_err())?;
            let it = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(self.sql_err())?;
            it.collect::<Result<_, _>>().map_err(self.sql_err())?
        };
        for (key_id, nonce, ct) in &rows {
            let id = key_check_identity(*key_id);
            if self.keyring.open(id, nonce, ct.clone()).as_deref() != Ok(KEY_CHECK) {
                return Err(StoreError::WrongKey {
                    path: self.path.clone(),
                    key_id: *key_id,
                });
            }
        }
        match rows.last() {
            Some((key_id, _, _)) => {
                self.current_key = *key_id;
                self.sealed_under_current = self
                    .conn
                    .query_row(
                        "SELECT (SELECT COUNT(*) FROM outbox WHERE key_id = ?1) + (SELECT COUNT(*) FROM quarantine WHERE key_id = ?1)",
                        [key_id],
                        |r| r.get(0),
                    )
                    .map_err(self.sql_err())?;
            }
            None => {
                self.add_key(1)?;
            }
        }
        Ok(())
    }

    fn add_key(&mut self, key_id: u32) -> Result<(), StoreError> {
        let (nonce, ct) = self
            .keyring
            .seal(key_check_identity(key_id), KEY_CHECK.to_vec())
            .map_err(|e| StoreError::Key(e, self.path.clone()))?;
        self.conn
            .execute(
                "INSERT INTO keys (key_id, created_at, check_nonce, check_ciphertext) VALUES (?1, ?2, ?3, ?4)",
                params![key_id, ms(OffsetDateTime::now_utc()), &nonce[..], ct],
            )
            .map_err(self.sql_err())?;
        self.current_key = key_id;
        self.sealed_under_current = 0;
        Ok(())
    }

    /// Starts sealing new records under a fresh data key. Old records stay readable.
    pub fn rotate_key(&mut self) -> Result<u32, StoreError> {
        let next = self.current_key + 1;
        self.add_key(next)?;
        tracing::info!(key_id = next, "outbox data key rotated");
        Ok(next)
    }

    pub fn current_key_id(&self) -> u32 {
        self.current_key
    }

    fn load_next_id(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row(
                "SELECT MAX(COALESCE((SELECT value FROM meta WHERE key = 'next_id'), 1),
                            COALESCE((SELECT MAX(id) FROM outbox), 0) + 1,
                            COALESCE((SELECT MAX(id) FROM quarantine), 0) + 1)",
                [],
                |r| r.get(0),
            )
            .map_err(self.sql_err())
    }

    /// Seals and appends `records` in ONE transaction (group commit). Returns their row ids
    /// once the transaction is durable (WAL, `synchronous=FULL`): only then is a reading
    /// "received".
    pub fn append(
        &mut self,
        records: &[Record],
        now: OffsetDateTime,
    ) -> Result<Vec<i64>, StoreError> {
        self.append_with_state(records, &[], now)
    }

    /// Like [`Outbox::append`], and also sets device state (e.g. a file offset or the last
    /// glucose record number fetched) in the SAME transaction, so the cursor can never run
    /// ahead of or behind the readings it covers.
    pub fn append_with_state(
        &mut self,
        records: &[Record],
        state: &[DeviceStateUpdate],
        now: OffsetDateTime,
    ) -> Result<Vec<i64>, StoreError> {
        if self.sealed_under_current + records.len() as i64 > ROTATE_AFTER_RECORDS {
            self.rotate_key()?;
        }
        let created = ms(now);
        let key_id = self.current_key;
        let mut ids = Vec::with_capacity(records.len());
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO outbox (id, lane, kind, created_at, key_id, nonce, ciphertext) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(err)?;
            let mut id = self.next_id;
            for record in records {
                let plaintext = record.encode().map_err(StoreError::Encode)?;
                let identity = RecordIdentity {
                    row_id: id,
                    kind: record.kind(),
                    key_id,
                };
                let (nonce, ct) = self
                    .keyring
                    .seal(identity, plaintext)
                    .map_err(|e| StoreError::Key(e, path.clone()))?;
                insert
                    .execute(params![
                        id,
                        record.lane() as i64,
                        record.kind(),
                        created,
                        key_id,
                        &nonce[..],
                        ct
                    ])
                    .map_err(err)?;
                ids.push(id);
                id += 1;
            }
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('next_id', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [id],
            )
            .map_err(err)?;
            for u in state {
                tx.execute(
                    "INSERT INTO device_state (device_id, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT(device_id, key) DO UPDATE SET value = excluded.value",
                    [&u.device_id, &u.key, &u.value],
                )
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        self.next_id += records.len() as i64;
        self.sealed_under_current += records.len() as i64;
        Ok(ids)
    }

    /// Undelivered records of `lane` with id > `after`, oldest first, at most `limit`.
    /// A row that fails authentication or decoding is moved to quarantine and skipped.
    pub fn pending(
        &mut self,
        lane: Lane,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Record)>, StoreError> {
        let rows: Vec<SealedRow> = {
            let mut st = self
                .conn
                .prepare_cached(
                    "SELECT id, kind, key_id, nonce, ciphertext FROM outbox
                     WHERE lane = ?1 AND delivered_at IS NULL AND id > ?2 ORDER BY id LIMIT ?3",
                )
                .map_err(self.sql_err())?;
            let it = st
                .query_map(params![lane as i64, after, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .map_err(self.sql_err())?;
            it.collect::<Result<_, _>>().map_err(self.sql_err())?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (id, kind, key_id, nonce, ct) in rows {
            match self.unseal(id, kind, key_id, &nonce, ct) {
                Ok(record) => out.push((id, record)),
                Err(reason) => self.quarantine(id, &reason)?,
            }
        }
        Ok(out)
    }

    fn unseal(
        &mut self,
        id: i64,
        kind: u8,
        key_id: u32,
        nonce: &[u8],
        ct: Vec<u8>,
    ) -> Result<Record, String> {
        let identity = RecordIdentity {
            row_id: id,
            kind,
            key_id,
        };
        let plain = self
            .keyring
            .open(identity, nonce, ct)
            .map_err(|Unauthentic| Unauthentic.to_string())?;
        let record =
            Record::decode(&plain).map_err(|e| format!("authentic but undecodable record: {e}"))?;
        if record.kind() != kind {
            return Err(format!(
                "record kind {} does not match row kind {kind}",
                record.kind()
            ));
        }
        Ok(record)
    }

    /// Reads one record by id, delivered or not (tests, tools). Quarantines it if it fails.
    pub fn get(&mut self, id: i64) -> Result<Option<Record>, StoreError> {
        let row: Option<(u8, u32, Vec<u8>, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT kind, key_id, nonce, ciphertext FROM outbox WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(self.sql_err())?;
        let Some((kind, key_id, nonce, ct)) = row else {
            return Ok(None);
        };
        match self.unseal(id, kind, key_id, &nonce, ct) {
            Ok(r) => Ok(Some(r)),
            Err(reason) => {
                self.quarantine(id, &reason)?;
                Ok(None)
            }
        }
    }

    /// Moves a row that failed authentication to the quarantine table (kept, never dropped).
    fn quarantine(&mut self, id: i64, reason: &str) -> Result<(), StoreError> {
        let now = ms(OffsetDateTime::now_utc());
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute(
            "INSERT OR REPLACE INTO quarantine (id, lane, kind, created_at, key_id, nonce, ciphertext, reason, quarantined_at)
             SELECT id, lane, kind, created_at, key_id, nonce, ciphertext, ?2, ?3 FROM outbox WHERE id = ?1",
            params![id, reason, now],
        )
        .map_err(err)?;
        tx.execute("DELETE FROM outbox WHERE id = ?1", [id])
            .map_err(err)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('quarantined_total', 1) ON CONFLICT(key) DO UPDATE SET value = value + 1",
            [],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::error!(
            row_id = id,
            reason,
            "outbox record failed authentication; moved to quarantine"
        );
        self.quarantined_now.push(Quarantined {
            id,
            reason: reason.to_string(),
        });
        Ok(())
    }

    /// Marks rows delivered (their own PUBACK said success). Durable on return.
    pub fn mark_delivered(&mut self, ids: &[i64], at: OffsetDateTime) -> Result<(), StoreError> {
        let at = ms(at);
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            // One statement per run of consecutive ids, not one per id: a drain acknowledges
            // rows in id order, so a flush is mostly a single run. Every id of a run is in
            // `ids`, so no row outside `ids` is ever marked.
            let mut st = tx.prepare_cached(MARK_DELIVERED).map_err(err)?;
            for (first, last) in consecutive_runs(ids) {
                st.execute(params![first, last, at]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// A second connection for WAL checkpoints. Whoever uses it should turn this
    /// connection's automatic checkpoints off ([`Outbox::set_auto_checkpoint`]).
    pub fn checkpointer(&self) -> Result<Checkpointer, StoreError> {
        Ok(Checkpointer {
            conn: connect(&self.path)?,
            path: self.path.clone(),
        })
    }

    /// Turns this connection's automatic WAL checkpoint on (SQLite's default, every 1000
    /// pages) or off. A checkpoint syncs the disk; off, the commit that crosses the limit
    /// does not pay for it, and another connection must checkpoint instead.
    pub fn set_auto_checkpoint(&self, on: bool) -> Result<(), StoreError> {
        self.conn
            .pragma_update(None, "wal_autocheckpoint", if on { 1000 } else { 0 })
            .map_err(self.sql_err())
    }

    /// Records that the broker refused a row (or it can never be sent). The row stays
    /// undelivered and is retried; the reason shows in `status`.
    pub fn mark_refused(
        &mut self,
        id: i64,
        reason: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE outbox SET refused_at = ?2, refused_reason = ?3 WHERE id = ?1",
                params![id, ms(at), reason],
            )
            .map(|_| ())
            .map_err(self.sql_err())
    }

    /// Deletes rows delivered before `cutoff` (the retention rule). Never touches undelivered
    /// rows. The caller audits the count.
    pub fn purge_delivered_before(&mut self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        self.conn
            .execute(
                "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < ?1",
                [ms(cutoff)],
            )
            .map(|n| n as u64)
            .map_err(self.sql_err())
    }

    /// Number of undelivered rows (both lanes).
    pub fn backlog(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(self.sql_err())
    }

    pub fn stats(&self) -> Result<OutboxStats, StoreError> {
        stats_of(&self.conn, &self.path, self.current_key)
    }

    /// `PRAGMA quick_check`'s answer (`"ok"` when healthy).
    pub fn quick_check(&self) -> Result<String, StoreError> {
        self.conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(self.sql_err())
    }

    /// Decrypts every row (delivered or not), quarantining failures. Returns the ids that
    /// authenticated. Used by tests and `status --verify`.
    pub fn verify_all(&mut self) -> Result<Vec<i64>, StoreError> {
        let ids: Vec<i64> = {
            let mut st = self
                .conn
                .prepare("SELECT id FROM outbox ORDER BY id")
                .map_err(self.sql_err())?;
            let it = st.query_map([], |r| r.get(0)).map_err(self.sql_err())?;
            it.collect::<Result<_, _>>().map_err(self.sql_err())?
        };
        let mut ok = Vec::with_capacity(ids.len());
        for id in ids {
            if self.get(id)?.is_some() {
                ok.push(id);
            }
        }
        Ok(ok)
    }

    /// A small per-device key/value store kept with the outbox (e.g. the last glucose record
    /// sequence number fetched), so it commits and survives exactly like the readings.
    pub fn device_state(&self, device_id: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT value FROM device_state WHERE device_id = ?1 AND key = ?2",
                [device_id, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql_err())
    }

    pub fn set_device_state(
        &self,
        device_id: &str,
        key: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO device_state (device_id, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(device_id, key) DO UPDATE SET value = excluded.value",
                [device_id, key, value],
            )
            .map(|_| ())
            .map_err(self.sql_err())
    }

    /// The audit log's head (`crate::audit`), kept here so a truncated log file is detected.
    /// An opaque blob (a BLOB keeps `meta`'s integer affinity from touching it).
    pub fn audit_head(&self) -> Result<Option<Vec<u8>>, StoreError> {
        audit_head_of(&self.conn).map_err(self.sql_err())
    }

    /// Replaces the audit log's head; written after the log line itself is on disk.
    pub fn set_audit_head(&self, head: &[u8]) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('audit_head', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [head],
            )
            .map(|_| ())
            .map_err(self.sql_err())
    }

    /// Direct access for tests that tamper with rows on disk.
    #[doc(hidden)]
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Counts for `status`, read without the key through a read-only connection, so
/// `vitalgate status` works beside a running daemon and needs no secret.
pub fn stats_readonly(path: &Path) -> Result<OutboxStats, StoreError> {
    let err = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    // A daemon that has just created the file may not have created the schema yet: that is an
    // empty outbox, not an error (`status` right after `run` used to fail with "no such table").
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if version == 0 {
        return Ok(OutboxStats::default());
    }
    let current: u32 = conn
        .query_row("SELECT COALESCE(MAX(key_id), 0) FROM keys", [], |r| {
            r.get(0)
        })
        .map_err(err)?;
    stats_of(&conn, path, current)
}

/// The audit log's head read without the key (`vitalgate audit verify` beside a running
/// daemon); `None` when the outbox or the head does not exist yet.
pub fn audit_head_readonly(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let err = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if version == 0 {
        return Ok(None);
    }
    audit_head_of(&conn).map_err(err)
}

fn audit_head_of(conn: &Connection) -> Result<Option<Vec<u8>>, rusqlite::Error> {
    conn.query_row("SELECT value FROM meta WHERE key = 'audit_head'", [], |r| {
        r.get(0)
    })
    .optional()
}

fn stats_of(conn: &Connection, path: &Path, current_key: u32) -> Result<OutboxStats, StoreError> {
    let e = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let count = |sql: &str| -> Result<u64, StoreError> {
        conn.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(e)
    };
    let opt_time = |sql: &str| -> Result<Option<OffsetDateTime>, StoreError> {
        let v: Option<i64> = conn.query_row(sql, [], |r| r.get(0)).map_err(e)?;
        Ok(v.and_then(from_ms))
    };
    let key_ids: Vec<u32> = {
        let mut st = conn
            .prepare("SELECT key_id FROM keys ORDER BY key_id")
            .map_err(e)?;
        let it = st.query_map([], |r| r.get(0)).map_err(e)?;
        it.collect::<Result<_, _>>().map_err(e)?
    };
    Ok(OutboxStats {
        backlog_alerts: count(
            "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND lane = 0",
        )?,
        backlog_readings: count(
            "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND lane = 1",
        )?,
        oldest_undelivered: opt_time(
            "SELECT MIN(created_at) FROM outbox WHERE delivered_at IS NULL",
        )?,
        last_ack: opt_time("SELECT MAX(delivered_at) FROM outbox WHERE delivered_at IS NOT NULL")?,
        delivered_held: count("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NOT NULL")?,
        refused: count(
            "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND refused_at IS NOT NULL",
        )?,
        quarantined: count("SELECT COUNT(*) FROM quarantine")?,
        corrupt_files_set_aside: count_set_aside(path),
        current_key_id: current_key,
        key_ids,
        schema_version: SCHEMA_VERSION,
    })
}

/// A connection that only checkpoints the WAL (`Outbox::checkpointer`), so a thread that is
/// not on the publisher's path can do it (see `daemon::publish::read_ahead`).
pub struct Checkpointer {
    conn: Connection,
    path: PathBuf,
}

impl Checkpointer {
    /// Copies committed WAL frames into the database without waiting for readers or writers
    /// (`PRAGMA wal_checkpoint(PASSIVE)`). Returns the WAL's size and how much of it is now
    /// checkpointed, in frames.
    pub fn run(&self) -> Result<(i64, i64), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .map_err(|source| StoreError::Sqlite {
                path: self.path.clone(),
                source,
            })
    }
}

fn key_check_identity(key_id: u32) -> RecordIdentity {
    // Row id 0 is never used by records (ids start at 1), kind 0 is no record kind.
    RecordIdentity {
        row_id: 0,
        kind: 0,
        key_id,
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    // WAL + FULL: a committed transaction survives a power cut (rust-stack.md §4).
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .map_err(err)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Creates the database file with mode 0600 before SQLite does (its -wal and -shm files take
/// the same mode), and its directory with 0700 when missing.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(|_| ())
        .map_err(io)
}

/// Runs `PRAGMA quick_check` on a fresh connection; any error (not a database, I/O) counts
/// as a failure.
fn passes_quick_check(path: &Path) -> bool {
    let Ok(conn) = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) else {
        return false;
    };
    matches!(conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0)), Ok(s) if s == "ok")
}

/// Renames a corrupt database (and its -wal/-shm) to `<name>.corrupt-<unix time>`.
fn set_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = OffsetDateTime::now_utc().unix_timestamp();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = path.with_file_name(format!("{name}.corrupt-{stamp}"));
    std::fs::rename(path, &aside).map_err(|source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    for suffix in ["-wal", "-shm"] {
        let side = path.with_file_name(format!("{name}{suffix}"));
        if side.exists() {
            let _ = std::fs::rename(
                &side,
                aside.with_file_name(format!("{name}.corrupt-{stamp}{suffix}")),
            );
        }
    }
    Ok(aside)
}

/// How many corrupt databases were set aside next to `path` (derived from the files, so the
/// count survives the new database).
fn count_set_aside(path: &Path) -> u64 {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return 0;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.corrupt-", name.to_string_lossy());
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(&prefix) && !n.ends_with("-wal") && !n.ends_with("-shm")
                })
                .count() as u64
        })
        .unwrap_or(0)
}

/// Marks one run of ids delivered. It must seek by rowid: a scan of the undelivered index
/// instead would cost the whole backlog for every run (tested by its query plan).
const MARK_DELIVERED: &str =
    "UPDATE outbox SET delivered_at = ?3 WHERE id BETWEEN ?1 AND ?2 AND delivered_at IS NULL";

/// `ids` as ascending runs of consecutive integers `(first, last)`, duplicates ignored:
/// `[5, 3, 4, 9]` gives `[(3, 5), (9, 9)]`.
fn consecutive_runs(ids: &[i64]) -> Vec<(i64, i64)> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for id in sorted {
        match runs.last_mut() {
            Some((_, last)) if id == *last || Some(id) == last.checked_add(1) => *last = id,
            _ => runs.push((id, id)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::{consecutive_runs, Outbox, MARK_DELIVERED};
    use crate::store::MasterKey;

    #[test]
    fn a_run_of_marks_seeks_by_row_id_and_never_scans_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::ephemeral().unwrap();
        let (outbox, _) = Outbox::open(&dir.path().join("outbox.db"), &key).unwrap();
        let plan: Vec<String> = outbox
            .connection()
            .prepare(&format!("EXPLAIN QUERY PLAN {MARK_DELIVERED}"))
            .unwrap()
            .query_map([1, 2, 3], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert!(plan[0].contains("USING INTEGER PRIMARY KEY"), "{plan:?}");
    }

    #[test]
    fn consecutive_ids_form_one_run_in_any_order_and_duplicates_are_ignored() {
        assert_eq!(
            consecutive_runs(&[5, 3, 4, 4, 9, 11, 10]),
            vec![(3, 5), (9, 11)]
        );
        assert_eq!(consecutive_runs(&[7]), vec![(7, 7)]);
        assert!(consecutive_runs(&[]).is_empty());
    }

    #[test]
    fn runs_end_at_the_largest_id_without_overflow() {
        assert_eq!(
            consecutive_runs(&[i64::MAX, i64::MAX - 1, 1]),
            vec![(1, 1), (i64::MAX - 1, i64::MAX)]
        );
    }
}
