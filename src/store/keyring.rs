//! The envelope keyring (issue 15, acceptance 2 and 3): random data keys, one per patient
//! (and one for the gateway's own rows), each wrapped by the master key and kept in tables of
//! their own, apart from the rows they seal.
//!
//! - `masters`: one row per master key the keyring is wrapped under, with a check value
//!   (a known plaintext sealed under the master's key-encryption key). Normally one row;
//!   two only in the middle of `vitalgate key rotate-master` (see [`rotate_master`]).
//! - `data_keys`: id, purpose (`patient`, `gateway`, `legacy`, `audit`), owner (the patient
//!   pseudonym; empty for the others), creation and retirement times. No key material.
//! - `key_wraps`: each data key wrapped (AES-256-GCM) under each master, with the key id,
//!   purpose, owner and master id as associated data: a wrap moved to another key, owner or
//!   master fails authentication.
//! - `meta` rows `rows:<key id>`: rows of `outbox` and `quarantine` sealed under each key,
//!   kept by triggers, so every path that adds, moves or deletes a row (retention purge,
//!   delivery purge, storage cap, quarantine) keeps them exact without knowing about keys,
//!   and a spent key is found without scanning the rows.
//!
//! A data key rotates when it is older than `store.key_rotation_days`, when it has sealed
//! [`super::outbox::ROTATE_AFTER_RECORDS`] values, and on `vitalgate key rotate-data`: the
//! old key is retired (new rows use the new one) and destroyed by [`destroy_spent`] once no
//! row, quarantined row or device state sealed with it remains.
//!
//! Every change another connection must see (a retirement, a destruction, an erasure, a
//! master handover) bumps `meta.keyring_generation`; the writer re-reads the keyring before
//! its next batch when it changed, so it never seals under a destroyed or retired key.
//!
//! Nothing here generates a master key: the master is only ever loaded. Data keys are
//! random and wrapped before they are used.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::counts::Delta;
use super::crypto::{random_key, KeyError, Keyring, MasterKey};
use super::outbox::StoreError;

/// The schema version that brings the keyring (outbox migration number 5).
pub const SCHEMA_V5: i64 = 5;

/// `store.key_rotation_days` when not configured: the seeds' 90-day policy.
pub const DEFAULT_ROTATION_DAYS: u32 = 90;

/// The audit MAC key's HKDF label (must equal `audit::line::MAC_KEY_LABEL`).
const AUDIT_LABEL: &[u8] = crate::audit::line::MAC_KEY_LABEL;

/// The id of the audit MAC key in `data_keys`.
const AUDIT_KEY_ID: u32 = 0;

/// The plaintext sealed as each master's check value.
const MASTER_CHECK: &[u8] = b"vitalgate master check v1";

/// The keyring's tables and the row-count triggers; counts the rows already there.
const MIGRATE_V5: &str = "
CREATE TABLE IF NOT EXISTS masters (
    master_id INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,
    check_nonce BLOB NOT NULL,
    check_ciphertext BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS data_keys (
    key_id INTEGER PRIMARY KEY,
    purpose TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER);
CREATE TABLE IF NOT EXISTS key_wraps (
    key_id INTEGER NOT NULL,
    master_id INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    wrapped BLOB NOT NULL,
    PRIMARY KEY (key_id, master_id)) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS key_rows_outbox_insert AFTER INSERT ON outbox BEGIN
    INSERT INTO meta (key, value) VALUES ('rows:' || NEW.key_id, 1)
        ON CONFLICT(key) DO UPDATE SET value = value + 1;
END;
CREATE TRIGGER IF NOT EXISTS key_rows_outbox_delete AFTER DELETE ON outbox BEGIN
    UPDATE meta SET value = value - 1 WHERE key = 'rows:' || OLD.key_id;
END;
CREATE TRIGGER IF NOT EXISTS key_rows_outbox_rekey AFTER UPDATE OF key_id ON outbox
    WHEN OLD.key_id != NEW.key_id BEGIN
    UPDATE meta SET value = value - 1 WHERE key = 'rows:' || OLD.key_id;
    INSERT INTO meta (key, value) VALUES ('rows:' || NEW.key_id, 1)
        ON CONFLICT(key) DO UPDATE SET value = value + 1;
END;
CREATE TRIGGER IF NOT EXISTS key_rows_quarantine_insert AFTER INSERT ON quarantine BEGIN
    INSERT INTO meta (key, value) VALUES ('rows:' || NEW.key_id, 1)
        ON CONFLICT(key) DO UPDATE SET value = value + 1;
END;
CREATE TRIGGER IF NOT EXISTS key_rows_quarantine_delete AFTER DELETE ON quarantine BEGIN
    UPDATE meta SET value = value - 1 WHERE key = 'rows:' || OLD.key_id;
END;
DELETE FROM meta WHERE key LIKE 'rows:%';
INSERT INTO meta (key, value)
    SELECT 'rows:' || key_id, COUNT(*) FROM
        (SELECT key_id FROM outbox UNION ALL SELECT key_id FROM quarantine)
    GROUP BY key_id;
";

/// Outbox migration 5 (an independent step, touching only the keyring's own tables, its
/// triggers and its `meta` rows). The legacy keys are adopted and the rows re-sealed at the
/// first open with the master key ([`Envelope::open`], [`reseal_legacy`]).
pub fn migrate_to_v5(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(MIGRATE_V5)
}

/// The schema version from which the outbox's writer counts its rows per data key itself
/// (outbox migration number 8).
pub const SCHEMA_V6: i64 = 6;

/// Outbox migration 8: the row-count trigger on `INSERT INTO outbox` goes. It ran an upsert
/// of `meta` for every row, about as costly as the row's own insert (issue 18, acceptance
/// 4); the one writer of rows, `Outbox::write_batch`, adds each key's rows once per batch
/// in the same transaction instead ([`count_rows`]). Deletes, re-keys and quarantine keep
/// their triggers: they are rare, and made by several statements.
pub fn migrate_to_v6(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("DROP TRIGGER IF EXISTS key_rows_outbox_insert;")
}

/// Counts `n` more outbox rows sealed under `key_id` (the `rows:<key_id>` that
/// [`destroy_spent`] reads), in the caller's transaction: what the insert trigger did per
/// row before schema 6.
pub(super) fn count_rows(tx: &Transaction<'_>, key_id: u32, n: i64) -> rusqlite::Result<()> {
    super::counts::add_per_key(tx, "rows", key_id, n)
}

/// What a data key seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// One patient's rows and alert state (owner: the pseudonym).
    Patient,
    /// Rows and state with no patient (device cursors, gateway records).
    Gateway,
    /// A schema 3 key (HKDF of the master), kept only while rows sealed under it remain.
    Legacy,
    /// The audit log's MAC key, kept so the log still verifies after a master rotation.
    Audit,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Patient => "patient",
            Purpose::Gateway => "gateway",
            Purpose::Legacy => "legacy",
            Purpose::Audit => "audit",
        }
    }

    fn parse(s: &str) -> Option<Purpose> {
        Some(match s {
            "patient" => Purpose::Patient,
            "gateway" => Purpose::Gateway,
            "legacy" => Purpose::Legacy,
            "audit" => Purpose::Audit,
            _ => return None,
        })
    }
}

