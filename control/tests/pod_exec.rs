//! `pods/exec` and `pods/portforward` end to end: real clients (kube-rs, kubectl 1.27, 1.33
//! and 1.37) → API server (authorization, then an upgraded connection relayed byte for
//! byte) → the node agent's streaming server over TLS → a real "container": a process in
//! a network namespace of its own (`unshare -n`) serving HTTP on its loopback, described on
//! disk exactly as the agent's shim leaves a running container (`spec.json`,
//! `started.json`), so exec enters its namespaces, working directory and environment, and
//! port forwarding reaches a port that only exists inside it.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api,
    api::{AttachParams, Patch, PatchParams, PostParams},
};
use rudder_control::node::{
    log_server,
    shim::{self, ShimSpec, Started},
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POD_PORT: u16 = 8080;

/// The container process, killed on drop.
struct Container(Child);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Is something listening on `port` in `pid`'s network namespace?
fn listening(pid: u32, port: u16) -> bool {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let want = format!(":{port:04X} ");
    // State 0A is LISTEN.
    table.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && format!("{} ", f[1]).ends_with(&want) && f[3] == "0A"
    })
}

struct Cluster {
    server: common::TestServer,
    _root: tempfile::TempDir,
    _container: Container,
    workdir: PathBuf,
}

/// A server, a node `n1` whose agent serves a pod `box` with one running container
/// `shell` (the HTTP server), bound to it.
async fn cluster() -> Cluster {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let root = tempfile::tempdir().expect("node root");
    let workdir = root.path().join("work");
    std::fs::create_dir_all(&workdir).unwrap();
    std::fs::write(workdir.join("index.html"), "hello from the pod\n").unwrap();

    let child = Command::new("unshare")
        .args(["-n", "sh", "-c"])
        .arg(format!(
            "ip link set lo up && exec python3 -m http.server {POD_PORT} --bind 127.0.0.1"
        ))
        .current_dir(&workdir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the container process");
    let pid = child.id();
    let container = Container(child);
    common::wait_for("the container to listen", Duration::from_secs(30), || async {
        listening(pid, POD_PORT).then_some(())
    })
    .await;

    // What the shim leaves for a running container.
    let uid = "6c1d0b2e-aaaa-bbbb-cccc-000011112222";
    let logs = root.path().join(format!("logs/default_box_{uid}/shell"));
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("0.log"), "").unwrap();
    let run_dir = root.path().join(format!("pods/{uid}/containers/shell/0"));
    std::fs::create_dir_all(&run_dir).unwrap();
    let spec = ShimSpec {
        argv: vec!["python3".into()],
        env: vec![("GREETING".into(), "hello".into())],
        working_dir: Some(workdir.clone()),
        netns: None,
        hostname: None,
        fresh_sysfs: false,
        mounts: Vec::new(),
        cgroups: Vec::new(),
        log_path: logs.join("0.log"),
        created_mount_points: None,
        stdin: false,
        stdin_once: false,
        tty: false,
    };
    shim::write_state(&run_dir, shim::SPEC_FILE, &spec).unwrap();
    shim::write_state(
        &run_dir,
        shim::STARTED_FILE,
        &Started {
            pid: pid as i32,
            started_at: shim::now_rfc3339(),
        },
    )
    .unwrap();

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
    let pod = json!({"metadata": {"name": "box"},
                     "spec": {"nodeName": "n1", "containers": [{"name": "shell", "image": "x"}]}});
    pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap())
        .await
        .expect("pod");
    pods.patch_status(
        "box",
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"phase": "Running"}})),
    )
    .await
    .expect("pod status");
    Cluster {
        server,
        _root: root,
        _container: container,
        workdir,
    }
}

