//! Reads, each inside one redb read transaction, so every answer is a consistent snapshot
//! and never waits for the writer.

use std::ops::Bound;

use redb::{ReadTransaction, ReadableTable};

use super::schema::{self, CURRENT, HISTORY, HistoryRow, Kind, META, VERSIONS, meta_key};
use crate::store::keyspace::{effective_limit, page_start};
use crate::store::{Event, KeyValue, ListOptions, ListResult, Revision, StoreError};

pub(super) fn get(txn: &ReadTransaction, key: &str) -> Result<Option<KeyValue>, StoreError> {
    let current = txn.open_table(CURRENT)?;
    Ok(schema::read_current(&current, key)?)
}

pub(super) fn list(txn: &ReadTransaction, opts: &ListOptions) -> Result<ListResult, StoreError> {
    let meta = txn.open_table(META)?;
    let current = schema::read_meta(&meta, meta_key::REVISION)?;
    let compacted = schema::read_meta(&meta, meta_key::COMPACTED)?;
    // etcd reads revision 0 (or less) as "current"; so do we.
    match opts.revision.filter(|&at| at > 0) {
        None => list_current(txn, opts, current),
        Some(at) if at == current => list_current(txn, opts, current),
        Some(at) if at > current => Err(StoreError::FutureRevision { requested: at, current }),
        Some(at) if at < compacted => Err(StoreError::Compacted {
            requested: at,
            compacted,
        }),
        Some(at) => list_at(txn, opts, at),
    }
}

/// Pages over `current` directly: the common case, one range scan.
fn list_current(txn: &ReadTransaction, opts: &ListOptions, revision: Revision) -> Result<ListResult, StoreError> {
    let table = txn.open_table(CURRENT)?;
    let limit = effective_limit(opts.limit);
    let start = page_start(&opts.prefix, opts.start_after.as_deref());
    let mut items = Vec::new();
    let mut more = false;
    for entry in table.range::<&str>((start, Bound::Unbounded))? {
        let (key, value) = entry?;
        let key = key.value();
        if !key.starts_with(opts.prefix.as_str()) {
            break;
        }
        if limit.is_some_and(|n| items.len() >= n) {
            more = true;
            break;
        }
        let (create_revision, mod_revision, value) = value.value();
        items.push(KeyValue {
            key: key.to_owned(),
            value: value.to_vec(),
            create_revision,
            mod_revision,
        });
    }
    Ok(ListResult { items, revision, more })
}

/// The state as of an older revision: for each key under the prefix, its newest version
/// at or before `at`, skipped if that version is a delete. One seek per key in `versions`.
fn list_at(txn: &ReadTransaction, opts: &ListOptions, at: Revision) -> Result<ListResult, StoreError> {
    let versions = txn.open_table(VERSIONS)?;
    let history = txn.open_table(HISTORY)?;
    let limit = effective_limit(opts.limit);
    let mut items = Vec::new();
    let mut more = false;
    // Revisions are positive, so (k, 0) sorts before every version of k and (k, MAX)
    // after them.
    let mut lower: Bound<(String, i64)> = match page_start(&opts.prefix, opts.start_after.as_deref()) {
        Bound::Excluded(after) => Bound::Excluded((after.to_owned(), i64::MAX)),
        Bound::Included(prefix) => Bound::Included((prefix.to_owned(), 0)),
        Bound::Unbounded => Bound::Unbounded,
    };
    loop {
        let bound = lower.as_ref().map(|(k, r)| (k.as_str(), *r));
        let Some(entry) = versions.range::<(&str, i64)>((bound, Bound::Unbounded))?.next() else {
            break;
        };
        let key = entry?.0.value().0.to_owned();
        if !key.starts_with(opts.prefix.as_str()) {
            break;
        }
        let newest = versions
            .range::<(&str, i64)>((key.as_str(), 0)..=(key.as_str(), at))?
            .next_back();
        if let Some(newest) = newest {
            let (version, kind) = newest?;
            let revision = version.value().1;
            if Kind::from_byte(kind.value()) == Some(Kind::Put) {
                if limit.is_some_and(|n| items.len() >= n) {
                    more = true;
                    break;
                }
                let row = schema::read_history(&history, revision)?.ok_or_else(|| missing_history(&key, revision))?;
                items.push(row.to_kv(revision));
            }
        }
        lower = Bound::Excluded((key, i64::MAX));
    }
    Ok(ListResult {
        items,
        revision: at,
        more,
    })
}

/// A slice of the history for a watcher.
pub(super) struct EventChunk {
    pub events: Vec<Event>,
    /// Every revision up to here has been looked at (matching or not).
    pub scanned_to: Revision,
    /// No committed revision beyond `scanned_to` (up to the bound asked for) is left.
    pub at_end: bool,
}

/// Bounds on one replay read: it runs on a blocking thread and must stay short however
/// sparse the prefix is in the history.
pub(super) struct ChunkLimits {
    pub max_events: usize,
    pub max_scanned: usize,
}

/// Events for keys under `prefix` with revision in `(after, until]` (`until` defaults to
/// the last committed revision).
pub(super) fn read_events(
    txn: &ReadTransaction,
    prefix: &str,
    after: Revision,
    until: Option<Revision>,
    limits: &ChunkLimits,
) -> Result<EventChunk, StoreError> {
    let meta = txn.open_table(META)?;
    let compacted = schema::read_meta(&meta, meta_key::COMPACTED)?;
    if after < compacted {
        return Err(StoreError::Compacted {
            requested: after,
            compacted,
        });
    }
    let end = schema::read_meta(&meta, meta_key::REVISION)?.min(until.unwrap_or(Revision::MAX));
    let history = txn.open_table(HISTORY)?;
    let mut events = Vec::new();
    let mut scanned = 0;
    if end > after {
        for entry in history.range((after + 1)..=end)? {
            let (revision, row) = entry?;
            let revision = revision.value();
            let row = schema::decode_history(row.value()).ok_or_else(|| missing_history("?", revision))?;
            scanned += 1;
            if row.key.starts_with(prefix) {
                events.push(to_event(&history, row, revision)?);
            }
            if revision < end && (events.len() >= limits.max_events || scanned >= limits.max_scanned) {
                return Ok(EventChunk {
                    events,
                    scanned_to: revision,
                    at_end: false,
                });
            }
        }
    }
    Ok(EventChunk {
        events,
        scanned_to: end.max(after),
        at_end: true,
    })
}

fn to_event(
    history: &impl ReadableTable<i64, (&'static str, u8, i64, i64, &'static [u8])>,
    row: HistoryRow,
    revision: Revision,
) -> Result<Event, StoreError> {
    let prev = match row.prev_mod_revision {
        0 => None,
        prev_rev => {
            let prev_row =
                schema::read_history(history, prev_rev)?.ok_or_else(|| missing_history(&row.key, prev_rev))?;
            Some(prev_row.to_kv(prev_rev))
        }
    };
    match (row.kind, prev) {
        (Kind::Put, prev) => Ok(Event::Put {
            kv: row.to_kv(revision),
            prev,
        }),
        (Kind::Delete, Some(prev)) => Ok(Event::Delete { prev, revision }),
        (Kind::Delete, None) => Err(StoreError::Inconsistent(format!(
            "delete of {} at revision {revision} names no previous version",
            row.key
        ))),
    }
}

fn missing_history(key: &str, revision: Revision) -> StoreError {
    StoreError::Inconsistent(format!("history row {revision} (key {key}) is missing or unreadable"))
}