/// Whose rows a data key seals: a patient (by pseudonym) or the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    Patient(String),
    Gateway,
}

impl Owner {
    /// The owner of a record of `patient_id` (empty: the gateway).
    pub fn of_patient(patient_id: &str) -> Owner {
        if patient_id.is_empty() {
            Owner::Gateway
        } else {
            Owner::Patient(patient_id.to_string())
        }
    }

    /// The owner of a `sealed_state` value: `patient:<id>` (the alert engine's state) is the
    /// patient's, anything else (device cursors, by device id) the gateway's.
    pub fn of_state(state_owner: &str) -> Owner {
        match state_owner.strip_prefix("patient:") {
            Some(p) if !p.is_empty() => Owner::Patient(p.to_string()),
            _ => Owner::Gateway,
        }
    }

    fn purpose(&self) -> Purpose {
        match self {
            Owner::Patient(_) => Purpose::Patient,
            Owner::Gateway => Purpose::Gateway,
        }
    }

    fn name(&self) -> &str {
        match self {
            Owner::Patient(p) => p,
            Owner::Gateway => "",
        }
    }
}

/// A data key replaced by a new one (audited: ids and the patient pseudonym only).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rotated {
    pub retired: Option<u32>,
    pub key_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
}

/// The key currently sealing one owner's new rows.
#[derive(Debug, Clone, Copy)]
struct Current {
    key_id: u32,
    created_ms: i64,
    sealed: i64,
}

/// The keyring as one outbox connection uses it: the master's key-encryption key, and the
/// current data key of each owner (for the writer).
pub struct Envelope {
    kek: LessSafeKey,
    master_id: i64,
    rotation_ms: i64,
    current: HashMap<Owner, Current>,
    generation: i64,
    rng: SystemRandom,
    path: PathBuf,
    /// What the open found and did about an interrupted master rotation (for the audit).
    pub handover: Option<Handover>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("master_id", &self.master_id)
            .field("owners", &self.current.len())
            .finish_non_exhaustive()
    }
}

/// How an open resolved a master rotation left half-way (two masters in the keyring).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Handover {
    /// Opened with the new master: the old one's wraps were destroyed.
    Completed { master_id: i64 },
    /// Opened with the old master: the rotation never took effect; the new master's wraps
    /// were removed (run `vitalgate key rotate-master` again).
    Abandoned { master_id: i64 },
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

fn key_err(path: &Path) -> impl Fn(KeyError) -> StoreError + '_ {
    move |e| StoreError::Key(e, path.to_path_buf())
}

/// The associated data of a wrap: what the key is, for whom, under which master.
fn wrap_aad(master_id: i64, key_id: u32, purpose: Purpose, owner: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(40 + owner.len());
    a.extend_from_slice(b"vitalgate keyring v1\0");
    a.extend_from_slice(&master_id.to_be_bytes());
    a.extend_from_slice(&key_id.to_be_bytes());
    a.extend_from_slice(purpose.as_str().as_bytes());
    a.push(0);
    a.extend_from_slice(owner.as_bytes());
    a
}

fn check_aad(master_id: i64) -> Vec<u8> {
    let mut a = b"vitalgate master check v1\0".to_vec();
    a.extend_from_slice(&master_id.to_be_bytes());
    a
}

fn fresh_nonce(rng: &SystemRandom) -> Result<[u8; NONCE_LEN], KeyError> {
    let mut n = [0u8; NONCE_LEN];
    rng.fill(&mut n).map_err(|_| KeyError::Random)?;
    Ok(n)
}

fn seal(
    kek: &LessSafeKey,
    rng: &SystemRandom,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; NONCE_LEN], Vec<u8>), KeyError> {
    let nonce = fresh_nonce(rng)?;
    let mut buf = plaintext.to_vec();
    kek.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| KeyError::Random)?;
    Ok((nonce, buf))
}

/// Opens a wrap or check value; `None` when it fails authentication.
fn unseal(
    kek: &LessSafeKey,
    aad: &[u8],
    nonce: &[u8],
    sealed: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    let mut buf = Zeroizing::new(sealed.to_vec());
    let len = kek
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .ok()?
        .len();
    buf.truncate(len);
    Some(buf)
}

fn unwrap_key(
    kek: &LessSafeKey,
    master_id: i64,
    key_id: u32,
    purpose: Purpose,
    owner: &str,
    nonce: &[u8],
    wrapped: &[u8],
) -> Option<Zeroizing<[u8; 32]>> {
    let plain = unseal(
        kek,
        &wrap_aad(master_id, key_id, purpose, owner),
        nonce,
        wrapped,
    )?;
    let bytes: [u8; 32] = plain[..].try_into().ok()?;
    Some(Zeroizing::new(bytes))
}

fn generation(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "SELECT COALESCE((SELECT value FROM meta WHERE key = 'keyring_generation'), 0)",
    )?
    .query_row([], |r| r.get(0))
}

fn bump_generation(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('keyring_generation', 1)
         ON CONFLICT(key) DO UPDATE SET value = value + 1",
        [],
    )
    .map(|_| ())
}

/// The next data key id: above every id ever used (legacy keys included), never reused.
fn allocate_key_id(conn: &Connection) -> rusqlite::Result<u32> {
    let id: i64 = conn.query_row(
        "SELECT MAX(COALESCE((SELECT value FROM meta WHERE key = 'next_key_id'), 1),
                    COALESCE((SELECT MAX(key_id) FROM data_keys), 0) + 1,
                    COALESCE((SELECT MAX(key_id) FROM keys), 0) + 1)",
        [],
        |r| r.get(0),
    )?;
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('next_key_id', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [id + 1],
    )?;
    u32::try_from(id).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, id))
}

/// Inserts a data key and its wrap under `master_id` (inside the caller's transaction).
#[allow(clippy::too_many_arguments)]
fn insert_key(
    conn: &Connection,
    kek: &LessSafeKey,
    rng: &SystemRandom,
    master_id: i64,
    key_id: u32,
    purpose: Purpose,
    owner: &str,
    key: &[u8; 32],
    created_ms: i64,
    retired_ms: Option<i64>,
    path: &Path,
) -> Result<(), StoreError> {
    let (nonce, wrapped) =
        seal(kek, rng, &wrap_aad(master_id, key_id, purpose, owner), key).map_err(key_err(path))?;
    conn.execute(
        "INSERT INTO data_keys (key_id, purpose, owner, created_at, retired_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![key_id, purpose.as_str(), owner, created_ms, retired_ms],
    )
    .map_err(sql(path))?;
    conn.execute(
        "INSERT INTO key_wraps (key_id, master_id, nonce, wrapped) VALUES (?1, ?2, ?3, ?4)",
        params![key_id, master_id, &nonce[..], wrapped],
    )
    .map_err(sql(path))?;
    Ok(())
}

