//! `kubectl logs` end to end: real kubectl → API server (`pods/log`) → the node agent's log
//! server over TLS (CA-issued serving certificate, kubelet client certificate) → CRI log
//! files written here as a shim would.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use rudder_control::node::log_server;
use serde_json::json;

fn record(stream: &str, tag: &str, text: &str) -> String {
    format!("{} {stream} {tag} {text}\n", jiff::Timestamp::now())
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("open log");
    f.write_all(text.as_bytes()).expect("append");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_tail_previous_timestamps_and_follow() {
    let server = common::TestServer::start().await;
    let client = server.client().await;

    // The node's files: run 0 ended, run 1 is the current one.
    let root = tempfile::tempdir().expect("node root");
    let uid = "0d4f5e6a-1111-2222-3333-444455556666";
    let logs = root.path().join(format!("logs/default_web_{uid}/app"));
    std::fs::create_dir_all(&logs).unwrap();
    let run_dir = |a: u32| root.path().join(format!("pods/{uid}/containers/app/{a}"));
    std::fs::create_dir_all(run_dir(0)).unwrap();
    std::fs::create_dir_all(run_dir(1)).unwrap();
    std::fs::write(
        run_dir(0).join("exit.json"),
        r#"{"exit_code":1,"signal":null,"finished_at":"2026-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    append(
        &logs.join("0.log"),
        &(record("stdout", "F", "old run") + &record("stderr", "F", "crashed")),
    );
    let current = logs.join("1.log");
    append(
        &current,
        &(record("stdout", "F", "first") + &record("stdout", "P", "sec") + &record("stdout", "F", "ond")),
    );

    // The log server, with a serving certificate from the cluster CA for 127.0.0.1.
    let pki = &server.running.pki;
    let serving = pki
        .issue_serving_cert("n1", &["127.0.0.1".to_owned()])
        .expect("serving certificate");
    let tls = log_server::tls_config(
        Some(&serving),
        pki.ca_pem().as_bytes(),
        "n1",
        "127.0.0.1".parse().unwrap(),
    )
    .expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(log_server::serve(
        listener,
        tls,
        root.path().to_path_buf(),
        std::future::pending(),
    ));

    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap(),
        )
        .await
        .expect("node");
    let status = json!({"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                                   "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}});
    nodes
        .patch_status("n1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node status");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, containers) in [
        ("web", json!([{"name": "app", "image": "x"}])),
        ("two", json!([{"name": "a", "image": "x"}, {"name": "b", "image": "x"}])),
    ] {
        let pod = json!({"metadata": {"name": name}, "spec": {"nodeName": "n1", "containers": containers}});
        pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap())
            .await
            .expect("pod");
    }
    let unscheduled = json!({"metadata": {"name": "pending"}, "spec": {"containers": [{"name": "a", "image": "x"}]}});
    pods.create(&PostParams::default(), &serde_json::from_value(unscheduled).unwrap())
        .await
        .expect("pod");

    let err = pods
        .logs("two", &kube::api::LogParams::default())
        .await
        .expect_err("two containers");
    assert!(
        err.to_string()
            .contains("a container name must be specified for pod two, choose one of: [a b]"),
        "{err}"
    );

    let kc: PathBuf = server.kubeconfig();
    let cache = server.dir.path().join("cache");
    let current2 = current.clone();
    let run1 = run_dir(1);
    tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| common::run_kubectl(33, &kc, &cache, args);
        let (ok, out, err) = run(&["logs", "web"]);
        assert!(ok, "kubectl logs: {err}");
        assert_eq!(out, "first\nsecond\n");
        let (ok, out, err) = run(&["logs", "web", "-c", "app", "--tail=1"]);
        assert!(ok, "--tail: {err}");
        assert_eq!(out, "second\n");
        let (ok, out, err) = run(&["logs", "pod/web", "--previous"]);
        assert!(ok, "--previous: {err}");
        assert_eq!(out, "old run\ncrashed\n");
        let (ok, out, err) = run(&["logs", "web", "--timestamps", "--tail=1"]);
        assert!(ok, "--timestamps: {err}");
        let (time, text) = out.trim_end().split_once(' ').expect("a timestamp");
        assert!(time.parse::<jiff::Timestamp>().is_ok() && text == "second", "{out:?}");
        let (ok, out, err) = run(&["logs", "web", "--limit-bytes=3"]);
        assert!(ok, "--limit-bytes: {err}");
        assert_eq!(out, "fir");

        // kubectl picks the first container itself; the server's answer is checked below.
        let (ok, _, err) = run(&["logs", "two", "-c", "a", "--previous"]);
        assert!(!ok && err.contains("not found on this node"), "{err}");
        let (ok, _, err) = run(&["logs", "pending"]);
        assert!(!ok && err.contains("does not have a host assigned"), "{err}");
        let (ok, _, err) = run(&["logs", "nope"]);
        assert!(!ok && err.contains("not found"), "{err}");

        // The first run has no previous one.
        let logs_dir = current2.parent().unwrap().to_path_buf();
        std::fs::rename(logs_dir.join("0.log"), logs_dir.join("0.log.bak")).unwrap();
        let (ok, _, err) = run(&["logs", "web", "--previous"]);
        assert!(
            !ok && err.contains("previous terminated container \"app\" in pod \"web\" not found"),
            "{err}"
        );
        std::fs::rename(logs_dir.join("0.log.bak"), logs_dir.join("0.log")).unwrap();

        // Follow: a line appended while kubectl follows arrives; the run's end ends it.
        let mut child = Command::new(common::kubectl(33))
            .arg("--kubeconfig")
            .arg(&kc)
            .arg("--cache-dir")
            .arg(&cache)
            .args(["logs", "-f", "web"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl logs -f");
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let wait = Duration::from_secs(30);
        assert_eq!(rx.recv_timeout(wait).expect("first line"), "first");
        assert_eq!(rx.recv_timeout(wait).expect("second line"), "second");
        append(&current2, &record("stdout", "F", "appended while following"));
        assert_eq!(
            rx.recv_timeout(wait).expect("the appended line"),
            "appended while following"
        );
        append(&current2, &record("stderr", "F", "last words"));
        std::fs::write(
            run1.join("exit.json"),
            r#"{"exit_code":0,"signal":null,"finished_at":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(rx.recv_timeout(wait).expect("the last line"), "last words");
        let deadline = Instant::now() + wait;
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("kubectl logs -f did not end after the container's run ended");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "kubectl logs -f exited with {status}");
    })
    .await
    .expect("kubectl checks");
}

