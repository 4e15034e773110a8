//! The embedded backend: one redb file in the API server's process.
//!
//! Why redb rather than SQLite (kine's default): it is pure Rust (no C toolchain, no
//! `unsafe` FFI surface, a static binary), its copy-on-write B-trees give readers MVCC
//! snapshots that never block the single writer, a commit with `Durability::Immediate` is
//! fsync'd and atomic (a crash leaves the last committed state, nothing torn), and we need
//! nothing a SQL engine adds on top of ordered key ranges.
//!
//! Layout in `schema`, writes and group commit in `writer`, reads in `reader`, watch
//! fan-out in `hub` and `watch`, backup in `snapshot`.

mod hub;
mod reader;
mod schema;
mod snapshot;
mod watch;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::thread::JoinHandle;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::{mpsc, oneshot};

pub use snapshot::{SnapshotInfo, snapshot_restore};

use self::hub::Hub;
use self::schema::{CURRENT, HISTORY, Kind, META, SCHEMA_VERSION, VERSIONS, meta_key};
use self::writer::{Applied, WriteOp, WriteRequest};
use super::keyspace::validate_key;
use super::{INITIAL_REVISION, KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchStream};

/// Tuning knobs; the defaults suit an API server.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Most writes committed in one transaction (one fsync).
    pub max_batch: usize,
    /// Writes waiting for the writer before callers wait to enqueue (backpressure).
    pub queue_depth: usize,
    /// Live events buffered per watcher before it is dropped as lagging.
    pub watch_buffer: usize,
    /// Most memory redb may use to cache pages (its own default is 1 GiB).
    pub cache_bytes: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            max_batch: 1024,
            queue_depth: 4096,
            watch_buffer: 1024,
            cache_bytes: 64 << 20,
        }
    }
}

/// State shared by the store handle, the writer thread and the watch streams.
pub(super) struct Shared {
    hub: Hub,
    /// Last committed revision, published before callers are answered.
    revision: AtomicI64,
    compacted: AtomicI64,
    /// Durable commits, revisions written and batches applied since open: how well group
    /// commit is sharing fsyncs.
    commits: AtomicU64,
    writes: AtomicU64,
    batches: AtomicU64,
}

/// The embedded [`Store`]. Dropping it stops the writer once queued writes are done;
/// [`EmbeddedStore::close`] also waits for that.
pub struct EmbeddedStore {
    db: Arc<Database>,
    shared: Arc<Shared>,
    requests: mpsc::Sender<WriteRequest>,
    writer: JoinHandle<()>,
    path: PathBuf,
}

/// Counters and sizes, for tests, metrics and `rudder snapshot status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStats {
    pub revision: Revision,
    pub compacted: Revision,
    /// How far compacted history has been physically removed.
    pub swept: Revision,
    pub keys: u64,
    pub history_rows: u64,
    pub commits: u64,
    pub writes: u64,
    pub watchers: usize,
}

/// What [`EmbeddedStore::verify`] looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub revision: Revision,
    pub compacted: Revision,
    pub keys: u64,
    pub history_rows: u64,
}

