//! `pods/eviction` and PodDisruptionBudgets against an in-process `rudder server` with the
//! controllers running (`controllers::run_all`, as `rudder server` runs them), driven by
//! kube-rs and real kubectl binaries (1.27, 1.33, 1.37).
//!
//! There is no node agent: pods are plain pods bound to Node objects the test creates, and
//! the test plays the kubelet — it marks pods Running and Ready through `pods/status` and
//! confirms graceful deletions (a pod on a node stays Terminating until its kubelet does).

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    core::v1::{Namespace, Node, Pod},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::task::JoinHandle;

/// Generous: the test machine is a loaded 2-core VM.
const WAIT: Duration = Duration::from_secs(60);
const REFUSED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// The kubelet's part: pods become Running and Ready (unless labelled `ready: "no"`), and
/// graceful deletions are confirmed.
fn play_kubelet(client: Client, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::all(client.clone());
        while !stop.load(Ordering::Relaxed) {
            let list = pods
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            for p in list {
                let ns = p.namespace().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                if p.metadata.deletion_timestamp.is_some() {
                    let _ = api
                        .delete(&p.name_any(), &DeleteParams::default().grace_period(0))
                        .await;
                    continue;
                }
                let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                if running || p.labels().get("ready").is_some_and(|v| v == "no") {
                    continue;
                }
                let status = json!({"status": {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": jiff::Timestamp::now().to_string()}],
                }});
                let _ = api
                    .patch_status(&p.name_any(), &PatchParams::default(), &Patch::Merge(status))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    })
}

struct Cluster {
    server: common::TestServer,
    client: Client,
    controllers: common::Background,
    kubelet: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Cluster {
    async fn start() -> Self {
        let server = common::TestServer::start().await;
        let client = server.client().await;
        let c = client.clone();
        let controllers = common::Background::start(move |shutdown| {
            rudder_control::controllers::run_all(c, rudder_control::controllers::Config::default(), shutdown)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let kubelet = play_kubelet(client.clone(), stop.clone());
        Self {
            server,
            client,
            controllers,
            kubelet,
            stop,
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.kubelet.await;
        self.controllers.stop(WAIT).await;
        drop(self.server);
    }

    async fn namespace(&self, name: &str) {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
    }

    async fn node(&self, name: &str) {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).expect("node");
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
    }

    /// A plain pod labelled `app: <app>` bound to `node`.
    async fn pod(&self, ns: &str, name: &str, app: &str, node: &str) -> Pod {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox:1.36"}]},
        }))
        .expect("pod");
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod")
    }

    async fn budget(&self, ns: &str, name: &str, spec: serde_json::Value) -> PodDisruptionBudget {
        let pdb: PodDisruptionBudget =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("pdb");
        Api::<PodDisruptionBudget>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &pdb)
            .await
            .expect("create PodDisruptionBudget")
    }
}

/// (expectedPods, currentHealthy, desiredHealthy, disruptionsAllowed)
type Counts = (i32, i32, i32, i32);

fn counts(pdb: &PodDisruptionBudget) -> Counts {
    let s = pdb.status.clone().unwrap_or_default();
    (
        s.expected_pods,
        s.current_healthy,
        s.desired_healthy,
        s.disruptions_allowed,
    )
}

/// Waits until the disruption controller has computed `want` for the current generation.
async fn wait_for_counts(api: &Api<PodDisruptionBudget>, name: &str, want: Counts) -> PodDisruptionBudget {
    let mut last = None;
    let found = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(pdb) = api.get(name).await {
                let observed = pdb.status.as_ref().and_then(|s| s.observed_generation) == pdb.metadata.generation;
                if observed && counts(&pdb) == want {
                    return pdb;
                }
                last = Some(counts(&pdb));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    match found {
        Ok(pdb) => pdb,
        Err(_) => panic!("PodDisruptionBudget {name} never reached {want:?}; last {last:?}"),
    }
}

fn condition(pdb: &PodDisruptionBudget) -> (String, String) {
    let c = pdb
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "DisruptionAllowed"))
        .expect("DisruptionAllowed condition");
    (c.status.clone(), c.reason.clone())
}

