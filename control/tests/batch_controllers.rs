//! Jobs and CronJobs on a real cluster: `rudder up` (the real binary: API server,
//! scheduler, controllers, two nodes in network namespaces with their agents running the
//! pods as processes), driven with real kubectl 1.33 (and 1.27 for the Indexed Job). One
//! cluster start for every case, in sequence, so the test stays affordable on two cores.
//! Needs root, cgroups and the `rudder-proxy` binary beside `rudder` (`cargo build -p
//! rudder-proxy`; the workspace build has it).

mod common;

use std::{
    io::Write,
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    batch::v1::{CronJob, Job},
    core::v1::Pod,
};
use kube::{Api, api::ListParams};

use common::up::Up;

const NS: &str = "default";
/// Generous: pods are real processes on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(150);

/// kubectl 1.`minor` in the test namespace: (success, stdout, stderr).
fn try_kubectl(up: &Up, minor: u32, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(common::kubectl(minor))
        .arg("--kubeconfig")
        .arg(up.kubeconfig())
        .arg("--cache-dir")
        .arg(up.data_dir.path().join(format!("kubectl-cache-{minor}")))
        .args(["-n", NS])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write manifest");
    }
    drop(input);
    let out = child.wait_with_output().expect("kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kubectl(up: &Up, minor: u32, args: &[&str]) -> String {
    let (ok, out, err) = try_kubectl(up, minor, args, None);
    assert!(ok, "kubectl 1.{minor} {args:?} failed:\n{out}\n{err}");
    out
}

fn apply(up: &Up, minor: u32, manifest: &serde_json::Value) {
    let (ok, out, err) = try_kubectl(up, minor, &["apply", "-f", "-"], Some(&manifest.to_string()));
    assert!(ok, "kubectl 1.{minor} apply failed:\n{out}\n{err}");
}

fn job_manifest(name: &str, spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

fn condition<'a>(job: &'a Job, ty: &str) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty && c.status == "True")
}

