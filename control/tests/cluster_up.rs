//! The local cluster as `rudder up` starts it (the real binary: control plane on the host,
//! three nodes in network namespaces with their agents, rudder-proxy as a DaemonSet), driven
//! with real `kubectl` and checked from inside every node's and a pod's network namespace.
//! Needs root, cgroups and the `rudder-proxy` binary beside `rudder` (the workspace build).

mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use common::up::Up;
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{Api, api::ListParams};
use rudder_control::up::demo::{self, get_in, sees_all};

/// `rudder up` in each proxy mode: the proxy DaemonSet runs on every node and the demo
/// Service answers from every node and a pod (the proof line), then everything is removed.
#[test]
fn rudder_up_proves_the_service_in_every_mode() {
    for (i, mode) in ["ebpf", "nftables", "iptables"].into_iter().enumerate() {
        let name = format!("m{i}");
        let mut up = Up::start(
            &name,
            Ipv4Addr::new(10, 253, i as u8, 0),
            &["--mode", mode, "--exit-after-proof"],
        );
        up.wait_for(
            &format!("rudder-proxy running on every node as a DaemonSet ({mode} mode)"),
            Duration::from_secs(120),
        );
        let proof = up.wait_for("answers from every node and from a pod", Duration::from_secs(120));
        assert!(
            proof.contains("on n1, n2, n3"),
            "{mode}: backends on every node: {proof}"
        );
        assert!(
            proof.contains("the pod resolves web.default.svc.cluster.local to"),
            "{mode}: the pod resolves the Service by name: {proof}"
        );
        let status = up.child.wait().expect("rudder up exits after the proof");
        assert!(status.success(), "{mode}: rudder up failed: {status}");
        drop(up);
    }
}

fn web_manifest(replicas: u32, version: &str) -> String {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "terminationGracePeriodSeconds": 10,
                "containers": [{
                    "name": "web", "image": "python:3", "command": ["python3", "-u", "-c", demo::SERVER],
                    "env": [{"name": "VERSION", "value": version}],
                    "ports": [{"containerPort": 8080, "name": "http"}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                    // Endpoints drop a terminating pod at once, but every node's proxy needs
                    // a moment to follow: the pod keeps serving meanwhile, as upstream advises.
                    "lifecycle": {"preStop": {"exec": {"command": ["sleep", "3"]}}},
                }],
            }},
        },
    })
    .to_string()
}

const SERVICE: &str = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
 "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}"#;

async fn ready_web(client: &kube::Client, n: usize) -> Vec<Pod> {
    common::wait_for(&format!("{n} ready web pods"), Duration::from_secs(60), || async {
        let pods = demo::ready_pods(client, "default", "app=web").await.ok()?;
        let all: Vec<Pod> = Api::<Pod>::namespaced(client.clone(), "default")
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?
            .items;
        (pods.len() == n && all.len() == n).then_some(pods)
    })
    .await
}

async fn endpoint_count(client: &kube::Client) -> usize {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .expect("slices");
    slices
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .count()
}

fn names(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter().filter_map(|p| p.metadata.name.clone()).collect()
}

