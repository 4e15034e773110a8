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
    let store = EmbeddedStore::open(dir.path().join("store.redb")).await.expect("open embedded store");
    (Arc::new(store), Box::new(dir))
}

async fn etcd() -> Fixture {
    let server = EtcdServer::start().await.expect("start etcd");
    let store = EtcdStore::connect(&server.endpoints(), "/rudder-test/").await.expect("connect to etcd");
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
    assert_eq!((listed.items[0].key.as_str(), listed.items[0].value.as_slice()), ("k", b"from a".as_slice()));
}
