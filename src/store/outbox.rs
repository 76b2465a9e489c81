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
//! - Nothing clinical is stored in clear: records are sealed in `outbox`/`quarantine`, and
//!   device state (the alert engine's per-patient state, file offsets, RACP cursors) is
//!   sealed in `sealed_state` with its owner and key as associated data. Callers hand in and
//!   get back plaintext; only this module seals and opens.
//! - The number of values sealed under each data key is persisted (`keys.sealed` plus the
//!   `meta` row `sealed:<key id>`) in the
//!   same transaction as the values, so purges and restarts never reset it and a key is
//!   retired after [`ROTATE_AFTER_RECORDS`] whatever was deleted since.
//! - Only corruption is treated as corruption: a file is set aside only when SQLite could
//!   open it and it failed `PRAGMA quick_check` (or is not a database). Anything else (no
//!   permission, a directory in its place, a lock held by another process) stops with
//!   [`StoreError::Unusable`], naming what to fix and touching nothing.
//!
//! One connection per `Outbox`; ingest owns one (the only writer of new rows) and the
//! publisher another (reads, marks delivered). WAL lets them work side by side.

use std::path::{Path, PathBuf};

use rusqlite::{
    params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, MAIN_DB,
};
use time::OffsetDateTime;

use super::counts::{Counts, Delta};
use super::crypto::{
    KeyError, Keyring, MasterKey, RecordIdentity, StateIdentity, Unauthentic, NONCE_LEN, TAG_LEN,
};
use super::delivery::deferred::{DeferredMarks, Mark};
use super::keyring::{Envelope, Owner};
use super::record::{Lane, Record};

pub mod cap;
mod clock_anchor;

/// The schema version this build writes; `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = SCHEMA_V7;

/// The schema version from which the writer stores a row's nonce in front of its
/// ciphertext, its `nonce` column empty (`crypto::INLINE_NONCE`; issue 18, acceptance 4).
/// Nothing is rewritten: rows written before keep their nonce column and read as they
/// did. The version is raised so that an older build, which would take the new rows for
/// tampered ones and quarantine them, refuses the file instead ([`StoreError::TooNew`]).
pub const SCHEMA_V7: i64 = 7;

/// Migrations, in order: `MIGRATIONS[n]` moves a database from version `n` to `n + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 1 -> 2: device state sealed (`sealed_state`; the plaintext `device_state` rows are
    // sealed and the table dropped by `seal_legacy_state` once the key is checked), and a
    // persisted count of values sealed under each key. For existing keys the count starts
    // from an upper bound: every record id ever handed out (ids only grow), so a key that
    // sealed rows since purged is never taken as fresher than it is.
    "ALTER TABLE keys ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0;
     UPDATE keys SET sealed = 1 + MAX(
         COALESCE((SELECT value FROM meta WHERE key = 'next_id'), 1) - 1,
         (SELECT COUNT(*) FROM outbox o WHERE o.key_id = keys.key_id)
           + (SELECT COUNT(*) FROM quarantine q WHERE q.key_id = keys.key_id));
     CREATE TABLE sealed_state (
         owner TEXT NOT NULL,
         key TEXT NOT NULL,
         key_id INTEGER NOT NULL,
         nonce BLOB NOT NULL,
         ciphertext BLOB NOT NULL,
         PRIMARY KEY (owner, key)) WITHOUT ROWID;",
    // 2 -> 3: row counts kept in `meta` with the rows (see `counts`), counted once here.
    "INSERT OR REPLACE INTO meta (key, value)
         SELECT 'undelivered_alerts', COUNT(*) FROM outbox WHERE delivered_at IS NULL AND lane = 0;
     INSERT OR REPLACE INTO meta (key, value)
         SELECT 'undelivered_readings', COUNT(*) FROM outbox WHERE delivered_at IS NULL AND lane = 1;
     INSERT OR REPLACE INTO meta (key, value)
         SELECT 'delivered_held', COUNT(*) FROM outbox WHERE delivered_at IS NOT NULL;
     INSERT OR REPLACE INTO meta (key, value)
         SELECT 'refused', COUNT(*) FROM outbox WHERE delivered_at IS NULL AND refused_at IS NOT NULL;",
    // 3 -> 4: the retention purge's per-minute tally, for `resync` (`delivery`).
    super::delivery::MIGRATE_TO_V4,
];

/// Page size of a new outbox. Every commit writes each page it touches whole to the WAL
/// (the header page, a b-tree interior page, the index leaf, `meta`, the last table leaf),
/// however few bytes changed, and a 1 Hz gateway commits a few dozen rows of ~120 bytes
/// at a time: small pages cut the bytes written per reading (SD-card wear) by about a third
/// against SQLite's 4096 (issue 18; `scripts/footprint`). Existing outboxes keep theirs.
pub const PAGE_SIZE: i64 = 1024;

/// WAL pages after which a commit checkpoints (SQLite's default is 1000). A checkpoint
/// copies every page changed since the last one into the database, the half-filled last
/// pages of each b-tree included, which the next rows change again: the rarer the
/// checkpoints, the fewer times such a page is written. 8000 pages of [`PAGE_SIZE`] keep
/// the WAL near 8 MiB (below `journal_size_limit`), a few seconds to replay after a crash.
/// A small file system gets fewer (`auto_checkpoint_pages`).
pub const AUTO_CHECKPOINT_PAGES: i64 = 8000;

/// How long a connection waits for another holding a lock it needs.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the checkpoint that gives the WAL's space back waits for readers (see
/// `Outbox::reclaim_wal_space`): short, the writer's heartbeat must stay fresh.
const RECLAIM_BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// A known plaintext sealed under each data key, to tell a wrong master key at start.
pub(super) const KEY_CHECK: &[u8] = b"vitalgate key check v1";

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
    /// The outbox cannot be used as it is, and it is not corrupt: nothing was changed.
    #[error("{path}: {problem}. The outbox was left untouched; {fix}")]
    Unusable {
        path: PathBuf,
        problem: String,
        fix: &'static str,
    },
}

