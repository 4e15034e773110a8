//! Leader election of the real `rudder` binary: two `rudder controller-manager`s and two
//! `rudder scheduler`s against one API server act as one (a Deployment gets one ReplicaSet
//! and exactly its replicas, each Pod is bound once), and killing the leader with SIGKILL
//! hands the Lease to the standby, which picks up the work left meanwhile. Two
//! `rudder server`s on one real etcd run their embedded controllers only on the leader.
//! Failover times are printed.

mod common;
mod server_process;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use common::{TestServer, wait_for};
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    coordination::v1::Lease,
    core::v1::{Node, Pod},
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

/// Short timings so failover is seen in seconds (the defaults are 15 s, 10 s, 2 s).
const SHORT: [&str; 6] = [
    "--leader-elect-lease-duration",
    "4s",
    "--leader-elect-renew-deadline",
    "3s",
    "--leader-elect-retry-period",
    "500ms",
];
/// Generous: a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);

/// A `rudder` component as a child process, killed on drop; its stderr is its log.
struct Component {
    child: Option<Child>,
    log: PathBuf,
}

impl Component {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        // tracing writes to stdout; errors (a lost lease) go to stderr.
        let child = Command::new(env!("CARGO_BIN_EXE_rudder"))
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start rudder");
        Self {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether this process logged acquiring the lease as `identity`.
    fn is(&self, identity: &str) -> bool {
        self.log()
            .lines()
            .any(|l| l.contains("successfully acquired lease") && l.contains(identity))
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn lease(client: &Client, name: &str) -> Option<Lease> {
    Api::<Lease>::namespaced(client.clone(), "kube-system")
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

fn holder(l: &Lease) -> String {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

fn transitions(l: &Lease) -> i32 {
    l.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(-1)
}

/// The holder, once the Lease names one that `components` logged acquiring as; the
/// index of that component.
async fn leader_of(client: &Client, name: &str, components: &[&Component]) -> (String, usize) {
    wait_for(&format!("a leader for the {name} Lease"), WAIT, || async {
        let l = lease(client, name).await?;
        let h = holder(&l);
        let i = components.iter().position(|c| !h.is_empty() && c.is(&h))?;
        Some((h, i))
    })
    .await
}

/// `<hostname>_<uuid>`, as upstream's components name themselves.
fn assert_upstream_identity(h: &str) {
    let (host, uuid) = h
        .rsplit_once('_')
        .unwrap_or_else(|| panic!("holder {h:?} is not <hostname>_<uuid>"));
    assert!(!host.is_empty(), "holder {h:?} has no hostname");
    assert_eq!(uuid.len(), 36, "holder {h:?}: {uuid:?} is not a UUID");
    assert_eq!(uuid.matches('-').count(), 4, "holder {h:?}: {uuid:?} is not a UUID");
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]},
            },
        },
    }))
    .expect("deployment")
}

/// (ReplicaSets, Pods not being deleted) of the app.
async fn counts(client: &Client, ns: &str, app: &str) -> (usize, usize) {
    let lp = ListParams::default().labels(&format!("app={app}"));
    let rs = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .map(|l| l.items.len())
        .unwrap_or(usize::MAX);
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count()
        })
        .unwrap_or(usize::MAX);
    (rs, pods)
}

/// Waits until the app has exactly `rs` ReplicaSets and `pods` Pods, then checks that
/// the counts stay so for a while (a second acting controller would add more).
async fn assert_exact_counts(client: &Client, ns: &str, app: &str, rs: usize, pods: usize) {
    wait_for(&format!("{app}: {rs} ReplicaSet(s) and {pods} Pods"), WAIT, || async {
        (counts(client, ns, app).await == (rs, pods)).then_some(())
    })
    .await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            counts(client, ns, app).await,
            (rs, pods),
            "{app}: the counts changed (duplicate work?)"
        );
    }
}

async fn scale(client: &Client, ns: &str, name: &str, replicas: i32) {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .expect("scale");
}

/// Waits for the Lease to name another holder than `old` and returns it with the time
/// since `since`.
async fn takeover(client: &Client, name: &str, old: &str, since: Instant) -> (Lease, Duration) {
    let l = wait_for(&format!("another holder of the {name} Lease"), WAIT, || async {
        let l = lease(client, name).await?;
        let h = holder(&l);
        (!h.is_empty() && h != old).then_some(l)
    })
    .await;
    (l, since.elapsed())
}

fn controller_manager(dir: &Path, name: &str, kubeconfig: &Path, timing: &[&str]) -> Component {
    let kubeconfig = kubeconfig.to_str().expect("utf-8 path");
    let mut args = vec!["controller-manager", "--kubeconfig", kubeconfig];
    args.extend_from_slice(timing);
    Component::start(dir, name, &args)
}

