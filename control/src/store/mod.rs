//! The revisioned key-value store under the API server, with etcd's semantics.
//!
//! One global revision counts every successful write. A fresh store is at revision 1, as
//! etcd is, so the first write gets revision 2. Each key carries the revision that created
//! it (`create_revision`, renewed when a deleted key is created again) and the revision of
//! its last change (`mod_revision`, what compare-and-swap compares). History is kept per
//! revision until it is compacted, which gives the API server both halves of the
//! Kubernetes contract: lists at an older `resourceVersion` (MVCC reads) and watches that
//! resume from one.
//!
//! Two backends implement [`Store`]:
//! - [`embedded::EmbeddedStore`]: a redb file in the process, durable, with group commit;
//! - [`etcd::EtcdStore`]: a real etcd cluster, for operators who already run one.
//!
//! [`conformance`] holds the behaviour both must show; the tests run it against each.
//!
//! Keys are UTF-8 strings compared bytewise; values are opaque bytes.

pub mod embedded;
pub mod etcd;
mod keyspace;

#[doc(hidden)]
pub mod conformance;
#[doc(hidden)]
pub mod etcd_testing;

use futures::stream::BoxStream;

/// How long a live watch waits idle before it reports how far the store has moved (an
/// [`Event::Progress`]), so that bookmarks of a quiet watch carry a recent revision.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// A store revision: etcd's `int64` main revision.
pub type Revision = i64;

/// The revision of a fresh store, before any write (etcd's).
pub const INITIAL_REVISION: Revision = 1;

/// One version of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The write that created this incarnation of the key.
    pub create_revision: Revision,
    /// The write that produced this version; what compare-and-swap compares.
    pub mod_revision: Revision,
}

/// A change to one key, as a watch reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Key created or updated at `kv.mod_revision`; `prev` is the value before (`None` on
    /// create).
    Put { kv: KeyValue, prev: Option<KeyValue> },
    /// Key deleted at `revision`; `prev` is the last value before the delete.
    Delete { prev: KeyValue, revision: Revision },
    /// Every event under the watched prefix up to `revision` has been delivered already:
    /// a watcher of a quiet prefix learns how far the store has moved (etcd's progress
    /// notify). It carries no key and is never the last event at `revision` for a key.
    Progress { revision: Revision },
}

impl Event {
    /// The revision of the write this event reports.
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } | Event::Progress { revision } => *revision,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { prev, .. } => &prev.key,
            Event::Progress { .. } => "",
        }
    }
}

/// What [`Store::list`] reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only keys starting with this; empty lists every key.
    pub prefix: String,
    /// Only keys greater than this (the last key of the previous page).
    pub start_after: Option<String>,
    /// At most this many items; `None` (or `Some(0)`, as in etcd) means no limit.
    pub limit: Option<usize>,
    /// Read the state as of this revision (MVCC); `None` (or, as in etcd, a revision of 0 or
    /// less) reads the current state.
    pub revision: Option<Revision>,
}

/// One page of a [`Store::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListResult {
    /// In key order.
    pub items: Vec<KeyValue>,
    /// The revision the list was read at: the one asked for, or the current one. Later
    /// pages pass it back so that all pages show one snapshot.
    pub revision: Revision,
    /// More keys exist after the last item.
    pub more: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    /// A compare-and-swap lost: the key changed since the caller read it.
    #[error("key {key} was modified (expected revision {expected}, found {actual})")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
        /// The key as it is now, so the caller can retry without another read.
        current: Box<KeyValue>,
    },
    /// The history needed to serve a read or a watch at `requested` was dropped. Kubernetes
    /// clients answer this (410 Expired) with a fresh list.
    #[error("revision {requested} has been compacted (oldest available {compacted})")]
    Compacted { requested: Revision, compacted: Revision },
    #[error("revision {requested} is in the future (current {current})")]
    FutureRevision { requested: Revision, current: Revision },
    /// A watcher did not take its events fast enough and its buffer filled. Nothing is
    /// lost in the store: re-watching from the last revision the caller saw resumes.
    #[error("watch fell behind; resume from revision {last_delivered}")]
    WatchLagged { last_delivered: Revision },
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// The store was closed (or its writer stopped) while the call was in flight.
    #[error("store is closed")]
    Closed,
    /// The stored data breaks one of the store's own invariants.
    #[error("store is inconsistent: {0}")]
    Inconsistent(String),
    #[error("storage backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub(crate) fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Backend(Box::new(e))
    }

    /// A backend failure described by a message only.
    pub(crate) fn backend_msg(msg: impl Into<String>) -> Self {
        StoreError::Backend(msg.into().into())
    }
}

/// Events for a prefix in strictly increasing revision order, with no gap and no
/// duplicate. It ends after an `Err` (compacted history, a lagging reader, a closed
/// store); the caller then watches again or relists.
pub type WatchStream = BoxStream<'static, Result<Event, StoreError>>;

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Keys under `opts.prefix`, in key order. `Compacted` below the compacted revision,
    /// `FutureRevision` above the current one.
    async fn list(&self, opts: ListOptions) -> Result<ListResult, StoreError>;

    /// Creates a key that does not exist; `AlreadyExists` otherwise.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError>;

    /// Compare-and-swap on `mod_revision`: `NotFound` if absent, `Conflict` if it moved.
    async fn update(&self, key: &str, value: Vec<u8>, expected_mod_revision: Revision) -> Result<KeyValue, StoreError>;

    /// Deletes a key, with compare-and-swap on `mod_revision` when `expected` is given.
    /// Returns the last value and the revision of the delete.
    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError>;

    /// Events with revision greater than `after` for keys under `prefix`: the history
    /// first, then live events. `Compacted` when `after` is below the compacted revision;
    /// a backend may report that as the first item of the stream instead of at once.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// Drops history at or below `revision` while keeping, for every key, its version as
    /// of `revision`: reads at `revision` and later still work, earlier ones give
    /// `Compacted`. Compacting at or below the compacted revision does nothing.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// The revision of the last compaction, 0 if none.
    async fn compacted_revision(&self) -> Result<Revision, StoreError>;
}

/// Auto-compaction step: keeps the last `keep` revisions of history, like etcd's
/// `--auto-compaction-mode=revision`. The API server runs it periodically. Returns the
/// revision compacted to, or `None` when there was nothing to drop.
pub async fn compact_keep_last(store: &dyn Store, keep: i64) -> Result<Option<Revision>, StoreError> {
    let target = store.current_revision().await? - keep.max(0);
    if target <= store.compacted_revision().await? {
        return Ok(None);
    }
    store.compact(target).await?;
    tracing::debug!(revision = target, "compacted store history");
    Ok(Some(target))
}