fn insert_master(
    conn: &Connection,
    kek: &LessSafeKey,
    rng: &SystemRandom,
    master_id: i64,
    now_ms: i64,
    path: &Path,
) -> Result<(), StoreError> {
    let (nonce, check) =
        seal(kek, rng, &check_aad(master_id), MASTER_CHECK).map_err(key_err(path))?;
    conn.execute(
        "INSERT INTO masters (master_id, created_at, check_nonce, check_ciphertext) VALUES (?1, ?2, ?3, ?4)",
        params![master_id, now_ms, &nonce[..], check],
    )
    .map_err(sql(path))?;
    Ok(())
}

/// The masters rows: (id, check nonce, check value), oldest first.
/// A `masters` row: id, check nonce, check value.
type MasterRow = (i64, Vec<u8>, Vec<u8>);

/// A data key and one wrap of it: id, purpose, owner, (created, retired,) nonce, wrap.
type WrapRow = (u32, String, String, Vec<u8>, Vec<u8>);
type KeyRow = (u32, String, String, i64, Option<i64>, Vec<u8>, Vec<u8>);

fn masters(conn: &Connection, path: &Path) -> Result<Vec<MasterRow>, StoreError> {
    let mut st = conn
        .prepare("SELECT master_id, check_nonce, check_ciphertext FROM masters ORDER BY master_id")
        .map_err(sql(path))?;
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(sql(path))?;
    rows.collect::<Result<_, _>>().map_err(sql(path))
}

/// The id of the master row `kek` opens, if any.
fn matching_master(kek: &LessSafeKey, rows: &[MasterRow]) -> Option<i64> {
    rows.iter()
        .find(|(id, nonce, check)| {
            unseal(kek, &check_aad(*id), nonce, check)
                .as_deref()
                .map(|v| &v[..])
                == Some(MASTER_CHECK)
        })
        .map(|(id, _, _)| *id)
}

/// Deletes every wrap and row of the masters other than `keep` (with `secure_delete`).
fn drop_other_masters(conn: &Connection, keep: i64, path: &Path) -> Result<(), StoreError> {
    conn.execute("DELETE FROM key_wraps WHERE master_id != ?1", [keep])
        .map_err(sql(path))?;
    conn.execute("DELETE FROM masters WHERE master_id != ?1", [keep])
        .map_err(sql(path))?;
    bump_generation(conn).map_err(sql(path))
}

/// Turns `secure_delete` on for what follows (deleted wraps and rows are zeroed in place).
fn secure_delete(conn: &Connection, on: bool, path: &Path) -> Result<(), StoreError> {
    conn.pragma_update(None, "secure_delete", if on { "ON" } else { "FAST" })
        .map_err(sql(path))
}

/// Empties the WAL into the database and truncates it, so no copy of what was just deleted
/// stays in the WAL file. Fails when a reader keeps the WAL from being reset.
pub(crate) fn checkpoint_truncate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .map_err(sql(path))?;
    if busy != 0 {
        return Err(StoreError::Unusable {
            path: path.to_path_buf(),
            problem: "the WAL could not be checkpointed and truncated (another connection is reading it)".into(),
            fix: "stop the process that holds the database open (the daemon, a sqlite3 shell), then run the command again",
        });
    }
    Ok(())
}

