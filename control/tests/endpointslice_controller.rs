//! The EndpointSlice controller against a real `rudder server`, through kube-rs like any
//! client: a Service and its Pods in, EndpointSlices and Endpoints out, with the latency of
//! each step.

mod common;

use std::{future::Future, time::Duration};

use jiff::Timestamp;
use k8s_openapi::api::{
    core::v1::{Endpoints, Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use rudder_control::controllers::endpointslice::{self, desired};
use serde_json::json;
use tokio::time::Instant;

const NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(5);

/// Polls `check` every 10 ms until it returns `Some`, up to [`WAIT`]; returns the value and
/// how long it took since `since`.
async fn wait_for<T, F, Fut>(what: &str, since: Instant, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return (v, since.elapsed());
        }
        assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn slices(client: &Client, ns: &str, svc: &str) -> Vec<EndpointSlice> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("{}={svc}", desired::SERVICE_NAME_LABEL));
    api.list(&lp).await.expect("list slices").items
}

/// (address, ready, serving, terminating) of every endpoint of the Service, sorted.
fn endpoint_states(slices: &[EndpointSlice]) -> Vec<(String, bool, bool, bool)> {
    let mut out: Vec<_> = slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .map(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            (
                e.addresses[0].clone(),
                c.ready == Some(true),
                c.serving == Some(true),
                c.terminating == Some(true),
            )
        })
        .collect();
    out.sort();
    out
}

fn now_rfc3339() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn pod(i: u32) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("web-{i}"), "labels": {"app": "web"}},
        "spec": {"nodeName": format!("node-{i}"), "containers": [{"name": "web", "image": "nginx:1.27",
                 "ports": [{"name": "http", "containerPort": 8080}]}]}
    }))
    .expect("pod")
}

