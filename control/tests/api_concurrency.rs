//! Optimistic concurrency under contention: many clients doing read-modify-write on one
//! object must never lose an update; a stale resourceVersion is a 409 the client retries.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{PostParams, WatchParams},
};
use rudder_control::store::{Store, embedded::EmbeddedStore};
use serde_json::json;

const WRITERS: u64 = 8;
const INCREMENTS: u64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_modify_write_loses_nothing() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let embedded = Arc::new(
        EmbeddedStore::open(dir.path().join("store.redb"))
            .await
            .expect("open the embedded store"),
    );
    let store: Arc<dyn Store> = embedded.clone();
    let server = common::TestServer::start_with(dir, store).await;
    let admin = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");

    // Baseline: one writer alone, so each write pays a whole commit (fsync) by itself.
    let solo: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "solo"}, "data": {"n": "0"}})).expect("cm");
    let mut solo = cms.create(&PostParams::default(), &solo).await.expect("create solo");
    let solo_start = Instant::now();
    for i in 1..=100 {
        solo.data
            .get_or_insert_with(Default::default)
            .insert("n".into(), i.to_string());
        solo = cms
            .replace("solo", &PostParams::default(), &solo)
            .await
            .expect("solo write");
    }
    let solo_ms = solo_start.elapsed().as_secs_f64() * 1000.0 / 100.0;

    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "counter"}, "data": {"n": "0"}})).expect("cm");
    let created = cms.create(&PostParams::default(), &cm).await.expect("create counter");
    let start_rv = created.metadata.resource_version.clone().expect("rv");
    let before = embedded.stats().await.expect("stats");

    let conflicts = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        // Each writer has its own client: its own connection, as separate processes would.
        let client = server.client().await;
        let conflicts = Arc::clone(&conflicts);
        tasks.push(tokio::spawn(async move {
            let cms: Api<ConfigMap> = Api::namespaced(client, "default");
            let mut mine = 0u64;
            for _ in 0..INCREMENTS {
                loop {
                    let mut cm = cms.get("counter").await.expect("get counter");
                    let data = cm.data.get_or_insert_with(Default::default);
                    let n: u64 = data.get("n").and_then(|v| v.parse().ok()).expect("a number");
                    data.insert("n".into(), (n + 1).to_string());
                    match cms.replace("counter", &PostParams::default(), &cm).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "Conflict" => {
                            mine += 1;
                        }
                        Err(e) => panic!("writer {w}: unexpected error {e:?}"),
                    }
                }
            }
            conflicts.fetch_add(mine, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let elapsed = start.elapsed();
    let conflicts = conflicts.load(Ordering::Relaxed);
    let after = embedded.stats().await.expect("stats");
    let commits = after.commits - before.commits;

    let last = cms.get("counter").await.expect("get counter");
    let n: u64 = last
        .data
        .as_ref()
        .and_then(|d| d.get("n"))
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert_eq!(n, WRITERS * INCREMENTS, "lost updates: {conflicts} conflicts retried");

    // Every successful write is one MODIFIED event, in order, each +1.
    let mut stream = std::pin::pin!(
        cms.watch(
            &WatchParams::default().fields("metadata.name=counter").timeout(5),
            &start_rv
        )
        .await
        .expect("watch")
    );
    let mut seen = 0u64;
    while seen < WRITERS * INCREMENTS {
        use futures::TryStreamExt;
        match stream
            .try_next()
            .await
            .expect("watch stream")
            .expect("events until the last write")
        {
            kube::api::WatchEvent::Modified(cm) => {
                seen += 1;
                let v: u64 = cm
                    .data
                    .and_then(|d| d.get("n").cloned())
                    .and_then(|v| v.parse().ok())
                    .expect("n");
                assert_eq!(v, seen, "watch events out of order or missing");
            }
            kube::api::WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    let writes = WRITERS * INCREMENTS;
    println!(
        "concurrency: {WRITERS} writers x {INCREMENTS} increments = {n} in {:.2}s ({:.0} successful writes/s, {conflicts} conflicts retried, \
         {:.0} requests/s, {commits} store commits); one writer alone: {solo_ms:.2} ms per write; watch replayed {seen} MODIFIED in order",
        elapsed.as_secs_f64(),
        writes as f64 / elapsed.as_secs_f64(),
        (2 * (writes + conflicts)) as f64 / elapsed.as_secs_f64(),
    );
    assert!(elapsed.as_secs() < 60, "took {elapsed:?}: too slow for 4000 writes");
    server.running.stop().await;
}

/// Patches without a resourceVersion are the server's to retry: under contention they all
/// land, none comes back 409 (upstream's GuaranteedUpdate loops until it wins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_all_land_without_conflicts() {
    const PATCHERS: usize = 8;
    const PATCHES: usize = 200;
    let server = common::TestServer::start().await;
    let admin = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "shared"}})).expect("cm");
    cms.create(&PostParams::default(), &cm).await.expect("create");
    // Baseline: one client alone, no contention.
    let solo: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "solo"}})).expect("cm");
    cms.create(&PostParams::default(), &solo).await.expect("create solo");
    let solo_start = Instant::now();
    for i in 0..100 {
        let patch = kube::api::Patch::Merge(json!({"data": {format!("k{i}"): "1"}}));
        cms.patch("solo", &kube::api::PatchParams::default(), &patch)
            .await
            .expect("solo patch");
    }
    let solo_ms = solo_start.elapsed().as_secs_f64() * 1000.0 / 100.0;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..PATCHERS {
        let client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let cms: Api<ConfigMap> = Api::namespaced(client, "default");
            for i in 0..PATCHES {
                let key = format!("w{w}-{i}");
                // Alternate merge and strategic merge patches, as kubectl and controllers mix them.
                let body = json!({"data": {key: "1"}});
                let patch = if i % 2 == 0 {
                    kube::api::Patch::Merge(body)
                } else {
                    kube::api::Patch::Strategic(body)
                };
                cms.patch("shared", &kube::api::PatchParams::default(), &patch)
                    .await
                    .unwrap_or_else(|e| panic!("patcher {w} patch {i}: {e:?}"));
            }
        }));
    }
    for t in tasks {
        t.await.expect("patcher");
    }
    let elapsed = start.elapsed();
    let data = cms.get("shared").await.expect("get").data.unwrap_or_default();
    assert_eq!(data.len(), PATCHERS * PATCHES, "patches lost");
    println!(
        "concurrency: {PATCHERS} clients x {PATCHES} merge/strategic patches on one ConfigMap: all {} keys present, no 409, in {:.2}s \
         ({:.0} patches/s); one client alone: {solo_ms:.2} ms per patch",
        data.len(),
        elapsed.as_secs_f64(),
        data.len() as f64 / elapsed.as_secs_f64(),
    );
    server.running.stop().await;
}