impl EmbeddedStore {
    /// Opens the store at `path`, creating it if absent. After a crash redb recovers the
    /// last durable commit (which may take a while on a large file).
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, EmbeddedOptions::default()).await
    }

    pub async fn open_with(path: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let open_path = path.clone();
        let cache_bytes = options.cache_bytes;
        let (db, revision, compacted, swept) =
            tokio::task::spawn_blocking(move || open_database(&open_path, cache_bytes))
                .await
                .map_err(StoreError::backend)??;
        let db = Arc::new(db);
        let shared = Arc::new(Shared {
            hub: Hub::new(revision, options.watch_buffer),
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        });
        let (requests, queue) = mpsc::channel(options.queue_depth.max(1));
        let writer = writer::spawn(db.clone(), shared.clone(), queue, options.max_batch, swept < compacted)
            .map_err(StoreError::backend)?;
        tracing::info!(path = %path.display(), revision, compacted, "opened embedded store");
        Ok(EmbeddedStore {
            db,
            shared,
            requests,
            writer,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting writes, waits for queued ones to commit and for the writer to
    /// finish, and ends every watch. The file stays open while a watch stream is alive.
    pub async fn close(self) -> Result<(), StoreError> {
        let EmbeddedStore { requests, writer, .. } = self;
        drop(requests);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(StoreError::backend)?
            .map_err(|_| StoreError::backend_msg("store writer thread panicked"))
    }

    /// A consistent copy of the whole store at `dest` (which must not exist), taken from
    /// one read snapshot while writes go on, like `etcdctl snapshot save`.
    pub async fn snapshot_save(&self, dest: impl AsRef<Path>) -> Result<SnapshotInfo, StoreError> {
        let db = self.db.clone();
        let dest = dest.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || snapshot::save(&db, &dest))
            .await
            .map_err(StoreError::backend)?
    }

    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        let (keys, history_rows, swept) = self
            .read(|txn| {
                let meta = txn.open_table(META)?;
                Ok((
                    txn.open_table(CURRENT)?.len()?,
                    txn.open_table(HISTORY)?.len()?,
                    schema::read_meta(&meta, meta_key::SWEPT)?,
                ))
            })
            .await?;
        Ok(StoreStats {
            revision: self.shared.revision.load(Ordering::Acquire),
            compacted: self.shared.compacted.load(Ordering::Acquire),
            swept,
            keys,
            history_rows,
            commits: self.shared.commits.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
            watchers: self.shared.hub.watchers(),
        })
    }

    /// Checks the store's invariants over one snapshot: every revision above the compacted
    /// one has its history row, rows and `versions` agree, and `current` holds exactly the
    /// newest version of each live key. Meant for tests and `rudder snapshot status`; it
    /// reads everything.
    pub async fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.read(verify_snapshot).await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            f(&txn)
        })
        .await
        .map_err(StoreError::backend)?
    }

    async fn write(&self, op: WriteOp) -> Result<Applied, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(WriteRequest { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        validate_key(key)?;
        let key = key.to_owned();
        self.read(move |txn| reader::get(txn, &key)).await
    }

    async fn list(&self, opts: ListOptions) -> Result<ListResult, StoreError> {
        self.read(move |txn| reader::list(txn, &opts)).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        validate_key(key)?;
        match self
            .write(WriteOp::Create {
                key: key.to_owned(),
                value,
            })
            .await?
        {
            Applied::Put(kv) => Ok(kv),
            _ => Err(unexpected_outcome()),
        }
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue, StoreError> {
        validate_key(key)?;
        match self
            .write(WriteOp::Update {
                key: key.to_owned(),
                value,
                expected,
            })
            .await?
        {
            Applied::Put(kv) => Ok(kv),
            _ => Err(unexpected_outcome()),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision), StoreError> {
        validate_key(key)?;
        match self
            .write(WriteOp::Delete {
                key: key.to_owned(),
                expected,
            })
            .await?
        {
            Applied::Deleted(kv, revision) => Ok((kv, revision)),
            _ => Err(unexpected_outcome()),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        // Checked here so the common case fails at once; the stream re-checks against its
        // own snapshot in case a compaction lands in between.
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        Ok(watch::stream(self.db.clone(), self.shared.clone(), prefix, after))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.revision.load(Ordering::Acquire))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        match self.write(WriteOp::Compact { revision }).await? {
            Applied::Compacted => Ok(()),
            _ => Err(unexpected_outcome()),
        }
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.compacted.load(Ordering::Acquire))
    }
}

fn unexpected_outcome() -> StoreError {
    StoreError::Inconsistent("the writer answered a request with the outcome of another kind".into())
}

/// Opens or creates the file and its tables; returns (db, revision, compacted, swept).
fn open_database(path: &Path, cache_bytes: usize) -> Result<(Database, Revision, Revision, Revision), StoreError> {
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .set_repair_callback(|session| {
            tracing::warn!(
                progress = session.progress(),
                "repairing the store file after an unclean shutdown"
            );
        })
        .create(path)?;
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    let counters = {
        let mut meta = txn.open_table(META)?;
        txn.open_table(CURRENT)?;
        txn.open_table(HISTORY)?;
        txn.open_table(VERSIONS)?;
        let schema_version = meta.get(meta_key::SCHEMA)?.map(|g| g.value());
        match schema_version {
            None => {
                meta.insert(meta_key::SCHEMA, SCHEMA_VERSION)?;
                meta.insert(meta_key::REVISION, INITIAL_REVISION)?;
                meta.insert(meta_key::COMPACTED, 0)?;
                meta.insert(meta_key::SWEPT, 0)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Inconsistent(format!(
                    "{} has schema version {other}; this build reads version {SCHEMA_VERSION}",
                    path.display()
                )));
            }
        }
        (
            schema::read_meta(&meta, meta_key::REVISION)?,
            schema::read_meta(&meta, meta_key::COMPACTED)?,
            schema::read_meta(&meta, meta_key::SWEPT)?,
        )
    };
    txn.commit()?;
    Ok((db, counters.0, counters.1, counters.2))
}

