//! The store conformance suite (`rudder_control::store::conformance`) against both
//! backends: each case on a fresh embedded store in a temp dir and on a fresh real etcd
//! (Debian's `/usr/bin/etcd`; missing, the etcd cases fail rather than skip).

use std::any::Any;
use std::sync::Arc;

use rudder_control::store::Store;
use rudder_control::store::embedded::EmbeddedStore;
use rudder_control::store::etcd::EtcdStore;
use rudder_control::store::etcd_testing::EtcdServer;

/// A store plus whatever must live as long as it (temp dir, etcd process).
type Fixture = (Arc<dyn Store>, Box<dyn Any>);

async fn embedded() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path().join("store.redb"))
        .await
        .expect("open embedded store");
    (Arc::new(store), Box::new(dir))
}

async fn etcd() -> Fixture {
    let server = EtcdServer::start().await.expect("start etcd");
    let store = EtcdStore::connect(&server.endpoints(), "/rudder-test/")
        .await
        .expect("connect to etcd");
    (Arc::new(store), Box::new(server))
}

macro_rules! conformance {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let (store, _keep) = super::$backend().await;
                    rudder_control::store::conformance::$case(store, stringify!($backend)).await;
                }
            )*
        }
    };
}

conformance!(embedded:
    create_update_delete,
    list_pages,
    list_at_older_revision,
    watch_replays_then_follows,
    watch_from_future_revision,
    watch_has_no_gaps_under_concurrent_writes,
    compaction_refuses_old_reads,
    compaction_keeps_current_values,
    concurrent_increments,
);

conformance!(etcd:
    create_update_delete,
    list_pages,
    list_at_older_revision,
    watch_replays_then_follows,
    watch_from_future_revision,
    watch_has_no_gaps_under_concurrent_writes,
    compaction_refuses_old_reads,
    compaction_keeps_current_values,
    concurrent_increments,
);

/// The key prefix keeps stores sharing one etcd apart, and keys come back without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_key_prefixes_isolate_stores() {
    let server = EtcdServer::start().await.expect("start etcd");
    let a = EtcdStore::connect(&server.endpoints(), "/a/").await.expect("connect");
    let b = EtcdStore::connect(&server.endpoints(), "/b/").await.expect("connect");
    a.create("k", b"from a".to_vec()).await.expect("create");
    assert_eq!(b.get("k").await.expect("get"), None);
    b.create("k", b"from b".to_vec()).await.expect("create");
    let listed = a.list(Default::default()).await.expect("list");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(
        (listed.items[0].key.as_str(), listed.items[0].value.as_slice()),
        ("k", b"from a".as_slice())
    );
}

/// A compaction made by another client (another API server, `etcdctl compact`) is found:
/// reads below it give `Compacted` with the right revision, and a watch below it ends
/// with `Compacted` from etcd itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_finds_compactions_made_elsewhere() {
    let server = EtcdServer::start().await.expect("start etcd");
    let store = EtcdStore::connect(&server.endpoints(), "/x/").await.expect("connect");
    let other = EtcdStore::connect(&server.endpoints(), "/x/").await.expect("connect");
    let mut kv = store.create("k", b"0".to_vec()).await.expect("create");
    for i in 1..40 {
        kv = store.update("k", vec![i], kv.mod_revision).await.expect("update");
    }
    let at = kv.mod_revision - 5;
    other.compact(at).await.expect("compact elsewhere");
    assert_eq!(store.compacted_revision().await.expect("compacted revision"), at);

    let fresh = EtcdStore::connect(&server.endpoints(), "/x/").await.expect("connect");
    rudder_control::store::conformance::expect_compacted_watch(&fresh, "", at - 2, at).await;
    let stale = EtcdStore::connect(&server.endpoints(), "/x/").await.expect("connect");
    // Knows nothing yet of the later compaction, so etcd itself must refuse the watch.
    let at2 = kv.mod_revision - 1;
    other.compact(at2).await.expect("compact elsewhere");
    rudder_control::store::conformance::expect_compacted_watch(&stale, "", at2 - 2, at2).await;
    let list_below = stale
        .list(rudder_control::store::ListOptions {
            revision: Some(at2 - 1),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(list_below, Err(rudder_control::store::StoreError::Compacted { requested, compacted }) if (requested, compacted) == (at2 - 1, at2)),
        "{list_below:?}"
    );
}
