//! The behaviour every [`Store`] backend must show, as async checks that panic on a
//! violation. `control/tests/store_conformance.rs` runs each against a fresh embedded store
//! and a fresh etcd; the API server's suite may reuse them.
//!
//! Revisions are asserted relative to the store's revision when a check starts, so the
//! checks hold on any store, not only an empty one. Each check uses its own key prefix.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{Event, KeyValue, ListOptions, Revision, Store, StoreError, WatchStream, compact_keep_last};

/// Longest wait for one watch event before a check fails.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// create/get/update/delete, their failures, and the revisions they use.
pub async fn create_update_delete(store: Arc<dyn Store>, _backend: &str) {
    let r0 = store.current_revision().await.expect("current revision");
    let a = store.create("crud/a", b"1".to_vec()).await.expect("create");
    assert_eq!(
        (a.create_revision, a.mod_revision, a.value.as_slice()),
        (r0 + 1, r0 + 1, b"1".as_slice())
    );
    assert!(matches!(
        store.create("crud/a", b"x".to_vec()).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(
        store.current_revision().await.expect("revision"),
        r0 + 1,
        "a failed write must not use a revision"
    );
    assert_eq!(store.get("crud/a").await.expect("get"), Some(a.clone()));
    assert_eq!(store.get("crud/missing").await.expect("get"), None);

    match store.update("crud/a", b"2".to_vec(), a.mod_revision + 100).await {
        Err(StoreError::Conflict {
            expected,
            actual,
            current,
            ..
        }) => {
            assert_eq!((expected, actual), (a.mod_revision + 100, a.mod_revision));
            assert_eq!(*current, a, "a conflict carries the current version");
        }
        other => panic!("stale update gave {other:?}"),
    }
    let a2 = store
        .update("crud/a", b"2".to_vec(), a.mod_revision)
        .await
        .expect("update");
    assert_eq!(
        (a2.create_revision, a2.mod_revision, a2.value.as_slice()),
        (r0 + 1, r0 + 2, b"2".as_slice())
    );
    assert!(matches!(
        store.update("crud/missing", b"x".to_vec(), 1).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.update("crud/missing", b"x".to_vec(), 0).await,
        Err(StoreError::NotFound { .. })
    ));

    assert!(matches!(
        store.delete("crud/a", Some(a.mod_revision)).await,
        Err(StoreError::Conflict { .. })
    ));
    let (last, deleted_at) = store.delete("crud/a", Some(a2.mod_revision)).await.expect("delete");
    assert_eq!((last, deleted_at), (a2, r0 + 3));
    assert_eq!(store.get("crud/a").await.expect("get"), None);
    assert!(matches!(
        store.delete("crud/a", None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.update("crud/a", b"x".to_vec(), r0 + 2).await,
        Err(StoreError::NotFound { .. })
    ));

    let a3 = store.create("crud/a", b"3".to_vec()).await.expect("re-create");
    assert_eq!(
        (a3.create_revision, a3.mod_revision),
        (r0 + 4, r0 + 4),
        "a re-created key starts a new life"
    );
    let (_, deleted_at) = store.delete("crud/a", None).await.expect("unconditional delete");
    assert_eq!(deleted_at, r0 + 5);
    assert_eq!(store.current_revision().await.expect("revision"), r0 + 5);
    assert!(matches!(
        store.create("", b"x".to_vec()).await,
        Err(StoreError::InvalidKey { .. })
    ));
}

/// Prefix lists in key order, pages with `limit` + `start_after`, and `more`.
pub async fn list_pages(store: Arc<dyn Store>, _backend: &str) {
    // "page0" sorts right after every "page/…" key ('0' follows '/'), "page" right before.
    for key in [
        "page/c", "page/a", "page/e", "page/b", "page/d", "page", "page0", "pagf/a",
    ] {
        store.create(key, key.as_bytes().to_vec()).await.expect("create");
    }
    let all = list(&*store, "page/", None, None, None).await;
    assert_eq!(keys(&all.items), ["page/a", "page/b", "page/c", "page/d", "page/e"]);
    assert!(!all.more);
    assert_eq!(all.revision, store.current_revision().await.expect("revision"));
    assert!(all.items.iter().all(|kv| kv.value == kv.key.as_bytes()));

    let p1 = list(&*store, "page/", None, Some(2), None).await;
    assert_eq!((keys(&p1.items), p1.more), (vec!["page/a", "page/b"], true));
    // Writes between pages must not show: later pages read at the first page's revision.
    store.create("page/bb", b"late".to_vec()).await.expect("create");
    let p2 = list(&*store, "page/", Some("page/b"), Some(2), Some(p1.revision)).await;
    assert_eq!(
        (keys(&p2.items), p2.more, p2.revision),
        (vec!["page/c", "page/d"], true, p1.revision)
    );
    let p3 = list(&*store, "page/", Some("page/d"), Some(2), Some(p1.revision)).await;
    assert_eq!((keys(&p3.items), p3.more), (vec!["page/e"], false));
    let exact = list(&*store, "page/", Some("page/c"), Some(2), None).await;
    assert_eq!(
        (keys(&exact.items), exact.more),
        (vec!["page/d", "page/e"], false),
        "a full last page has no more"
    );

    let everything = list(&*store, "", None, None, None).await;
    let listed = keys(&everything.items);
    for key in ["page", "page/a", "page/bb", "page0", "pagf/a"] {
        assert!(
            listed.contains(&key),
            "{key} missing from a list of everything: {listed:?}"
        );
    }
    assert!(listed.windows(2).all(|w| w[0] < w[1]), "not in key order: {listed:?}");
    assert!(list(&*store, "nothing/", None, Some(5), None).await.items.is_empty());
}

/// Lists at an older revision see the state as of then, after updates, deletes and
/// re-creates; a revision ahead of the store is refused.
pub async fn list_at_older_revision(store: Arc<dyn Store>, _backend: &str) {
    let x = store.create("mvcc/x", b"x1".to_vec()).await.expect("create");
    let y = store.create("mvcc/y", b"y1".to_vec()).await.expect("create");
    let z = store.create("mvcc/z", b"z1".to_vec()).await.expect("create");
    let then = store.current_revision().await.expect("revision");

    store
        .update("mvcc/x", b"x2".to_vec(), x.mod_revision)
        .await
        .expect("update");
    store.delete("mvcc/y", None).await.expect("delete");
    store.create("mvcc/w", b"w1".to_vec()).await.expect("create");
    let y2 = store.create("mvcc/y", b"y2".to_vec()).await.expect("re-create");
    let z2 = store
        .update("mvcc/z", b"z2".to_vec(), z.mod_revision)
        .await
        .expect("update");
    store.delete("mvcc/z", Some(z2.mod_revision)).await.expect("delete");

    let old = list(&*store, "mvcc/", None, None, Some(then)).await;
    assert_eq!(old.items, [x.clone(), y.clone(), z.clone()]);
    assert_eq!((old.revision, old.more), (then, false));
    let p1 = list(&*store, "mvcc/", None, Some(2), Some(then)).await;
    assert_eq!((p1.items.as_slice(), p1.more), ([x, y].as_slice(), true));
    let p2 = list(&*store, "mvcc/", Some("mvcc/y"), Some(2), Some(then)).await;
    assert_eq!((p2.items.as_slice(), p2.more), ([z].as_slice(), false));

    let now = list(&*store, "mvcc/", None, None, None).await;
    assert_eq!(keys(&now.items), ["mvcc/w", "mvcc/x", "mvcc/y"]);
    assert_eq!(now.items[2], y2);
    let current = store.current_revision().await.expect("revision");
    let at_current = list(&*store, "mvcc/", None, None, Some(current)).await;
    assert_eq!(at_current.items, now.items);
    let at_zero = list(&*store, "mvcc/", None, None, Some(0)).await;
    assert_eq!(
        (at_zero.items, at_zero.revision),
        (now.items.clone(), current),
        "revision 0 reads the current state"
    );

    match store
        .list(ListOptions {
            prefix: "mvcc/".into(),
            revision: Some(current + 10),
            ..Default::default()
        })
        .await
    {
        Err(StoreError::FutureRevision { requested, .. }) => assert_eq!(requested, current + 10),
        other => panic!("list in the future gave {other:?}"),
    }
}

/// A watch from a past revision replays the history (with previous values), then
/// continues with live events, filtered by prefix.
pub async fn watch_replays_then_follows(store: Arc<dyn Store>, _backend: &str) {
    let r0 = store.current_revision().await.expect("revision");
    let a1 = store.create("w/a", b"1".to_vec()).await.expect("create");
    store.create("wx/other", b"-".to_vec()).await.expect("create");
    let a2 = store
        .update("w/a", b"2".to_vec(), a1.mod_revision)
        .await
        .expect("update");
    let b1 = store.create("w/b", b"1".to_vec()).await.expect("create");
    let (_, deleted_at) = store.delete("w/a", None).await.expect("delete");

    let mut watch = store.watch("w/", r0).await.expect("watch");
    let replayed = next_events(&mut watch, 4).await;
    assert_eq!(
        replayed,
        [
            Event::Put {
                kv: a1.clone(),
                prev: None
            },
            Event::Put {
                kv: a2.clone(),
                prev: Some(a1.clone())
            },
            Event::Put {
                kv: b1.clone(),
                prev: None
            },
            Event::Delete {
                prev: a2.clone(),
                revision: deleted_at
            },
        ]
    );

    let c1 = store.create("w/c", b"1".to_vec()).await.expect("create");
    store.create("wx/other2", b"-".to_vec()).await.expect("create");
    let b2 = store
        .update("w/b", b"2".to_vec(), b1.mod_revision)
        .await
        .expect("update");
    let live = next_events(&mut watch, 2).await;
    assert_eq!(
        live,
        [
            Event::Put { kv: c1, prev: None },
            Event::Put {
                kv: b2.clone(),
                prev: Some(b1.clone())
            }
        ]
    );

    // From the middle of the history.
    let mut from_middle = store.watch("w/", a2.mod_revision).await.expect("watch");
    let first = next_events(&mut from_middle, 1).await;
    assert_eq!(first, [Event::Put { kv: b1, prev: None }]);
    // From now: only what comes next.
    let mut from_now = store.watch("w/", b2.mod_revision).await.expect("watch");
    let (_, gone_at) = store.delete("w/b", None).await.expect("delete");
    let next = next_events(&mut from_now, 1).await;
    assert_eq!(
        next,
        [Event::Delete {
            prev: b2,
            revision: gone_at
        }]
    );
}

/// A watch from a revision ahead of the store waits for it: it reports events after
/// `after` only.
pub async fn watch_from_future_revision(store: Arc<dyn Store>, _backend: &str) {
    let now = store.current_revision().await.expect("revision");
    let mut watch = store.watch("future/", now + 2).await.expect("watch");
    store.create("future/1", vec![]).await.expect("create");
    store.create("future/2", vec![]).await.expect("create");
    let third = store.create("future/3", vec![]).await.expect("create");
    assert_eq!(next_events(&mut watch, 1).await, [Event::Put { kv: third, prev: None }]);
}

/// Watches that start while writers are busy see every event once, in order.
pub async fn watch_has_no_gaps_under_concurrent_writes(store: Arc<dyn Store>, backend: &str) {
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 60;
    let r0 = store.current_revision().await.expect("revision");
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                store
                    .create(&format!("gap/{w}/{i}"), vec![w as u8])
                    .await
                    .expect("create");
                store
                    .create(&format!("gapnoise/{w}/{i}"), vec![])
                    .await
                    .expect("create");
            }
        }));
    }
    // Join while writes are in flight: part replay, part live, with the switch in between.
    while store.current_revision().await.expect("revision") < r0 + 20 {
        tokio::task::yield_now().await;
    }
    let mut from_start = store.watch("gap/", r0).await.expect("watch");
    let mid = store.current_revision().await.expect("revision");
    let mut from_mid = store.watch("gap/", mid).await.expect("watch");
    let total = WRITERS * PER_WRITER;
    let all = next_events(&mut from_start, total).await;
    let seen: HashSet<&str> = all.iter().map(Event::key).collect();
    assert_eq!(seen.len(), total, "every key exactly once");
    assert_strictly_increasing(&all);
    for task in tasks {
        task.await.expect("writer");
    }
    let expected_tail: Vec<&Event> = all.iter().filter(|e| e.revision() > mid).collect();
    let tail = next_events(&mut from_mid, expected_tail.len()).await;
    assert_eq!(
        tail.iter().collect::<Vec<_>>(),
        expected_tail,
        "a later watch sees the same events"
    );
    println!("{backend}: watch saw {total} events from {WRITERS} concurrent writers with no gap");
}