/// The log server only answers clients with a certificate from the cluster CA that are
/// the API server or cluster admins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_server_requires_an_authorized_client_certificate() {
    let server = common::TestServer::start().await;
    let pki = &server.running.pki;
    let root = tempfile::tempdir().expect("node root");
    let serving = pki
        .issue_serving_cert("n1", &["127.0.0.1".to_owned()])
        .expect("serving certificate");
    let tls = log_server::tls_config(
        Some(&serving),
        pki.ca_pem().as_bytes(),
        "n1",
        "127.0.0.1".parse().unwrap(),
    )
    .expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(log_server::serve(
        listener,
        tls,
        root.path().to_path_buf(),
        std::future::pending(),
    ));

    let dir = server.dir.path().to_path_buf();
    let ca = dir.join("ca-for-curl.crt");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let mut codes = Vec::new();
    for who in [
        None,
        Some(("jane", vec![])),
        Some(("kube-apiserver-kubelet-client", vec![])),
        Some(("admin", vec!["system:masters"])),
    ] {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca);
        if let Some((user, groups)) = who {
            let (cert, key) = pki.issue_client_cert(user, &groups).unwrap();
            let (c, k) = (dir.join(format!("{user}.crt")), dir.join(format!("{user}.key")));
            std::fs::write(&c, cert).unwrap();
            std::fs::write(&k, key).unwrap();
            cmd.arg("--cert").arg(&c).arg("--key").arg(&k);
        }
        cmd.arg(format!("https://127.0.0.1:{port}/containerLogs/default/web/app"));
        let out = tokio::task::spawn_blocking(move || cmd.output().expect("curl"))
            .await
            .unwrap();
        codes.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    assert_eq!(codes, ["401", "403", "404", "404"]);
}
