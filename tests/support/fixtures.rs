//! Outboxes written by earlier builds, kept in `tests/fixtures/`, for the tests that prove
//! rows written before still read back.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use vitalgate::store::MasterKey;

/// An outbox holding CBOR-encoded rows with their nonce in a column of its own (written
/// before the packed format and schema 7), and its master key.
pub const OUTBOX_WITH_CBOR_ROWS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/outbox-cbor-rows"
);

/// The outbox written by an earlier build and its key, copied into `dir` where the test may
/// change them (the key file with the mode a master key must have).
pub fn outbox_written_before(dir: &Path) -> (PathBuf, MasterKey) {
    let db = dir.join("outbox.db");
    let fixture = Path::new(OUTBOX_WITH_CBOR_ROWS);
    std::fs::copy(fixture.join("outbox.sqlite"), &db).unwrap();
    let key = dir.join("master.key");
    std::fs::copy(fixture.join("master.key"), &key).unwrap();
    for f in [&db, &key] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    (db, MasterKey::load(&key).unwrap())
}
