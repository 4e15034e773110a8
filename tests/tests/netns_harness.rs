//! The netns harness itself, exercised with real packets: the topology routes, the echo
//! server answers, errors are classified, and nothing is left behind.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    process::Command,
    sync::Mutex,
    thread,
    time::Duration,
};

use rudder_tests::netns::{AskErrorKind, Cluster, EchoConfig, InNetns, ask_tcp};

const PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_secs(3);

fn cluster(nodes: usize) -> Cluster {
    Cluster::new(nodes).expect("building the netns cluster")
}

/// Namespaces `ip netns list` shows, by name.
fn listed_namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("running ip netns list");
    assert!(
        out.status.success(),
        "ip netns list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn assert_all_gone(namespaces: &[String]) {
    let listed = listed_namespaces();
    let left: Vec<_> = namespaces.iter().filter(|ns| listed.contains(ns)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

/// Dead or a zombie waiting for a reaper: either way it no longer holds a namespace.
/// SIGKILL takes effect asynchronously, so give it a moment.
fn process_dies(pid: u32) -> bool {
    let dead = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    };
    (0..200).any(|_| {
        dead() || {
            thread::sleep(Duration::from_millis(10));
            false
        }
    })
}

#[test]
fn layout_matches_the_address_plan() {
    let c = cluster(2);
    let p = c.add_pod(2, "p1").expect("adding pod p1");
    let prefix = c.prefix();
    assert!(prefix.starts_with(&format!("rdr-{}-", std::process::id())), "{prefix}");

    let n2 = c.node(2);
    assert_eq!(n2.name(), "n2");
    assert_eq!(n2.ip().to_string(), "10.250.0.12");
    assert_eq!(n2.pod_cidr().to_string(), "10.244.2.0/24");
    assert_eq!(n2.gateway().to_string(), "10.244.2.1");
    assert_eq!(n2.netns(), format!("{prefix}-n2"));
    assert_eq!(c.underlay_netns(), format!("{prefix}-net"));
    assert_eq!(p.ip().to_string(), "10.244.2.10");
    assert_eq!(p.netns(), format!("{prefix}-p1"));
    assert!(n2.pod_cidr().contains(p.ip()));

    let forward = n2
        .run(Command::new("cat").arg("/proc/sys/net/ipv4/ip_forward"))
        .expect("reading ip_forward");
    assert_eq!(forward.trim(), "1", "ip_forward in {}", n2.netns());
    let routes = n2.run(Command::new("ip").args(["route"])).expect("listing routes");
    assert!(
        routes.contains("10.244.1.0/24 via 10.250.0.11 dev eth0"),
        "routes on n2:\n{routes}"
    );
    let pod_routes = p.run(Command::new("ip").args(["route"])).expect("listing pod routes");
    assert!(
        pod_routes.contains("default via 10.244.2.1 dev eth0"),
        "routes in p1:\n{pod_routes}"
    );
    println!(
        "layout: n2 {} pod CIDR {}, pod p1 {} via {}, ip_forward=1, route to n1's pods",
        n2.ip(),
        n2.pod_cidr(),
        p.ip(),
        p.gateway()
    );
}

#[test]
fn pods_on_different_nodes_reach_each_other_over_tcp_and_udp() {
    let c = cluster(2);
    let p1 = c.add_pod(1, "p1").expect("adding p1");
    let p2 = c.add_pod(2, "p2").expect("adding p2");
    let _s1 = p1.serve("p1", PORT).expect("serving on p1");
    let _s2 = p2.serve("p2", PORT).expect("serving on p2");

    for (from, to) in [(&p1, &p2), (&p2, &p1)] {
        let tcp = from.ask_tcp(to.ip(), PORT, TIMEOUT).expect("tcp ask across nodes");
        assert_eq!(tcp, to.name());
        let udp = from.ask_udp(to.ip(), PORT, TIMEOUT).expect("udp ask across nodes");
        assert_eq!(udp, to.name());
        println!(
            "pod {} ({}) -> {} ({}):{PORT} tcp and udp answered by {tcp:?}",
            from.name(),
            from.ip(),
            to.name(),
            to.ip()
        );
    }
}

#[test]
fn node_reaches_pod_on_another_node() {
    let c = cluster(2);
    let p2 = c.add_pod(2, "p2").expect("adding p2");
    let _server = p2.serve("p2", PORT).expect("serving on p2");
    let n1 = c.node(1);

    assert_eq!(n1.ask_tcp(p2.ip(), PORT, TIMEOUT).expect("tcp from node"), "p2");
    assert_eq!(n1.ask_udp(p2.ip(), PORT, TIMEOUT).expect("udp from node"), "p2");
    println!(
        "node n1 ({}) -> pod p2 ({}):{PORT} tcp and udp answered by \"p2\"",
        n1.ip(),
        p2.ip()
    );
}

#[test]
fn pod_reaches_pod_on_the_same_node() {
    let c = cluster(1);
    let a = c.add_pod(1, "a").expect("adding a");
    let b = c.add_pod(1, "b").expect("adding b");
    let _server = b.serve("b", PORT).expect("serving on b");

    assert_eq!(a.ask_tcp(b.ip(), PORT, TIMEOUT).expect("tcp on one node"), "b");
    assert_eq!(a.ask_udp(b.ip(), PORT, TIMEOUT).expect("udp on one node"), "b");
    println!(
        "pod a ({}) -> b ({}):{PORT} on node n1, tcp and udp answered by \"b\"",
        a.ip(),
        b.ip()
    );
}

#[test]
fn port_without_server_is_refused() {
    let c = cluster(2);
    let p1 = c.add_pod(1, "p1").expect("adding p1");
    let p2 = c.add_pod(2, "p2").expect("adding p2");

    let tcp = p1.ask_tcp(p2.ip(), 9, TIMEOUT).expect_err("nothing listens on tcp 9");
    assert_eq!(tcp.kind, AskErrorKind::Refused, "{tcp}");
    let message = tcp.to_string();
    assert!(
        message.contains("10.244.2.10:9") && message.contains(p1.netns()),
        "{message}"
    );
    let udp = p1.ask_udp(p2.ip(), 9, TIMEOUT).expect_err("nothing listens on udp 9");
    assert_eq!(udp.kind, AskErrorKind::Refused, "{udp}");
    println!("closed port: tcp and udp to {}:9 refused ({tcp})", p2.ip());
}

#[test]
fn silent_address_times_out() {
    let c = cluster(1);
    let p1 = c.add_pod(1, "p1").expect("adding p1");
    // On p1's subnet but nobody has it: ARP fails, so nothing ever answers.
    let err = p1
        .ask_tcp([10, 244, 1, 200], PORT, Duration::from_millis(300))
        .expect_err("no such host");
    assert!(
        matches!(err.kind, AskErrorKind::Timeout | AskErrorKind::Unreachable),
        "{err}"
    );
    println!("absent host 10.244.1.200: {err}");
}

#[test]
fn echo_binary_serves_http_and_its_ask_command_reports_errors() {
    let c = cluster(1);
    let p1 = c.add_pod(1, "p1").expect("adding p1");
    let p2 = c.add_pod(1, "p2").expect("adding p2");
    let config = EchoConfig {
        udp_port: 5353,
        http_port: Some(8081),
        ..EchoConfig::new("p2", PORT)
    };
    let _server = p2.serve_with(&config).expect("serving on p2");
    let echo = env!("CARGO_BIN_EXE_rudder-echo");
    let target = p2.ip().to_string();

    let ask = |proto: &str, port: u16| {
        let out = p1
            .exec(Command::new(echo).args(["ask", proto, &target, &port.to_string()]))
            .expect("running rudder-echo ask");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(ask("tcp", PORT), (Some(0), "p2".to_owned(), String::new()));
    assert_eq!(ask("udp", 5353).1, "p2");
    let (code, _, stderr) = ask("tcp", 9);
    assert_eq!(code, Some(3), "refused exits 3: {stderr}");
    assert!(stderr.contains("connection refused"), "{stderr}");

    let http = p1
        .with_netns(|| {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect((p2.ip(), 8081))?;
            stream.write_all(b"GET / HTTP/1.1\r\nHost: p2\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            std::io::Result::Ok(response)
        })
        .expect("entering p1")
        .expect("http request");
    assert!(
        http.starts_with("HTTP/1.1 200 OK\r\n") && http.ends_with("\r\n\r\np2\n"),
        "{http:?}"
    );
    println!("rudder-echo: ask tcp/udp answered \"p2\", closed port exits 3, GET :8081 -> 200 \"p2\"");
}

#[test]
fn dropping_a_cluster_removes_its_namespaces_and_processes() {
    let c = cluster(2);
    let p1 = c.add_pod(1, "p1").expect("adding p1");
    let server = p1.serve("p1", PORT).expect("serving on p1");
    // A process no guard knows about: only the namespace teardown can stop it.
    let forked = p1
        .run(Command::new("sh").args(["-c", "sleep 600 >/dev/null 2>&1 & echo $!"]))
        .expect("forking sleep");
    let forked: u32 = forked.trim().parse().expect("pid of the forked sleep");
    let namespaces = c.namespaces();
    assert_eq!(namespaces.len(), 4, "{namespaces:?}");
    let server_pid = server.pid();
    std::mem::forget(server);

    drop(c);
    // The pod handle outlives the cluster; dropping it now must be harmless.
    drop(p1);
    assert_all_gone(&namespaces);
    assert!(
        process_dies(server_pid),
        "echo server {server_pid} survived its cluster"
    );
    assert!(process_dies(forked), "forked sleep {forked} survived its cluster");
    println!(
        "dropped cluster: {} namespaces gone, leaked server and orphaned sleep killed",
        namespaces.len()
    );
}

#[test]
fn dropping_a_pod_removes_only_that_pod() {
    let c = cluster(1);
    let keep = c.add_pod(1, "keep").expect("adding keep");
    let gone = c.add_pod(1, "gone").expect("adding gone");
    let gone_ns = gone.netns().to_owned();
    drop(gone);
    assert_all_gone(std::slice::from_ref(&gone_ns));
    assert!(listed_namespaces().contains(&keep.netns().to_owned()));
    let again = c.add_pod(1, "gone").expect("the name is free again");
    assert_eq!(again.ip().to_string(), "10.244.1.12", "pod addresses are not reused");
    println!(
        "dropped pod: {gone_ns} deleted, {} kept, re-added pod got a fresh address {}",
        keep.netns(),
        again.ip()
    );
}

#[test]
fn cluster_dropped_by_a_panic_is_cleaned_up() {
    let created = Mutex::new(Vec::new());
    let result = catch_unwind(AssertUnwindSafe(|| {
        let c = cluster(2);
        let p = c.add_pod(2, "p1").expect("adding p1");
        let _server = p.serve("p1", PORT).expect("serving on p1");
        *created.lock().expect("lock") = c.namespaces();
        // Unwinds like a panic, without the panic hook's message and backtrace in the output.
        std::panic::resume_unwind(Box::new("deliberate panic with a live cluster"));
    }));
    assert!(result.is_err(), "the closure must have panicked");
    let namespaces = created.into_inner().expect("lock");
    assert_eq!(namespaces.len(), 4, "{namespaces:?}");
    assert_all_gone(&namespaces);
    println!(
        "panicked cluster: all {} namespaces gone after unwinding",
        namespaces.len()
    );
}

#[test]
fn concurrent_clusters_do_not_collide() {
    // Same pod names, ports and addresses in both: only the namespaces keep them apart.
    let build_and_ask = |tag: &'static str| {
        thread::spawn(move || {
            let c = cluster(2);
            let p1 = c.add_pod(1, "p1").expect("adding p1");
            let p2 = c.add_pod(2, "p2").expect("adding p2");
            let _server = p2.serve(tag, PORT).expect("serving on p2");
            for _ in 0..20 {
                assert_eq!(p1.ask_tcp(p2.ip(), PORT, TIMEOUT).expect("tcp ask"), tag);
                assert_eq!(
                    ask_tcp(c.node(1).netns(), p2.ip(), PORT, TIMEOUT).expect("tcp ask from node"),
                    tag
                );
            }
            c.namespaces()
        })
    };
    let (a, b) = (build_and_ask("cluster-a"), build_and_ask("cluster-b"));
    let a = a.join().expect("cluster a thread");
    let b = b.join().expect("cluster b thread");
    assert!(
        a.iter().all(|ns| !b.contains(ns)),
        "namespace names overlap: {a:?} {b:?}"
    );
    assert_all_gone(&a);
    assert_all_gone(&b);
    println!(
        "two concurrent clusters ({} / {}) each answered only by their own server",
        &a[0], &b[0]
    );
}

#[test]
fn bad_requests_fail_clearly() {
    let c = cluster(1);
    let err = c.add_pod(1, "Bad Name").expect_err("invalid pod name");
    assert!(err.to_string().contains("invalid pod name"), "{err}");
    let _p = c.add_pod(1, "p1").expect("adding p1");
    let err = c.add_pod(1, "p1").expect_err("duplicate pod name");
    assert!(err.to_string().contains("already exists"), "{err}");
    let err = c.add_pod(1, "n1").expect_err("pod named like a node");
    assert!(err.to_string().contains("already exists"), "{err}");
    let err = c.add_pod(7, "p7").expect_err("no node 7");
    assert!(err.to_string().contains("no node 7"), "{err}");
    assert!(Cluster::new(0).is_err());
    println!("bad pod names, duplicate names and missing nodes are rejected with clear errors");
}