/// Compaction: reads and watches below it fail with `Compacted`, reads at it and watches
/// from it work (with previous values kept), and it never moves backwards.
pub async fn compaction_refuses_old_reads(store: Arc<dyn Store>, _backend: &str) {
    let a1 = store.create("cmp/a", b"1".to_vec()).await.expect("create");
    let a2 = store
        .update("cmp/a", b"2".to_vec(), a1.mod_revision)
        .await
        .expect("update");
    store.create("cmp/b", b"1".to_vec()).await.expect("create");
    store.delete("cmp/b", None).await.expect("delete");
    let d = store.create("cmp/d", b"1".to_vec()).await.expect("create");
    let at = store.current_revision().await.expect("revision");
    let a3 = store
        .update("cmp/a", b"3".to_vec(), a2.mod_revision)
        .await
        .expect("update");

    store.compact(at).await.expect("compact");
    assert_eq!(store.compacted_revision().await.expect("compacted revision"), at);

    expect_compacted_watch(&*store, "cmp/", at - 2, at).await;
    match store
        .list(ListOptions {
            prefix: "cmp/".into(),
            revision: Some(at - 1),
            ..Default::default()
        })
        .await
    {
        Err(StoreError::Compacted { requested, compacted }) => assert_eq!((requested, compacted), (at - 1, at)),
        other => panic!("list below the compacted revision gave {other:?}"),
    }
    let at_compacted = list(&*store, "cmp/", None, None, Some(at)).await;
    assert_eq!(
        at_compacted.items,
        [a2.clone(), d.clone()],
        "the state at the compacted revision survives"
    );

    let mut watch = store
        .watch("cmp/", at)
        .await
        .expect("watch from the compacted revision");
    let d2 = store
        .update("cmp/d", b"2".to_vec(), d.mod_revision)
        .await
        .expect("update");
    let events = next_events(&mut watch, 2).await;
    assert_eq!(
        events,
        [
            Event::Put { kv: a3, prev: Some(a2) },
            Event::Put { kv: d2, prev: Some(d) }
        ]
    );

    store.compact(at - 1).await.expect("compacting below is a no-op");
    assert_eq!(store.compacted_revision().await.expect("compacted revision"), at);
    let current = store.current_revision().await.expect("revision");
    assert!(matches!(
        store.compact(current + 100).await,
        Err(StoreError::FutureRevision { .. })
    ));
}

