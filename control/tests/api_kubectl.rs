//! Real kubectl binaries (1.27 and 1.33) against `rudder server`.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: "nginx:1.27", ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  labels: {app: web}
spec:
  containers: [{name: web, image: "nginx:1.27"}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_127_and_133_get_create_watch_delete() {
    kubectl_suite(common::TestServer::start().await, "embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_127_and_133_on_etcd() {
    kubectl_suite(common::TestServer::start_on_etcd().await, "etcd").await;
}

async fn kubectl_suite(server: common::TestServer, backend: &'static str) {
    let kubeconfig = server.kubeconfig();
    for minor in [27, 33] {
        let cache = server.dir.path().join(format!("cache-{minor}"));
        let ns = format!("k{minor}");
        let kc = kubeconfig.clone();
        let manifest = server.dir.path().join("manifest.yaml");
        std::fs::write(&manifest, MANIFEST).expect("manifest");
        let report = tokio::task::spawn_blocking(move || {
            let run = |args: &[&str]| common::run_kubectl(minor, &kc, &cache, args);

            let (ok, out, err) = run(&["get", "namespaces"]);
            assert!(ok, "kubectl 1.{minor} get namespaces: {err}");
            let header = out.lines().next().unwrap_or_default();
            assert!(header.contains("NAME") && header.contains("STATUS") && header.contains("AGE"), "columns: {out}");
            assert!(out.lines().any(|l| l.starts_with("default") && l.contains("Active")), "{out}");

            // kubectl >= 1.32 sends these as protobuf.
            let (ok, _, err) = run(&["create", "namespace", &ns]);
            assert!(ok, "kubectl 1.{minor} create namespace: {err}");
            let (ok, _, err) = run(&["create", "configmap", "-n", &ns, "settings", "--from-literal=a=b"]);
            assert!(ok, "kubectl 1.{minor} create configmap: {err}");
            let (ok, _, err) = run(&["create", "secret", "generic", "-n", &ns, "creds", "--from-literal=user=admin"]);
            assert!(ok, "kubectl 1.{minor} create secret: {err}");
            let (ok, out, err) = run(&["get", "-n", &ns, "configmap", "settings", "-o", "jsonpath={.data.a}"]);
            assert!(ok && out == "b", "configmap data: {out} {err}");
            let (ok, out, err) = run(&["get", "-n", &ns, "secret", "creds", "-o", "jsonpath={.type}/{.data.user}"]);
            assert!(ok && out == "Opaque/YWRtaW4=", "secret: {out} {err}");

            let (ok, out, err) = run(&["apply", "-n", &ns, "-f", manifest.to_str().unwrap_or_default()]);
            assert!(ok, "kubectl 1.{minor} apply: {err}");
            assert!(
                out.contains("deployment.apps/web created") && out.contains("service/web created") && out.contains("pod/web-0 created"),
                "{out}"
            );
            let (ok, out, err) = run(&["get", "-n", &ns, "deployments"]);
            assert!(ok && out.lines().next().unwrap_or_default().contains("UP-TO-DATE") && out.contains("web"), "{out} {err}");

            // Server-side apply, as `kubectl apply --server-side` sends it.
            let (ok, out, err) = run(&["apply", "--server-side", "-n", &ns, "-f", manifest.to_str().unwrap_or_default()]);
            assert!(ok && out.contains("serverside-applied"), "kubectl 1.{minor} apply --server-side: {out} {err}");

            // Default validation is strict: a typo is refused and names the field.
            let typo = std::env::temp_dir().join(format!("rudder-typo-{}-{minor}.yaml", std::process::id()));
            std::fs::write(&typo, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndatta: {a: b}\n").expect("write");
            let (ok, _, err) = run(&["apply", "-n", &ns, "-f", typo.to_str().unwrap_or_default()]);
            assert!(!ok && err.contains("datta"), "kubectl 1.{minor} accepted an unknown field: {err}");
            // A second apply sends a strategic merge patch.
            let (ok, out, err) = run(&["apply", "-n", &ns, "-f", manifest.to_str().unwrap_or_default()]);
            assert!(ok && out.contains("unchanged"), "kubectl 1.{minor} re-apply: {out} {err}");

            let (ok, out, err) = run(&["get", "-n", &ns, "services"]);
            assert!(ok, "{err}");
            assert!(out.lines().next().unwrap_or_default().contains("CLUSTER-IP"), "{out}");
            assert!(out.contains("80/TCP"), "{out}");

            // get -w sees a change made while it watches.
            let mut watcher = Command::new(common::kubectl(minor))
                .arg("--kubeconfig").arg(&kc).arg("--cache-dir").arg(&cache)
                .args(["get", "-w", "-n", &ns, "pods", "--output-watch-events"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("kubectl get -w");
            let stdout = watcher.stdout.take().expect("stdout");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx.recv_timeout(Duration::from_secs(20)).expect("initial watch output");
            let (ok, _, err) = run(&["label", "-n", &ns, "pod", "web-0", "changed=yes"]);
            assert!(ok, "kubectl label: {err}");
            let mut saw_change = false;
            while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
                if line.contains("MODIFIED") && line.contains("web-0") {
                    saw_change = true;
                    break;
                }
            }
            let _ = watcher.kill();
            let _ = watcher.wait();
            assert!(saw_change, "kubectl 1.{minor} get -w did not see the label change");

            let (ok, out, err) = run(&["delete", "-n", &ns, "pod", "web-0"]);
            assert!(ok, "kubectl delete: {err}");
            assert!(out.contains("deleted"), "{out}");
            let (ok, out, err) = run(&["delete", "-n", &ns, "service", "web"]);
            assert!(ok, "kubectl delete service: {err}");
            assert!(out.contains("deleted"), "{out}");
            format!("kubectl 1.{minor} on {backend}: get (columns), create namespace/configmap/secret, apply with default (strict) validation, typo refused, re-apply unchanged, apply --server-side, get -w (MODIFIED seen), delete: ok")
        })
        .await
        .expect("kubectl steps");
        println!("{report}");
    }
    server.running.stop().await;
}