async fn wait_gone(api: &Api<Pod>, name: &str) {
    common::wait_for(&format!("pod {name} to be deleted"), WAIT, || async {
        matches!(api.get(name).await, Err(kube::Error::Api(s)) if s.code == 404).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_spend_the_budget_and_are_refused_with_429() {
    let cluster = Cluster::start().await;
    let ns = "web";
    cluster.namespace(ns).await;
    cluster.node("n1").await;
    for name in ["a", "b", "c"] {
        cluster.pod(ns, name, "web", "n1").await;
    }
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.client.clone(), ns);
    cluster
        .budget(
            ns,
            "web",
            json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}),
        )
        .await;
    let pdb = wait_for_counts(&pdbs, "web", (3, 3, 2, 1)).await;
    assert_eq!(condition(&pdb), ("True".into(), "SufficientPods".into()));

    // A dry run checks the budget and changes nothing.
    let dry = EvictParams {
        post_options: PostParams {
            dry_run: true,
            ..PostParams::default()
        },
        ..EvictParams::default()
    };
    pods.evict("a", &dry).await.expect("dry-run eviction");
    let pdb = pdbs.get("web").await.expect("get pdb");
    assert_eq!(counts(&pdb).3, 1, "a dry run spent the allowance");
    assert!(pdb.status.and_then(|s| s.disrupted_pods).unwrap_or_default().is_empty());
    assert!(pods.get("a").await.expect("a").metadata.deletion_timestamp.is_none());

    // Allowed: the allowance goes 1 -> 0 at once, before the controller looks again.
    let status = pods.evict("a", &EvictParams::default()).await.expect("evict a");
    assert_eq!(status.status, Some(kube::core::response::StatusSummary::Success));
    let pdb = pdbs.get("web").await.expect("get pdb");
    assert_eq!(counts(&pdb).3, 0);
    wait_gone(&pods, "a").await;
    let pdb = wait_for_counts(&pdbs, "web", (2, 2, 2, 0)).await;
    assert_eq!(condition(&pdb), ("False".into(), "InsufficientPods".into()));

    // Refused: 429 with upstream's message and the budget's numbers as the cause (asked
    // without kube-rs's retries of 429s, which would keep trying for minutes).
    let impatient: Api<Pod> = Api::namespaced(common::client_without_retries(&cluster.server.kubeconfig()).await, ns);
    let err = impatient
        .evict("b", &EvictParams::default())
        .await
        .expect_err("b is protected");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (429, "TooManyRequests"));
    assert_eq!(status.message, REFUSED);
    let causes = status.details.map(|d| d.causes).unwrap_or_default();
    assert_eq!(causes.len(), 1, "{causes:?}");
    assert_eq!(causes[0].reason, "DisruptionBudget");
    assert_eq!(
        causes[0].message,
        "The disruption budget web needs 2 healthy pods and has 2 currently"
    );
    assert!(pods.get("b").await.expect("b").metadata.deletion_timestamp.is_none());

    // A new healthy pod gives the allowance back, and b may go.
    cluster.pod(ns, "d", "web", "n1").await;
    wait_for_counts(&pdbs, "web", (3, 3, 2, 1)).await;
    pods.evict("b", &EvictParams::default()).await.expect("evict b");
    wait_gone(&pods, "b").await;

    // A pod no budget covers is simply deleted; one that does not exist is a 404.
    cluster.pod(ns, "loner", "other", "n1").await;
    pods.evict("loner", &EvictParams::default()).await.expect("evict loner");
    wait_gone(&pods, "loner").await;
    let err = pods
        .evict("nope", &EvictParams::default())
        .await
        .expect_err("no such pod");
    assert!(matches!(err, kube::Error::Api(s) if s.code == 404));

    // Two budgets over one pod: upstream refuses with a 500.
    cluster
        .budget(
            ns,
            "web-too",
            json!({"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}),
        )
        .await;
    let err = pods.evict("c", &EvictParams::default()).await.expect_err("two budgets");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!(status.code, 500);
    assert!(
        status.message.contains("more than one PodDisruptionBudget"),
        "{}",
        status.message
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentages_use_the_controllers_scale_and_round_up() {
    let cluster = Cluster::start().await;
    let ns = "shop";
    cluster.namespace(ns).await;
    // The ReplicaSet controller makes three pods; the test's kubelet makes them ready.
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "shop"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]},
            },
        },
    }))
    .expect("replicaset");
    Api::<ReplicaSet>::namespaced(cluster.client.clone(), ns)
        .create(&PostParams::default(), &rs)
        .await
        .expect("create ReplicaSet");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.client.clone(), ns);
    // 50% of 3 rounds up to 2 that must stay.
    cluster
        .budget(
            ns,
            "half",
            json!({"minAvailable": "50%", "selector": {"matchLabels": {"app": "shop"}}}),
        )
        .await;
    wait_for_counts(&pdbs, "half", (3, 3, 2, 1)).await;
    // maxUnavailable 34% of 3 rounds up to 2 that may go.
    let mut pdb = pdbs.get("half").await.expect("get");
    pdb.spec = serde_json::from_value(json!({"maxUnavailable": "34%", "selector": {"matchLabels": {"app": "shop"}}}))
        .expect("spec");
    pdbs.replace("half", &PostParams::default(), &pdb)
        .await
        .expect("replace");
    let pdb = wait_for_counts(&pdbs, "half", (3, 3, 1, 2)).await;
    assert_eq!(pdb.status.and_then(|s| s.observed_generation), Some(2));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_budgets_are_422_naming_the_field() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client, "default");
    let cases = [
        (json!({"minAvailable": -1}), "spec.minAvailable"),
        (json!({"minAvailable": "5 percent"}), "spec.minAvailable"),
        (json!({"maxUnavailable": "150%"}), "spec.maxUnavailable"),
        (json!({"minAvailable": 1, "maxUnavailable": 1}), "spec"),
        (
            json!({"minAvailable": 1, "unhealthyPodEvictionPolicy": "Never"}),
            "spec.unhealthyPodEvictionPolicy",
        ),
        (
            json!({"minAvailable": 1, "selector": {"matchExpressions": [{"key": "a", "operator": "Within"}]}}),
            "spec.selector.matchExpressions[0].operator",
        ),
    ];
    for (spec, field) in cases {
        let pdb: PodDisruptionBudget =
            serde_json::from_value(json!({"metadata": {"name": "bad"}, "spec": spec})).expect("pdb");
        let err = pdbs
            .create(&PostParams::default(), &pdb)
            .await
            .expect_err(&format!("{spec} is invalid"));
        let kube::Error::Api(status) = err else {
            panic!("expected an API error, got {err:?}")
        };
        assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"), "{spec}");
        let fields: Vec<String> = status
            .details
            .map(|d| d.causes)
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(fields, [field], "{spec}");
    }
    // A client cannot hand itself disruptions: a created budget's status starts empty.
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "good"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "x"}}},
        "status": {"disruptionsAllowed": 5, "currentHealthy": 5, "desiredHealthy": 0, "expectedPods": 5},
    }))
    .expect("pdb");
    let created = pdbs.create(&PostParams::default(), &pdb).await.expect("create");
    assert_eq!(counts(&created), (0, 0, 0, 0));
}

