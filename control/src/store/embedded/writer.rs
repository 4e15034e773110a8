//! The single writer thread: group commit and the compaction sweep.
//!
//! redb allows one write transaction at a time and each durable commit costs an fsync, so
//! all writes go through this thread. It takes every request already queued (up to
//! `max_batch`), applies them in arrival order inside one transaction — each with its own
//! revision, each compare-and-swap checked against the state left by the one before —
//! commits once, then publishes the events and answers. Under load the fsync is shared by
//! the whole batch; alone, a write waits for nobody.
//!
//! It is a plain thread, not a tokio task, because every step blocks on the disk.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use redb::{Database, Durability, ReadableTable, StorageError, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::schema::{self, CURRENT, HISTORY, Kind, META, VERSIONS, meta_key};
use crate::store::{Event, KeyValue, Revision, StoreError};

pub(super) enum WriteOp {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact {
        revision: Revision,
    },
}

pub(super) enum Applied {
    Put(KeyValue),
    Deleted(KeyValue, Revision),
    Compacted,
}

pub(super) struct WriteRequest {
    pub op: WriteOp,
    pub reply: oneshot::Sender<Result<Applied, StoreError>>,
}

/// History rows the sweep removes per transaction, so that compacting a long history
/// never stalls writers for long: client batches run between sweep steps.
const SWEEP_CHUNK: usize = 2048;

pub(super) fn spawn(
    db: Arc<Database>,
    shared: Arc<Shared>,
    requests: mpsc::Receiver<WriteRequest>,
    max_batch: usize,
    sweep_pending: bool,
) -> std::io::Result<JoinHandle<()>> {
    let writer = Writer {
        db,
        shared,
        requests,
        max_batch: max_batch.max(1),
        sweep_pending,
    };
    std::thread::Builder::new()
        .name("rudder-store-writer".into())
        .spawn(move || writer.run())
}

struct Writer {
    db: Arc<Database>,
    shared: Arc<Shared>,
    requests: mpsc::Receiver<WriteRequest>,
    max_batch: usize,
    /// Compacted history not yet physically removed.
    sweep_pending: bool,
}

/// The four tables, open in one write transaction.
struct Tables<'txn> {
    current: Table<'txn, &'static str, (i64, i64, &'static [u8])>,
    history: Table<'txn, i64, (&'static str, u8, i64, i64, &'static [u8])>,
    versions: Table<'txn, (&'static str, i64), u8>,
}

/// A batch's outcome once committed.
struct Committed {
    results: Vec<Result<Applied, StoreError>>,
    events: Vec<Arc<Event>>,
    revision: Revision,
    compacted: Revision,
}

type OpResult = Result<(Applied, Option<Event>), StoreError>;

