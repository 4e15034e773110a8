//! kube-rs watchers on Services and EndpointSlices: initial list, live events, and a
//! relist after compaction (the in-stream 410 Expired), with no lost or duplicated state.

mod common;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api,
    api::{ListParams, PostParams},
    runtime::watcher::{self, Event},
};
use rudder_control::store::{Store, embedded::EmbeddedStore};
use serde_json::json;

fn service(name: &str) -> Service {
    serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}}),
    )
    .expect("svc")
}

fn slice(name: &str, ip: &str) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "manual"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    }))
    .expect("slice")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_list_follow_and_relist_after_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path().join("store.redb")).await.expect("store"));
    let server = common::TestServer::start_with(dir, Arc::clone(&store)).await;
    let client = server.client().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    services
        .create(&PostParams::default(), &service("a"))
        .await
        .expect("create a");
    slices
        .create(&PostParams::default(), &slice("manual-1", "10.244.1.10"))
        .await
        .expect("slice");

    // A short server-side timeout makes the watcher re-watch from its last resourceVersion
    // often, which is what meets the compaction.
    let config = watcher::Config::default().timeout(2);
    let mut svc_events = watcher::watcher(services.clone(), config.clone()).boxed();
    let mut slice_events = watcher::watcher(slices.clone(), config).boxed();

    // Follows one watcher, keeping the set of names it believes exist and counting relists.
    async fn drain<K: kube::Resource + Clone + std::fmt::Debug>(
        events: &mut (impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Unpin),
        state: &mut BTreeSet<String>,
        inits: &mut usize,
        until: impl Fn(&BTreeSet<String>, usize) -> bool,
    ) {
        let mut buffer: Option<BTreeSet<String>> = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !until(state, *inits) {
            let ev = tokio::time::timeout_at(deadline, events.next())
                .await
                .unwrap_or_else(|_| panic!("timed out; state {state:?}, relists {inits}"))
                .expect("stream open");
            match ev {
                Ok(Event::Init) => buffer = Some(BTreeSet::new()),
                Ok(Event::InitApply(o)) => {
                    buffer
                        .get_or_insert_with(BTreeSet::new)
                        .insert(o.meta().name.clone().unwrap_or_default());
                }
                Ok(Event::InitDone) => {
                    *state = buffer.take().unwrap_or_default();
                    *inits += 1;
                }
                Ok(Event::Apply(o)) => {
                    state.insert(o.meta().name.clone().unwrap_or_default());
                }
                Ok(Event::Delete(o)) => {
                    state.remove(&o.meta().name.clone().unwrap_or_default());
                }
                Err(e) => println!("watcher error (it retries): {e}"),
            }
        }
    }

    let (mut svc_state, mut svc_inits) = (BTreeSet::new(), 0);
    let (mut slice_state, mut slice_inits) = (BTreeSet::new(), 0);
    drain(&mut svc_events, &mut svc_state, &mut svc_inits, |_, i| i >= 1).await;
    drain(&mut slice_events, &mut slice_state, &mut slice_inits, |_, i| i >= 1).await;
    assert_eq!(svc_state, ["a", "kubernetes"].map(String::from).into());
    assert_eq!(slice_state, ["manual-1"].map(String::from).into());

    services
        .create(&PostParams::default(), &service("b"))
        .await
        .expect("create b");
    slices
        .create(&PostParams::default(), &slice("manual-2", "10.244.2.10"))
        .await
        .expect("slice 2");
    drain(&mut svc_events, &mut svc_state, &mut svc_inits, |s, _| s.contains("b")).await;
    drain(&mut slice_events, &mut slice_state, &mut slice_inits, |s, _| {
        s.contains("manual-2")
    })
    .await;

    // Writes elsewhere move the revision on; compacting past the watchers' revisions
    // makes their next watch fail with an in-stream 410, and kube-rs relists.
    services.delete("a", &Default::default()).await.expect("delete a");
    slices
        .delete("manual-1", &Default::default())
        .await
        .expect("delete slice");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..20 {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("noise{i}")}})).expect("cm");
        cms.create(&PostParams::default(), &cm).await.expect("noise");
    }
    let rev = store.current_revision().await.expect("revision");
    store.compact(rev).await.expect("compact");
    let before = (svc_inits, slice_inits);
    drain(&mut svc_events, &mut svc_state, &mut svc_inits, |_, i| i > before.0).await;
    drain(&mut slice_events, &mut slice_state, &mut slice_inits, |_, i| {
        i > before.1
    })
    .await;

    let listed_svcs: BTreeSet<String> = services
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    let listed_slices: BTreeSet<String> = slices
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    assert_eq!(svc_state, listed_svcs);
    assert_eq!(slice_state, listed_slices);
    println!(
        "kube-rs watchers: initial list, live ADDED, compaction at revision {rev} -> in-stream 410 -> relist ({} service and {} slice relists); state {:?} / {:?} matches the server",
        svc_inits - before.0,
        slice_inits - before.1,
        svc_state,
        slice_state
    );
    server.running.stop().await;
}