/// Two controller managers, one Deployment: one ReplicaSet and exactly its Pods; SIGKILL
/// to the leader while the Deployment is scaled and a Pod deleted; the standby takes the
/// Lease within the lease duration (plus its polling) and finishes the work, again without
/// duplicates.
async fn controller_manager_failover(timing: &[&str], lease_duration: Duration, app: &str) {
    let server = TestServer::start().await;
    let client = server.client().await;
    let logs = tempfile::tempdir().expect("tempdir");
    let mut a = controller_manager(logs.path(), "cm-a", &server.kubeconfig(), timing);
    let mut b = controller_manager(logs.path(), "cm-b", &server.kubeconfig(), timing);

    let (first, i) = leader_of(&client, "kube-controller-manager", &[&a, &b]).await;
    assert_upstream_identity(&first);
    let l = lease(&client, "kube-controller-manager").await.expect("lease");
    let spec = l.spec.clone().expect("spec");
    assert_eq!(transitions(&l), 0, "the first holder created the Lease");
    assert_eq!(spec.lease_duration_seconds, Some(lease_duration.as_secs() as i32));
    assert!(spec.acquire_time.is_some() && spec.renew_time.is_some(), "{spec:?}");

    Api::<Deployment>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &deployment(app, 3))
        .await
        .expect("create deployment");
    assert_exact_counts(&client, "default", app, 1, 3).await;
    let (leader, standby) = if i == 0 { (&mut a, &mut b) } else { (&mut b, &mut a) };
    assert!(
        !standby.log().contains("successfully acquired lease"),
        "the standby acted too:\n{}",
        standby.log()
    );
    // The lease is being renewed meanwhile.
    let renewed = lease(&client, "kube-controller-manager").await.expect("lease");
    assert_eq!(holder(&renewed), first);

    leader.kill9();
    let killed = Instant::now();
    // Work left while nobody leads.
    scale(&client, "default", app, 5).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let victim = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("pods")
        .items
        .into_iter()
        .next()
        .and_then(|p| p.metadata.name)
        .expect("a pod");
    pods.delete(&victim, &Default::default()).await.expect("delete pod");

    let (l, failover) = takeover(&client, "kube-controller-manager", &first, killed).await;
    let second = holder(&l);
    assert_upstream_identity(&second);
    assert!(standby.is(&second), "the standby's log names the new holder {second}");
    assert_eq!(transitions(&l), 1, "one change of holder");
    let spec = l.spec.clone().expect("spec");
    assert_ne!(
        spec.acquire_time,
        renewed.spec.as_ref().and_then(|s| s.acquire_time.clone()),
        "a new holder's acquireTime is new"
    );
    println!(
        "controller-manager failover ({app}): SIGKILL to lease taken by the standby in {:.1} s \
         (lease duration {} s)",
        failover.as_secs_f64(),
        lease_duration.as_secs()
    );
    // Upstream's bound: the lease duration from the last renewal the standby saw, plus up
    // to 2.2 retry periods of its jittered polling; the margin is for a loaded machine.
    assert!(
        failover < lease_duration * 2 + Duration::from_secs(10),
        "failover took {failover:?}"
    );
    assert_exact_counts(&client, "default", app, 1, 5).await;
    assert!(standby.exited().is_none(), "the new leader keeps running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controller_managers_act_as_one_and_fail_over() {
    controller_manager_failover(&SHORT, Duration::from_secs(4), "web").await;
}

/// The same with upstream's default timings (15 s, 10 s, 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_manager_failover_with_default_timings() {
    controller_manager_failover(&[], Duration::from_secs(15), "web-defaults").await;
}

async fn add_node(client: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
    }))
    .expect("node");
    nodes.create(&PostParams::default(), &node).await.expect("create node");
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let status = json!({"status": {
        "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
        "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node status");
}

async fn add_pods(client: &Client, prefix: &str, n: usize) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for k in 0..n {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("{prefix}-{k}"), "labels": {"app": prefix}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1.27",
                     "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod).await.expect("create pod");
    }
}

/// Waits for every Pod of `app` to be bound; returns the count of `Scheduled` Events per
/// Pod (exactly one each when only one scheduler acts).
async fn all_bound(client: &Client, app: &str, n: usize) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    wait_for(&format!("{n} {app} pods bound"), WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .ok()?;
        let bound = list
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        (bound == n).then_some(())
    })
    .await;
}