async fn set_status(pods: &Api<Pod>, i: u32, ready: bool) -> String {
    let at = now_rfc3339();
    let status = json!({"status": {
        "phase": "Running",
        "podIP": format!("10.244.{i}.10"),
        "podIPs": [{"ip": format!("10.244.{i}.10")}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": at}],
    }});
    pods.patch_status(&format!("web-{i}"), &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch status");
    at
}

fn trigger_time(slice: &EndpointSlice) -> Option<Timestamp> {
    slice
        .metadata
        .annotations
        .as_ref()?
        .get(desired::TRIGGER_TIME_ANNOTATION)?
        .parse()
        .ok()
}

async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

#[tokio::test]
async fn slices_and_endpoints_follow_pods_and_service() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let own = server.client().await;
    let controller =
        common::Background::start(|shutdown| endpointslice::run(own, endpointslice::Config::default(), shutdown));
    create_namespace(&client, NS).await;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), NS);
    let pp = PostParams::default();

    // Service, then three Pods that become Ready.
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"tier": "front"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .expect("service");
    let svc = services.create(&pp, &svc).await.expect("create service");
    let svc_uid = svc.metadata.uid.clone().expect("uid");
    let mut uids = Vec::new();
    for i in 1..=3 {
        uids.push(
            pods.create(&pp, &pod(i))
                .await
                .expect("create pod")
                .metadata
                .uid
                .expect("uid"),
        );
    }
    let mut last_ready = String::new();
    for i in 1..=3 {
        last_ready = set_status(&pods, i, true).await;
    }
    let t0 = Instant::now();
    let (slice, ms) = wait_for("3 ready endpoints", t0, || async {
        let s = slices(&client, NS, "web").await;
        (s.len() == 1 && endpoint_states(&s).iter().filter(|e| e.1).count() == 3)
            .then(|| s.into_iter().next().expect("one"))
    })
    .await;
    println!("3 Pods Ready -> slice with 3 ready endpoints: {} ms", ms.as_millis());
    let name = slice.metadata.name.clone().expect("name");
    assert!(
        name.starts_with("web-") && name.len() == "web-".len() + 5,
        "generated name {name}"
    );
    assert_eq!(slice.address_type, "IPv4");
    let ports = slice.ports.clone().expect("ports");
    assert_eq!(
        (
            ports.len(),
            ports[0].port,
            ports[0].protocol.as_deref(),
            ports[0].name.as_deref()
        ),
        (1, Some(8080), Some("TCP"), Some(""))
    );
    let labels = slice.metadata.labels.clone().expect("labels");
    assert_eq!(
        labels.get(desired::MANAGED_BY_LABEL).map(String::as_str),
        Some(desired::CONTROLLER_NAME)
    );
    assert_eq!(
        labels.get("tier").map(String::as_str),
        Some("front"),
        "Service labels are copied"
    );
    let owner = &slice.metadata.owner_references.clone().expect("owner")[0];
    assert_eq!(
        (
            owner.kind.as_str(),
            owner.name.as_str(),
            owner.uid.as_str(),
            owner.controller
        ),
        ("Service", "web", svc_uid.as_str(), Some(true))
    );
    assert_eq!(
        trigger_time(&slice),
        Some(last_ready.parse().expect("ts")),
        "trigger time = the last Ready transition"
    );
    for (i, e) in slice.endpoints.iter().enumerate() {
        let k = i + 1;
        assert_eq!(e.addresses, [format!("10.244.{k}.10")]);
        assert_eq!(e.node_name.as_deref(), Some(format!("node-{k}").as_str()));
        let r = e.target_ref.clone().expect("targetRef");
        assert_eq!(
            (r.kind.as_deref(), r.name.as_deref(), r.namespace.as_deref()),
            (Some("Pod"), Some(format!("web-{k}").as_str()), Some(NS))
        );
        assert_eq!(r.uid.as_deref(), Some(uids[i].as_str()));
    }
    let (ep, ms) = wait_for("Endpoints with 3 addresses", t0, || async {
        let ep = endpoints.get_opt("web").await.expect("get endpoints")?;
        let n = ep
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| s.addresses.iter().flatten())
            .count();
        (n == 3).then_some(ep)
    })
    .await;
    println!("3 Pods Ready -> Endpoints with 3 addresses: {} ms", ms.as_millis());
    assert_eq!(
        ep.subsets.as_ref().expect("subsets")[0].ports.as_ref().expect("ports")[0].port,
        8080
    );
    assert_eq!(
        ep.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(desired::SKIP_MIRROR_LABEL))
            .map(String::as_str),
        Some("true")
    );

    // Idle, and a change that does not matter: no writes.
    let rv = slice.metadata.resource_version.clone();
    let ep_rv = ep.metadata.resource_version.clone();
    pods.patch(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"note": "irrelevant"}}})),
    )
    .await
    .expect("annotate pod");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        slices(&client, NS, "web").await[0].metadata.resource_version,
        rv,
        "no-op: slice not rewritten"
    );
    assert_eq!(
        endpoints.get("web").await.expect("endpoints").metadata.resource_version,
        ep_rv,
        "no-op: Endpoints not rewritten"
    );
    println!("idle 700 ms + irrelevant Pod change: no writes");

    // One Pod not Ready.
    let t = Instant::now();
    let not_ready_at = set_status(&pods, 1, false).await;
    let (s, ms) = wait_for("web-1 not ready", t, || async {
        let s = slices(&client, NS, "web").await;
        endpoint_states(&s)
            .contains(&("10.244.1.10".into(), false, false, false))
            .then_some(s)
    })
    .await;
    println!(
        "web-1 NotReady -> endpoint ready=false serving=false: {} ms",
        ms.as_millis()
    );
    assert_eq!(endpoint_states(&s).iter().filter(|e| e.1).count(), 2);
    assert_eq!(trigger_time(&s[0]), Some(not_ready_at.parse().expect("ts")));
    let (_, ms) = wait_for("web-1 in notReadyAddresses", t, || async {
        let ep = endpoints.get("web").await.expect("endpoints");
        let nr: Vec<String> = ep
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| s.not_ready_addresses.iter().flatten())
            .map(|a| a.ip.clone())
            .collect();
        (nr == ["10.244.1.10"]).then_some(())
    })
    .await;
    println!("web-1 NotReady -> Endpoints notReadyAddresses: {} ms", ms.as_millis());

    // One Pod deleted (its Node does not exist, so it goes at once).
    let t = Instant::now();
    let deleted_at = Timestamp::now();
    pods.delete("web-2", &DeleteParams::default())
        .await
        .expect("delete pod");
    let (s, ms) = wait_for("2 endpoints", t, || async {
        let s = slices(&client, NS, "web").await;
        (endpoint_states(&s).len() == 2).then_some(s)
    })
    .await;
    println!("web-2 deleted -> 2 endpoints: {} ms", ms.as_millis());
    assert_eq!(s.len(), 1, "the same slice is rewritten");
    assert_eq!(s[0].metadata.name.as_deref(), Some(name.as_str()));
    let trigger = trigger_time(&s[0]).expect("trigger time");
    assert!(
        trigger >= deleted_at,
        "trigger time {trigger} is when the deletion was seen (after {deleted_at})"
    );

    // Scale to zero: one slice without endpoints remains.
    let t = Instant::now();
    for i in [1, 3] {
        pods.delete(&format!("web-{i}"), &DeleteParams::default())
            .await
            .expect("delete pod");
    }
    let (s, ms) = wait_for("no endpoints", t, || async {
        let s = slices(&client, NS, "web").await;
        (s.len() == 1 && s[0].endpoints.is_empty()).then_some(s)
    })
    .await;
    println!("all Pods deleted -> 1 slice, 0 endpoints: {} ms", ms.as_millis());
    assert_eq!(s[0].ports.as_deref(), Some(&[][..]), "the placeholder has no ports");
    let (_, ms) = wait_for("Endpoints without subsets", t, || async {
        let ep = endpoints.get("web").await.expect("endpoints");
        ep.subsets.as_ref().is_none_or(Vec::is_empty).then_some(())
    })
    .await;
    println!("all Pods deleted -> Endpoints without subsets: {} ms", ms.as_millis());

    // Service deleted: its slices and Endpoints go.
    let t = Instant::now();
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete service");
    let (_, ms) = wait_for("slices gone", t, || async {
        slices(&client, NS, "web").await.is_empty().then_some(())
    })
    .await;
    println!("Service deleted -> slices gone: {} ms", ms.as_millis());
    let (_, ms) = wait_for("Endpoints gone", t, || async {
        endpoints.get_opt("web").await.expect("get").is_none().then_some(())
    })
    .await;
    println!("Service deleted -> Endpoints gone: {} ms", ms.as_millis());

    controller.stop(WAIT).await;
    server.running.stop().await;
}