impl Writer {
    fn run(mut self) {
        // Ends every watch however this thread stops, a panic included: watchers must
        // not wait for events that will never come.
        let _close_hub = CloseHubOnExit(self.shared.clone());
        loop {
            let first = if self.sweep_pending {
                match self.requests.try_recv() {
                    Ok(request) => Some(request),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                match self.requests.blocking_recv() {
                    Some(request) => Some(request),
                    None => break,
                }
            };
            if let Some(first) = first {
                let mut batch = vec![first];
                while batch.len() < self.max_batch {
                    match self.requests.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                self.apply(batch);
            }
            if self.sweep_pending
                && let Err(e) = self.sweep_step()
            {
                // Left for the next compaction (or open) to resume from `swept`.
                tracing::error!(error = %e, "compaction sweep failed");
                self.sweep_pending = false;
            }
        }
        tracing::debug!("store writer stopping");
    }

    fn apply(&mut self, batch: Vec<WriteRequest>) {
        let (ops, replies): (Vec<WriteOp>, Vec<_>) = batch.into_iter().map(|r| (r.op, r.reply)).unzip();
        let count = ops.len();
        match self.commit(ops) {
            Ok(committed) => {
                let before = self.shared.compacted.load(Ordering::Acquire);
                if committed.compacted > before {
                    self.sweep_pending = true;
                }
                self.shared.revision.store(committed.revision, Ordering::Release);
                self.shared.compacted.store(committed.compacted, Ordering::Release);
                self.shared.batches.fetch_add(1, Ordering::Relaxed);
                // Published before anyone is answered: a caller that watches from the
                // revision it was just given finds it either in history or live.
                self.shared.hub.publish(&committed.events, committed.revision);
                for (reply, result) in replies.into_iter().zip(committed.results) {
                    // The caller may have gone away; the write stands regardless.
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = count, "store write transaction failed");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::backend_msg(format!("write transaction failed: {e}"))));
                }
            }
        }
    }

    fn commit(&mut self, ops: Vec<WriteOp>) -> Result<Committed, redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut results = Vec::with_capacity(ops.len());
        let mut events = Vec::new();
        let (start_revision, revision, start_compacted, compacted) = {
            let mut meta = txn.open_table(META)?;
            let mut tables = open_tables(&txn)?;
            let start_revision = schema::read_meta(&meta, meta_key::REVISION)?;
            let start_compacted = schema::read_meta(&meta, meta_key::COMPACTED)?;
            let (mut revision, mut compacted) = (start_revision, start_compacted);
            for op in ops {
                match apply_op(&mut tables, &mut revision, &mut compacted, op)? {
                    Ok((applied, event)) => {
                        events.extend(event.map(Arc::new));
                        results.push(Ok(applied));
                    }
                    Err(e) => results.push(Err(e)),
                }
            }
            if revision != start_revision {
                meta.insert(meta_key::REVISION, revision)?;
            }
            if compacted != start_compacted {
                meta.insert(meta_key::COMPACTED, compacted)?;
            }
            (start_revision, revision, start_compacted, compacted)
        };
        if revision == start_revision && compacted == start_compacted {
            // Every request failed its check: nothing to make durable, skip the fsync.
            txn.abort()?;
        } else {
            txn.commit()?;
            self.shared.commits.fetch_add(1, Ordering::Relaxed);
            self.shared
                .writes
                .fetch_add((revision - start_revision) as u64, Ordering::Relaxed);
        }
        Ok(Committed {
            results,
            events,
            revision,
            compacted,
        })
    }

    /// Removes one chunk of compacted history: for each key, every version at or below the
    /// compacted revision except the newest, and that one too if it is a delete. This is
    /// etcd's rule; it keeps reads at exactly the compacted revision working and keeps the
    /// previous value of every later event.
    fn sweep_step(&mut self) -> Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let (removed, swept, target) = {
            let mut meta = txn.open_table(META)?;
            let mut tables = open_tables(&txn)?;
            let swept = schema::read_meta(&meta, meta_key::SWEPT)?;
            let target = schema::read_meta(&meta, meta_key::COMPACTED)?;
            if swept >= target {
                (0, swept, target)
            } else {
                let rows = tables
                    .history
                    .range((swept + 1)..=target)?
                    .take(SWEEP_CHUNK)
                    .map(|entry| {
                        let (revision, row) = entry?;
                        let (key, kind, ..) = row.value();
                        Ok((revision.value(), key.to_owned(), kind))
                    })
                    .collect::<Result<Vec<_>, StorageError>>()?;
                let mut removed = 0;
                for (revision, key, kind) in &rows {
                    let superseded = tables
                        .versions
                        .range::<(&str, i64)>((key.as_str(), revision + 1)..=(key.as_str(), target))?
                        .next()
                        .is_some();
                    if superseded || Kind::from_byte(*kind) == Some(Kind::Delete) {
                        tables.history.remove(*revision)?;
                        tables.versions.remove((key.as_str(), *revision))?;
                        removed += 1;
                    }
                }
                let new_swept = match rows.last() {
                    Some((last, ..)) if rows.len() == SWEEP_CHUNK => *last,
                    _ => target,
                };
                meta.insert(meta_key::SWEPT, new_swept)?;
                (removed, new_swept, target)
            }
        };
        txn.commit()?;
        self.sweep_pending = swept < target;
        tracing::debug!(removed, swept, target, "compaction sweep step");
        Ok(())
    }
}

struct CloseHubOnExit(Arc<Shared>);

impl Drop for CloseHubOnExit {
    fn drop(&mut self) {
        self.0.hub.close();
    }
}