async fn scheduled_events(client: &Client, app: &str) -> std::collections::BTreeMap<String, usize> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let mut per_pod = std::collections::BTreeMap::new();
    for e in events.list(&ListParams::default()).await.expect("events").items {
        let name = e.involved_object.name.clone().unwrap_or_default();
        if e.reason.as_deref() == Some("Scheduled") && name.starts_with(&format!("{app}-")) {
            *per_pod.entry(name).or_insert(0) += e.count.unwrap_or(1).max(1) as usize;
        }
    }
    per_pod
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_act_as_one_and_fail_over() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for n in ["node-a", "node-b"] {
        add_node(&client, n).await;
    }
    let logs = tempfile::tempdir().expect("tempdir");
    let kubeconfig = server.kubeconfig();
    let kc = kubeconfig.to_str().expect("utf-8");
    let start = |name: &str| {
        let mut args = vec!["scheduler", "--kubeconfig", kc];
        args.extend_from_slice(&SHORT);
        Component::start(logs.path(), name, &args)
    };
    let mut a = start("sched-a");
    let mut b = start("sched-b");
    let (first, i) = leader_of(&client, "kube-scheduler", &[&a, &b]).await;
    assert_upstream_identity(&first);
    assert_eq!(transitions(&lease(&client, "kube-scheduler").await.expect("lease")), 0);

    add_pods(&client, "before", 6).await;
    all_bound(&client, "before", 6).await;
    let (leader, standby) = if i == 0 { (&mut a, &mut b) } else { (&mut b, &mut a) };
    leader.kill9();
    let killed = Instant::now();
    // Pods that arrive while nobody leads wait for the next leader.
    add_pods(&client, "during", 4).await;
    let (l, failover) = takeover(&client, "kube-scheduler", &first, killed).await;
    let second = holder(&l);
    assert!(standby.is(&second), "the standby's log names the new holder {second}");
    assert_eq!(transitions(&l), 1);
    all_bound(&client, "during", 4).await;
    println!(
        "scheduler failover: SIGKILL to lease taken by the standby in {:.1} s (lease duration 4 s)",
        failover.as_secs_f64()
    );
    assert!(failover < Duration::from_secs(18), "failover took {failover:?}");
    // Each Pod was scheduled once: one Scheduled Event, and the binding never moved.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for app in ["before", "during"] {
        let events = scheduled_events(&client, app).await;
        assert!(
            events.values().all(|c| *c == 1),
            "{app}: Scheduled events per pod: {events:?}"
        );
    }
}

/// Two `rudder server`s on one real etcd: both serve the API, only the one holding the
/// Leases runs the embedded controllers and scheduler; killing it moves both Leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_etcd_run_the_embedded_controllers_once() {
    let etcd = rudder_control::store::etcd_testing::EtcdServer::start()
        .await
        .expect("start etcd (Debian's etcd-server)");
    let endpoints = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["--store", "etcd", "--etcd-servers", &endpoints];
    args.extend_from_slice(&SHORT);
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).expect("dir");
    std::fs::create_dir_all(&db).expect("dir");
    let mut servers = [
        server_process::ServerProcess::start(&da, &args),
        server_process::ServerProcess::start(&db, &args),
    ];
    let clients = [servers[0].client().await, servers[1].client().await];
    let log_paths = [da.join("server.log"), db.join("server.log")];
    let server_log = |k: usize| std::fs::read_to_string(&log_paths[k]).unwrap_or_default();
    let cm = wait_for("a leader of kube-controller-manager", WAIT, || async {
        let h = holder(&lease(&clients[0], "kube-controller-manager").await?);
        (!h.is_empty()).then_some(h)
    })
    .await;
    let leading = wait_for("the leading server's log", WAIT, || async {
        (0..2).find(|k| {
            server_log(*k)
                .lines()
                .any(|l| l.contains("successfully acquired lease") && l.contains(&cm))
        })
    })
    .await;
    let other = 1 - leading;
    assert!(
        !server_log(other)
            .lines()
            .any(|l| l.contains("successfully acquired lease") && l.contains("kube-controller-manager")),
        "the standby server runs controllers too"
    );
    // Through the standby server: one store, so the leader's controllers do the work.
    Api::<Deployment>::namespaced(clients[other].clone(), "default")
        .create(&PostParams::default(), &deployment("shared", 2))
        .await
        .expect("create deployment");
    assert_exact_counts(&clients[other], "default", "shared", 1, 2).await;

    servers[leading].kill9();
    let killed = Instant::now();
    scale(&clients[other], "default", "shared", 4).await;
    let (l, failover) = takeover(&clients[other], "kube-controller-manager", &cm, killed).await;
    assert_eq!(transitions(&l), 1);
    let sched = lease(&clients[other], "kube-scheduler").await.expect("scheduler lease");
    wait_for("the scheduler Lease to move too", WAIT, || async {
        let l = lease(&clients[other], "kube-scheduler").await?;
        server_log(other).contains(&holder(&l)).then_some(())
    })
    .await;
    println!(
        "rudder server failover on etcd: embedded controllers taken over in {:.1} s (lease duration 4 s); \
         scheduler lease was {}",
        failover.as_secs_f64(),
        holder(&sched)
    );
    assert_exact_counts(&clients[other], "default", "shared", 1, 4).await;
    drop(etcd);
}