#[tokio::test]
async fn user_slices_are_left_alone_and_orphans_are_cleaned_after_a_restart() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    create_namespace(&client, NS).await;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let slice_api: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), NS);
    let pp = PostParams::default();

    // A Service without selector and the slice and Endpoints its user made.
    let manual: Service =
        serde_json::from_value(json!({"metadata": {"name": "db"}, "spec": {"ports": [{"port": 5432}]}})).expect("svc");
    services.create(&pp, &manual).await.expect("create db");
    let user_slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "db-1", "labels": {desired::SERVICE_NAME_LABEL: "db", desired::MANAGED_BY_LABEL: "someone-else"}},
        "addressType": "IPv4", "ports": [{"port": 5432}], "endpoints": [{"addresses": ["192.0.2.1"]}]
    }))
    .expect("slice");
    let user_slice = slice_api.create(&pp, &user_slice).await.expect("create user slice");
    let user_ep: Endpoints = serde_json::from_value(json!({"metadata": {"name": "db"},
        "subsets": [{"addresses": [{"ip": "192.0.2.1"}], "ports": [{"port": 5432}]}]}))
    .expect("endpoints");
    let user_ep = endpoints.create(&pp, &user_ep).await.expect("create user endpoints");

    // A selector Service with one ready Pod.
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}))
    .expect("svc");
    services.create(&pp, &svc).await.expect("create web");
    pods.create(&pp, &pod(1)).await.expect("create pod");
    set_status(&pods, 1, true).await;

    let own = server.client().await;
    let controller =
        common::Background::start(|shutdown| endpointslice::run(own, endpointslice::Config::default(), shutdown));
    let t = Instant::now();
    let (s, ms) = wait_for("web's slice", t, || async {
        let s = slices(&client, NS, "web").await;
        (endpoint_states(&s).len() == 1).then_some(s)
    })
    .await;
    println!("controller start -> existing Service's slice: {} ms", ms.as_millis());
    let ports = s[0].ports.clone().expect("ports");
    assert_eq!(
        (ports[0].name.as_deref(), ports[0].port),
        (Some("http"), Some(8080)),
        "named targetPort resolved"
    );

    // Stop the controller, delete the Service behind its back, start it again.
    controller.stop(WAIT).await;
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete web");
    let own = server.client().await;
    let controller =
        common::Background::start(|shutdown| endpointslice::run(own, endpointslice::Config::default(), shutdown));
    let t = Instant::now();
    let (_, ms) = wait_for("orphans gone", t, || async {
        let gone =
            slices(&client, NS, "web").await.is_empty() && endpoints.get_opt("web").await.expect("get").is_none();
        gone.then_some(())
    })
    .await;
    println!(
        "restart after the Service went -> its slices and Endpoints deleted: {} ms",
        ms.as_millis()
    );

    // The user's objects were never touched.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = slice_api.get("db-1").await.expect("user slice");
    assert_eq!(still.metadata.resource_version, user_slice.metadata.resource_version);
    let still = endpoints.get("db").await.expect("user endpoints");
    assert_eq!(still.metadata.resource_version, user_ep.metadata.resource_version);
    assert_eq!(
        slices(&client, NS, "db").await.len(),
        1,
        "no slice of ours for a selector-less Service"
    );
    println!("selector-less Service: the user's EndpointSlice and Endpoints untouched");

    controller.stop(WAIT).await;
    server.running.stop().await;
}