impl Envelope {
    /// Opens the keyring of the outbox on `conn` with `master`: adopts the schema 3 keys
    /// (checked against their check values first; a wrong master changes nothing), finds
    /// the master row `master` opens (else [`StoreError::WrongKey`]), resolves a master
    /// rotation left half-way ([`Handover`]), and installs every data key in `keyring`.
    pub fn open(
        conn: &mut Connection,
        master: &MasterKey,
        keyring: &mut Keyring,
        path: &Path,
        now: OffsetDateTime,
    ) -> Result<Envelope, StoreError> {
        let kek = master.key_encryption_key().map_err(key_err(path))?;
        let rng = SystemRandom::new();
        adopt_legacy_keys(conn, master, keyring, &kek, &rng, path, ms(now))?;
        let rows = masters(conn, path)?;
        let Some(master_id) = matching_master(&kek, &rows) else {
            return Err(StoreError::WrongKey {
                path: path.to_path_buf(),
                key_id: rows.last().map(|r| r.0 as u32).unwrap_or(0),
            });
        };
        let mut handover = None;
        if rows.len() > 1 {
            let newest = rows.last().map(|r| r.0).unwrap_or(master_id);
            secure_delete(conn, true, path)?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql(path))?;
            drop_other_masters(&tx, master_id, path)?;
            tx.commit().map_err(sql(path))?;
            checkpoint_truncate(conn, path).ok();
            secure_delete(conn, false, path)?;
            handover = Some(if master_id == newest {
                tracing::warn!(
                    master_id,
                    "master key rotation completed: the previous master's wraps were destroyed"
                );
                Handover::Completed { master_id }
            } else {
                tracing::warn!(master_id, "master key rotation abandoned: this outbox was opened with the previous master, so the new one's wraps were removed; run `vitalgate key rotate-master` again");
                Handover::Abandoned { master_id: newest }
            });
        }
        let mut env = Envelope {
            kek,
            master_id,
            rotation_ms: i64::from(DEFAULT_ROTATION_DAYS) * 86_400_000,
            current: HashMap::new(),
            generation: 0,
            rng,
            path: path.to_path_buf(),
            handover,
        };
        env.reload(conn, keyring)?;
        keyring.stop_deriving();
        Ok(env)
    }

    /// Whether the keyring is as this connection last read it (checked under the write lock
    /// before a batch is sealed).
    pub fn in_force(&self, conn: &Connection) -> rusqlite::Result<bool> {
        Ok(generation(conn)? == self.generation)
    }

    /// Data keys rotate after this many days (`store.key_rotation_days`).
    pub fn set_rotation_days(&mut self, days: u32) {
        self.rotation_ms = i64::from(days.max(1)) * 86_400_000;
    }

    /// Re-reads the keyring: installs every data key (unwrapped with this master), forgets
    /// destroyed ones, and takes each owner's newest unretired key as its current key.
    fn reload(&mut self, conn: &Connection, keyring: &mut Keyring) -> Result<(), StoreError> {
        let path = self.path.clone();
        self.generation = generation(conn).map_err(sql(&path))?;
        let rows: Vec<KeyRow> = {
            let mut st = conn
                .prepare(
                    "SELECT d.key_id, d.purpose, d.owner, d.created_at, d.retired_at, w.nonce, w.wrapped
                     FROM data_keys d JOIN key_wraps w ON w.key_id = d.key_id AND w.master_id = ?1
                     ORDER BY d.key_id",
                )
                .map_err(sql(&path))?;
            let it = st
                .query_map([self.master_id], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                })
                .map_err(sql(&path))?;
            it.collect::<Result<_, _>>().map_err(sql(&path))?
        };
        let mut current = HashMap::new();
        let mut present = HashSet::new();
        for (key_id, purpose, owner, created, retired, nonce, wrapped) in rows {
            let Some(purpose) = Purpose::parse(&purpose) else {
                continue;
            };
            let Some(key) = unwrap_key(
                &self.kek,
                self.master_id,
                key_id,
                purpose,
                &owner,
                &nonce,
                &wrapped,
            ) else {
                tracing::error!(key_id, "a data key's wrap failed authentication (tampered or corrupted); rows sealed with it cannot be read");
                continue;
            };
            present.insert(key_id);
            if purpose == Purpose::Audit {
                continue;
            }
            keyring.install(key_id, &key).map_err(key_err(&path))?;
            let owner = match purpose {
                Purpose::Patient => Owner::Patient(owner),
                Purpose::Gateway => Owner::Gateway,
                _ => continue,
            };
            if retired.is_none() {
                let sealed = sealed_count(conn, key_id).map_err(sql(&path))?;
                current.insert(
                    owner,
                    Current {
                        key_id,
                        created_ms: created,
                        sealed,
                    },
                );
            }
        }
        for id in keyring.ids() {
            if !present.contains(&id) {
                keyring.forget(id);
            }
        }
        self.current = current;
        Ok(())
    }

    /// Makes sure `key_id` is installed in `keyring` (a key another connection created
    /// since this one read the keyring). A key that does not exist stays absent.
    pub fn ensure_installed(
        &mut self,
        conn: &Connection,
        keyring: &mut Keyring,
        key_id: u32,
    ) -> Result<(), StoreError> {
        if keyring.has(key_id) {
            return Ok(());
        }
        let row: Option<(String, String, Vec<u8>, Vec<u8>)> = conn
            .query_row(
                "SELECT d.purpose, d.owner, w.nonce, w.wrapped FROM data_keys d
                 JOIN key_wraps w ON w.key_id = d.key_id AND w.master_id = ?2 WHERE d.key_id = ?1",
                params![key_id, self.master_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(sql(&self.path))?;
        if let Some((purpose, owner, nonce, wrapped)) = row {
            if let Some(purpose) = Purpose::parse(&purpose).filter(|p| *p != Purpose::Audit) {
                if let Some(key) = unwrap_key(
                    &self.kek,
                    self.master_id,
                    key_id,
                    purpose,
                    &owner,
                    &nonce,
                    &wrapped,
                ) {
                    keyring.install(key_id, &key).map_err(key_err(&self.path))?;
                }
            }
        }
        Ok(())
    }

    /// The data key each of `owners` seals its next values with (with how many values each
    /// will seal), rotating a key that is older than the rotation period or has sealed
    /// `rotate_after` values, and creating one for a new owner. New keys commit in their own
    /// transaction before the batch (a key with no rows is harmless and is used next time).
    pub fn keys_for(
        &mut self,
        conn: &mut Connection,
        keyring: &mut Keyring,
        owners: &BTreeMap<Owner, i64>,
        rotate_after: i64,
        now: OffsetDateTime,
    ) -> Result<HashMap<Owner, u32>, StoreError> {
        let path = self.path.clone();
        if generation(conn).map_err(sql(&path))? != self.generation {
            self.reload(conn, keyring)?;
        }
        let now_ms = ms(now);
        let due: Vec<Owner> = owners
            .iter()
            .filter(|(owner, n)| match self.current.get(*owner) {
                None => true,
                Some(c) => {
                    now_ms - c.created_ms >= self.rotation_ms || c.sealed + **n > rotate_after
                }
            })
            .map(|(o, _)| o.clone())
            .collect();
        if !due.is_empty() {
            self.replace_keys(conn, keyring, &due, false, now)?;
        }
        Ok(owners
            .keys()
            .filter_map(|o| self.current.get(o).map(|c| (o.clone(), c.key_id)))
            .collect())
    }

    /// Counts `n` more values sealed under `owner`'s current key (after the commit).
    pub fn sealed(&mut self, owner: &Owner, n: i64) {
        if let Some(c) = self.current.get_mut(owner) {
            c.sealed += n;
        }
    }

    /// The newest current key and the values sealed under it (for the outbox's
    /// `current_key_id` and `sealed_under_current_key`).
    pub fn newest(&self) -> Option<(u32, i64)> {
        self.current
            .values()
            .max_by_key(|c| c.key_id)
            .map(|c| (c.key_id, c.sealed))
    }

    /// Retires the current keys of `owners` and gives each a new random one, in one
    /// transaction; `announce` bumps the keyring generation (other connections re-read it).
    /// Returns what was replaced.
    fn replace_keys(
        &mut self,
        conn: &mut Connection,
        keyring: &mut Keyring,
        owners: &[Owner],
        announce: bool,
        now: OffsetDateTime,
    ) -> Result<Vec<Rotated>, StoreError> {
        let path = self.path.clone();
        let now_ms = ms(now);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql(&path))?;
        let mut made = Vec::new();
        for owner in owners {
            let old = self.current.get(owner).map(|c| c.key_id);
            if let Some(old) = old {
                tx.execute(
                    "UPDATE data_keys SET retired_at = ?2 WHERE key_id = ?1 AND retired_at IS NULL",
                    params![old, now_ms],
                )
                .map_err(sql(&path))?;
            }
            let key_id = allocate_key_id(&tx).map_err(sql(&path))?;
            let key = random_key().map_err(key_err(&path))?;
            insert_key(
                &tx,
                &self.kek,
                &self.rng,
                self.master_id,
                key_id,
                owner.purpose(),
                owner.name(),
                &key,
                now_ms,
                None,
                &path,
            )?;
            made.push((owner.clone(), old, key_id, key));
        }
        if announce {
            bump_generation(&tx).map_err(sql(&path))?;
        }
        tx.commit().map_err(sql(&path))?;
        if announce {
            self.generation = generation(conn).map_err(sql(&path))?;
        }
        let mut out = Vec::new();
        for (owner, old, key_id, key) in made {
            keyring.install(key_id, &key).map_err(key_err(&path))?;
            self.current.insert(
                owner.clone(),
                Current {
                    key_id,
                    created_ms: now_ms,
                    sealed: 0,
                },
            );
            tracing::info!(
                key_id,
                retired = old,
                patient = owner.name(),
                "data key created"
            );
            out.push(Rotated {
                retired: old,
                key_id,
                patient: match owner {
                    Owner::Patient(p) => Some(p),
                    Owner::Gateway => None,
                },
            });
        }
        Ok(out)
    }

    /// `vitalgate key rotate-data`: every owner's current key is retired and replaced by a
    /// new random one; new rows use the new keys, old ones stay readable until spent.
    /// Returns what was replaced.
    pub fn rotate_all(
        &mut self,
        conn: &mut Connection,
        keyring: &mut Keyring,
        now: OffsetDateTime,
    ) -> Result<Vec<Rotated>, StoreError> {
        if generation(conn).map_err(sql(&self.path))? != self.generation {
            self.reload(conn, keyring)?;
        }
        let mut owners: Vec<Owner> = self.current.keys().cloned().collect();
        owners.sort();
        self.replace_keys(conn, keyring, &owners, true, now)
    }
}

