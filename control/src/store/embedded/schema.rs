//! The tables of the redb file and the records in them.
//!
//! Modelled on kine's single log table, split in four so that every read is one B-tree
//! range:
//! - `current`: the live state, for gets, current lists and compare-and-swap;
//! - `history`: one row per revision (the write log), for watch replay; a row names the
//!   version it replaced, so events carry their previous value without storing it twice;
//! - `versions`: `(key, revision)` for every row of `history`, so "the version of each key
//!   under a prefix as of revision R" is a seek per key (MVCC lists);
//! - `meta`: the counters.

use redb::{ReadableTable, StorageError, TableDefinition};

use crate::store::{KeyValue, Revision};

/// key -> (create_revision, mod_revision, value)
pub(super) const CURRENT: TableDefinition<&str, (i64, i64, &[u8])> = TableDefinition::new("current");
/// revision -> (key, kind, create_revision, prev_mod_revision, value)
pub(super) const HISTORY: TableDefinition<i64, (&str, u8, i64, i64, &[u8])> = TableDefinition::new("history");
/// (key, revision) -> kind
pub(super) const VERSIONS: TableDefinition<(&str, i64), u8> = TableDefinition::new("versions");
pub(super) const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

/// Bumped when the layout above changes, so an old binary refuses a newer file.
pub(super) const SCHEMA_VERSION: i64 = 1;

pub(super) mod meta_key {
    pub const SCHEMA: &str = "schema_version";
    /// The revision of the last committed write.
    pub const REVISION: &str = "revision";
    /// Reads below this are refused; history at or below it may be gone.
    pub const COMPACTED: &str = "compacted";
    /// How far the background sweep has physically removed compacted history. Kept apart
    /// from `compacted` so a crash mid-sweep resumes instead of leaking rows.
    pub const SWEPT: &str = "swept";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Put,
    Delete,
}

impl Kind {
    pub(super) fn to_byte(self) -> u8 {
        match self {
            Kind::Put => 1,
            Kind::Delete => 2,
        }
    }

    pub(super) fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Put),
            2 => Some(Kind::Delete),
            _ => None,
        }
    }
}

/// One row of `history`, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct HistoryRow {
    pub key: String,
    pub kind: Kind,
    /// For a put, the key's create revision; for a delete, that of the deleted version.
    pub create_revision: Revision,
    /// The version this write replaced (0 when the key did not exist).
    pub prev_mod_revision: Revision,
    /// Empty for a delete.
    pub value: Vec<u8>,
}

impl HistoryRow {
    /// The version this row wrote, if it is a put at `revision`.
    pub(super) fn to_kv(&self, revision: Revision) -> KeyValue {
        KeyValue {
            key: self.key.clone(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: revision,
        }
    }
}

pub(super) fn read_meta(table: &impl ReadableTable<&'static str, i64>, key: &str) -> Result<i64, StorageError> {
    Ok(table.get(key)?.map(|g| g.value()).unwrap_or(0))
}

pub(super) fn read_current(
    table: &impl ReadableTable<&'static str, (i64, i64, &'static [u8])>,
    key: &str,
) -> Result<Option<KeyValue>, StorageError> {
    Ok(table.get(key)?.map(|g| {
        let (create_revision, mod_revision, value) = g.value();
        KeyValue {
            key: key.to_owned(),
            value: value.to_vec(),
            create_revision,
            mod_revision,
        }
    }))
}

/// `Ok(None)` when the row is absent; a row with an unknown kind byte is reported as
/// absent too and caught by [`super::EmbeddedStore::verify`].
pub(super) fn read_history(
    table: &impl ReadableTable<i64, (&'static str, u8, i64, i64, &'static [u8])>,
    revision: Revision,
) -> Result<Option<HistoryRow>, StorageError> {
    Ok(table.get(revision)?.and_then(|g| decode_history(g.value())))
}

pub(super) fn decode_history(
    (key, kind, create_revision, prev_mod_revision, value): (&str, u8, i64, i64, &[u8]),
) -> Option<HistoryRow> {
    Some(HistoryRow {
        key: key.to_owned(),
        kind: Kind::from_byte(kind)?,
        create_revision,
        prev_mod_revision,
        value: value.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_round_trips_and_rejects_unknown_bytes() {
        for kind in [Kind::Put, Kind::Delete] {
            assert_eq!(Kind::from_byte(kind.to_byte()), Some(kind));
        }
        assert_eq!(Kind::from_byte(0), None);
    }
}