fn verify_snapshot(txn: &ReadTransaction) -> Result<VerifyReport, StoreError> {
    let fail = |msg: String| Err(StoreError::Inconsistent(msg));
    let meta = txn.open_table(META)?;
    let current = txn.open_table(CURRENT)?;
    let history = txn.open_table(HISTORY)?;
    let versions = txn.open_table(VERSIONS)?;
    let revision = schema::read_meta(&meta, meta_key::REVISION)?;
    let compacted = schema::read_meta(&meta, meta_key::COMPACTED)?;
    let swept = schema::read_meta(&meta, meta_key::SWEPT)?;
    if !(0 <= swept && swept <= compacted && compacted <= revision && revision >= INITIAL_REVISION) {
        return fail(format!(
            "counters out of order: swept {swept}, compacted {compacted}, revision {revision}"
        ));
    }
    // Every write above the compacted revision has its row: no gap, nothing beyond. (The
    // first write is INITIAL_REVISION + 1.)
    let first_kept = compacted.max(INITIAL_REVISION) + 1;
    let mut expected_next = first_kept;
    for entry in history.range(first_kept..)? {
        let (rev, row) = entry?;
        let rev = rev.value();
        if rev != expected_next || rev > revision {
            return fail(format!(
                "history row {rev} where {expected_next} was expected (revision {revision})"
            ));
        }
        expected_next += 1;
        let Some(row) = schema::decode_history(row.value()) else {
            return fail(format!("history row {rev} is unreadable"));
        };
        let kind = versions.get((row.key.as_str(), rev))?.map(|g| g.value());
        if kind != Some(row.kind.to_byte()) {
            return fail(format!("versions entry for {} at {rev} is {kind:?}", row.key));
        }
    }
    if expected_next != revision + 1 && revision >= first_kept {
        return fail(format!(
            "history ends at {} but the revision is {revision}",
            expected_next - 1
        ));
    }
    if history.len()? != versions.len()? {
        return fail(format!(
            "{} history rows but {} versions",
            history.len()?,
            versions.len()?
        ));
    }
    // `current` is exactly the newest version of each key whose newest version is a put.
    let mut live = 0u64;
    let mut last_key: Option<String> = None;
    for entry in versions.iter()? {
        let (version, _) = entry?;
        let key = version.value().0.to_owned();
        if last_key.as_deref() == Some(key.as_str()) {
            continue;
        }
        let (newest, kind) = match versions
            .range::<(&str, i64)>((key.as_str(), 0)..=(key.as_str(), i64::MAX))?
            .next_back()
        {
            Some(newest) => {
                let (v, k) = newest?;
                (v.value().1, Kind::from_byte(k.value()))
            }
            None => return fail(format!("versions of {key} vanished mid-read")),
        };
        let row = current.get(key.as_str())?.map(|g| g.value().1);
        match (kind, row) {
            (Some(Kind::Put), Some(mod_revision)) if mod_revision == newest => live += 1,
            (Some(Kind::Delete), None) => {}
            _ => {
                return fail(format!(
                    "current entry of {key} ({row:?}) disagrees with its newest version {newest} ({kind:?})"
                ));
            }
        }
        let Some(put) = schema::read_history(&history, newest)? else {
            return fail(format!("newest version {newest} of {key} has no history row"));
        };
        if kind == Some(Kind::Put) && reader::get(txn, &key)?.map(|kv| kv.value) != Some(put.value) {
            return fail(format!("current value of {key} differs from history row {newest}"));
        }
        last_key = Some(key);
    }
    if live != current.len()? {
        return fail(format!(
            "{} keys in current but {live} live keys in versions",
            current.len()?
        ));
    }
    Ok(VerifyReport {
        revision,
        compacted,
        keys: live,
        history_rows: history.len()?,
    })
}

/// Every redb failure is a backend failure to the caller.
macro_rules! backend_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::backend(e)
            }
        }
    )*};
}
backend_from!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError
);