/// Compacting everything keeps every key's current value, and writes, compare-and-swap
/// and watches carry on from there.
pub async fn compaction_keeps_current_values(store: Arc<dyn Store>, _backend: &str) {
    let mut latest = Vec::new();
    for i in 0..10 {
        let key = format!("keep/{i}");
        let v1 = store.create(&key, b"1".to_vec()).await.expect("create");
        let v2 = store
            .update(&key, b"2".to_vec(), v1.mod_revision)
            .await
            .expect("update");
        latest.push(
            store
                .update(&key, format!("3-{i}").into_bytes(), v2.mod_revision)
                .await
                .expect("update"),
        );
    }
    store.delete("keep/9", None).await.expect("delete");
    latest.pop();
    let at = compact_keep_last(&*store, 0)
        .await
        .expect("compact")
        .expect("something to compact");
    assert_eq!(at, store.current_revision().await.expect("revision"));
    assert_eq!(
        compact_keep_last(&*store, 1000).await.expect("compact"),
        None,
        "nothing older to drop"
    );

    for kv in &latest {
        assert_eq!(store.get(&kv.key).await.expect("get").as_ref(), Some(kv));
    }
    assert_eq!(store.get("keep/9").await.expect("get"), None);
    assert_eq!(list(&*store, "keep/", None, None, None).await.items, latest);
    assert_eq!(list(&*store, "keep/", None, None, Some(at)).await.items, latest);

    let mut watch = store.watch("keep/", at).await.expect("watch");
    let k0 = store
        .update("keep/0", b"4".to_vec(), latest[0].mod_revision)
        .await
        .expect("CAS after compaction");
    let (_, gone) = store
        .delete("keep/1", Some(latest[1].mod_revision))
        .await
        .expect("delete");
    let k9 = store.create("keep/9", b"again".to_vec()).await.expect("re-create");
    let events = next_events(&mut watch, 3).await;
    assert_eq!(
        events,
        [
            Event::Put {
                kv: k0,
                prev: Some(latest[0].clone())
            },
            Event::Delete {
                prev: latest[1].clone(),
                revision: gone
            },
            Event::Put { kv: k9, prev: None },
        ]
    );
}

