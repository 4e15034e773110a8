//! Backups, in the shape of `etcdctl snapshot save` / `snapshot restore`.
//!
//! A snapshot is itself a redb file in our schema, written from one read transaction, so
//! it is consistent however busy the store is, and compact (it holds only live pages).
//! Both directions write to `<dest>.part`, fsync, then rename, so a crash never leaves a
//! half-written file under the final name.

use std::fs::File;
use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, Value, WriteTransaction,
};

use super::schema::{self, CURRENT, HISTORY, META, SCHEMA_VERSION, VERSIONS, meta_key};
use crate::store::{Revision, StoreError};

/// What a snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub revision: Revision,
    pub compacted: Revision,
    pub keys: u64,
    pub history_rows: u64,
}

pub(super) fn save(db: &Database, dest: &Path) -> Result<SnapshotInfo, StoreError> {
    refuse_existing(dest)?;
    let part = part_path(dest);
    remove_stale(&part)?;
    let snapshot = db.begin_read()?;
    let info = {
        let out = Database::builder().create(&part)?;
        let mut txn = out.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        copy_table(&snapshot, &txn, META)?;
        let keys = copy_table(&snapshot, &txn, CURRENT)?;
        let history_rows = copy_table(&snapshot, &txn, HISTORY)?;
        copy_table(&snapshot, &txn, VERSIONS)?;
        txn.commit()?;
        let meta = snapshot.open_table(META)?;
        SnapshotInfo {
            revision: schema::read_meta(&meta, meta_key::REVISION)?,
            compacted: schema::read_meta(&meta, meta_key::COMPACTED)?,
            keys,
            history_rows,
        }
    };
    publish(&part, dest)?;
    tracing::info!(dest = %dest.display(), revision = info.revision, keys = info.keys, "saved store snapshot");
    Ok(info)
}

/// Restores `snapshot` into a new data file at `data` (which must not exist), for a store
/// that is not running, like `etcdctl snapshot restore`. The snapshot is checked (redb's
/// page checksums and our schema) before anything appears at `data`.
pub fn snapshot_restore(snapshot: impl AsRef<Path>, data: impl AsRef<Path>) -> Result<SnapshotInfo, StoreError> {
    let (snapshot, data) = (snapshot.as_ref(), data.as_ref());
    refuse_existing(data)?;
    let part = part_path(data);
    remove_stale(&part)?;
    // Checked on the copy: opening a redb file may write to it, and the snapshot stays
    // untouched.
    std::fs::copy(snapshot, &part).map_err(|e| io_error(snapshot, "copy snapshot", e))?;
    let info = match check(&part) {
        Ok(info) => info,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    publish(&part, data)?;
    tracing::info!(snapshot = %snapshot.display(), data = %data.display(), revision = info.revision, "restored store snapshot");
    Ok(info)
}

fn check(path: &Path) -> Result<SnapshotInfo, StoreError> {
    let mut db = Database::builder().open(path)?;
    if !db.check_integrity()? {
        return Err(StoreError::Inconsistent(format!(
            "snapshot {} is damaged (redb had to repair it)",
            path.display()
        )));
    }
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let schema_version = schema::read_meta(&meta, meta_key::SCHEMA)?;
    if schema_version != SCHEMA_VERSION {
        return Err(StoreError::Inconsistent(format!(
            "snapshot has schema version {schema_version}; this build reads version {SCHEMA_VERSION}"
        )));
    }
    Ok(SnapshotInfo {
        revision: schema::read_meta(&meta, meta_key::REVISION)?,
        compacted: schema::read_meta(&meta, meta_key::COMPACTED)?,
        keys: txn.open_table(CURRENT)?.len()?,
        history_rows: txn.open_table(HISTORY)?.len()?,
    })
}

fn copy_table<K: Key + 'static, V: Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let source = from.open_table(table)?;
    let mut target = to.open_table(table)?;
    let mut rows = 0;
    for entry in source.iter()? {
        let (k, v) = entry?;
        target.insert(k.value(), v.value())?;
        rows += 1;
    }
    Ok(rows)
}

fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

fn refuse_existing(path: &Path) -> Result<(), StoreError> {
    if path.exists() {
        return Err(io_error(
            path,
            "refusing to overwrite",
            std::io::ErrorKind::AlreadyExists.into(),
        ));
    }
    Ok(())
}

/// A `.part` file is what an interrupted save or restore leaves behind.
fn remove_stale(part: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(part) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(part, "remove stale", e)),
        _ => Ok(()),
    }
}

/// fsync the file, rename it into place, fsync the directory so the rename is durable.
fn publish(part: &Path, dest: &Path) -> Result<(), StoreError> {
    File::open(part)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(part, "sync", e))?;
    std::fs::rename(part, dest).map_err(|e| io_error(dest, "rename into place", e))?;
    let dir = match dest.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "sync directory", e))
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::backend(std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display())))
}