impl StoreError {
    /// Whether retrying the same write can never succeed (a constraint, the schema, a record
    /// that cannot be encoded), as opposed to a condition that passes (disk full, I/O, busy).
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::Encode(_) | StoreError::TooNew { .. } | StoreError::WrongKey { .. } => true,
            StoreError::Sqlite { source, .. } => {
                matches!(
                    source.sqlite_error_code(),
                    Some(
                        ErrorCode::ConstraintViolation
                            | ErrorCode::SchemaChanged
                            | ErrorCode::TypeMismatch
                            | ErrorCode::TooBig
                            | ErrorCode::ApiMisuse
                    )
                ) || matches!(
                    source,
                    rusqlite::Error::SqlInputError { .. }
                        | rusqlite::Error::InvalidColumnName(_)
                        | rusqlite::Error::InvalidParameterName(_)
                ) || source.to_string().starts_with("no such ")
            }
            StoreError::Io { .. } | StoreError::Key(..) | StoreError::Unusable { .. } => false,
        }
    }

    /// Whether the file system is full (SQLITE_FULL).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Sqlite { source, .. } if source.sqlite_error_code() == Some(ErrorCode::DiskFull))
            || matches!(self, StoreError::Io { source, .. } if source.raw_os_error() == Some(28))
    }
}

/// What [`Outbox::open`] found and did.
#[derive(Debug, Default, Clone)]
pub struct OpenReport {
    /// The database failed `quick_check` (or was not a database) and was renamed to this path.
    pub corrupt_moved_to: Option<PathBuf>,
    /// `user_version` before migration (0 for a new database).
    pub migrated_from: i64,
    pub created: bool,
    /// Whether the whole file was checked (`PRAGMA quick_check`): always, except after a
    /// clean stop ([`Outbox::close_clean`]), whose marker this open has cleared.
    pub full_check: bool,
}

/// The `meta` key of the clean-stop marker: set (1) by [`Outbox::close_clean`] as the last
/// write of a stopping daemon, cleared by the next open before anything else is written.
/// Present at open means nothing wrote the file since a clean, synced stop, so the start-up
/// check can skip reading the whole file; absent (a crash, a kill, a power cut, an older
/// build) means a full `quick_check`.
const CLEAN_STOP: &str = "clean_stop";

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
    /// Every data key: id, purpose, patient pseudonym, age, row count (no key material).
    pub data_keys: Vec<super::keyring::KeyInfo>,
    pub schema_version: i64,
}

/// A row as read from disk: id, kind, key id, nonce, ciphertext.
type SealedRow = (i64, u8, u32, Vec<u8>, Vec<u8>);

/// The last id a full read of `pending` reached (more rows may follow), `None` after a
/// short read.
type ReadUpTo = Option<i64>;

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
    pub(super) conn: Connection,
    pub(super) keyring: Keyring,
    pub(super) path: PathBuf,
    /// Next row id to hand out; persisted as a high-water mark in the same transaction.
    next_id: i64,
    /// The envelope keyring (`keyring.rs`): each owner's current data key. Values sealed
    /// under each key are persisted in `meta` (`sealed:<key id>`) with every transaction.
    pub(super) envelope: Envelope,
    /// Rotate the data key once this many values are sealed under it.
    rotate_after: i64,
    /// Rows quarantined by this connection since open (also persisted in `meta`).
    pub quarantined_now: Vec<Quarantined>,
    /// Delivery marks handed to the ingest writer's commits, or carried by them
    /// (`delivery::deferred`); `None`: every mark is its own transaction.
    marks: Option<MarksRole>,
}