/// `kubectl get pdb` and `kubectl drain` with each kubectl: drain evicts what the budget
/// allows, retries the refused pod (a user sees upstream's 429 message and "will retry"),
/// and finishes once a replacement pod is healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_lists_budgets_and_drains_through_them() {
    let cluster = Cluster::start().await;
    let kubeconfig = cluster.server.kubeconfig();
    cluster.node("spare").await;
    for minor in [27, 33, 37] {
        let ns = format!("k{minor}");
        let node = format!("node-{minor}");
        cluster.namespace(&ns).await;
        cluster.node(&node).await;
        cluster.pod(&ns, "p1", "app", &node).await;
        cluster.pod(&ns, "p2", "app", &node).await;
        cluster.pod(&ns, "p3", "app", "spare").await;
        cluster
            .budget(
                &ns,
                "app",
                json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "app"}}}),
            )
            .await;
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.client.clone(), &ns);
        wait_for_counts(&pdbs, "app", (3, 3, 2, 1)).await;

        let cache = tempfile::tempdir().expect("cache dir");
        let (ok, out, err) = common::run_kubectl(minor, &kubeconfig, cache.path(), &["get", "pdb", "-n", &ns]);
        assert!(ok, "kubectl 1.{minor} get pdb: {err}");
        let header: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NAME",
                "MIN",
                "AVAILABLE",
                "MAX",
                "UNAVAILABLE",
                "ALLOWED",
                "DISRUPTIONS",
                "AGE"
            ],
            "kubectl 1.{minor}: {out}"
        );
        let row: Vec<&str> = out.lines().nth(1).unwrap_or_default().split_whitespace().collect();
        assert_eq!(&row[..4], ["app", "2", "N/A", "1"], "kubectl 1.{minor}: {out}");

        let args: Vec<String> = [
            "drain",
            &node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--force",
            "--timeout=120s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let kc = kubeconfig.clone();
        let cache_path = cache.path().to_path_buf();
        let drain = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            common::run_kubectl(minor, &kc, &cache_path, &args)
        });
        // One of the two goes at once; the other is refused until the budget allows again.
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns);
        common::wait_for("one pod evicted", WAIT, || async {
            let left = pods.list(&ListParams::default()).await.ok()?.items.len();
            (left == 2).then_some(())
        })
        .await;
        wait_for_counts(&pdbs, "app", (2, 2, 2, 0)).await;
        // Hold the budget at zero long enough for drain to meet a 429 and retry.
        tokio::time::sleep(Duration::from_secs(7)).await;
        cluster.pod(&ns, "p4", "app", "spare").await;
        let (ok, out, err) = tokio::time::timeout(Duration::from_secs(180), drain)
            .await
            .expect("drain finishes")
            .expect("drain task");
        assert!(ok, "kubectl 1.{minor} drain failed:\n{out}\n{err}");
        assert!(
            out.contains(&format!("node/{node} cordoned")),
            "kubectl 1.{minor}: {out}"
        );
        for pod in ["p1", "p2"] {
            assert!(
                out.contains(&format!("evicting pod {ns}/{pod}")),
                "kubectl 1.{minor}: {out}"
            );
            assert!(out.contains(&format!("pod/{pod} evicted")), "kubectl 1.{minor}: {out}");
        }
        assert!(
            out.contains(&format!("node/{node} drained")),
            "kubectl 1.{minor}: {out}"
        );
        assert!(
            err.contains(&format!("(will retry after 5s): {REFUSED}")),
            "kubectl 1.{minor} never met the budget:\n{err}"
        );
        let left: Vec<String> = pods
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(left, ["p3", "p4"], "kubectl 1.{minor}");
    }
    cluster.stop().await;
}
