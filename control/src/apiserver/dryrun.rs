//! Server-side dry run (`dryRun=All`): a write runs all the way through the registry —
//! defaulting, validation, admission, allocation — against a store that reads through to
//! the real one and keeps its writes to itself, so nothing is persisted, no revision is
//! consumed and no ClusterIP or NodePort is taken (the allocator's claims are store writes
//! too). Upstream does the same with its DryRunnableStorage.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use crate::store::{KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchStream};

use super::{
    allocator::Allocator,
    registry::Registry,
    status::{ApiError, Cause},
};

/// Reads the `dryRun` parameter (absent: `None`) for a write whose options type is `options_kind` (`CreateOptions`,
/// `UpdateOptions`, `PatchOptions`, `DeleteOptions`). Only `All` exists; anything else is
/// refused as upstream's ValidateDryRun refuses it: 422 Invalid naming `dryRun`.
pub fn requested(value: Option<&str>, options_kind: &str) -> Result<bool, ApiError> {
    match value {
        None => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::invalid(
            options_kind,
            "meta.k8s.io",
            "",
            vec![Cause {
                field: "dryRun".into(),
                reason: "FieldValueNotSupported",
                message: format!("Unsupported value: []string{{{other:?}}}: supported values: \"All\""),
            }],
        )),
    }
}

impl Registry {
    /// A registry over the same objects whose writes go nowhere.
    pub fn dry_run(&self) -> Arc<Registry> {
        let store: Arc<dyn Store> = Arc::new(DryRunStore::new(Arc::clone(&self.store)));
        Arc::new(Registry {
            alloc: Allocator::new(
                Arc::clone(&store),
                self.alloc.service_cidrs.clone(),
                self.alloc.node_ports.clone(),
            ),
            store,
            crds: self.crds.snapshot(),
        })
    }
}

/// Reads go to the real store; writes are checked as the real store would check them
/// (exists, compare-and-swap) and then kept in an overlay for this one request, so that
/// a request that writes a key twice (a Service claiming two NodePorts) sees its own
/// earlier writes.
pub struct DryRunStore {
    inner: Arc<dyn Store>,
    /// Key → what this request wrote (`None`: deleted).
    overlay: Mutex<HashMap<String, Option<KeyValue>>>,
}

impl DryRunStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            overlay: Mutex::new(HashMap::new()),
        }
    }

    fn remember(&self, key: &str, kv: Option<KeyValue>) {
        self.overlay
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned(), kv);
    }

    fn expect(key: &str, current: &KeyValue, expected: Revision) -> Result<(), StoreError> {
        if current.mod_revision != expected {
            return Err(StoreError::Conflict {
                key: key.to_owned(),
                expected,
                actual: current.mod_revision,
                current: Box::new(current.clone()),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for DryRunStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let written = self
            .overlay
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned();
        match written {
            Some(kv) => Ok(kv),
            None => self.inner.get(key).await,
        }
    }

    async fn list(&self, opts: ListOptions) -> Result<ListResult, StoreError> {
        self.inner.list(opts).await
    }

    /// The new key gets no revision (0): none was consumed; callers drop it from the reply.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        if self.get(key).await?.is_some() {
            return Err(StoreError::AlreadyExists { key: key.to_owned() });
        }
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            create_revision: 0,
            mod_revision: 0,
        };
        self.remember(key, Some(kv.clone()));
        Ok(kv)
    }

    /// The result keeps the current revision, as upstream's dry-run update does.
    async fn update(&self, key: &str, value: Vec<u8>, expected_mod_revision: Revision) -> Result<KeyValue, StoreError> {
        let current = self
            .get(key)
            .await?
            .ok_or_else(|| StoreError::NotFound { key: key.to_owned() })?;
        Self::expect(key, &current, expected_mod_revision)?;
        let kv = KeyValue { value, ..current };
        self.remember(key, Some(kv.clone()));
        Ok(kv)
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        let current = self
            .get(key)
            .await?
            .ok_or_else(|| StoreError::NotFound { key: key.to_owned() })?;
        if let Some(expected) = expected_mod_revision {
            Self::expect(key, &current, expected)?;
        }
        self.remember(key, None);
        let revision = current.mod_revision;
        Ok((current, revision))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, after).await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }

    /// Compaction is a write too; a dry run never asks for one, and must not do one.
    async fn compact(&self, _revision: Revision) -> Result<(), StoreError> {
        Ok(())
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.inner.compacted_revision().await
    }
}
