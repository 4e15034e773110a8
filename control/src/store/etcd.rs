//! The etcd backend: the same [`Store`] over a real etcd cluster (v3 API).
//!
//! Every key lives under `key_prefix`, which this backend adds and strips, so several
//! clusters (or tests) can share one etcd. Each write is one etcd transaction whose
//! compare is the store's precondition and whose failure branch reads the key, so a lost
//! compare-and-swap reports the current version without a second round trip.
//!
//! etcd does not say what its compacted revision is. We remember the last one we saw (our
//! own compactions, watch cancellations) and, when asked, find it exactly by probing reads
//! at older revisions (a binary search of "does this read fail as compacted").

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use futures::StreamExt;

use super::keyspace::{effective_limit, page_start, prefix_range_end, validate_key};
use super::{Event, KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchStream};

/// The [`Store`] on etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    /// The highest compacted revision seen so far; never above the real one.
    compacted: Arc<AtomicI64>,
}

impl EtcdStore {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`) and checks that etcd answers.
    /// Store keys map to etcd keys `key_prefix + key`.
    pub async fn connect(endpoints: &[String], key_prefix: &str) -> Result<Self, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            // A per-request timeout would also cut long-lived watch streams; keep-alives
            // detect a dead server instead.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(StoreError::backend)?;
        let store = EtcdStore {
            client,
            prefix: key_prefix.to_owned(),
            compacted: Arc::new(AtomicI64::new(0)),
        };
        let compacted = store.compacted_revision().await?;
        tracing::info!(?endpoints, prefix = key_prefix, compacted, "connected to etcd");
        Ok(store)
    }

    fn etcd_key(&self, key: &str) -> Vec<u8> {
        [self.prefix.as_bytes(), key.as_bytes()].concat()
    }

    /// An etcd range request needs a non-empty key; `"\0"` is the smallest one.
    fn range_start(&self, key: &str) -> Vec<u8> {
        let k = self.etcd_key(key);
        if k.is_empty() { vec![0] } else { k }
    }

    /// The end of the range of keys under `prefix`; `"\0"` means "to the end".
    fn range_end(&self, prefix: &str) -> Vec<u8> {
        let end = prefix_range_end(&self.etcd_key(prefix));
        if end.is_empty() { vec![0] } else { end }
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        let key = kv
            .key()
            .strip_prefix(self.prefix.as_bytes())
            .ok_or_else(|| StoreError::Inconsistent(format!("etcd returned a key outside {:?}", self.prefix)))?;
        let key = String::from_utf8(key.to_vec()).map_err(StoreError::backend)?;
        Ok(KeyValue {
            key,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }

    fn note_compacted(&self, revision: Revision) {
        self.compacted.fetch_max(revision, Ordering::AcqRel);
    }

    /// Whether a read at `revision` still works (it is at or above the compacted one).
    async fn readable_at(&self, revision: Revision) -> Result<bool, StoreError> {
        let options = GetOptions::new().with_revision(revision).with_count_only();
        match self.client.kv_client().get(self.range_start(""), Some(options)).await {
            Ok(_) => Ok(true),
            Err(e) if is_compacted(&e) => Ok(false),
            Err(e) => Err(StoreError::backend(e)),
        }
    }

    async fn compacted_error(&self, requested: Revision) -> StoreError {
        match self.compacted_revision().await {
            Ok(compacted) => StoreError::Compacted { requested, compacted },
            Err(e) => e,
        }
    }

    async fn future_error(&self, requested: Revision) -> StoreError {
        match self.current_revision().await {
            Ok(current) => StoreError::FutureRevision { requested, current },
            Err(e) => e,
        }
    }

    /// Maps a failed transaction's "else" read to NotFound or Conflict.
    fn lost_compare(&self, key: &str, expected: Option<Revision>, resp: &TxnResponse) -> StoreError {
        let current = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| self.to_kv(kv)),
            _ => None,
        });
        match (current, expected) {
            (None, _) => StoreError::NotFound { key: key.to_owned() },
            (Some(Err(e)), _) => e,
            (Some(Ok(current)), Some(expected)) => StoreError::Conflict {
                key: key.to_owned(),
                expected,
                actual: current.mod_revision,
                current: Box::new(current),
            },
            (Some(Ok(current)), None) => StoreError::Inconsistent(format!(
                "unconditional delete of {key} failed although it exists at revision {}",
                current.mod_revision
            )),
        }
    }
}

fn header_revision(resp: &TxnResponse) -> Result<Revision, StoreError> {
    resp.header()
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::backend_msg("etcd response without a header"))
}

fn grpc_message(e: &etcd_client::Error) -> Option<&str> {
    match e {
        etcd_client::Error::GRpcStatus(status) => Some(status.message()),
        _ => None,
    }
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    grpc_message(e).is_some_and(|m| m.contains("required revision has been compacted"))
}

fn is_future(e: &etcd_client::Error) -> bool {
    grpc_message(e).is_some_and(|m| m.contains("required revision is a future revision"))
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        validate_key(key)?;
        let resp = self
            .client
            .kv_client()
            .get(self.etcd_key(key), None)
            .await
            .map_err(StoreError::backend)?;
        resp.kvs().first().map(|kv| self.to_kv(kv)).transpose()
    }

    async fn list(&self, opts: ListOptions) -> Result<ListResult, StoreError> {
        let start = match page_start(&opts.prefix, opts.start_after.as_deref()) {
            // The smallest key after `after` is `after` + NUL.
            Bound::Excluded(after) => [self.etcd_key(after).as_slice(), &[0]].concat(),
            Bound::Included(prefix) => self.range_start(prefix),
            Bound::Unbounded => self.range_start(""),
        };
        let mut options = GetOptions::new().with_range(self.range_end(&opts.prefix));
        if let Some(limit) = effective_limit(opts.limit) {
            options = options.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        if let Some(revision) = opts.revision {
            options = options.with_revision(revision);
        }
        let resp = match self.client.kv_client().get(start, Some(options)).await {
            Ok(resp) => resp,
            Err(e) if is_compacted(&e) => return Err(self.compacted_error(opts.revision.unwrap_or(0)).await),
            Err(e) if is_future(&e) => return Err(self.future_error(opts.revision.unwrap_or(0)).await),
            Err(e) => return Err(StoreError::backend(e)),
        };
        let items = resp
            .kvs()
            .iter()
            .map(|kv| self.to_kv(kv))
            .collect::<Result<Vec<_>, _>>()?;
        let revision = match opts.revision.filter(|&at| at > 0) {
            Some(revision) => revision,
            None => resp
                .header()
                .map(|h| h.revision())
                .ok_or_else(|| StoreError::backend_msg("etcd response without a header"))?,
        };
        Ok(ListResult {
            items,
            revision,
            more: resp.more(),
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        validate_key(key)?;
        let k = self.etcd_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k, value.clone(), None)]);
        let resp = self.client.kv_client().txn(txn).await.map_err(StoreError::backend)?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists { key: key.to_owned() });
        }
        let revision = header_revision(&resp)?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue, StoreError> {
        validate_key(key)?;
        let k = self.etcd_key(key);
        let txn = Txn::new()
            // `version > 0` first: an absent key has mod_revision 0, which must not match.
            .when([
                Compare::version(k.clone(), CompareOp::Greater, 0),
                Compare::mod_revision(k.clone(), CompareOp::Equal, expected),
            ])
            .and_then([TxnOp::put(
                k.clone(),
                value.clone(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(k, None)]);
        let resp = self.client.kv_client().txn(txn).await.map_err(StoreError::backend)?;
        if !resp.succeeded() {
            return Err(self.lost_compare(key, Some(expected), &resp));
        }
        let revision = header_revision(&resp)?;
        let create_revision = resp
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Put(put) => put.prev_key().map(|prev| prev.create_revision()),
                _ => None,
            })
            .ok_or_else(|| StoreError::backend_msg("etcd put without the previous key it was asked for"))?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: revision,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision), StoreError> {
        validate_key(key)?;
        let k = self.etcd_key(key);
        let mut compares = vec![Compare::version(k.clone(), CompareOp::Greater, 0)];
        compares.extend(expected.map(|rev| Compare::mod_revision(k.clone(), CompareOp::Equal, rev)));
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(k.clone(), Some(DeleteOptions::new().with_prev_key()))])
            .or_else([TxnOp::get(k, None)]);
        let resp = self.client.kv_client().txn(txn).await.map_err(StoreError::backend)?;
        if !resp.succeeded() {
            return Err(self.lost_compare(key, expected, &resp));
        }
        let revision = header_revision(&resp)?;
        let prev = resp
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Delete(del) => del.prev_kvs().first().map(|kv| self.to_kv(kv)),
                _ => None,
            })
            .ok_or_else(|| StoreError::backend_msg("etcd delete without the previous key it was asked for"))??;
        Ok((prev, revision))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let compacted = self.compacted.load(Ordering::Acquire);
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let options = WatchOptions::new()
            .with_range(self.range_end(prefix))
            .with_start_revision(after + 1)
            .with_prev_key();
        let stream = self
            .client
            .watch_client()
            .watch(self.range_start(prefix), Some(options))
            .await
            .map_err(StoreError::backend)?;
        let (requests, stream) = stream.split();
        let state = EtcdWatch {
            store: self.clone(),
            requests,
            stream,
            after,
            seen: after,
            ready: VecDeque::new(),
            done: false,
        };
        Ok(futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })
        .boxed())
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let options = GetOptions::new().with_count_only();
        let resp = self
            .client
            .kv_client()
            .get(self.range_start(""), Some(options))
            .await
            .map_err(StoreError::backend)?;
        resp.header()
            .map(|h| h.revision())
            .ok_or_else(|| StoreError::backend_msg("etcd response without a header"))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        if revision <= self.compacted.load(Ordering::Acquire) {
            return Ok(());
        }
        // Physical: return only once etcd has applied it, so reads below it fail at once.
        let options = CompactionOptions::new().with_physical();
        match self.client.kv_client().compact(revision, Some(options)).await {
            Ok(_) => {
                self.note_compacted(revision);
                Ok(())
            }
            // Someone compacted further already: what we asked for holds.
            Err(e) if is_compacted(&e) => Ok(()),
            Err(e) if is_future(&e) => Err(self.future_error(revision).await),
            Err(e) => Err(StoreError::backend(e)),
        }
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        let known = self.compacted.load(Ordering::Acquire);
        if self.readable_at(known.max(1)).await? {
            return Ok(known);
        }
        // Reads fail at `lo` and work at `hi` (the current revision is never compacted).
        let (mut lo, mut hi) = (known.max(1), self.current_revision().await?);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.readable_at(mid).await? {
                hi = mid
            } else {
                lo = mid
            }
        }
        self.note_compacted(hi);
        Ok(hi)
    }
}

/// One etcd watch turned into store events.
struct EtcdWatch {
    store: EtcdStore,
    requests: etcd_client::WatchRequestSender,
    stream: etcd_client::WatchResponseStream,
    after: Revision,
    /// The highest revision handed out, so that a progress report never repeats one.
    seen: Revision,
    ready: VecDeque<Event>,
    done: bool,
}

impl EtcdWatch {
    async fn next(&mut self) -> Option<Result<Event, StoreError>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                self.seen = self.seen.max(event.revision());
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let message = tokio::select! {
                message = self.stream.message() => message,
                _ = tokio::time::sleep(super::PROGRESS_EVERY) => {
                    // etcd answers once every event up to its revision has been sent on
                    // this stream (and not at all while the watch is still catching up).
                    if let Err(e) = self.requests.request_progress().await {
                        return self.fail(StoreError::backend(e));
                    }
                    continue;
                }
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) => return self.fail(StoreError::Closed),
                Err(e) => return self.fail(StoreError::backend(e)),
            };
            if resp.compact_revision() != 0 {
                self.store.note_compacted(resp.compact_revision());
                let e = StoreError::Compacted {
                    requested: self.after,
                    compacted: resp.compact_revision(),
                };
                return self.fail(e);
            }
            if resp.canceled() {
                return self.fail(StoreError::backend_msg(format!(
                    "etcd canceled the watch: {}",
                    resp.cancel_reason()
                )));
            }
            if !resp.created() && resp.events().is_empty() {
                let revision = resp.header().map_or(0, |h| h.revision());
                if revision > self.seen {
                    self.seen = revision;
                    return Some(Ok(Event::Progress { revision }));
                }
                continue;
            }
            for event in resp.events() {
                match self.convert(event) {
                    Ok(event) => self.ready.push_back(event),
                    Err(e) => return self.fail(e),
                }
            }
        }
    }

    fn fail(&mut self, e: StoreError) -> Option<Result<Event, StoreError>> {
        self.done = true;
        self.ready.clear();
        Some(Err(e))
    }

    fn convert(&self, event: &etcd_client::Event) -> Result<Event, StoreError> {
        let kv = event
            .kv()
            .ok_or_else(|| StoreError::backend_msg("etcd watch event without a key"))?;
        let prev = event.prev_kv().map(|prev| self.store.to_kv(prev)).transpose()?;
        match event.event_type() {
            EventType::Put => Ok(Event::Put {
                kv: self.store.to_kv(kv)?,
                prev,
            }),
            EventType::Delete => Ok(Event::Delete {
                // Only missing when etcd already compacted it, i.e. the event is older than
                // anything a watch from a live revision can see.
                prev: prev.ok_or_else(|| StoreError::backend_msg("etcd delete event without the previous value"))?,
                revision: kv.mod_revision(),
            }),
        }
    }
}
