//! `rudder up --store etcd` fails over: three etcd members and two API servers on them,
//! each with the embedded scheduler and controllers under leader election. Its own test
//! binary so that it does not share the machine with the other `rudder up` clusters: the
//! failover is timed, and three clusters on two cores measure the load, not the election.

mod common;

use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use common::up::Up;
use kube::Api;
use rudder_control::up::demo;

/// The pid of the `rudder server` whose --data-dir is `dir`.
fn server_pid(dir: &Path) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let data_dir = args
            .iter()
            .position(|a| *a == b"--data-dir")
            .and_then(|i| args.get(i + 1))?;
        (args.get(1) == Some(&b"server".as_slice()) && Path::new(std::str::from_utf8(data_dir).ok()?) == dir)
            .then_some(pid)
    })
}

/// `rudder up --store etcd`: three etcd members and two API servers sharing them; the demo
/// proof passes; SIGKILL to the server whose embedded scheduler and controllers lead moves
/// the Lease to a new holder (the other server, or the killed one that `rudder up` starts
/// again: they race fairly once the lease expires), which then carries out a scale-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudder_up_on_etcd_fails_over_between_two_api_servers() {
    use k8s_openapi::api::{apps::v1::Deployment, coordination::v1::Lease};
    use kube::api::{Patch, PatchParams};
    let mut up = Up::start(
        "le",
        Ipv4Addr::new(10, 253, 9, 0),
        &["--store", "etcd", "--nodes", "2", "--mode", "nftables"],
    );
    up.wait_for("etcd: 3 members", Duration::from_secs(120));
    up.wait_for("second API server", Duration::from_secs(120));
    let proof = up.wait_for("answers from every node and from a pod", Duration::from_secs(240));
    assert!(proof.contains("on n1, n2"), "backends on every node: {proof}");
    up.wait_for("running; Ctrl-C", Duration::from_secs(60));

    let dirs = [up.data_dir.path().join("server"), up.data_dir.path().join("server-2")];
    let logs = [
        up.data_dir.path().join("logs/server.log"),
        up.data_dir.path().join("logs/server-2.log"),
    ];
    let clients = [
        common::client_from(&dirs[0].join("admin.kubeconfig")).await,
        common::client_from(&dirs[1].join("admin.kubeconfig")).await,
    ];
    let holder = |l: Option<Lease>| l.and_then(|l| l.spec?.holder_identity).unwrap_or_default();
    let leases: Api<Lease> = Api::namespaced(clients[0].clone(), "kube-system");
    let first = holder(leases.get_opt("kube-controller-manager").await.ok().flatten());
    assert!(!first.is_empty(), "the controllers' Lease has a holder");
    let leading = (0..2)
        .find(|k| {
            std::fs::read_to_string(&logs[*k])
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("successfully acquired lease") && l.contains(&first))
        })
        .expect("one server's log names the holder");
    let other = 1 - leading;
    let pid = server_pid(&dirs[leading]).expect("the leading server's pid");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let killed = Instant::now();
    let leases: Api<Lease> = Api::namespaced(clients[other].clone(), "kube-system");
    let second = common::wait_for(
        "the other server to take the Lease",
        Duration::from_secs(90),
        || async {
            let h = holder(leases.get_opt("kube-controller-manager").await.ok().flatten());
            (!h.is_empty() && h != first).then_some(h)
        },
    )
    .await;
    let failover = killed.elapsed();
    // The survivor, or the killed server once `rudder up` restarted it: both race fairly.
    assert!(
        logs.iter()
            .any(|l| std::fs::read_to_string(l).unwrap_or_default().contains(&second)),
        "a server's log names the new holder {second}"
    );
    println!(
        "rudder up --store etcd: SIGKILL to the leading API server, its controllers taken over by the other in {:.1} s",
        failover.as_secs_f64()
    );
    Api::<Deployment>::namespaced(clients[other].clone(), "default")
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 4}})),
        )
        .await
        .expect("scale web");
    let scaled = Instant::now();
    let deadline = scaled + Duration::from_secs(180);
    loop {
        let ready = demo::ready_pods(&clients[other], "default", "app=web")
            .await
            .map(|p| p.len())
            .unwrap_or(0);
        if ready == 4 {
            break;
        }
        if Instant::now() > deadline {
            // What an operator would look at first: the objects, then the logs.
            let (_, objects, err) = up.kubectl_try(&["get", "deploy,rs,pods,leases", "-A", "-o", "wide"]);
            panic!(
                "only {ready} of 4 web pods ready 180 s after the scale-up:\n{objects}{err}\n{}",
                up.log_tails()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "rudder up --store etcd: the new leader scaled web to 4 ready pods in {:.1} s",
        scaled.elapsed().as_secs_f64()
    );
    up.wait_for("starting it again", Duration::from_secs(30));
}