fn sealed_count(conn: &Connection, key_id: u32) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COALESCE((SELECT value FROM meta WHERE key = 'sealed:' || ?1), 0)",
        [key_id],
        |r| r.get(0),
    )
}

/// The schema 3 keys: verified against their check values (a wrong master changes
/// nothing), then, in one transaction, wrapped into the keyring as `legacy` keys (retired:
/// their rows are re-sealed by [`reseal_legacy`] and the keys destroyed once none remain),
/// the master's check value and the audit MAC key recorded, and the old `keys` rows
/// removed. A new outbox only gets its master row and audit key.
fn adopt_legacy_keys(
    conn: &mut Connection,
    master: &MasterKey,
    keyring: &mut Keyring,
    kek: &LessSafeKey,
    rng: &SystemRandom,
    path: &Path,
    now_ms: i64,
) -> Result<(), StoreError> {
    let legacy: Vec<(u32, i64, Vec<u8>, Vec<u8>)> = {
        let mut st = conn
            .prepare("SELECT key_id, created_at, check_nonce, check_ciphertext FROM keys ORDER BY key_id")
            .map_err(sql(path))?;
        let it = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(sql(path))?;
        it.collect::<Result<_, _>>().map_err(sql(path))?
    };
    let has_master: bool = conn
        .query_row("SELECT EXISTS (SELECT 1 FROM masters)", [], |r| r.get(0))
        .map_err(sql(path))?;
    if legacy.is_empty() && has_master {
        return Ok(());
    }
    for (key_id, _, nonce, ct) in &legacy {
        let id = super::crypto::RecordIdentity {
            row_id: 0,
            kind: 0,
            key_id: *key_id,
        };
        if keyring.open(id, nonce, ct.clone()).as_deref() != Ok(super::outbox::KEY_CHECK) {
            return Err(StoreError::WrongKey {
                path: path.to_path_buf(),
                key_id: *key_id,
            });
        }
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql(path))?;
    let master_id = 1;
    if !has_master {
        insert_master(&tx, kek, rng, master_id, now_ms, path)?;
        let audit = master
            .derived_audit_key_bytes(AUDIT_LABEL)
            .map_err(key_err(path))?;
        // Id 0: never a row's key id (rows' keys start at 1).
        insert_key(
            &tx,
            kek,
            rng,
            master_id,
            AUDIT_KEY_ID,
            Purpose::Audit,
            "",
            &audit,
            now_ms,
            None,
            path,
        )?;
    }
    for (key_id, created, _, _) in &legacy {
        let bytes = keyring.legacy_key_bytes(*key_id).map_err(key_err(path))?;
        insert_key(
            &tx,
            kek,
            rng,
            master_id,
            *key_id,
            Purpose::Legacy,
            "",
            &bytes,
            *created,
            Some(now_ms),
            path,
        )?;
        tx.execute("DELETE FROM meta WHERE key = 'sealed:' || ?1", [key_id])
            .map_err(sql(path))?;
    }
    tx.execute("DELETE FROM keys", []).map_err(sql(path))?;
    if !legacy.is_empty() {
        allocate_key_id(&tx).map_err(sql(path))?;
        bump_generation(&tx).map_err(sql(path))?;
    }
    tx.commit().map_err(sql(path))?;
    if !legacy.is_empty() {
        tracing::info!(
            keys = legacy.len(),
            "schema 3 data keys moved into the envelope keyring"
        );
    }
    Ok(())
}

/// Rows of `outbox` after `after` sealed under a `legacy` key, at most `limit`:
/// (id, kind, key id, nonce, ciphertext).
type LegacyRow = (i64, u8, u32, Vec<u8>, Vec<u8>);

fn legacy_rows(conn: &Connection, after: i64, limit: usize) -> rusqlite::Result<Vec<LegacyRow>> {
    let mut st = conn.prepare_cached(
        "SELECT id, kind, key_id, nonce, ciphertext FROM outbox
         WHERE id > ?1 AND key_id IN (SELECT key_id FROM data_keys WHERE purpose = 'legacy')
         ORDER BY id LIMIT ?2",
    )?;
    let it = st.query_map(params![after, limit as i64], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })?;
    it.collect()
}

/// Rows re-sealed per transaction (bounds the WAL of a large migration).
const RESEAL_CHUNK: usize = 2000;

