//! The official PyPI `kubernetes` client, a real client with its own habits (POSTs without
//! a Content-Type, bodies without apiVersion/kind, dict patches as strategic merge patches,
//! DynamicClient discovery), against `rudder server`. The checks live in
//! tests/python/client_test.py; this starts the server and runs it.

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Runs `script` with the venv's Python and `KUBECONFIG`, killing it after `limit`.
/// Returns (exit success, stdout, stderr).
fn run_python(script: &Path, kubeconfig: &Path, limit: Duration) -> (bool, String, String) {
    let python = common::venv_python();
    let out_dir = tempfile::tempdir().expect("temporary directory");
    let (out_path, err_path) = (out_dir.path().join("stdout"), out_dir.path().join("stderr"));
    let mut child = Command::new(&python)
        .arg(script)
        .env("KUBECONFIG", kubeconfig)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", python.display()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python") {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (stdout, mut stderr) = (read(&out_path), read(&err_path));
    if status.is_none() {
        stderr.push_str(&format!("\n(killed after {limit:?})"));
    }
    (status.is_some_and(|s| s.success()), stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_kubernetes_client() {
    python_kubernetes_client_on(common::TestServer::start().await, "embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_kubernetes_client_on_etcd() {
    python_kubernetes_client_on(common::TestServer::start_on_etcd().await, "etcd").await;
}

async fn python_kubernetes_client_on(server: common::TestServer, backend: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client_test.py");
    let kubeconfig = server.kubeconfig();
    let start = Instant::now();
    let (ok, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_python(&script, &kubeconfig, Duration::from_secs(120)))
            .await
            .expect("python runner");
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        ok,
        "tests/python/client_test.py failed:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(
        stdout.contains("all checks passed"),
        "the script ended early:\n{stdout}"
    );
    let checks = stdout.lines().filter(|l| l.starts_with("ok: ")).count();
    println!(
        "python kubernetes client on {backend}: {checks} groups of checks passed in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    server.running.stop().await;
}