fn open_tables(txn: &WriteTransaction) -> Result<Tables<'_>, redb::TableError> {
    Ok(Tables {
        current: txn.open_table(CURRENT)?,
        history: txn.open_table(HISTORY)?,
        versions: txn.open_table(VERSIONS)?,
    })
}

/// Applies one request. The outer error is a storage failure (the whole batch aborts);
/// the inner one is this request's own answer (it consumed no revision).
fn apply_op(
    t: &mut Tables<'_>,
    revision: &mut Revision,
    compacted: &mut Revision,
    op: WriteOp,
) -> Result<OpResult, StorageError> {
    match op {
        WriteOp::Create { key, value } => {
            if t.current.get(key.as_str())?.is_some() {
                return Ok(Err(StoreError::AlreadyExists { key }));
            }
            *revision += 1;
            let kv = KeyValue {
                key,
                value,
                create_revision: *revision,
                mod_revision: *revision,
            };
            write_put(t, &kv, 0)?;
            Ok(Ok((Applied::Put(kv.clone()), Some(Event::Put { kv, prev: None }))))
        }
        WriteOp::Update { key, value, expected } => {
            let current = match check_current(t, key, Some(expected))? {
                Ok(current) => current,
                Err(e) => return Ok(Err(e)),
            };
            *revision += 1;
            let kv = KeyValue {
                key: current.key.clone(),
                value,
                create_revision: current.create_revision,
                mod_revision: *revision,
            };
            write_put(t, &kv, current.mod_revision)?;
            Ok(Ok((
                Applied::Put(kv.clone()),
                Some(Event::Put {
                    kv,
                    prev: Some(current),
                }),
            )))
        }
        WriteOp::Delete { key, expected } => {
            let current = match check_current(t, key, expected)? {
                Ok(current) => current,
                Err(e) => return Ok(Err(e)),
            };
            *revision += 1;
            write_delete(t, &current, *revision)?;
            let event = Event::Delete {
                prev: current.clone(),
                revision: *revision,
            };
            Ok(Ok((Applied::Deleted(current, *revision), Some(event))))
        }
        WriteOp::Compact { revision: target } => {
            if target > *revision {
                return Ok(Err(StoreError::FutureRevision {
                    requested: target,
                    current: *revision,
                }));
            }
            *compacted = (*compacted).max(target);
            Ok(Ok((Applied::Compacted, None)))
        }
    }
}

/// The key's current version, if it exists and (when asked) is at `expected`.
fn check_current(
    t: &Tables<'_>,
    key: String,
    expected: Option<Revision>,
) -> Result<Result<KeyValue, StoreError>, StorageError> {
    let Some(current) = schema::read_current(&t.current, &key)? else {
        return Ok(Err(StoreError::NotFound { key }));
    };
    match expected {
        Some(expected) if expected != current.mod_revision => Ok(Err(StoreError::Conflict {
            key,
            expected,
            actual: current.mod_revision,
            current: Box::new(current),
        })),
        _ => Ok(Ok(current)),
    }
}

fn write_put(t: &mut Tables<'_>, kv: &KeyValue, prev_mod_revision: Revision) -> Result<(), StorageError> {
    let key = kv.key.as_str();
    let value = kv.value.as_slice();
    t.current.insert(key, (kv.create_revision, kv.mod_revision, value))?;
    t.history.insert(
        kv.mod_revision,
        (key, Kind::Put.to_byte(), kv.create_revision, prev_mod_revision, value),
    )?;
    t.versions.insert((key, kv.mod_revision), Kind::Put.to_byte())?;
    Ok(())
}

fn write_delete(t: &mut Tables<'_>, prev: &KeyValue, revision: Revision) -> Result<(), StorageError> {
    let key = prev.key.as_str();
    let empty: &[u8] = &[];
    t.current.remove(key)?;
    t.history.insert(
        revision,
        (
            key,
            Kind::Delete.to_byte(),
            prev.create_revision,
            prev.mod_revision,
            empty,
        ),
    )?;
    t.versions.insert((key, revision), Kind::Delete.to_byte())?;
    Ok(())
}