/// Re-seals what a schema 3 outbox sealed under its HKDF keys (rows and device state) under
/// each owner's new data key, a chunk of rows per transaction (resumed after a crash), then
/// destroys the legacy keys nothing uses any more. Why re-seal rather than keep the old keys
/// for the old rows: a legacy key seals every patient's rows together, so erasing one
/// patient could not destroy it; re-sealed, every row is under its own patient's key.
/// A row that fails authentication is left as it is (the publisher quarantines it, and its
/// legacy key is kept while it is there).
pub(super) fn reseal_legacy(outbox: &mut super::outbox::Outbox) -> Result<(), StoreError> {
    use super::crypto::RecordIdentity;
    use super::record::Record;
    let path = outbox.path.clone();
    let has_legacy: bool = outbox
        .conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM data_keys WHERE purpose = 'legacy')",
            [],
            |r| r.get(0),
        )
        .map_err(sql(&path))?;
    if !has_legacy {
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    let (mut after, mut moved) = (0i64, 0u64);
    loop {
        let rows = legacy_rows(&outbox.conn, after, RESEAL_CHUNK).map_err(sql(&path))?;
        let Some(last) = rows.last().map(|r| r.0) else {
            break;
        };
        after = last;
        let mut opened = Vec::with_capacity(rows.len());
        for (id, kind, key_id, nonce, ct) in rows {
            let identity = RecordIdentity {
                row_id: id,
                kind,
                key_id,
            };
            if let Ok(plain) = outbox.keyring.open(identity, &nonce, ct) {
                let owner = match Record::decode(&plain) {
                    Ok(Record::Reading(r)) => Owner::of_patient(&r.patient_id),
                    Ok(Record::Alert(a)) => Owner::of_patient(&a.patient_id),
                    Ok(Record::Derived(d)) => Owner::of_patient(&d.patient_id),
                    Err(_) => Owner::Gateway,
                };
                opened.push((id, kind, owner, Zeroizing::new(plain)));
            }
        }
        let mut owners = BTreeMap::new();
        for (_, _, owner, _) in &opened {
            *owners.entry(owner.clone()).or_insert(0i64) += 1;
        }
        let rotate_after = outbox.rotate_after();
        let keys = outbox.envelope.keys_for(
            &mut outbox.conn,
            &mut outbox.keyring,
            &owners,
            rotate_after,
            now,
        )?;
        let tx = outbox
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql(&path))?;
        for (id, kind, owner, plain) in opened {
            let Some(key_id) = keys.get(&owner).copied() else {
                continue;
            };
            let identity = RecordIdentity {
                row_id: id,
                kind,
                key_id,
            };
            let (nonce, ct) = outbox
                .keyring
                .seal(identity, plain.to_vec())
                .map_err(key_err(&path))?;
            tx.execute(
                "UPDATE outbox SET key_id = ?2, nonce = ?3, ciphertext = ?4 WHERE id = ?1",
                params![id, key_id, &nonce[..], ct],
            )
            .map_err(sql(&path))?;
            moved += 1;
        }
        for (owner, n) in &owners {
            if let Some(key_id) = keys.get(owner) {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('sealed:' || ?2, ?1)
                     ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                    params![n, key_id],
                )
                .map_err(sql(&path))?;
            }
        }
        tx.commit().map_err(sql(&path))?;
        for (owner, n) in &owners {
            outbox.envelope.sealed(owner, *n);
        }
    }
    // Device state: read (opened under the legacy key), written back (sealed under the
    // owner's key); a value that no longer opens is dropped (it reads as absent anyway).
    let state: Vec<(String, String)> = {
        let mut st = outbox
            .conn
            .prepare(
                "SELECT owner, key FROM sealed_state
                 WHERE key_id IN (SELECT key_id FROM data_keys WHERE purpose = 'legacy')",
            )
            .map_err(sql(&path))?;
        let it = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql(&path))?;
        it.collect::<Result<_, _>>().map_err(sql(&path))?
    };
    let mut updates = Vec::new();
    for (owner, key) in state {
        match outbox.device_state(&owner, &key)? {
            Some(value) => updates.push(super::outbox::DeviceStateUpdate {
                device_id: owner,
                key,
                value,
            }),
            None => {
                outbox
                    .conn
                    .execute(
                        "DELETE FROM sealed_state WHERE owner = ?1 AND key = ?2",
                        [&owner, &key],
                    )
                    .map_err(sql(&path))?;
            }
        }
    }
    if !updates.is_empty() {
        outbox.append_with_state(&[], &updates, now)?;
    }
    let destroyed = destroy_spent(&mut outbox.conn, &path)?;
    for d in &destroyed {
        outbox.keyring.forget(d.key_id);
    }
    tracing::info!(
        rows = moved,
        state = updates.len(),
        legacy_keys_destroyed = destroyed.len(),
        "schema 3 rows re-sealed under per-patient data keys"
    );
    Ok(())
}

/// A data key as `status` shows it: no key material, patients by pseudonym.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    pub key_id: u32,
    pub purpose: Purpose,
    /// The patient pseudonym (patient keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub age_days: i64,
    pub current: bool,
    /// Rows (outbox and quarantine) sealed under it.
    pub rows: i64,
}

/// Whether the outbox on `conn` has the keyring (schema 5).
pub fn has_keyring(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'data_keys')",
        [],
        |r| r.get(0),
    )
}

/// Every data key with its age and row count: O(keys), read from the keyring and the counts
/// the triggers keep, never from the rows.
pub fn list(conn: &Connection, now: OffsetDateTime) -> rusqlite::Result<Vec<KeyInfo>> {
    if !has_keyring(conn)? {
        return Ok(Vec::new());
    }
    let mut st = conn.prepare(
        "SELECT key_id, purpose, owner, created_at, retired_at IS NULL,
                COALESCE((SELECT value FROM meta WHERE key = 'rows:' || key_id), 0)
         FROM data_keys ORDER BY key_id",
    )?;
    let it = st.query_map([], |r| {
        Ok((
            r.get::<_, u32>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, bool>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in it {
        let (key_id, purpose, owner, created, current, rows) = row?;
        let Some(purpose) = Purpose::parse(&purpose) else {
            continue;
        };
        let created_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(created) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        out.push(KeyInfo {
            key_id,
            purpose,
            patient: (purpose == Purpose::Patient).then_some(owner),
            created_at,
            age_days: (now - created_at).whole_days().max(0),
            current: current
                && matches!(
                    purpose,
                    Purpose::Patient | Purpose::Gateway | Purpose::Audit
                ),
            rows,
        });
    }
    Ok(out)
}

/// A data key destroyed because nothing sealed with it remains.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Destroyed {
    pub key_id: u32,
    pub purpose: Purpose,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
}

/// Destroys (with `secure_delete`) every retired data key under which no row, quarantined
/// row or device state remains: its wraps and its keyring row are zeroed on disk, so a copy
/// of the rows taken earlier can no longer be read with the hub's keys. Run after a
/// retention or delivery purge and after a rotation. Returns what was destroyed (to audit).
pub fn destroy_spent(conn: &mut Connection, path: &Path) -> Result<Vec<Destroyed>, StoreError> {
    let spent: Vec<(u32, String, String)> = {
        let mut st = conn
            .prepare(
                "SELECT key_id, purpose, owner FROM data_keys d
                 WHERE retired_at IS NOT NULL
                   AND COALESCE((SELECT value FROM meta WHERE key = 'rows:' || d.key_id), 0) <= 0
                   AND NOT EXISTS (SELECT 1 FROM sealed_state s WHERE s.key_id = d.key_id)",
            )
            .map_err(sql(path))?;
        let it = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(sql(path))?;
        it.collect::<Result<_, _>>().map_err(sql(path))?
    };
    if spent.is_empty() {
        return Ok(Vec::new());
    }
    secure_delete(conn, true, path)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql(path))?;
    let mut out = Vec::new();
    for (key_id, purpose, owner) in spent {
        // Checked again inside the transaction: a row may have been sealed since.
        let still_used: bool = tx
            .query_row(
                "SELECT COALESCE((SELECT value FROM meta WHERE key = 'rows:' || ?1), 0) > 0
                     OR EXISTS (SELECT 1 FROM sealed_state WHERE key_id = ?1)",
                [key_id],
                |r| r.get(0),
            )
            .map_err(sql(path))?;
        if still_used {
            continue;
        }
        forget_key(&tx, key_id).map_err(sql(path))?;
        let purpose = Purpose::parse(&purpose).unwrap_or(Purpose::Legacy);
        out.push(Destroyed {
            key_id,
            purpose,
            patient: (purpose == Purpose::Patient).then_some(owner),
        });
    }
    bump_generation(&tx).map_err(sql(path))?;
    tx.commit().map_err(sql(path))?;
    secure_delete(conn, false, path)?;
    Ok(out)
}

/// Deletes a data key's wraps, its keyring row and its counters (inside a transaction).
fn forget_key(tx: &Connection, key_id: u32) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM key_wraps WHERE key_id = ?1", [key_id])?;
    tx.execute("DELETE FROM data_keys WHERE key_id = ?1", [key_id])?;
    tx.execute(
        "DELETE FROM meta WHERE key IN ('rows:' || ?1, 'sealed:' || ?1)",
        [key_id],
    )?;
    Ok(())
}

/// What a patient's erasure removed (counts only: this is what is audited and printed).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erasure {
    pub patient: String,
    pub keys_destroyed: Vec<u32>,
    /// Rows not yet delivered to the platform: gone for good.
    pub undelivered_rows: u64,
    pub delivered_rows: u64,
    pub quarantined_rows: u64,
    pub state_values: u64,
    /// Whether the file was rewritten (`VACUUM`) and the WAL truncated after the deletion.
    pub file_rewritten: bool,
}

