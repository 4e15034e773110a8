//! StatefulSets on a real cluster: `rudder up` (the real binary: API server, scheduler,
//! controllers, cluster DNS, the local-path provisioner, two nodes in network namespaces
//! with their agents running pods as processes), driven with real kubectl 1.33. One
//! cluster for every case, in sequence: ordered creation with stable names, per-pod DNS
//! through the headless Service, a volume that survives its pod, a partitioned rolling
//! update, Parallel pod management, and a scale-down that keeps the claims.
//! Needs root, cgroups and the `rudder-proxy` binary beside `rudder` (`cargo build -p
//! rudder-proxy`; the workspace build has it).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use hickory_proto::rr::{RData, RecordType};
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{PersistentVolumeClaim, Pod},
};
use kube::{Api, api::ListParams};
use serde_json::json;

use common::up::Up;

const NS: &str = "default";
/// Generous: pods are real processes on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(180);
const CLUSTER_DNS: &str = "10.96.0.10:53";

/// Each pod records who first wrote its volume, and says whether it found that already.
const SCRIPT: &str = "if [ -f /data/who ]; then echo \"found $(cat /data/who)\"; \
                      else cat /etc/hostname > /data/who; echo wrote; fi; exec sleep 3600";

fn web_manifests() -> [serde_json::Value; 2] {
    [
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
            "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"name": "web", "port": 80}]}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "serviceName": "web",
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "web", "image": "busybox", "command": ["sh", "-c", SCRIPT],
                    "env": [{"name": "VERSION", "value": "1"}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}}],
        }}),
    ]
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn revision(pod: &Pod) -> String {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("controller-revision-hash"))
        .cloned()
        .unwrap_or_default()
}

/// The pods of `app` by name.
async fn pods_of(api: &Api<Pod>, app: &str) -> BTreeMap<String, Pod> {
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
        .collect()
}