/// This connection's part in [`DeferredMarks`].
#[derive(Debug)]
enum MarksRole {
    /// The publisher's: hands marks over, and reads around the ones not yet committed.
    Hand(DeferredMarks),
    /// The ingest writer's: commits the marks handed over with its own transactions.
    Carry(DeferredMarks),
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
    /// Any problem that is not corruption (permissions, a directory or a lock in the way)
    /// is [`StoreError::Unusable`] and changes nothing.
    pub fn open(path: &Path, master: &MasterKey) -> Result<(Outbox, OpenReport), StoreError> {
        let mut report = OpenReport::default();
        match probe(path)? {
            Probe::Missing => {
                create_private_file(path)?;
                report.created = true;
            }
            Probe::Healthy { full_check } => report.full_check = full_check,
            Probe::Corrupt(why) => {
                let aside = set_aside(path)?;
                tracing::error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    check = %why,
                    "OUTBOX DATABASE CORRUPT: failed PRAGMA quick_check; set aside (not deleted) and starting a new outbox. Recover readings from the file set aside with `sqlite3 .recover`"
                );
                report.corrupt_moved_to = Some(aside);
                create_private_file(path)?;
                report.created = true;
            }
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
        // Every step in one transaction: a reader beside a starting daemon (`status`) sees
        // the schema before or after, never a version in between.
        let tx = conn.unchecked_transaction().map_err(err)?;
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", from as i64 + 1)
                .map_err(err)?;
            tracing::info!(path = %path.display(), to = from + 1, "outbox schema migrated");
        }
        if version < super::keyring::SCHEMA_V5 {
            super::keyring::migrate_to_v5(&tx).map_err(err)?;
            tx.pragma_update(None, "user_version", super::keyring::SCHEMA_V5)
                .map_err(err)?;
            tracing::info!(path = %path.display(), to = super::keyring::SCHEMA_V5, "outbox schema migrated");
        }
        if version < super::keyring::SCHEMA_V6 {
            super::keyring::migrate_to_v6(&tx).map_err(err)?;
            tx.pragma_update(None, "user_version", super::keyring::SCHEMA_V6)
                .map_err(err)?;
            tracing::info!(path = %path.display(), to = super::keyring::SCHEMA_V6, "outbox schema migrated");
        }
        if version < SCHEMA_V7 {
            tx.pragma_update(None, "user_version", SCHEMA_V7)
                .map_err(err)?;
            tracing::info!(path = %path.display(), to = SCHEMA_V7, "outbox schema migrated");
        }
        tx.commit().map_err(err)?;
        let mut outbox = Outbox::finish_open(conn, path, master)?;
        // The key is right (a wrong one changes nothing): from here on the file may change,
        // so the next start must check it in full unless this one stops cleanly.
        outbox
            .conn
            .execute("DELETE FROM meta WHERE key = ?1", [CLEAN_STOP])
            .map_err(outbox.sql_err())?;
        outbox.seal_legacy_state()?;
        super::keyring::reseal_legacy(&mut outbox)?;
        Ok((outbox, report))
    }

    /// The last write of a stopping daemon, once every other connection is done: empties
    /// the WAL into the database (`wal_checkpoint(TRUNCATE)`, synced) and sets the clean-stop
    /// marker, so the next start skips the full-file check (see [`OpenReport::full_check`]).
    /// Not calling it is always safe: the next open then checks the whole file.
    pub fn close_clean(mut self) -> Result<(), StoreError> {
        self.record_waiting_marks()?;
        let err = self.sql_err();
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(&err)?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, 1)",
                [CLEAN_STOP],
            )
            .map_err(&err)?;
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(&err)?;
        Ok(())
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
        let mut conn = conn;
        let mut keyring = Keyring::new(master);
        let envelope = Envelope::open(
            &mut conn,
            master,
            &mut keyring,
            path,
            OffsetDateTime::now_utc(),
        )?;
        let mut outbox = Outbox {
            conn,
            keyring,
            path: path.to_path_buf(),
            next_id: 1,
            envelope,
            rotate_after: ROTATE_AFTER_RECORDS,
            quarantined_now: Vec::new(),
            marks: None,
        };
        outbox.next_id = outbox.load_next_id()?;
        Ok(outbox)
    }

    fn sql_err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Values sealed under the current data key so far (persisted; survives purges).
    pub fn sealed_under_current_key(&self) -> i64 {
        self.envelope.newest().map_or(0, |(_, sealed)| sealed)
    }

    pub(super) fn rotate_after(&self) -> i64 {
        self.rotate_after
    }

    /// Data keys rotate after `days` (`store.key_rotation_days`; 90 unless set).
    pub fn set_key_rotation_days(&mut self, days: u32) {
        self.envelope.set_rotation_days(days);
    }

    /// Rotates the data key after `limit` sealed values instead of
    /// [`ROTATE_AFTER_RECORDS`] (tests reach rotation with a few records).
    #[doc(hidden)]
    pub fn set_rotation_limit(&mut self, limit: i64) {
        self.rotate_after = limit;
    }

    /// Seals the plaintext `device_state` rows of a schema 1 outbox into `sealed_state` and
    /// drops the table, in one transaction, with `secure_delete` on so the freed pages are
    /// zeroed; then truncates the WAL, so no copy of the plaintext stays in the database,
    /// its free pages or its WAL.
    fn seal_legacy_state(&mut self) -> Result<(), StoreError> {
        let legacy: bool = self
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'device_state')",
                [],
                |r| r.get(0),
            )
            .map_err(self.sql_err())?;
        if !legacy {
            return Ok(());
        }
        let rows: Vec<(String, String, String)> = {
            let mut st = self
                .conn
                .prepare("SELECT device_id, key, value FROM device_state")
                .map_err(self.sql_err())?;
            let it = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(self.sql_err())?;
            it.collect::<Result<_, _>>().map_err(self.sql_err())?
        };
        let updates: Vec<DeviceStateUpdate> = rows
            .into_iter()
            .map(|(device_id, key, value)| DeviceStateUpdate {
                device_id,
                key,
                value,
            })
            .collect();
        self.conn
            .pragma_update(None, "secure_delete", "ON")
            .map_err(self.sql_err())?;
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let owners = sealing_owners(&[], &updates);
        let keys = self.envelope.keys_for(
            &mut self.conn,
            &mut self.keyring,
            &owners,
            self.rotate_after,
            OffsetDateTime::now_utc(),
        )?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        put_sealed_state(&tx, &mut self.keyring, &keys, &updates, &path)?;
        count_sealed_by_owner(&tx, &keys, &owners).map_err(err)?;
        tx.execute("DELETE FROM device_state", []).map_err(err)?;
        tx.execute("DROP TABLE device_state", []).map_err(err)?;
        tx.commit().map_err(err)?;
        for (owner, n) in &owners {
            self.envelope.sealed(owner, *n);
        }
        // Copies the zeroed pages into the database and empties the WAL.
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(err)?;
        self.conn
            .pragma_update(None, "secure_delete", "FAST")
            .map_err(err)?;
        if !updates.is_empty() {
            tracing::info!(
                path = %path.display(),
                values = updates.len(),
                "device state sealed; the plaintext copy was erased"
            );
        }
        Ok(())
    }

    /// Starts sealing new records under fresh data keys, one per owner (`vitalgate key
    /// rotate-data`). Old records stay readable. Returns the newest key id.
    pub fn rotate_key(&mut self) -> Result<u32, StoreError> {
        self.rotate_data_keys(OffsetDateTime::now_utc())?;
        Ok(self.current_key_id())
    }

    /// Rotates every owner's data key at `now`; returns what was replaced.
    pub fn rotate_data_keys(
        &mut self,
        now: OffsetDateTime,
    ) -> Result<Vec<super::keyring::Rotated>, StoreError> {
        let pairs = self
            .envelope
            .rotate_all(&mut self.conn, &mut self.keyring, now)?;
        tracing::info!(keys = pairs.len(), "outbox data keys rotated");
        Ok(pairs)
    }

    /// The newest data key sealing new rows (0 before the first row).
    pub fn current_key_id(&self) -> u32 {
        self.envelope.newest().map_or(0, |(id, _)| id)
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
        let result = self.write_batch(records, state, now);
        // On a full disk nothing more is tried here: a checkpoint needs free space too (tried
        // and measured: `wal_checkpoint(TRUNCATE)` fails with SQLITE_FULL on a full tmpfs), and
        // the WAL is kept within an eighth of the file system (`auto_checkpoint_pages`).
        if result.is_err() {
            self.resync_after_failure();
        }
        result
    }

    /// Copies the WAL into the database and truncates it to nothing
    /// (`wal_checkpoint(TRUNCATE)`), so the space it holds is given back: the storage cap
    /// (`cap.rs`) calls it before and after deleting rows. An automatic checkpoint only rewinds
    /// the WAL, it never shrinks the file. Not called after a commit failed for a full disk:
    /// the checkpoint needs free space too (it fails with SQLITE_FULL there). Best effort. A
    /// reader on an older snapshot is waited for briefly only ([`RECLAIM_BUSY_WAIT`]), so the
    /// writer stays responsive.
    pub(crate) fn reclaim_wal_space(&mut self) {
        let _ = self.conn.busy_timeout(RECLAIM_BUSY_WAIT);
        let outcome = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            });
        let _ = self.conn.busy_timeout(BUSY_TIMEOUT);
        match outcome {
            Ok((0, _)) => tracing::info!(
                path = %self.path.display(),
                "storage full: the WAL was checkpointed and truncated to give its space back"
            ),
            Ok((_, frames)) => tracing::debug!(
                path = %self.path.display(),
                frames,
                "storage full: the WAL could not be truncated yet (a reader holds it)"
            ),
            Err(e) => tracing::debug!(
                path = %self.path.display(),
                error = %e,
                "storage full: the WAL could not be checkpointed yet"
            ),
        }
    }

    /// After a failed transaction, re-reads what another writer may have changed (the id
    /// high-water mark), so a constraint failure is not repeated for ever by stale state.
    fn resync_after_failure(&mut self) {
        if let Ok(next) = self.load_next_id() {
            self.next_id = self.next_id.max(next);
        }
    }

    fn write_batch(
        &mut self,
        records: &[Record],
        state: &[DeviceStateUpdate],
        now: OffsetDateTime,
    ) -> Result<Vec<i64>, StoreError> {
        let owners = sealing_owners(records, state);
        let created = ms(now);
        let mut ids = Vec::with_capacity(records.len());
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        // Keys chosen, then checked still in force under the write lock: a key another
        // connection retired or destroyed meanwhile (rotate-key, erase-patient) is never
        // sealed under; the keyring is re-read and the keys chosen again.
        let mut attempts = 0;
        let (keys, mut tx) = loop {
            let keys = self.envelope.keys_for(
                &mut self.conn,
                &mut self.keyring,
                &owners,
                self.rotate_after,
                now,
            )?;
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            if self.envelope.in_force(&tx).map_err(err)? {
                break (keys, tx);
            }
            attempts += 1;
            if attempts == 5 {
                return Err(StoreError::Key(KeyError::Derive, path.clone()));
            }
        };
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO outbox (id, lane, kind, created_at, key_id, nonce, ciphertext) VALUES (?1, ?2, ?3, ?4, ?5, x'', ?6)",
                )
                .map_err(err)?;
            let mut id = self.next_id;
            let mut counts = Delta::default();
            // Rows per data key, counted once per batch (`keyring::count_rows`); and the
            // last patient's key, so a run of one patient's rows looks it up once.
            let mut rows_by_key: Vec<(u32, i64)> = Vec::new();
            let mut last: Option<(&str, u32)> = None;
            // Every row of the batch is sealed first, the rows end to end in one buffer
            // (room for the nonce, the record encoded after it, room for the tag, sealed in
            // place), then every row is inserted: each loop keeps its own working set at hand
            // (the encoder and the data keys; SQLite's statement, cursor and pages) instead
            // of the two evicting each other row after row (issue 18, acceptance 4). The
            // nonce leads the ciphertext in one column (schema 7, `crypto::INLINE_NONCE`):
            // one blob bound per row, not two.
            let mut sealed = Vec::with_capacity(records.len() * (NONCE_LEN + 64 + TAG_LEN));
            // Each row's end in `sealed` (it starts where the one before ends) and its lane,
            // kind and key.
            let mut rows: Vec<(usize, (Lane, u8, u32))> = Vec::with_capacity(records.len());
            for record in records {
                let at = rows.last().map_or(0, |&(end, _)| end);
                let end = record
                    .encode_row(&mut sealed, at, NONCE_LEN, TAG_LEN)
                    .map_err(StoreError::Encode)?;
                let key_id = match last {
                    Some((patient, key_id)) if same_text(patient, record_patient(record)) => key_id,
                    _ => key_of(&keys, &record_owner(record), &path)?,
                };
                last = Some((record_patient(record), key_id));
                match rows_by_key.iter_mut().find(|(k, _)| *k == key_id) {
                    Some((_, n)) => *n += 1,
                    None => rows_by_key.push((key_id, 1)),
                }
                let identity = RecordIdentity {
                    row_id: id,
                    kind: record.kind(),
                    key_id,
                };
                self.keyring
                    .seal_row(identity, &mut sealed[at..end])
                    .map_err(|e| StoreError::Key(e, path.clone()))?;
                rows.push((end, (record.lane(), record.kind(), key_id)));
                counts.undelivered(record.lane() as i64, 1);
                id += 1;
            }
            // Rows go in [`ROWS_PER_INSERT`] at a time, one statement each: SQLite's work per
            // statement (reset, step, the program's set-up) is paid once per 16 rows, not per
            // row: 38 % of its per-row insert cost (issue 18, acceptance 4). What is left
            // goes in one row at a time.
            let mut at = 0;
            let mut row_id = self.next_id;
            let mut left = rows.as_slice();
            if left.len() >= ROWS_PER_INSERT {
                let mut many = tx.prepare_cached(many_rows_insert()).map_err(err)?;
                many.raw_bind_parameter(1, created).map_err(err)?;
                while let Some((chunk, rest)) = left.split_first_chunk::<ROWS_PER_INSERT>() {
                    for (n, &(end, (lane, kind, key_id))) in chunk.iter().enumerate() {
                        let first = 2 + 5 * n;
                        many.raw_bind_parameter(first, row_id).map_err(err)?;
                        many.raw_bind_parameter(first + 1, lane as i64)
                            .map_err(err)?;
                        many.raw_bind_parameter(first + 2, kind).map_err(err)?;
                        many.raw_bind_parameter(first + 3, key_id).map_err(err)?;
                        many.raw_bind_parameter(first + 4, &sealed[at..end])
                            .map_err(err)?;
                        ids.push(row_id);
                        row_id += 1;
                        at = end;
                    }
                    many.raw_execute().map_err(err)?;
                    left = rest;
                }
            }
            // Parameters stay bound from row to row: lane, kind and key are bound again only
            // when they change, the creation time once (issue 18, acceptance 4).
            let mut bound: Option<(Lane, u8, u32)> = None;
            insert.raw_bind_parameter(4, created).map_err(err)?;
            for (row_id, &(end, shape)) in (row_id..).zip(left) {
                if bound != Some(shape) {
                    insert.raw_bind_parameter(2, shape.0 as i64).map_err(err)?;
                    insert.raw_bind_parameter(3, shape.1).map_err(err)?;
                    insert.raw_bind_parameter(5, shape.2).map_err(err)?;
                    bound = Some(shape);
                }
                insert.raw_bind_parameter(1, row_id).map_err(err)?;
                insert
                    .raw_bind_parameter(6, &sealed[at..end])
                    .map_err(err)?;
                insert.raw_execute().map_err(err)?;
                ids.push(row_id);
                at = end;
            }
            counts.apply(&tx).map_err(err)?;
            for (key_id, n) in rows_by_key {
                super::keyring::count_rows(&tx, key_id, n).map_err(err)?;
            }
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('next_id', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [id],
            )
            .map_err(err)?;
            put_sealed_state(&tx, &mut self.keyring, &keys, state, &path)?;
            count_sealed_by_owner(&tx, &keys, &owners).map_err(err)?;
        }
        // Delivery marks the publisher handed over ride along (`delivery::deferred`); given
        // back if this transaction fails. A mark that cannot be written never holds up the
        // readings: it is rolled back to a savepoint and given back (the publisher's
        // connection then records it, or reports why it cannot).
        let mut carried = match &self.marks {
            Some(MarksRole::Carry(q)) => {
                q.served(std::time::Instant::now());
                q.take()
            }
            _ => Vec::new(),
        };
        if !carried.is_empty() {
            let written = tx.savepoint().and_then(|sp| {
                mark_all(&sp, &carried)?;
                sp.commit()
            });
            if let (Err(e), Some(MarksRole::Carry(q))) = (written, &self.marks) {
                tracing::warn!(error = %e, "delivery marks left out of this commit; given back");
                q.restore(std::mem::take(&mut carried));
            }
        }
        let committed = tx.commit().map_err(err);
        if let Some(MarksRole::Carry(q)) = &self.marks {
            q.settle(carried, &committed);
        }
        committed?;
        self.next_id += records.len() as i64;
        for (owner, n) in &owners {
            self.envelope.sealed(owner, *n);
        }
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
        let mut after = after;
        loop {
            let (rows, read_up_to) = self.pending_once(lane, after, limit)?;
            // Rows handed over as delivered and maybe not committed yet are left out; a
            // batch that was all such rows is not "nothing left": read on after it.
            match (rows.is_empty(), read_up_to) {
                (true, Some(last)) => after = last,
                _ => return Ok(rows),
            }
        }
    }

    /// One read of [`Outbox::pending`]: the rows, and the last id read when the read was
    /// full (more may follow).
    fn pending_once(
        &mut self,
        lane: Lane,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<(i64, Record)>, ReadUpTo), StoreError> {
        // Taken before the read: a mark committed meanwhile is in what the read sees.
        let hidden = match &self.marks {
            Some(MarksRole::Hand(q)) => q.hidden(),
            _ => Vec::new(),
        };
        let mut rows: Vec<SealedRow> = {
            let start =
                super::delivery::pending_start(&self.conn, lane, after).map_err(self.sql_err())?;
            let mut st = self
                .conn
                .prepare_cached(&super::delivery::pending_sql(lane))
                .map_err(self.sql_err())?;
            let it = st
                .query_map(params![start, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .map_err(self.sql_err())?;
            it.collect::<Result<_, _>>().map_err(self.sql_err())?
        };
        let read_up_to = rows.last().filter(|_| rows.len() == limit).map(|r| r.0);
        if !hidden.is_empty() {
            rows.retain(|r| !hidden.iter().any(|&(x, y)| (x..=y).contains(&r.0)));
        }
        let mut out = Vec::with_capacity(rows.len());
        for (id, kind, key_id, nonce, ct) in rows {
            match self.unseal(id, kind, key_id, &nonce, ct) {
                Ok(record) => out.push((id, record)),
                Err(reason) => self.quarantine(id, &reason)?,
            }
        }
        Ok((out, read_up_to))
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
        if let Err(e) = self
            .envelope
            .ensure_installed(&self.conn, &mut self.keyring, key_id)
        {
            tracing::warn!(key_id, error = %e, "cannot read the keyring");
        }
        let plain = self
            .keyring
            .open(identity, nonce, ct)
            .map_err(|Unauthentic| Unauthentic.to_string())?;
        let record = Record::decode(&plain)
            .map_err(|e| format!("authentic but undecodable record: {}", redact_content(&e)))?;
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

    /// Moves a row the previous run crashed rendering ([`crate::crash`]) to quarantine: kept,
    /// never sent, counted in `status` and audited, as a row that fails authentication is.
    /// `Ok(false)`: the outbox does not hold it (already moved).
    pub fn quarantine_row(&mut self, id: i64, reason: &str) -> Result<bool, StoreError> {
        let held: bool = self
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE id = ?1)",
                [id],
                |r| r.get(0),
            )
            .map_err(self.sql_err())?;
        if held {
            self.quarantine(id, reason)?;
        }
        Ok(held)
    }

    /// Moves a row that failed authentication to the quarantine table (kept, never dropped).
    fn quarantine(&mut self, id: i64, reason: &str) -> Result<(), StoreError> {
        let now = ms(OffsetDateTime::now_utc());
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        tx.execute(
            "INSERT OR REPLACE INTO quarantine (id, lane, kind, created_at, key_id, nonce, ciphertext, reason, quarantined_at)
             SELECT id, lane, kind, created_at, key_id, nonce, ciphertext, ?2, ?3 FROM outbox WHERE id = ?1",
            params![id, reason, now],
        )
        .map_err(err)?;
        let mut counts = Delta::default();
        let undelivered = !super::delivery::is_delivered(&tx, id).map_err(err)?;
        let removed: Option<(i64, bool, bool)> = tx
            .query_row(
                "DELETE FROM outbox WHERE id = ?1 RETURNING lane, ?2, refused_at IS NOT NULL",
                params![id, undelivered],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(err)?;
        match removed {
            Some((lane, true, refused)) => {
                counts.undelivered(lane, -1);
                counts.refused -= i64::from(refused);
            }
            Some((_, false, _)) => counts.delivered_held -= 1,
            None => {}
        }
        counts.apply(&tx).map_err(err)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('quarantined_total', 1) ON CONFLICT(key) DO UPDATE SET value = value + 1",
            [],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::error!(
            row_id = id,
            reason,
            "outbox record moved to quarantine (kept, never sent)"
        );
        self.quarantined_now.push(Quarantined {
            id,
            reason: reason.to_string(),
        });
        Ok(())
    }

    /// Marks rows delivered (their own PUBACK said success). Durable on return, or, on a
    /// connection that hands marks to the ingest writer ([`Outbox::hand_marks_to`]), handed
    /// over to be committed with the writer's next transaction within about a second
    /// (`delivery::deferred` says when and what a crash can then send again).
    pub fn mark_delivered(&mut self, ids: &[i64], at: OffsetDateTime) -> Result<(), StoreError> {
        let at = ms(at);
        // Recorded as id ranges (`delivery`), never in the rows: a drain acknowledges rows
        // in id order, so a flush mostly extends the last range. Every id of a run is in
        // `ids`, so no row outside `ids` is ever marked.
        let runs = consecutive_runs(ids);
        let mut marks = Vec::new();
        if let Some(MarksRole::Hand(q)) = &self.marks {
            if q.offer(&runs, ids.len(), at, std::time::Instant::now()) {
                return Ok(());
            }
            marks = q.take();
        }
        marks.push(Mark::now(runs, at));
        let recorded = self.record_marks(&marks);
        if let Some(MarksRole::Hand(q)) = &self.marks {
            q.settle(marks, &recorded);
        }
        recorded
    }

    /// Commits `marks` in one transaction of their own.
    fn record_marks(&mut self, marks: &[Mark]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        mark_all(&tx, marks).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Hands this connection's delivery marks to the ingest writer's transactions (the
    /// publisher's connections; `pending` then leaves out the rows handed over).
    pub fn hand_marks_to(&mut self, marks: DeferredMarks) {
        self.marks = Some(MarksRole::Hand(marks));
    }

    /// Commits the delivery marks handed over through `marks` with this connection's
    /// transactions (the ingest writer's).
    pub fn carry_marks_from(&mut self, marks: DeferredMarks) {
        self.marks = Some(MarksRole::Carry(marks));
    }

    /// The writer's tick: commits the handed-over marks alone once they have waited
    /// [`super::delivery::deferred::HOLD_AT_MOST`] (no ingest commit came to carry them).
    /// A failure is logged; the marks wait for the next commit or tick.
    pub fn record_due_marks(&mut self) {
        let Some(MarksRole::Carry(q)) = &self.marks else {
            return;
        };
        let now = std::time::Instant::now();
        q.served(now);
        if q.due(now) {
            if let Err(e) = self.record_waiting_marks() {
                tracing::warn!(error = %e, "delivery marks not recorded yet; retried with the next commit");
            }
        }
    }

    /// Commits every mark handed over and still waiting, alone (a tick, a clean stop).
    fn record_waiting_marks(&mut self) -> Result<(), StoreError> {
        let Some(MarksRole::Carry(q)) = &self.marks else {
            return Ok(());
        };
        let marks = q.take();
        if marks.is_empty() {
            return Ok(());
        }
        let recorded = self.record_marks(&marks);
        if let Some(MarksRole::Carry(q)) = &self.marks {
            q.settle(marks, &recorded);
        }
        recorded
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
            .pragma_update(
                None,
                "wal_autocheckpoint",
                if on { AUTO_CHECKPOINT_PAGES } else { 0 },
            )
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
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let newly: usize = if super::delivery::is_delivered(&tx, id).map_err(err)? {
            0
        } else {
            tx.execute(
                "UPDATE outbox SET refused_at = ?2 WHERE id = ?1 AND refused_at IS NULL",
                params![id, ms(at)],
            )
            .map_err(err)?
        };
        tx.execute(
            "UPDATE outbox SET refused_at = ?2, refused_reason = ?3 WHERE id = ?1",
            params![id, ms(at), reason],
        )
        .map_err(err)?;
        Delta {
            refused: newly as i64,
            ..Delta::default()
        }
        .apply(&tx)
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Deletes rows delivered before `cutoff` (the retention rule). Never touches undelivered
    /// rows. The caller audits the count.
    pub fn purge_delivered_before(&mut self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let purged = super::delivery::purge(&tx, ms(cutoff)).map_err(err)?;
        Delta {
            delivered_held: -(purged as i64),
            ..Delta::default()
        }
        .apply(&tx)
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(purged as u64)
    }

    /// Number of undelivered rows (both lanes), from the counts kept with the rows: O(1)
    /// whatever the backlog.
    pub fn backlog(&self) -> Result<u64, StoreError> {
        let counts = Counts::read(&self.conn).map_err(self.sql_err())?;
        Ok(counts.backlog(Lane::Alert) + counts.backlog(Lane::Reading))
    }

    pub fn stats(&self) -> Result<OutboxStats, StoreError> {
        stats_of(&self.conn, &self.path, self.current_key_id())
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
    /// sequence number fetched, the alert engine's state), so it commits and survives exactly
    /// like the readings. Values are sealed on disk; a value that fails authentication is
    /// logged and read as absent.
    pub fn device_state(&self, device_id: &str, key: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(u32, Vec<u8>, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT key_id, nonce, ciphertext FROM sealed_state WHERE owner = ?1 AND key = ?2",
                [device_id, key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(self.sql_err())?;
        let Some((key_id, nonce, ct)) = row else {
            return Ok(None);
        };
        let id = StateIdentity {
            owner: device_id,
            key,
            key_id,
        };
        let plain = match self.keyring.open_state(id, &nonce, ct) {
            Ok(p) => p,
            Err(Unauthentic) => {
                tracing::error!(
                    device = device_id,
                    key,
                    "saved device state failed authentication (tampered or corrupted); ignored"
                );
                return Ok(None);
            }
        };
        match std::str::from_utf8(&plain) {
            Ok(text) => Ok(Some(text.to_string())),
            Err(_) => {
                tracing::error!(
                    device = device_id,
                    key,
                    "saved device state is not text; ignored"
                );
                Ok(None)
            }
        }
    }

    /// Sets one device-state value (sealed) in its own transaction.
    pub fn set_device_state(
        &mut self,
        device_id: &str,
        key: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        let update = [DeviceStateUpdate {
            device_id: device_id.to_string(),
            key: key.to_string(),
            value: value.to_string(),
        }];
        self.append_with_state(&[], &update, OffsetDateTime::now_utc())
            .map(|_| ())
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

    /// The sequence number of the last audit entry the platform acknowledged, in order (the
    /// forwarding cursor over `audit.log`, `audit::forward`); 0 before the first.
    pub fn audit_forwarded(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'audit_forwarded'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.map_or(0, |n| n.max(0) as u64))
            .map_err(self.sql_err())
    }

    /// Moves the audit forwarding cursor; it only ever moves forward.
    pub fn set_audit_forwarded(&self, seq: u64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('audit_forwarded', ?1) ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                [i64::try_from(seq).unwrap_or(i64::MAX)],
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
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    // A daemon that has just created the file may not have created the schema yet: that is an
    // empty outbox, not an error (`status` right after `run` used to fail with "no such table").
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if version == 0 {
        return Ok(OutboxStats::default());
    }
    // Schema 3 (not migrated yet: an older daemon, or none started since the upgrade) has
    // its keys in `keys`; schema 5 in the keyring.
    let current: u32 = conn
        .query_row(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM sqlite_schema WHERE name = 'data_keys')
                 THEN 0 ELSE 1 END",
            [],
            |r| r.get::<_, i64>(0),
        )
        .and_then(|legacy| {
            conn.query_row(
                if legacy == 1 {
                    "SELECT COALESCE(MAX(key_id), 0) FROM keys"
                } else {
                    "SELECT COALESCE(MAX(key_id), 0) FROM data_keys WHERE retired_at IS NULL AND purpose IN ('patient', 'gateway')"
                },
                [],
                |r| r.get(0),
            )
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
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
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
    let key_ids: Vec<u32> = {
        let legacy = !super::keyring::has_keyring(conn).map_err(e)?;
        let mut st = conn
            .prepare(if legacy {
                "SELECT key_id FROM keys ORDER BY key_id"
            } else {
                "SELECT key_id FROM data_keys WHERE purpose != 'audit' ORDER BY key_id"
            })
            .map_err(e)?;
        let it = st.query_map([], |r| r.get(0)).map_err(e)?;
        it.collect::<Result<_, _>>().map_err(e)?
    };
    // Every figure is O(1) or one index seek: `status` must cost the same with a backlog of
    // millions (counts kept with the rows; the oldest undelivered row is the first of each
    // lane's undelivered index, ids growing with time).
    let counts = Counts::read(conn).map_err(e)?;
    Ok(OutboxStats {
        backlog_alerts: counts.backlog(Lane::Alert),
        backlog_readings: counts.backlog(Lane::Reading),
        oldest_undelivered: super::delivery::oldest_undelivered(conn)
            .map_err(e)?
            .and_then(from_ms),
        last_ack: super::delivery::last_delivery(conn)
            .map_err(e)?
            .and_then(from_ms),
        delivered_held: counts.delivered_held,
        refused: counts.refused,
        quarantined: count("SELECT COUNT(*) FROM quarantine")?,
        corrupt_files_set_aside: count_set_aside(path),
        current_key_id: current_key,
        key_ids,
        data_keys: super::keyring::list(conn, OffsetDateTime::now_utc()).map_err(e)?,
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

/// A decoder's message without the content it may quote: the quarantine reason is stored in
/// clear and logged, and a serde message can quote a value (`invalid type: string "..."`),
/// which may be clinical or an NHS Number. Quoted text becomes `"…"` and digits `#`.
fn redact_content(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        match c {
            '"' | '`' | '\'' => {
                if !quoted {
                    out.push('"');
                    out.push('…');
                } else {
                    out.push('"');
                }
                quoted = !quoted;
            }
            _ if quoted => {}
            c if c.is_ascii_digit() => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Seals and upserts device-state values inside `tx`.
fn put_sealed_state(
    tx: &rusqlite::Transaction<'_>,
    keyring: &mut Keyring,
    keys: &std::collections::HashMap<Owner, u32>,
    state: &[DeviceStateUpdate],
    path: &Path,
) -> Result<(), StoreError> {
    if state.is_empty() {
        return Ok(());
    }
    let err = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let mut put = tx
        .prepare_cached(
            "INSERT INTO sealed_state (owner, key, key_id, nonce, ciphertext) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(owner, key) DO UPDATE SET key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext",
        )
        .map_err(err)?;
    for u in state {
        let key_id = key_of(keys, &Owner::of_state(&u.device_id), path)?;
        let id = StateIdentity {
            owner: &u.device_id,
            key: &u.key,
            key_id,
        };
        let (nonce, ct) = keyring
            .seal_state(id, u.value.as_bytes())
            .map_err(|e| StoreError::Key(e, path.to_path_buf()))?;
        put.execute(params![u.device_id, u.key, key_id, &nonce[..], ct])
            .map_err(err)?;
    }
    Ok(())
}

/// Adds `n` to the persisted count of values sealed under `key_id` (same transaction). The
/// count is `keys.sealed` (set when the key is made, and by migration 2) plus the `meta` row
/// `sealed:<key_id>`: kept in `meta`, the page every append already writes (next id, row
/// counts), a commit writes one page fewer to the WAL than with `keys` updated too.
fn count_sealed(tx: &rusqlite::Transaction<'_>, key_id: u32, n: i64) -> rusqlite::Result<()> {
    super::counts::add_per_key(tx, "sealed", key_id, n)
}

/// Whose data key seals `record`: its patient's, or the gateway's when it has none.
fn record_owner(record: &Record) -> Owner {
    Owner::of_patient(record_patient(record))
}

/// The patient id of `record` (empty: the gateway's), which alone decides its owner.
fn record_patient(record: &Record) -> &str {
    match record {
        Record::Reading(r) => &r.patient_id,
        Record::Alert(a) => &a.patient_id,
        Record::Derived(d) => &d.patient_id,
    }
}

/// Whether two texts are equal, told at once when they are the same shared text (a batch's
/// records share their frame's patient id; the writer asks for every row).
fn same_text(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// Rows per multi-row `INSERT` when a batch is written (`Outbox::write_batch`).
const ROWS_PER_INSERT: usize = 16;

/// `INSERT INTO outbox` of [`ROWS_PER_INSERT`] rows: `?1` is the creation time they share,
/// then each row's id, lane, kind, key id and sealed record, five parameters per row.
fn many_rows_insert() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let rows: Vec<String> = (0..ROWS_PER_INSERT)
            .map(|n| {
                let p = 2 + 5 * n;
                format!(
                    "(?{}, ?{}, ?{}, ?1, ?{}, x'', ?{})",
                    p,
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4
                )
            })
            .collect();
        format!(
            "INSERT INTO outbox (id, lane, kind, created_at, key_id, nonce, ciphertext) VALUES {}",
            rows.join(", ")
        )
    })
}

/// How many values each owner seals in a batch of `records` and `state`.
fn sealing_owners(
    records: &[Record],
    state: &[DeviceStateUpdate],
) -> std::collections::BTreeMap<Owner, i64> {
    let mut owners = std::collections::BTreeMap::new();
    // A run of one patient's records (the common batch) makes one owner, not one each.
    let mut run: Option<(&str, i64)> = None;
    for patient in records.iter().map(record_patient) {
        match &mut run {
            Some((p, n)) if same_text(p, patient) => *n += 1,
            _ => {
                if let Some((p, n)) = run.replace((patient, 1)) {
                    *owners.entry(Owner::of_patient(p)).or_insert(0) += n;
                }
            }
        }
    }
    if let Some((p, n)) = run {
        *owners.entry(Owner::of_patient(p)).or_insert(0) += n;
    }
    for owner in state.iter().map(|u| Owner::of_state(&u.device_id)) {
        *owners.entry(owner).or_insert(0) += 1;
    }
    owners
}

fn key_of(
    keys: &std::collections::HashMap<Owner, u32>,
    owner: &Owner,
    path: &Path,
) -> Result<u32, StoreError> {
    keys.get(owner)
        .copied()
        .ok_or_else(|| StoreError::Key(KeyError::Derive, path.to_path_buf()))
}

/// [`count_sealed`] for each owner's key.
fn count_sealed_by_owner(
    tx: &rusqlite::Transaction<'_>,
    keys: &std::collections::HashMap<Owner, u32>,
    owners: &std::collections::BTreeMap<Owner, i64>,
) -> rusqlite::Result<()> {
    for (owner, n) in owners {
        if let Some(key_id) = keys.get(owner) {
            count_sealed(tx, *key_id, *n)?;
        }
    }
    Ok(())
}

pub(super) fn connect(path: &Path) -> Result<Connection, StoreError> {
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
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    // A new database only (SQLite ignores this for an existing one): see PAGE_SIZE.
    conn.pragma_update(None, "page_size", PAGE_SIZE)
        .map_err(err)?;
    // WAL + FULL: a committed transaction survives a power cut (rust-stack.md §4).
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .map_err(err)?;
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(err)?;
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        auto_checkpoint_pages(path, page_size),
    )
    .map_err(err)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// The WAL's checkpoint threshold for the outbox at `path`: [`AUTO_CHECKPOINT_PAGES`], or
/// fewer on a small file system, so the WAL stays within an eighth of it. A WAL only gives
/// space back at a checkpoint, and a checkpoint needs room to grow the database: a WAL left
/// to grow to 8 MiB on a 6 MiB partition takes every byte and no commit or checkpoint can
/// ever succeed again, even once other files are removed (tests/full_disk.rs).
fn auto_checkpoint_pages(path: &Path, page_size: i64) -> i64 {
    const MIN_PAGES: i64 = 64;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(fs) = rustix::fs::statvfs(dir) else {
        return AUTO_CHECKPOINT_PAGES;
    };
    let total = fs.f_blocks.saturating_mul(fs.f_frsize);
    // Each WAL frame is a page plus a 24-byte header.
    let frame = u64::try_from(page_size.max(512)).unwrap_or(4096) + 24;
    let fit = i64::try_from(total / 8 / frame).unwrap_or(i64::MAX);
    fit.clamp(MIN_PAGES, AUTO_CHECKPOINT_PAGES)
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

/// What is at the outbox's path before it is opened.
enum Probe {
    Missing,
    /// Fit to open; `full_check` says whether `quick_check` read the whole file.
    Healthy {
        full_check: bool,
    },
    /// SQLite opened it and it failed `quick_check` (or is not a database): why.
    Corrupt(String),
}

const FIX_ACCESS: &str = "make the file and its directory readable and writable by the user vitalgate runs as (e.g. `chown -R vitalgate:vitalgate /var/lib/vitalgate && chmod 600 <file>`), then start again";
const FIX_NOT_A_FILE: &str =
    "move what is there out of the way, or set store.path to a file, then start again";
const FIX_LOCKED: &str = "stop the process that holds the database (another vitalgate, a sqlite3 shell, a backup tool), then start again";
const FIX_IO: &str = "check the disk and the file system (dmesg, df), then start again";

/// Looks at the file at `path` without changing it: missing, healthy, corrupt (a file SQLite
/// opened that fails `PRAGMA quick_check`), or unusable for another reason (an error).
fn probe(path: &Path) -> Result<Probe, StoreError> {
    let unusable = |problem: String, fix: &'static str| StoreError::Unusable {
        path: path.to_path_buf(),
        problem,
        fix,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Probe::Missing),
        Err(e) => return Err(unusable(format!("cannot be examined ({e})"), FIX_ACCESS)),
    };
    if meta.is_dir() {
        return Err(unusable(
            "is a directory, not the outbox database".into(),
            FIX_NOT_A_FILE,
        ));
    }
    if !meta.is_file() {
        return Err(unusable(
            "is not a regular file (a device, FIFO or socket)".into(),
            FIX_NOT_A_FILE,
        ));
    }
    // Is it readable and writable at all? SQLite would quietly fall back to read-only.
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        return Err(unusable(
            format!("cannot be opened for reading and writing ({e})"),
            FIX_ACCESS,
        ));
    }
    let classify = |e: rusqlite::Error| -> Result<Probe, StoreError> {
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                Ok(Probe::Corrupt(e.to_string()))
            }
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Err(unusable(
                format!("is locked by another process ({e})"),
                FIX_LOCKED,
            )),
            Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly) => {
                Err(unusable(format!("cannot be opened ({e})"), FIX_ACCESS))
            }
            _ => Err(unusable(format!("cannot be read ({e})"), FIX_IO)),
        }
    };
    let conn = match Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(e) => return classify(e),
    };
    if conn.is_readonly(MAIN_DB).unwrap_or(false) {
        return Err(unusable("can only be opened read-only".into(), FIX_ACCESS));
    }
    if let Err(e) = conn.busy_timeout(std::time::Duration::from_secs(2)) {
        return classify(e);
    }
    // After a clean stop nothing has written the file since it was synced: reading the
    // schema and the marker (which fails on a damaged header or schema) is enough, so a
    // start costs the same with a backlog of millions. Rows are still authenticated one by
    // one when read (AES-GCM), and quarantined if damaged.
    match conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [CLEAN_STOP], |r| {
            r.get::<_, i64>(0)
        })
        .optional()
    {
        Ok(Some(1)) => return Ok(Probe::Healthy { full_check: false }),
        Ok(_) => {}
        Err(e) if e.to_string().starts_with("no such table") => {}
        Err(e) => return classify(e),
    }
    match conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0)) {
        Ok(answer) if answer == "ok" => Ok(Probe::Healthy { full_check: true }),
        Ok(answer) => Ok(Probe::Corrupt(answer)),
        Err(e) => classify(e),
    }
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

/// `ids` as ascending runs of consecutive integers `(first, last)`, duplicates ignored:
/// `[5, 3, 4, 9]` gives `[(3, 5), (9, 9)]`.
/// Marks every run of `marks` delivered at its own time, with the counts, in `tx`.
fn mark_all(tx: &Connection, marks: &[Mark]) -> rusqlite::Result<()> {
    if marks.is_empty() {
        return Ok(());
    }
    let mut counts = Delta::default();
    for m in marks {
        super::delivery::mark(tx, &m.runs, m.at_ms, &mut counts)?;
    }
    counts.apply(tx)
}

pub(super) fn consecutive_runs(ids: &[i64]) -> Vec<(i64, i64)> {
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
    use super::{consecutive_runs, redact_content, Outbox};
    use crate::store::delivery::MARK_ROWS;

    #[test]
    fn a_decode_error_kept_as_quarantine_reason_quotes_no_content_and_no_digits() {
        let e = r#"invalid type: string "9434765919", expected u64 at offset 37"#;
        let r = redact_content(e);
        assert_eq!(r, r#"invalid type: string "…", expected u# at offset #"#);
    }
    use crate::store::MasterKey;

    #[test]
    fn a_run_of_marks_seeks_by_row_id_and_never_scans_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::ephemeral().unwrap();
        let (outbox, _) = Outbox::open(&dir.path().join("outbox.db"), &key).unwrap();
        let plan: Vec<String> = outbox
            .connection()
            .prepare(&format!("EXPLAIN QUERY PLAN {MARK_ROWS}"))
            .unwrap()
            .query_map([1, 2], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(plan[0].contains("USING INTEGER PRIMARY KEY"), "{plan:?}");
        assert!(
            plan.iter()
                .all(|p| p.contains("USING INTEGER PRIMARY KEY") || p.contains("SUBQUERY")),
            "every step seeks by key: {plan:?}"
        );
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