async fn read_all(r: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let mut s = String::new();
    if let Some(mut r) = r {
        r.read_to_string(&mut s).await.expect("read");
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_exec_and_portforward() {
    let c = cluster().await;
    let pods: Api<Pod> = Api::default_namespaced(c.server.client().await);
    eprintln!("cluster up");

    // stdout, stderr and the exit code, with the container's environment and directory.
    let mut p = pods
        .exec(
            "box",
            ["sh", "-c", "echo $GREETING from $(pwd); echo oops >&2; exit 3"],
            &AttachParams::default().stderr(true),
        )
        .await
        .expect("exec");
    let (out, err) = tokio::join!(read_all(p.stdout()), read_all(p.stderr()));
    assert_eq!(out, format!("hello from {}\n", c.workdir.display()));
    assert_eq!(err, "oops\n");
    let status = p.take_status().expect("status").await.expect("a status");
    assert_eq!(status.status.as_deref(), Some("Failure"));
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    let causes = status.details.and_then(|d| d.causes).unwrap_or_default();
    assert_eq!(causes[0].reason.as_deref(), Some("ExitCode"));
    assert_eq!(causes[0].message.as_deref(), Some("3"));
    p.join().await.expect("exec ends");
    eprintln!("exec with exit code done");

    // stdin, ended by v5's close signal.
    let mut p = pods
        .exec("box", ["cat"], &AttachParams::default().stdin(true).stderr(false))
        .await
        .expect("exec cat");
    let mut stdin = p.stdin().expect("stdin");
    stdin.write_all(b"through stdin\n").await.unwrap();
    // kube-rs's stdin is half of a simplex pipe: dropping it does not end the other half,
    // shutting it down does (and kube-rs then sends v5's close of stdin).
    stdin.shutdown().await.unwrap();
    assert_eq!(read_all(p.stdout()).await, "through stdin\n");
    let status = p.take_status().expect("status").await.expect("a status");
    assert_eq!(status.status.as_deref(), Some("Success"));

    // The exec runs in the container's network namespace: its port is there.
    let mut p = pods
        .exec("box", ["cat", "/proc/net/tcp"], &AttachParams::default().stderr(false))
        .await
        .expect("exec");
    let tcp = read_all(p.stdout()).await;
    assert!(tcp.contains(&format!(":{POD_PORT:04X} ")), "{tcp}");

    // A command that does not exist.
    let mut p = pods
        .exec("box", ["no-such-command"], &AttachParams::default().stderr(false))
        .await
        .expect("exec");
    let status = p.take_status().expect("status").await.expect("a status");
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("no-such-command"),
        "{status:?}"
    );

    // Port forwarding to a port only the pod's network namespace has.
    let mut pf = pods.portforward("box", &[POD_PORT]).await.expect("portforward");
    let mut stream = pf.take_stream(POD_PORT).expect("the port's stream");
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\nHost: box\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut response))
        .await
        .expect("the response in time")
        .expect("read");
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(response.ends_with("hello from the pod\n"), "{response}");
    drop(stream);
    // The pod's server closed its connection, so the agent closed the WebSocket (as the
    // kubelet does once every forwarded connection is over). kube-rs's forwarder may then
    // still try to send its own close for the dropped stream, which tungstenite refuses
    // after the peer's close: that race is the client's and harmless.
    let ended = tokio::time::timeout(Duration::from_secs(30), pf.join())
        .await
        .expect("the forwarder ends");
    if let Err(e) = ended {
        assert!(
            e.to_string().contains("close") || format!("{e:?}").contains("SendAfterClosing"),
            "{e:?}"
        );
    }
}