#[tokio::test]
async fn many_pods_split_into_slices_of_100_and_one_change_rewrites_one_slice() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let own = server.client().await;
    let controller =
        common::Background::start(|shutdown| endpointslice::run(own, endpointslice::Config::default(), shutdown));
    create_namespace(&client, NS).await;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pp = PostParams::default();
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "big"},
        "spec": {"selector": {"app": "big"}, "ports": [{"port": 80, "targetPort": 8080}]}}))
    .expect("svc");
    services.create(&pp, &svc).await.expect("create service");

    const N: u32 = 250;
    let t = Instant::now();
    for i in 0..N {
        // The server keeps a status given on create, so each Pod is one request.
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("big-{i}"), "labels": {"app": "big"}},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "nginx:1.27"}]},
            "status": {"phase": "Running", "podIP": format!("10.245.{}.{}", i / 200, i % 200 + 1),
                       "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now_rfc3339()}]}
        }))
        .expect("pod");
        pods.create(&pp, &p).await.expect("create pod");
    }
    let created = t.elapsed();
    let (s, ms) = wait_for("250 endpoints", t, || async {
        let s = slices(&client, NS, "big").await;
        (endpoint_states(&s).len() == N as usize).then_some(s)
    })
    .await;
    let mut sizes: Vec<usize> = s.iter().map(|s| s.endpoints.len()).collect();
    sizes.sort();
    println!(
        "{N} Pods created in {} ms -> {} slices {sizes:?}, all endpoints {} ms after the first create",
        created.as_millis(),
        s.len(),
        ms.as_millis()
    );
    assert!(sizes.iter().all(|n| *n <= 100), "{sizes:?}");
    assert_eq!(s.len(), 3, "{sizes:?}");

    // Let it settle, then one Pod goes not-ready: exactly one slice is rewritten.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<_> = slices(&client, NS, "big")
        .await
        .into_iter()
        .map(|s| (s.metadata.name, s.metadata.resource_version))
        .collect();
    let t = Instant::now();
    let status =
        json!({"status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now_rfc3339()}]}});
    pods.patch_status("big-7", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch");
    let (after, ms) = wait_for("big-7 not ready", t, || async {
        let s = slices(&client, NS, "big").await;
        endpoint_states(&s)
            .iter()
            .any(|e| e.0 == "10.245.0.8" && !e.1)
            .then_some(s)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_settled: Vec<_> = slices(&client, NS, "big")
        .await
        .into_iter()
        .map(|s| (s.metadata.name, s.metadata.resource_version))
        .collect();
    let changed = before.iter().filter(|b| !after_settled.contains(b)).count();
    println!(
        "1 of {N} Pods NotReady -> {} ms; slices rewritten: {changed} of {}",
        ms.as_millis(),
        after.len()
    );
    assert_eq!(changed, 1);

    controller.stop(WAIT).await;
    server.running.stop().await;
}
