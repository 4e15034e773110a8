//! `rudder server` killed with SIGKILL during a write burst keeps every acknowledged write,
//! and kube-rs watchers carry on across restarts without lost or duplicated state.

mod server_process;

use std::{collections::BTreeSet, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::{
    Api,
    api::{ListParams, PostParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::json;
use server_process::ServerProcess;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": name}})).expect("configmap")
}

fn svc(name: &str) -> Service {
    serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}}),
    )
    .expect("service")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_write_burst_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ServerProcess::start(dir.path(), &[]);
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let api = api.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let name = format!("w{w}-{i}");
                    match api.create(&PostParams::default(), &cm(&name)).await {
                        Ok(_) => {
                            if tx.send(name).is_err() {
                                return;
                            }
                        }
                        Err(_) => return, // the server is gone
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let mut acked = BTreeSet::new();
    while acked.len() < 400 {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(name)) => {
                acked.insert(name);
            }
            other => panic!("write burst stalled after {} acks: {other:?}", acked.len()),
        }
    }
    server.kill9();
    while let Ok(Some(name)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
        acked.insert(name);
    }
    for w in writers {
        let _ = w.await;
    }

    server.restart();
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let present: BTreeSet<String> = api
        .list(&ListParams::default())
        .await
        .expect("list after restart")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    let lost: Vec<&String> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost after SIGKILL: {lost:?}",
        lost.len()
    );
    println!(
        "SIGKILL mid-burst: {} acknowledged creates, all {} present after restart ({} objects in total)",
        acked.len(),
        acked.len(),
        present.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_survives_server_restarts_without_lost_or_duplicated_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ServerProcess::start(dir.path(), &[]);
    let client = server.client().await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    for i in 0..3 {
        api.create(&PostParams::default(), &svc(&format!("r{i}")))
            .await
            .expect("create");
    }
    let (reader, writer) = reflector::store::<Service>();
    let stream = reflector(
        writer,
        watcher(api.clone(), watcher::Config::default()).default_backoff(),
    )
    .applied_objects()
    .for_each(|_| async {});
    let task = tokio::spawn(stream);

    let names = |reader: &reflector::Store<Service>| -> BTreeSet<String> {
        reader.state().iter().filter_map(|c| c.metadata.name.clone()).collect()
    };
    let wait_for = |want: BTreeSet<String>| {
        let reader = reader.clone();
        async move {
            for _ in 0..200 {
                if names(&reader) == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("reflector has {:?}, want {want:?}", names(&reader));
        }
    };
    let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    wait_for(set(&["kubernetes", "r0", "r1", "r2"])).await;

    for round in 0..2 {
        server.restart();
        // Changes made after the restart reach the reflector through its reconnect.
        let api: Api<Service> = Api::namespaced(server.client().await, "default");
        api.create(&PostParams::default(), &svc(&format!("after{round}")))
            .await
            .expect("create after restart");
        api.delete("r0", &Default::default()).await.ok();
        let mut want = set(&["kubernetes", "r1", "r2", "after0"]);
        if round == 1 {
            want.insert("after1".into());
        }
        wait_for(want.clone()).await;
        let listed: BTreeSet<String> = api
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        assert_eq!(names(&reader), listed, "reflector differs from a fresh list");
        assert_eq!(
            reader.state().len(),
            listed.len(),
            "duplicated objects in the reflector"
        );
        println!(
            "restart {}: Service reflector matches the server ({} services)",
            round + 1,
            listed.len()
        );
    }
    task.abort();
}