/// Runs kubectl with `stdin`; (exit code, stdout, stderr).
fn kubectl_with_input(minor: u32, kc: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(common::kubectl(minor))
        .arg("--kubeconfig")
        .arg(kc)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().expect("kubectl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kubectl_checks(minor: u32, kc: &Path) {
    // An exit code passes through; stdout and stderr stay apart.
    let (code, out, err) = kubectl_with_input(
        minor,
        kc,
        &["exec", "box", "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 7"],
        "",
    );
    assert_eq!((code, out.as_str()), (7, "to-out\n"), "kubectl 1.{minor} exec: {err}");
    assert!(err.contains("to-err"), "{err}");

    // -i: stdin reaches the command and its end ends it.
    let (code, out, err) = kubectl_with_input(minor, kc, &["exec", "-i", "box", "--", "cat"], "line one\nline two\n");
    assert_eq!(
        (code, out.as_str()),
        (0, "line one\nline two\n"),
        "kubectl 1.{minor} exec -i: {err}"
    );

    // -it under a terminal (`script` gives kubectl one): the command gets a pty.
    let inner = format!(
        "{} --kubeconfig {} exec -it box -- sh -c 'tty; echo TERM=$TERM'",
        common::kubectl(minor).display(),
        kc.display()
    );
    let out = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .output()
        .expect("script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "kubectl 1.{minor} exec -it: {text}");
    assert!(text.contains("/dev/pts/") && text.contains("TERM=xterm"), "{text}");
}

fn kubectl_port_forward_checks(minor: u32, kc: &Path) {
    let response = port_forward(minor, kc);
    assert!(
        response.starts_with("HTTP/1.0 200"),
        "kubectl 1.{minor} port-forward: {response}"
    );
    assert!(response.ends_with("hello from the pod\n"), "{response}");
}

/// `kubectl port-forward` to a random local port, one HTTP request through it.
fn port_forward(minor: u32, kc: &Path) -> String {
    let child = Command::new(common::kubectl(minor))
        .arg("--kubeconfig")
        .arg(kc)
        .args(["port-forward", "pod/box", &format!(":{POD_PORT}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl port-forward");
    let mut child = Container(child);
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    // "Forwarding from 127.0.0.1:41234 -> 8080"
    let local = loop {
        let Some(Ok(line)) = lines.next() else {
            let mut err = String::new();
            let _ = child.0.stderr.take().unwrap().read_to_string(&mut err);
            panic!("kubectl 1.{minor} port-forward ended: {err}");
        };
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
            break rest.split_whitespace().next().unwrap().parse::<u16>().unwrap();
        }
    };
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", local)).expect("connect to the forwarded port");
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    conn.write_all(b"GET /index.html HTTP/1.0\r\nHost: box\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    if let Err(e) = conn.read_to_string(&mut response) {
        let _ = child.0.kill();
        let mut err = String::new();
        let _ = child.0.stderr.take().unwrap().read_to_string(&mut err);
        panic!("kubectl 1.{minor} port-forward: reading the response: {e}; got {response:?}; kubectl said: {err}");
    }
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec() {
    let c = cluster().await;
    let kc = c.server.kubeconfig();
    tokio::task::spawn_blocking(move || {
        // 1.33 and 1.37 exec over WebSocket v5.
        for minor in [33, 37] {
            kubectl_checks(minor, &kc);
        }
    })
    .await
    .expect("kubectl checks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_27_exec_over_spdy() {
    let c = cluster().await;
    let kc = c.server.kubeconfig();
    tokio::task::spawn_blocking(move || kubectl_checks(27, &kc))
        .await
        .expect("kubectl 1.27 checks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward() {
    let c = cluster().await;
    let kc = c.server.kubeconfig();
    tokio::task::spawn_blocking(move || {
        for minor in [33, 37, 27] {
            kubectl_port_forward_checks(minor, &kc);
        }
    })
    .await
    .expect("kubectl port-forward checks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_needs_create_on_pods_exec() {
    let c = cluster().await;
    let admin = c.server.client().await;
    let role = json!({"metadata": {"name": "viewer"},
                      "rules": [{"apiGroups": [""], "resources": ["pods", "pods/exec", "pods/portforward"], "verbs": ["get", "list"]}]});
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &serde_json::from_value(role).unwrap())
        .await
        .expect("role");
    let binding = json!({"metadata": {"name": "viewer"},
                         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "viewer"},
                         "subjects": [{"kind": "User", "name": "jane", "apiGroup": "rbac.authorization.k8s.io"}]});
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &serde_json::from_value(binding).unwrap())
        .await
        .expect("binding");
    let jane = c.server.cert_client("jane", &[]).await;
    let pods: Api<Pod> = Api::default_namespaced(jane);
    pods.get("box").await.expect("jane may read the pod");
    let Err(err) = pods.exec("box", ["true"], &AttachParams::default()).await else {
        panic!("jane may not exec");
    };
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403 && s.message.contains("User \"jane\" cannot create resource \"pods\" subresource \"exec\"")),
        "{err:?}"
    );
    let Err(err) = pods.portforward("box", &[POD_PORT]).await else {
        panic!("nor forward ports");
    };
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 403), "{err:?}");

    let (cert_pem, key_pem) = c.server.running.pki.issue_client_cert("jane", &[]).unwrap();
    let kc = c.server.user_kubeconfig(
        "jane",
        rudder_control::apiserver::pki::Credential::ClientCert { cert_pem, key_pem },
    );
    let (code, _, err) =
        tokio::task::spawn_blocking(move || kubectl_with_input(33, &kc, &["exec", "box", "--", "true"], ""))
            .await
            .unwrap();
    assert!(code != 0 && err.contains("forbidden"), "{err}");
}