/// 8 tasks × 200 read-modify-write increments of one key, retrying on conflict, add up to
/// exactly 1600: compare-and-swap loses no update and lets none through twice.
pub async fn concurrent_increments(store: Arc<dyn Store>, backend: &str) {
    const TASKS: u64 = 8;
    const EACH: u64 = 200;
    let key = "counter/hits";
    store.create(key, b"0".to_vec()).await.expect("create");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            let mut current = store.get(key).await.expect("get").expect("counter exists");
            for _ in 0..EACH {
                loop {
                    let n: u64 = std::str::from_utf8(&current.value)
                        .expect("utf8")
                        .parse()
                        .expect("number");
                    match store
                        .update(key, (n + 1).to_string().into_bytes(), current.mod_revision)
                        .await
                    {
                        Ok(kv) => {
                            current = kv;
                            break;
                        }
                        Err(StoreError::Conflict { current: now, .. }) => {
                            conflicts += 1;
                            current = *now;
                        }
                        Err(e) => panic!("increment failed: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.expect("task");
    }
    let elapsed = started.elapsed();
    let value = store.get(key).await.expect("get").expect("counter exists").value;
    assert_eq!(std::str::from_utf8(&value).expect("utf8"), (TASKS * EACH).to_string());
    println!(
        "{backend}: {} increments by {TASKS} writers in {elapsed:.2?} ({conflicts} conflicts retried)",
        TASKS * EACH
    );
}

async fn list(
    store: &dyn Store,
    prefix: &str,
    start_after: Option<&str>,
    limit: Option<usize>,
    revision: Option<Revision>,
) -> super::ListResult {
    let opts = ListOptions {
        prefix: prefix.into(),
        start_after: start_after.map(Into::into),
        limit,
        revision,
    };
    store
        .list(opts.clone())
        .await
        .unwrap_or_else(|e| panic!("list {opts:?}: {e}"))
}

fn keys(items: &[KeyValue]) -> Vec<&str> {
    items.iter().map(|kv| kv.key.as_str()).collect()
}

/// The next `n` events; fails on an error, a timeout or the end of the stream.
pub async fn next_events(watch: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
            Ok(Some(Ok(event))) => events.push(event),
            Ok(Some(Err(e))) => panic!("watch failed after {} of {n} events: {e}", events.len()),
            Ok(None) => panic!("watch ended after {} of {n} events", events.len()),
            Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?} after {} of {n}", events.len()),
        }
    }
    events
}

fn assert_strictly_increasing(events: &[Event]) {
    for pair in events.windows(2) {
        assert!(pair[0].revision() < pair[1].revision(), "out of order: {pair:?}");
    }
}

/// A watch below the compacted revision fails with `Compacted`, either at once or as the
/// stream's first and last item.
pub async fn expect_compacted_watch(store: &dyn Store, prefix: &str, after: Revision, compacted_at: Revision) {
    let mut watch = match store.watch(prefix, after).await {
        Err(StoreError::Compacted { requested, compacted }) => {
            assert_eq!((requested, compacted), (after, compacted_at));
            return;
        }
        Err(e) => panic!("watch from a compacted revision gave {e}"),
        Ok(watch) => watch,
    };
    match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
        Ok(Some(Err(StoreError::Compacted { compacted, .. }))) => assert_eq!(compacted, compacted_at),
        other => panic!("watch from a compacted revision gave {other:?}"),
    }
    let end = tokio::time::timeout(EVENT_TIMEOUT, watch.next())
        .await
        .expect("stream ends");
    assert!(end.is_none(), "the stream ends after its error");
}