/// A watch of a quiet namespace gets bookmarks at the store's current revision while
/// another namespace is written, and resuming from such a bookmark gives exactly the
/// later events of the watched namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_of_a_quiet_watch_advance_to_the_store_revision() {
    quiet_watch_bookmarks(common::TestServer::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_of_a_quiet_watch_advance_to_the_store_revision_on_etcd() {
    quiet_watch_bookmarks(common::TestServer::start_on_etcd().await).await;
}

async fn quiet_watch_bookmarks(server: common::TestServer) {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{WatchEvent, WatchParams};

    let client = server.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in ["bm-quiet", "bm-busy"] {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace");
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
    }
    let quiet: Api<ConfigMap> = Api::namespaced(client.clone(), "bm-quiet");
    let busy: Api<ConfigMap> = Api::namespaced(client.clone(), "bm-busy");
    let cm = |name: &str| -> ConfigMap { serde_json::from_value(json!({"metadata": {"name": name}})).expect("cm") };
    let start_rv = quiet
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("list resourceVersion");

    let params = WatchParams::default().timeout(60);
    assert!(params.bookmarks, "kube-rs asks for bookmarks by default");
    let mut watch = quiet.watch(&params, &start_rv).await.expect("watch").boxed();
    let mut last_busy_rv = 0i64;
    for i in 0..5 {
        let created = busy
            .create(&PostParams::default(), &cm(&format!("b{i}")))
            .await
            .expect("create in busy");
        last_busy_rv = created
            .metadata
            .resource_version
            .expect("rv")
            .parse()
            .expect("numeric rv");
    }
    // The watch delivers nothing but bookmarks; one of them reaches the last write in the
    // busy namespace (a watch reports progress after 2 s idle, bookmarks go out every 1 s
    // here).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let bookmark_rv = loop {
        let next = tokio::time::timeout_at(deadline, watch.next())
            .await
            .expect("a bookmark at the store's revision within 30 s")
            .expect("watch still open");
        match next.expect("watch event") {
            WatchEvent::Bookmark(b) => {
                let rv: i64 = b.metadata.resource_version.parse().expect("numeric bookmark rv");
                if rv >= last_busy_rv {
                    break rv;
                }
            }
            other => panic!("the quiet namespace delivered {other:?}"),
        }
    };
    drop(watch);

    // Written after the bookmark: exactly these must come back, once each, in order.
    let mut expected = Vec::new();
    for i in 0..3 {
        quiet
            .create(&PostParams::default(), &cm(&format!("q{i}")))
            .await
            .expect("create in quiet");
        busy.create(&PostParams::default(), &cm(&format!("later{i}")))
            .await
            .expect("create in busy");
        expected.push(format!("q{i}"));
    }
    let mut resumed = quiet
        .watch(&params, &bookmark_rv.to_string())
        .await
        .expect("resume from the bookmark")
        .boxed();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < expected.len() {
        let next = tokio::time::timeout_at(deadline, resumed.next())
            .await
            .expect("the later events within 30 s")
            .expect("watch still open");
        match next.expect("watch event") {
            WatchEvent::Added(cm) => seen.push(cm.metadata.name.expect("name")),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(seen, expected);
    // Nothing more arrives: no duplicate of what was already seen.
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(next) = tokio::time::timeout_at(quiet_until, resumed.next()).await {
        match next.expect("watch still open").expect("watch event") {
            WatchEvent::Bookmark(_) => {}
            other => panic!("event after the expected ones: {other:?}"),
        }
    }
}