/// The workload scenarios of the local cluster, through kubectl, in the default (ebpf)
/// mode. The steady client stream runs in a node's namespace but outside its socket-LB
/// cgroup, so it crosses the per-packet path, beside the direct connections to pods that
/// the other checks make: the case where a Service flow and a direct one once shared a
/// tuple on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_runs_workloads_through_kubectl() {
    let mut up = Up::start("wl", Ipv4Addr::new(10, 253, 10, 0), &["--no-demo"]);
    let started = Instant::now();
    up.wait_for("rudder-proxy running on every node", Duration::from_secs(120));
    println!("cluster up in {:.1}s", started.elapsed().as_secs_f64());
    let client = common::client_from(&up.kubeconfig()).await;

    // The proxy DaemonSet: one pod per node.
    let ds: DaemonSet = Api::namespaced(client.clone(), "kube-system")
        .get("rudder-proxy")
        .await
        .expect("the proxy DaemonSet");
    assert_eq!(ds.status.as_ref().map(|s| s.desired_number_scheduled), Some(3));
    let proxies = demo::ready_pods(&client, "kube-system", "k8s-app=rudder-proxy")
        .await
        .expect("proxy pods");
    let proxy_nodes: BTreeSet<String> = proxies
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    assert_eq!(proxy_nodes.len(), 3, "one proxy per node: {proxy_nodes:?}");

    // A Deployment and its Service: pods spread and serve from every node and from a pod.
    up.kubectl_stdin(&["apply", "-f", "-"], &web_manifest(3, "1"));
    up.kubectl_stdin(&["apply", "-f", "-"], SERVICE);
    let t0 = Instant::now();
    let pods = ready_web(&client, 3).await;
    println!(
        "3 web pods Running and Ready {:.1}s after apply",
        t0.elapsed().as_secs_f64()
    );
    let nodes: BTreeSet<String> = pods.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
    assert_eq!(nodes.len(), 3, "the scheduler spreads a Deployment's pods: {nodes:?}");
    let svc: Service = Api::namespaced(client.clone(), "default")
        .get("web")
        .await
        .expect("service");
    let ip: Ipv4Addr = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("ClusterIP")
        .parse()
        .expect("IPv4");
    let addr = SocketAddr::from((ip, 80));
    let mut from: Vec<PathBuf> = (1..=3).map(|k| up.node_netns(k)).collect();
    from.push(up.pod_netns(&pods[0]));
    let want = names(&pods);
    let check = from.clone();
    tokio::task::spawn_blocking(move || {
        for netns in &check {
            sees_all(netns, addr, &want, Instant::now() + Duration::from_secs(30)).expect("every backend answers");
        }
    })
    .await
    .expect("join");

    // `kubectl logs` shows a pod's output (through the API server and the node's agent).
    let first = pods[0].metadata.name.clone().unwrap_or_default();
    let logs = up.kubectl(&["logs", &first]);
    assert!(
        logs.contains(&format!("serving on :8080 as {first}")),
        "kubectl logs {first}: {logs:?}"
    );

    // Cluster DNS: the pod's resolv.conf (kube-dns, its namespace's search path) turns the
    // bare Service name into the ClusterIP, through the pod's own resolver.
    let lookup = "import socket; print(socket.gethostbyname('web'))";
    common::wait_for("the pod to resolve web by name", Duration::from_secs(90), || {
        let (ok, out, _) = up.kubectl_try(&["exec", &first, "--", "python3", "-c", lookup]);
        async move { (ok && out.trim() == ip.to_string()).then_some(()) }
    })
    .await;

    // Scale to 6 and back to 2: the endpoints follow.
    up.kubectl(&["scale", "deployment/web", "--replicas=6"]);
    let pods = ready_web(&client, 6).await;
    common::wait_for("6 ready endpoints", Duration::from_secs(30), || async {
        (endpoint_count(&client).await == 6).then_some(())
    })
    .await;
    let (want, netns) = (names(&pods), up.node_netns(2));
    tokio::task::spawn_blocking(move || {
        sees_all(&netns, addr, &want, Instant::now() + Duration::from_secs(30)).expect("all 6 answer")
    })
    .await
    .expect("join");
    up.kubectl(&["scale", "deployment/web", "--replicas=2"]);
    ready_web(&client, 2).await;
    common::wait_for("2 ready endpoints", Duration::from_secs(30), || async {
        (endpoint_count(&client).await == 2).then_some(())
    })
    .await;

    // A rolling update under a steady stream of requests: no request fails.
    let before = names(&demo::ready_pods(&client, "default", "app=web").await.expect("pods"));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let stream = {
        let (stop, ok, failed, seen, netns) =
            (stop.clone(), ok.clone(), failed.clone(), seen.clone(), up.node_netns(1));
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match get_in(&netns, addr) {
                    Ok(name) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        seen.lock().expect("lock").insert(name);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(e.to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            errors
        })
    };
    up.kubectl_stdin(&["apply", "-f", "-"], &web_manifest(2, "2"));
    let rollout = up.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert!(rollout.contains("successfully rolled out"), "{rollout}");
    let after = names(&ready_web(&client, 2).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let errors = stream.join().expect("client thread");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("rolling update: {ok} requests answered, {failed} failed");
    assert!(
        before.is_disjoint(&after),
        "every pod was replaced: {before:?} -> {after:?}"
    );
    assert_eq!(failed, 0, "requests failed during the rolling update: {errors:?}");
    assert!(
        seen.lock().expect("lock").iter().any(|n| after.contains(n)),
        "the new pods served"
    );

    // A node process outside socket LB talks to the Service and straight to one of its pods
    // at once (the kernel then gives both kinds of connection the same source ports at
    // times): every connection is answered.
    let pods = demo::ready_pods(&client, "default", "app=web").await.expect("pods");
    let pod_ip: std::net::IpAddr = pods[0]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .expect("a pod IP");
    let streams: Vec<_> = [addr, SocketAddr::from((pod_ip, 8080))]
        .into_iter()
        .map(|target| {
            let netns = up.node_netns(1);
            std::thread::spawn(move || {
                let (mut ok, mut errors) = (0, Vec::new());
                let until = Instant::now() + Duration::from_secs(15);
                while Instant::now() < until {
                    match get_in(&netns, target) {
                        Ok(_) => ok += 1,
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (target, ok, errors)
            })
        })
        .collect();
    for stream in streams {
        let (target, ok, errors) = stream.join().expect("client thread");
        println!(
            "{target} from n1 beside the other stream: {ok} answered, {} failed",
            errors.len()
        );
        assert!(ok > 50, "{target}: only {ok} connections in 15 s");
        assert!(
            errors.is_empty(),
            "{target}: connections failed beside the other stream: {errors:?}"
        );
    }

    // Restarting a node agent keeps its pods: same containers, still serving.
    let pods = demo::ready_pods(&client, "default", "app=web").await.expect("pods");
    let victim = pods[0].clone();
    let node: usize = victim
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .and_then(|n| n.trim_start_matches('n').parse().ok())
        .expect("node number");
    let pid = up.agent_pid(&format!("n{node}"));
    unsafe { libc::kill(pid, libc::SIGKILL) };
    up.wait_for(&format!("node agent of n{node} exited"), Duration::from_secs(10));
    let (want, netns) = (names(&pods), up.node_netns(if node == 1 { 2 } else { 1 }));
    tokio::task::spawn_blocking(move || {
        sees_all(&netns, addr, &want, Instant::now() + Duration::from_secs(20))
            .expect("pods serve while their agent restarts")
    })
    .await
    .expect("join");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again: Pod = Api::namespaced(client.clone(), "default")
        .get(victim.metadata.name.as_deref().unwrap_or_default())
        .await
        .expect("pod");
    let restarts = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|c| c[0].restart_count)
    };
    let started_at = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c[0].state.as_ref()?.running.as_ref()?.started_at.clone())
    };
    assert_eq!(
        restarts(&again),
        restarts(&victim),
        "the restarted agent adopted the container"
    );
    assert_eq!(started_at(&again), started_at(&victim), "the same run, not a new one");
    assert_ne!(up.agent_pid(&format!("n{node}")), pid, "a new agent runs");

    // A failing liveness probe restarts the container; a container over its memory limit
    // is OOMKilled; a pod that fits nowhere says why.
    up.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unhealthy", "namespace": "default"},
 "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"],
   "livenessProbe": {"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 2}}]}}"#,
    );
    up.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hungry", "namespace": "default"},
 "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "python:3",
   "command": ["python3", "-c", "x = bytearray(256 * 1024 * 1024); print(len(x))"],
   "resources": {"limits": {"memory": "32Mi"}}}]}}"#,
    );
    up.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "huge", "namespace": "default"},
 "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"], "resources": {"requests": {"cpu": "100"}}}]}}"#,
    );
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    common::wait_for("the liveness restart", Duration::from_secs(40), || async {
        let p = pods_api.get("unhealthy").await.ok()?;
        (restarts(&p)? >= 1).then_some(())
    })
    .await;
    let reason = common::wait_for("the OOM kill", Duration::from_secs(40), || async {
        let p = pods_api.get("hungry").await.ok()?;
        let cs = p.status.as_ref()?.container_statuses.as_ref()?.first()?.clone();
        cs.state?.terminated.map(|t| t.reason.unwrap_or_default())
    })
    .await;
    assert_eq!(reason, "OOMKilled");
    let message = common::wait_for("the unschedulable reason", Duration::from_secs(30), || async {
        let p = pods_api.get("huge").await.ok()?;
        let c = p
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "PodScheduled")?
            .clone();
        (c.status == "False").then(|| c.message.unwrap_or_default())
    })
    .await;
    assert!(
        message.starts_with("0/3 nodes are available: 3 Insufficient cpu."),
        "{message}"
    );
    let events = up.kubectl(&["get", "events", "-o", "json"]);
    let events: serde_json::Value = serde_json::from_str(&events).expect("events JSON");
    let about = |pod: &str| -> Vec<String> {
        events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["involvedObject"]["name"] == pod)
            .map(|e| {
                format!(
                    "{} {}",
                    e["reason"].as_str().unwrap_or_default(),
                    e["message"].as_str().unwrap_or_default()
                )
            })
            .collect()
    };
    assert!(
        about("huge")
            .iter()
            .any(|e| e.starts_with("FailedScheduling 0/3 nodes are available")),
        "{:?}",
        about("huge")
    );
    assert!(
        about("unhealthy")
            .iter()
            .any(|e| e.starts_with("Unhealthy Liveness probe failed")),
        "{:?}",
        about("unhealthy")
    );
    assert!(
        about("unhealthy").iter().any(|e| e.starts_with("Killing")),
        "{:?}",
        about("unhealthy")
    );

    attach_to_real_containers(&up, &client).await;

    // Deleting the Deployment removes its pods (garbage collection through ReplicaSets).
    up.kubectl(&["delete", "deployment", "web"]);
    common::wait_for("web pods gone", Duration::from_secs(60), || async {
        let left = pods_api
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?
            .items
            .len();
        (left == 0).then_some(())
    })
    .await;
    drop(up);
}