async fn job_pods(client: &kube::Client, job: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .expect("list pods")
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_cronjobs_run_on_a_real_cluster() {
    let mut up = Up::start(
        "batch",
        Ipv4Addr::new(10, 253, 60, 0),
        &["--nodes", "2", "--mode", "nftables", "--no-demo"],
    );
    let started = Instant::now();
    up.wait_for("rudder-proxy running on every node", Duration::from_secs(240));
    println!("cluster up in {:.1}s", started.elapsed().as_secs_f64());
    let client = common::client_from(&up.kubeconfig()).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);

    // A CronJob first, so its first minute passes while the Jobs below run.
    let t0 = Instant::now();
    kubectl(
        &up,
        33,
        &[
            "create",
            "cronjob",
            "tick",
            "--image=busybox",
            "--schedule=* * * * *",
            "--",
            "sh",
            "-c",
            "echo tick",
        ],
    );
    let table = kubectl(&up, 33, &["get", "cronjobs"]);
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"
        ],
        "{table}"
    );
    assert!(table.contains("* * * * *") && table.contains("False"), "{table}");
    let (ok, _, err) = try_kubectl(
        &up,
        33,
        &["create", "cronjob", "bad", "--image=busybox", "--schedule=61 * * * *"],
        None,
    );
    assert!(
        !ok && err.contains("spec.schedule"),
        "a bad schedule is refused naming the field: {err}"
    );

    // `kubectl create job` runs to completion; kubectl reads its pod's output.
    kubectl(
        &up,
        33,
        &[
            "create",
            "job",
            "hello",
            "--image=busybox",
            "--",
            "sh",
            "-c",
            "echo hello from a job",
        ],
    );
    let t = Instant::now();
    kubectl(
        &up,
        33,
        &["wait", "--for=condition=complete", "job/hello", "--timeout=150s"],
    );
    println!("job hello complete {:.1}s after create", t.elapsed().as_secs_f64());
    let table = kubectl(&up, 33, &["get", "jobs", "hello"]);
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"], "{table}");
    assert!(table.contains("Complete") && table.contains("1/1"), "{table}");
    let logs = kubectl(&up, 33, &["logs", "job/hello"]);
    assert!(logs.contains("hello from a job"), "kubectl logs job/hello: {logs:?}");
    let hello = jobs.get("hello").await.expect("job");
    let status = hello.status.clone().expect("status");
    assert_eq!((status.succeeded, status.active), (Some(1), Some(0)));
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    assert!(condition(&hello, "SuccessCriteriaMet").is_some(), "{status:?}");

    // A Job whose pods fail stops at its backoff limit: two failures with backoffLimit 1.
    apply(
        &up,
        33,
        &job_manifest(
            "doomed",
            serde_json::json!({"backoffLimit": 1, "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "exit 3"]}]}}}),
        ),
    );
    let t = Instant::now();
    kubectl(
        &up,
        33,
        &["wait", "--for=condition=failed", "job/doomed", "--timeout=150s"],
    );
    println!("job doomed failed {:.1}s after create", t.elapsed().as_secs_f64());
    let doomed = jobs.get("doomed").await.expect("job");
    let failed = condition(&doomed, "Failed").expect("Failed");
    assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(doomed.status.as_ref().and_then(|s| s.failed), Some(2));
    assert!(kubectl(&up, 33, &["get", "jobs", "doomed"]).contains("Failed"));

    // A pod template that restarts Always is refused, naming the field.
    let (ok, _, err) = try_kubectl(
        &up,
        33,
        &["create", "-f", "-"],
        Some(
            &job_manifest(
                "always",
                serde_json::json!({"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}),
            )
            .to_string(),
        ),
    );
    assert!(!ok && err.contains("spec.template.spec.restartPolicy"), "{err}");

    // An Indexed Job through kubectl 1.27: three indexes, two at a time, each pod told its
    // index by the downward API and named by it.
    apply(
        &up,
        27,
        &job_manifest(
            "indexed",
            serde_json::json!({"completions": 3, "parallelism": 2, "completionMode": "Indexed", "ttlSecondsAfterFinished": 600,
                "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox",
                    "command": ["sh", "-c", "echo index=$JOB_COMPLETION_INDEX host=$(hostname)"]}]}}}),
        ),
    );
    kubectl(
        &up,
        27,
        &["wait", "--for=condition=complete", "job/indexed", "--timeout=150s"],
    );
    let indexed = jobs.get("indexed").await.expect("job");
    assert_eq!(
        indexed.status.as_ref().and_then(|s| s.completed_indexes.as_deref()),
        Some("0-2")
    );
    let pods = job_pods(&client, "indexed").await;
    let mut seen = Vec::new();
    for pod in &pods {
        let index = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("batch.kubernetes.io/job-completion-index"))
            .cloned()
            .expect("index annotation");
        let name = pod.metadata.name.clone().unwrap_or_default();
        let logs = kubectl(&up, 27, &["logs", &name]);
        assert!(
            logs.contains(&format!("index={index} host=indexed-{index}")),
            "{name}: {logs:?}"
        );
        seen.push(index);
    }
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"], "one succeeded pod per index");

    // A finished Job with ttlSecondsAfterFinished 0 goes, and its pods with it.
    apply(
        &up,
        33,
        &job_manifest(
            "brief",
            serde_json::json!({"ttlSecondsAfterFinished": 0, "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox", "command": ["true"]}]}}}),
        ),
    );
    common::wait_for("the Job brief deleted after it finished", WAIT, || async {
        let gone = matches!(jobs.get("brief").await, Err(kube::Error::Api(s)) if s.code == 404);
        (gone && job_pods(&client, "brief").await.is_empty()).then_some(())
    })
    .await;

    // The CronJob has fired by now (or does within its next minute), and its Job completes.
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), NS);
    let scheduled = common::wait_for("a Job of the CronJob tick", Duration::from_secs(130), || async {
        let all = jobs.list(&ListParams::default()).await.ok()?;
        all.items.into_iter().find(|j| {
            j.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.kind == "CronJob" && r.name == "tick" && r.controller == Some(true))
        })
    })
    .await;
    let name = scheduled.metadata.name.clone().unwrap_or_default();
    println!(
        "cronjob tick created {name} {:.1}s after it was created",
        t0.elapsed().as_secs_f64()
    );
    let minutes = name
        .strip_prefix("tick-")
        .and_then(|m| m.parse::<i64>().ok())
        .expect("tick-<minutes>");
    assert!(
        (minutes * 60 - jiff::Timestamp::now().as_second()).abs() < 300,
        "{name}"
    );
    kubectl(
        &up,
        33,
        &[
            "wait",
            "--for=condition=complete",
            &format!("job/{name}"),
            "--timeout=150s",
        ],
    );
    common::wait_for("the CronJob's lastSuccessfulTime", WAIT, || async {
        let cj = cronjobs.get("tick").await.ok()?;
        let s = cj.status?;
        (s.last_schedule_time.is_some() && s.last_successful_time.is_some()).then_some(())
    })
    .await;

    // A Job made by hand from the CronJob's template.
    kubectl(&up, 33, &["create", "job", "manual", "--from=cronjob/tick"]);
    kubectl(
        &up,
        33,
        &["wait", "--for=condition=complete", "job/manual", "--timeout=150s"],
    );
    let logs = kubectl(&up, 33, &["logs", "job/manual"]);
    assert!(logs.contains("tick"), "{logs:?}");
    kubectl(
        &up,
        33,
        &["patch", "cronjob/tick", "-p", r#"{"spec": {"suspend": true}}"#],
    );

    // Deleting the CronJob takes its Jobs along (the garbage collector follows their
    // ownerReferences).
    kubectl(&up, 33, &["delete", "cronjob", "tick", "--wait=false"]);
    common::wait_for("the CronJob's Jobs deleted with it", WAIT, || async {
        let left = jobs.get_opt(&name).await.ok()?;
        left.is_none().then_some(())
    })
    .await;
    println!("batch test done in {:.1}s", started.elapsed().as_secs_f64());
}