fn logs(up: &Up, pod: &str) -> String {
    up.kubectl(&["-n", NS, "logs", pod])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_pods_come_up_in_order_resolve_by_name_and_keep_their_volumes() {
    // The resolver the cluster DNS forwards to: on the host, which the nodes reach as the
    // underlay's first address.
    let (upstream, _upstream_task) = common::dns_upstream::start("0.0.0.0:0").await;
    let dns_upstream = format!("--dns-upstream=10.253.70.1:{}", upstream.port());
    let mut up = Up::start(
        "sts",
        Ipv4Addr::new(10, 253, 70, 0),
        &["--nodes", "2", "--mode", "nftables", "--no-demo", &dns_upstream],
    );
    let started = Instant::now();
    up.wait_for("cluster DNS (rudder-dns) ready", Duration::from_secs(300));
    println!("cluster up in {:.1}s", started.elapsed().as_secs_f64());
    let client = common::client_from(&up.kubeconfig()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);

    // (a) Ordered creation: in every snapshot, web-N exists only if web-(N-1) is Ready.
    let t0 = Instant::now();
    for m in web_manifests() {
        up.apply(&m);
    }
    let mut snapshots = 0;
    let ready = loop {
        let now = pods_of(&pods, "web").await;
        snapshots += 1;
        for n in 1..3 {
            if now.contains_key(&format!("web-{n}")) {
                let before = now.get(&format!("web-{}", n - 1));
                assert!(
                    before.is_some_and(is_ready),
                    "web-{n} exists while web-{} is not Ready: {:?}",
                    n - 1,
                    before.map(|p| &p.status)
                );
            }
        }
        if (0..3).all(|n| now.get(&format!("web-{n}")).is_some_and(is_ready)) {
            break now;
        }
        assert!(
            t0.elapsed() < WAIT,
            "3 Ready pods of web: {:?}",
            now.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let to_ready = t0.elapsed();
    println!(
        "3 ordered pods Ready {:.1}s after apply ({snapshots} snapshots checked)",
        to_ready.as_secs_f64()
    );
    // The timestamps agree: each pod was created at or after its predecessor turned Ready
    // (creationTimestamp has whole seconds).
    let ready_at = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_transition_time.clone())
            .map(|t| t.0.as_second())
    };
    for n in 1..3 {
        let created = ready[&format!("web-{n}")]
            .metadata
            .creation_timestamp
            .clone()
            .map(|t| t.0.as_second());
        let previous_ready = ready_at(&ready[&format!("web-{}", n - 1)]);
        assert!(
            created >= previous_ready,
            "web-{n} created {created:?} before web-{} Ready {previous_ready:?}",
            n - 1
        );
    }
    let table = up.kubectl(&["-n", NS, "get", "sts", "web"]);
    assert!(
        table.lines().any(|l| l.starts_with("web ") && l.contains("3/3")),
        "{table}"
    );

    // (b) Each pod's stable name resolves through the headless Service, from another pod.
    let dns: SocketAddr = CLUSTER_DNS.parse().expect("address");
    for n in 0..3 {
        let target = &ready[&format!("web-{n}")];
        let want: Ipv4Addr = target
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
            .expect("pod IP");
        let from = up.pod_netns(&ready[&format!("web-{}", (n + 1) % 3)]);
        let name = format!("web-{n}.web.{NS}.svc.cluster.local.");
        common::wait_for(&format!("{name} -> {want}"), WAIT, || {
            let (from, name) = (from.clone(), name.clone());
            async move {
                tokio::task::spawn_blocking(move || rudder_control::up::demo::resolve_in(&from, dns, &name))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .filter(|ips| ips == &[want])
            }
        })
        .await;
        println!("{name} resolves to {want}");
    }

    // The same pod asks for the headless Service itself (every ready pod's address), the
    // SRV records of its named port (one per pod, by its stable name), and an ExternalName
    // Service whose target only the resolver this test runs knows.
    let from = up.pod_netns(&ready["web-0"]);
    let pod_ips: BTreeSet<Ipv4Addr> = ready
        .values()
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse().ok())
        .collect();
    let ask = |name: &'static str, qtype: RecordType| {
        let from = from.clone();
        async move {
            tokio::task::spawn_blocking(move || rudder_control::up::demo::query_in(&from, dns, name, qtype))
                .await
                .ok()
                .and_then(Result::ok)
        }
    };
    common::wait_for("web.default.svc.cluster.local -> every pod", WAIT, || async {
        let reply = ask("web.default.svc.cluster.local.", RecordType::A).await?;
        let ips: BTreeSet<Ipv4Addr> = reply
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        (ips == pod_ips).then_some(())
    })
    .await;
    let srv = ask("_web._tcp.web.default.svc.cluster.local.", RecordType::SRV)
        .await
        .expect("an SRV answer");
    let targets: BTreeSet<String> = srv
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) if srv.port == 80 => Some(srv.target.to_string()),
            _ => None,
        })
        .collect();
    let want: BTreeSet<String> = (0..3)
        .map(|n| format!("web-{n}.web.default.svc.cluster.local."))
        .collect();
    assert_eq!(targets, want, "SRV for the named port: {:?}", srv.answers);
    up.apply(
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext", "namespace": NS},
        "spec": {"type": "ExternalName", "externalName": "db.upstream.test"}}),
    );
    let ext = common::wait_for(
        "ext.default.svc.cluster.local -> CNAME db.upstream.test",
        WAIT,
        || async {
            let reply = ask("ext.default.svc.cluster.local.", RecordType::A).await?;
            let cname = reply
                .answers
                .iter()
                .any(|r| matches!(&r.data, RData::CNAME(c) if c.0.to_string() == "db.upstream.test."));
            let a = reply
                .answers
                .iter()
                .any(|r| matches!(&r.data, RData::A(a) if a.0 == Ipv4Addr::new(192, 0, 2, 7)));
            (cname && a).then_some(reply)
        },
    )
    .await;
    println!(
        "from web-0: the headless Service gives {} pod addresses, SRV gives {} targets, ext is {} answers (CNAME, then A from the test's resolver)",
        pod_ips.len(),
        targets.len(),
        ext.answers.len()
    );

    // (c) Each pod wrote its own volume; a deleted pod comes back with the same name and
    // claim and finds what it wrote.
    for n in 0..3 {
        let out = logs(&up, &format!("web-{n}"));
        assert!(out.contains("wrote"), "web-{n}: {out:?}");
    }
    let old_uid = ready["web-1"].metadata.uid.clone();
    let t = Instant::now();
    up.kubectl(&["-n", NS, "delete", "pod", "web-1"]);
    let back = common::wait_for("web-1 back and Ready", WAIT, || async {
        let p = pods.get_opt("web-1").await.ok().flatten()?;
        (p.metadata.uid != old_uid && is_ready(&p)).then_some(p)
    })
    .await;
    println!(
        "web-1 replaced and Ready {:.1}s after its deletion",
        t.elapsed().as_secs_f64()
    );
    let claim = back
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .and_then(|v| v.iter().find(|v| v.name == "data"))
        .and_then(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone());
    assert_eq!(claim.as_deref(), Some("data-web-1"));
    let bound = claims.get("data-web-1").await.expect("claim");
    assert_eq!(bound.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
    let out = common::wait_for("web-1's log", WAIT, || async {
        let out = logs(&up, "web-1");
        (!out.is_empty()).then_some(out)
    })
    .await;
    assert!(
        out.contains("found web-1"),
        "the new web-1 did not find its file: {out:?}"
    );

    // (d) A rolling update with partition 2 changes only web-2; partition 0 then updates
    // the rest, highest ordinal first, and the update revision becomes the current one.
    let before = sets.get("web").await.expect("set").status.unwrap_or_default();
    let old_revision = before.current_revision.clone().unwrap_or_default();
    assert_eq!(before.update_revision.as_deref(), Some(old_revision.as_str()));
    let t = Instant::now();
    up.kubectl(&[
        "-n",
        NS,
        "patch",
        "sts",
        "web",
        "--type=strategic",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":2}},"template":{"spec":{"containers":[{"name":"web","env":[{"name":"VERSION","value":"2"}]}]}}}}"#,
    ]);
    let new_revision = common::wait_for("an update revision", WAIT, || async {
        let s = sets.get("web").await.ok()?.status?;
        s.update_revision.filter(|r| *r != old_revision)
    })
    .await;
    common::wait_for("web-2 updated and Ready", WAIT, || async {
        let p = pods.get_opt("web-2").await.ok().flatten()?;
        (revision(&p) == new_revision && is_ready(&p)).then_some(())
    })
    .await;
    // Give the controller time to go wrong, then check the partition held.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let now = pods_of(&pods, "web").await;
    for n in 0..2 {
        assert_eq!(
            revision(&now[&format!("web-{n}")]),
            old_revision,
            "web-{n} must keep the old revision"
        );
    }
    let status = sets.get("web").await.expect("set").status.unwrap_or_default();
    assert_eq!(status.updated_replicas, Some(1), "{status:?}");
    assert_eq!(status.current_revision.as_deref(), Some(old_revision.as_str()));
    let revisions = up.kubectl(&["-n", NS, "get", "controllerrevisions"]);
    assert!(
        revisions.contains(&new_revision) && revisions.contains("statefulset.apps/web"),
        "{revisions}"
    );

    up.kubectl(&[
        "-n",
        NS,
        "patch",
        "sts",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#,
    ]);
    let mut updated_at: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let now = pods_of(&pods, "web").await;
        for (name, p) in &now {
            if revision(p) == new_revision {
                updated_at.entry(name.clone()).or_insert_with(Instant::now);
            }
        }
        let status = sets.get("web").await.ok().and_then(|s| s.status).unwrap_or_default();
        if status.current_revision.as_deref() == Some(new_revision.as_str())
            && status.ready_replicas == Some(3)
            && status.updated_replicas == Some(3)
        {
            break;
        }
        assert!(t.elapsed() < WAIT * 2, "rollout did not finish: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "rolling update (partition 2, then 0) finished {:.1}s after the first patch",
        t.elapsed().as_secs_f64()
    );
    let rollout = up.kubectl(&["-n", NS, "rollout", "status", "sts/web", "--timeout=60s"]);
    // With a partition set (0 here) kubectl reports a "partitioned roll out".
    assert!(
        rollout.contains("roll out complete: 3 new pods") || rollout.contains("rolling update complete"),
        "{rollout}"
    );
    let history = up.kubectl(&["-n", NS, "rollout", "history", "sts/web"]);
    assert!(
        history.lines().filter(|l| l.starts_with(['1', '2'])).count() == 2,
        "{history}"
    );
    assert!(
        updated_at["web-1"] <= updated_at["web-0"],
        "web-1 must be updated before web-0: {updated_at:?}"
    );

    // (e) Parallel: every pod is created without waiting for the others to be Ready (these
    // never are: their readiness probe fails). Their claims are deleted on scale-down.
    up.apply(
        &json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "par", "namespace": NS},
        "spec": {"podManagementPolicy": "Parallel", "replicas": 3, "selector": {"matchLabels": {"app": "par"}},
            "template": {"metadata": {"labels": {"app": "par"}}, "spec": {"terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"],
                    "readinessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 2},
                    "volumeMounts": [{"name": "scratch", "mountPath": "/data"}]}]}},
            "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"},
            "volumeClaimTemplates": [{"metadata": {"name": "scratch"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}}]}}),
    );
    let t = Instant::now();
    let par = common::wait_for("3 pods of par", WAIT, || async {
        let now = pods_of(&pods, "par").await;
        (now.len() == 3).then_some(now)
    })
    .await;
    println!("Parallel: 3 pods created {:.1}s after apply", t.elapsed().as_secs_f64());
    assert!(par.values().all(|p| !is_ready(p)), "par's pods cannot be Ready");
    // whenScaled: Delete: the claims of the pods scaled away go with them.
    for n in 0..3 {
        let name = format!("scratch-par-{n}");
        common::wait_for(&format!("claim {name}"), WAIT, || async {
            claims.get_opt(&name).await.ok().flatten().map(|_| ())
        })
        .await;
    }
    up.kubectl(&["-n", NS, "scale", "sts", "par", "--replicas=1"]);
    let t = Instant::now();
    common::wait_for("scratch-par-1 and -2 deleted with their pods", WAIT, || async {
        let gone = claims.get_opt("scratch-par-1").await.ok()?.is_none()
            && claims.get_opt("scratch-par-2").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    println!(
        "whenScaled Delete: claims gone {:.1}s after the scale-down",
        t.elapsed().as_secs_f64()
    );
    assert!(claims.get_opt("scratch-par-0").await.expect("get claim").is_some());
    up.kubectl(&["-n", NS, "delete", "sts", "par"]);

    // (f) Scaling down removes the highest ordinal first and keeps the claims (Retain).
    let t = Instant::now();
    up.kubectl(&["-n", NS, "scale", "sts", "web", "--replicas=1"]);
    loop {
        let now = pods_of(&pods, "web").await;
        assert!(
            !now.contains_key("web-2") || now.contains_key("web-1") && now.contains_key("web-0"),
            "web-1 went before web-2: {:?}",
            now.keys().collect::<Vec<_>>()
        );
        if now.len() == 1 && now.contains_key("web-0") {
            break;
        }
        assert!(t.elapsed() < WAIT, "scale down: {:?}", now.keys().collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("scaled 3 -> 1 in {:.1}s", t.elapsed().as_secs_f64());
    for n in 0..3 {
        assert!(
            claims
                .get_opt(&format!("data-web-{n}"))
                .await
                .expect("get claim")
                .is_some(),
            "data-web-{n} must be retained"
        );
    }
    let status = common::wait_for("status with 1 replica", WAIT, || async {
        let s = sets.get("web").await.ok()?.status?;
        (s.replicas == 1 && s.ready_replicas == Some(1)).then_some(s)
    })
    .await;
    assert_eq!(status.current_revision.as_deref(), Some(new_revision.as_str()));
}
