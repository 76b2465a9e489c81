//! Each boot's clock anchor (`crate::clock::Anchor`), kept in `meta` as
//! `clock_anchor:<boot id hex>` = wall-minus-boottime in nanoseconds: no schema change, a
//! handful of rows (one per boot that synced), read by the publisher to correct the times of
//! readings received before sync.

use std::collections::HashMap;

use rusqlite::params;

use super::{Outbox, StoreError};
use crate::clock::{Anchor, BootId};

const PREFIX: &str = "clock_anchor:";

impl Outbox {
    /// Keeps (or replaces) `anchor` for its boot.
    pub fn set_clock_anchor(&mut self, anchor: &Anchor) -> Result<(), StoreError> {
        let offset = i64::try_from(anchor.wall_minus_boottime_ns).unwrap_or(i64::MAX);
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![format!("{PREFIX}{}", anchor.boot.hex()), offset],
            )
            .map_err(self.sql_err())?;
        Ok(())
    }

    /// Every boot's anchor.
    pub fn clock_anchors(&self) -> Result<HashMap<BootId, Anchor>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT key, value FROM meta WHERE key >= ?1 AND key < ?2")
            .map_err(self.sql_err())?;
        let rows = st
            .query_map(params![PREFIX, "clock_anchor;"], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(self.sql_err())?;
        let mut out = HashMap::new();
        for row in rows {
            let (key, offset) = row.map_err(self.sql_err())?;
            let Some(boot) = key
                .strip_prefix(PREFIX)
                .and_then(|h| u128::from_str_radix(h, 16).ok())
                .map(BootId)
            else {
                continue;
            };
            out.insert(
                boot,
                Anchor {
                    boot,
                    wall_minus_boottime_ns: i128::from(offset),
                },
            );
        }
        Ok(out)
    }
}