/// Tries at rewriting the file and truncating the WAL after an erasure.
const ERASE_ATTEMPTS: u32 = 25;

/// Erases `patient`: destroys their data keys and deletes, in one transaction with
/// `secure_delete` on, every row and quarantined row sealed with them and the device state
/// they own (the alert state `patient:<id>`, and the values of `devices`, theirs in the
/// configuration); then checkpoints and truncates the WAL and rewrites the file (`VACUUM`),
/// so no page, free page or WAL frame keeps a copy of their rows.
pub fn erase_patient(
    conn: &mut Connection,
    path: &Path,
    patient: &str,
    devices: &[String],
) -> Result<Erasure, StoreError> {
    let mut out = Erasure {
        patient: patient.to_string(),
        ..Erasure::default()
    };
    secure_delete(conn, true, path)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql(path))?;
    out.keys_destroyed = {
        let mut st = tx
            .prepare("SELECT key_id FROM data_keys WHERE purpose = 'patient' AND owner = ?1 ORDER BY key_id")
            .map_err(sql(path))?;
        let it = st.query_map([patient], |r| r.get(0)).map_err(sql(path))?;
        it.collect::<Result<_, _>>().map_err(sql(path))?
    };
    let mut counts = Delta::default();
    for key_id in &out.keys_destroyed {
        {
            // Delivery is kept apart from the rows (`delivery.rs`): read it before the delete.
            let mut st = tx
                .prepare(&format!(
                    "SELECT o.lane, NOT {}, o.refused_at IS NOT NULL FROM outbox o
                     WHERE o.key_id = ?1",
                    super::delivery::DELIVERED
                ))
                .map_err(sql(path))?;
            let mut rows = st.query([key_id]).map_err(sql(path))?;
            while let Some(r) = rows.next().map_err(sql(path))? {
                let lane: i64 = r.get(0).map_err(sql(path))?;
                let undelivered: bool = r.get(1).map_err(sql(path))?;
                let refused: bool = r.get(2).map_err(sql(path))?;
                if undelivered {
                    out.undelivered_rows += 1;
                    counts.undelivered(lane, -1);
                    counts.refused -= i64::from(refused);
                } else {
                    out.delivered_rows += 1;
                    counts.delivered_held -= 1;
                }
            }
        }
        tx.execute("DELETE FROM outbox WHERE key_id = ?1", [key_id])
            .map_err(sql(path))?;
        out.quarantined_rows += tx
            .execute("DELETE FROM quarantine WHERE key_id = ?1", [key_id])
            .map_err(sql(path))? as u64;
        out.state_values += tx
            .execute("DELETE FROM sealed_state WHERE key_id = ?1", [key_id])
            .map_err(sql(path))? as u64;
        forget_key(&tx, *key_id).map_err(sql(path))?;
    }
    let alert_state = format!("patient:{patient}");
    out.state_values += tx
        .execute("DELETE FROM sealed_state WHERE owner = ?1", [&alert_state])
        .map_err(sql(path))? as u64;
    for device in devices {
        out.state_values += tx
            .execute("DELETE FROM sealed_state WHERE owner = ?1", [device])
            .map_err(sql(path))? as u64;
    }
    counts.apply(&tx).map_err(sql(path))?;
    bump_generation(&tx).map_err(sql(path))?;
    tx.commit().map_err(sql(path))?;
    // The keys are gone (committed): what follows removes copies of the ciphertexts. A
    // reader of the running daemon can hold the WAL for a moment: tried a few times.
    for attempt in 0..ERASE_ATTEMPTS {
        let done = checkpoint_truncate(conn, path)
            .and_then(|()| conn.execute_batch("VACUUM").map_err(sql(path)))
            .and_then(|()| checkpoint_truncate(conn, path));
        match done {
            Ok(()) => {
                out.file_rewritten = true;
                break;
            }
            Err(e) if attempt + 1 == ERASE_ATTEMPTS => {
                tracing::warn!(error = %e, "erasure: the outbox could not be rewritten and its WAL truncated yet; the patient's keys are destroyed");
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
    secure_delete(conn, false, path)?;
    Ok(out)
}

/// `vitalgate key rotate-master`, step 1: in ONE transaction, records `new`'s check value
/// as a second master and wraps every data key under it too. From its commit both masters
/// open the keyring; before it, only the old one (nothing changed). Returns the new
/// master's id. Rows are untouched.
pub fn add_master(
    conn: &mut Connection,
    old: &MasterKey,
    new: &MasterKey,
    path: &Path,
    now: OffsetDateTime,
) -> Result<i64, StoreError> {
    let old_kek = old.key_encryption_key().map_err(key_err(path))?;
    let new_kek = new.key_encryption_key().map_err(key_err(path))?;
    let rng = SystemRandom::new();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql(path))?;
    let rows = masters(&tx, path)?;
    let Some(old_id) = matching_master(&old_kek, &rows) else {
        return Err(StoreError::WrongKey {
            path: path.to_path_buf(),
            key_id: 0,
        });
    };
    // A rotation left half-way (another master beside the old): started again from the old.
    tx.execute("DELETE FROM key_wraps WHERE master_id != ?1", [old_id])
        .map_err(sql(path))?;
    tx.execute("DELETE FROM masters WHERE master_id != ?1", [old_id])
        .map_err(sql(path))?;
    let new_id = old_id + 1;
    insert_master(&tx, &new_kek, &rng, new_id, ms(now), path)?;
    let wraps: Vec<WrapRow> = {
        let mut st = tx
            .prepare(
                "SELECT d.key_id, d.purpose, d.owner, w.nonce, w.wrapped FROM data_keys d
                 JOIN key_wraps w ON w.key_id = d.key_id AND w.master_id = ?1",
            )
            .map_err(sql(path))?;
        let it = st
            .query_map([old_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(sql(path))?;
        it.collect::<Result<_, _>>().map_err(sql(path))?
    };
    for (key_id, purpose_text, owner, nonce, wrapped) in wraps {
        let purpose = Purpose::parse(&purpose_text).ok_or_else(|| StoreError::Unusable {
            path: path.to_path_buf(),
            problem: format!("data key {key_id} has an unknown purpose"),
            fix: "restore the outbox from a backup made by this version",
        })?;
        let key = unwrap_key(&old_kek, old_id, key_id, purpose, &owner, &nonce, &wrapped)
            .ok_or_else(|| StoreError::Unusable {
                path: path.to_path_buf(),
                problem: format!("the wrap of data key {key_id} fails authentication"),
                fix:
                    "the keyring is damaged; nothing was changed. Restore the outbox from a backup",
            })?;
        let (n, w) = seal(
            &new_kek,
            &rng,
            &wrap_aad(new_id, key_id, purpose, &owner),
            &key[..],
        )
        .map_err(key_err(path))?;
        tx.execute(
            "INSERT INTO key_wraps (key_id, master_id, nonce, wrapped) VALUES (?1, ?2, ?3, ?4)",
            params![key_id, new_id, &n[..], w],
        )
        .map_err(sql(path))?;
    }
    bump_generation(&tx).map_err(sql(path))?;
    tx.commit().map_err(sql(path))?;
    Ok(new_id)
}

/// `vitalgate key rotate-master`, last step (once the new key is where the daemon reads it):
/// destroys every master but `keep`, and its wraps, with `secure_delete`, and truncates the
/// WAL. The same is done by the first open with the new key if this step never ran.
pub fn finish_master(conn: &mut Connection, keep: i64, path: &Path) -> Result<(), StoreError> {
    secure_delete(conn, true, path)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql(path))?;
    drop_other_masters(&tx, keep, path)?;
    tx.commit().map_err(sql(path))?;
    checkpoint_truncate(conn, path)?;
    secure_delete(conn, false, path)
}

/// The audit MAC key the keyring keeps for `master`'s outbox at `outbox` (read-only, beside
/// a running daemon), set on `master` so the audit log verifies across master rotations.
/// Unchanged when there is no outbox or keyring yet (the key is then derived from the master,
/// which is what the keyring records at its first open).
/// Any problem reading the outbox leaves `master` as it is: the open that follows reports
/// it (a wrong key, a locked or unreadable file) with the message made for it.
pub fn attach_audit_key(master: MasterKey, outbox: &Path) -> MasterKey {
    match kept_audit_key(&master, outbox) {
        Ok(Some(key)) => master.with_audit_key(key),
        Ok(None) => master,
        Err(e) => {
            tracing::debug!(error = %e, "the audit key could not be read from the keyring");
            master
        }
    }
}

fn kept_audit_key(
    master: &MasterKey,
    outbox: &Path,
) -> Result<Option<Zeroizing<[u8; 32]>>, StoreError> {
    if !outbox.is_file() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(outbox, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql(outbox))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql(outbox))?;
    let exists: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'key_wraps')",
            [],
            |r| r.get(0),
        )
        .map_err(sql(outbox))?;
    if !exists {
        return Ok(None);
    }
    let kek = master.key_encryption_key().map_err(key_err(outbox))?;
    let rows = masters(&conn, outbox)?;
    let Some(master_id) = matching_master(&kek, &rows) else {
        return Ok(None);
    };
    let wrap: Option<(u32, Vec<u8>, Vec<u8>)> = conn
        .query_row(
            "SELECT d.key_id, w.nonce, w.wrapped FROM data_keys d
             JOIN key_wraps w ON w.key_id = d.key_id AND w.master_id = ?1
             WHERE d.purpose = 'audit' ORDER BY d.key_id LIMIT 1",
            [master_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(sql(outbox))?;
    Ok(wrap.and_then(|(id, n, w)| unwrap_key(&kek, master_id, id, Purpose::Audit, "", &n, &w)))
}

/// Keyring operations on an open outbox (its connection and data keys).
impl super::outbox::Outbox {
    /// Destroys the retired data keys nothing is sealed with any more (see [`destroy_spent`]).
    pub fn destroy_spent_keys(&mut self) -> Result<Vec<Destroyed>, StoreError> {
        let destroyed = destroy_spent(&mut self.conn, &self.path)?;
        for d in &destroyed {
            self.keyring.forget(d.key_id);
        }
        Ok(destroyed)
    }

    /// Erases `patient` (see [`erase_patient`]); `devices` are theirs in the configuration.
    pub fn erase_patient(
        &mut self,
        patient: &str,
        devices: &[String],
    ) -> Result<Erasure, StoreError> {
        let erased = erase_patient(&mut self.conn, &self.path, patient, devices)?;
        for id in &erased.keys_destroyed {
            self.keyring.forget(*id);
        }
        Ok(erased)
    }

    /// `rotate-master` step 1 (see [`add_master`]): the keyring wrapped under `new` too.
    pub fn add_master_key(
        &mut self,
        old: &MasterKey,
        new: &MasterKey,
        now: OffsetDateTime,
    ) -> Result<i64, StoreError> {
        add_master(&mut self.conn, old, new, &self.path, now)
    }

    /// `rotate-master` last step (see [`finish_master`]): only master `keep` remains.
    pub fn finish_master_key(&mut self, keep: i64) -> Result<(), StoreError> {
        finish_master(&mut self.conn, keep, &self.path)
    }

    /// What this open did about a master rotation left half-way, if anything.
    pub fn master_handover(&self) -> Option<Handover> {
        self.envelope.handover
    }

    /// Every data key with its age and row count (no key material).
    pub fn data_keys(&self) -> Result<Vec<KeyInfo>, StoreError> {
        list(&self.conn, OffsetDateTime::now_utc()).map_err(sql(&self.path))
    }

    /// The highest data key id whose creation was audited (`meta.keys_audited`).
    pub fn keys_audited_up_to(&self) -> Result<u32, StoreError> {
        self.conn
            .query_row(
                "SELECT COALESCE((SELECT value FROM meta WHERE key = 'keys_audited'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(sql(&self.path))
    }

    /// Records that data keys up to `key_id` were audited.
    pub fn set_keys_audited_up_to(&self, key_id: u32) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('keys_audited', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
                [key_id],
            )
            .map(|_| ())
            .map_err(sql(&self.path))
    }

    /// Data keys created after key id `after` (ids only grow): what the daemon has yet to audit.
    pub fn data_keys_after(&self, after: u32) -> Result<Vec<KeyInfo>, StoreError> {
        Ok(self
            .data_keys()?
            .into_iter()
            .filter(|k| k.key_id > after && k.purpose != Purpose::Audit)
            .collect())
    }
}

#[cfg(test)]
mod tests;