/// `pods/attach` and `pods/exec` on containers the node agent's shim runs: stdin reaches a
/// waiting container (`kubectl run -i`, each kubectl: 1.27 over SPDY, 1.33 and 1.37 over
/// WebSocket), output reaches an attached client as it is written, and a container with
/// a terminal gets its input, its resize and a real tty (kube-rs).
async fn attach_to_real_containers(up: &Up, client: &kube::Client) {
    use kube::api::{AttachParams, TerminalSize};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    for minor in [27, 33, 37] {
        let name = format!("talk-{minor}");
        let t0 = Instant::now();
        let out = up.kubectl_version(
            minor,
            &[
                "run",
                &name,
                "--image=busybox",
                "--restart=Never",
                "--rm",
                "-i",
                "--command",
                "--",
                "sh",
                "-c",
                r#"read line; echo "got $line""#,
            ],
            &format!("hello {minor}\n"),
        );
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success() && stdout.contains(&format!("got hello {minor}")),
            "kubectl 1.{minor} run -i: {}\n{stdout}\n{stderr}",
            out.status
        );
        println!(
            "kubectl 1.{minor} run -i: input in, answer out in {:.1}s",
            t0.elapsed().as_secs_f64()
        );
    }

    // A running container's output reaches `kubectl attach` as it is written.
    up.kubectl(&[
        "run",
        "ticker",
        "--image=busybox",
        "--restart=Never",
        "--command",
        "--",
        "sh",
        "-c",
        r#"i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 1; done"#,
    ]);
    up.kubectl(&["wait", "--for=condition=Ready", "pod/ticker", "--timeout=60s"]);
    for minor in [27, 33] {
        let mut child = Command::new(common::kubectl(minor))
            .arg("--kubeconfig")
            .arg(up.kubeconfig())
            .args(["attach", "ticker"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl attach");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(60));
        let _ = child.kill();
        let out = child.wait_with_output().expect("kubectl attach");
        let line = line.unwrap_or_else(|_| {
            panic!(
                "kubectl 1.{minor} attach printed no tick within 60 s: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(line.starts_with("tick "), "kubectl 1.{minor} attach: {line:?}");
    }
    // The container went on after its clients left, and exec enters it.
    let hostname = up.kubectl(&["exec", "ticker", "--", "cat", "/etc/hostname"]);
    assert_eq!(hostname.trim(), "ticker");
    let logs = up.kubectl(&["logs", "ticker"]);
    assert!(logs.lines().count() >= 2, "the ticker goes on: {logs:?}");
    up.kubectl(&["delete", "pod", "ticker", "--wait=false"]);

    // A container with a terminal: the resize and the input arrive in order, through the pty.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "term"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "sh", "image": "busybox", "stdin": true, "stdinOnce": true, "tty": true,
            "command": ["sh", "-c", "read x; stty size; echo \"said $x\"; test -t 0 && echo on-a-tty"],
        }]},
    }))
    .expect("pod");
    pods.create(&Default::default(), &pod).await.expect("create term");
    common::wait_for("term running", Duration::from_secs(60), || async {
        let p = pods.get("term").await.ok()?;
        (p.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    let mut attached = pods
        .attach("term", &AttachParams::interactive_tty())
        .await
        .expect("kube-rs attach with a tty");
    let mut resize = attached.terminal_size().expect("a terminal's resize channel");
    futures::SinkExt::send(&mut resize, TerminalSize { width: 100, height: 40 })
        .await
        .expect("resize");
    let mut stdin = attached.stdin().expect("stdin");
    stdin.write_all(b"hi\n").await.expect("type");
    let mut stdout = attached.stdout().expect("stdout");
    let mut seen = String::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0u8; 1024];
        while !seen.contains("on-a-tty") {
            let n = stdout.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    assert!(read.is_ok() && seen.contains("on-a-tty"), "the terminal said: {seen:?}");
    assert!(seen.contains("40 100"), "stty saw the resize: {seen:?}");
    assert!(seen.contains("said hi"), "{seen:?}");
    drop(stdin);
    let _ = attached.join().await;
    pods.delete("term", &Default::default()).await.expect("delete term");
}
