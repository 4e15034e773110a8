//! The churn and first-packet benchmark suites at their smallest size, through real
//! namespaces and a real kernel (root): their reports have the documented shape, every
//! EndpointSlice change was eventually answered from its new endpoint (nothing lost), and
//! nothing named `rbench-<pid>` is left behind. Timings are printed, never asserted.

use std::time::Duration;

use rudder_proxy::{
    bench::{churn, first_packet, topology},
    dataplane::Mode,
};

/// One suite at a time: each checks that nothing of this process is left afterwards.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the benchmark suites create namespaces: run the tests as root (CI does)"
    );
}

#[test]
fn churn_observes_every_change_from_its_new_endpoint_and_cleans_up() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    root();
    let opts = churn::Opts {
        modes: vec![Mode::Ebpf, Mode::Nftables],
        services: vec![50],
        changes: 20,
        rate: 20.0,
        timeout: Duration::from_secs(120),
        ..churn::Opts::default()
    };
    let report = churn::run(&opts, &|s| eprintln!("{s}")).expect("the churn suite runs");
    println!("{}", report.table());
    assert_eq!(report.schema, churn::SCHEMA);
    assert_eq!(report.results.len(), 2, "one row per mode and size");
    for (row, mode) in report.results.iter().zip(["ebpf", "nftables"]) {
        assert_eq!((row.mode.as_str(), row.services, row.changes), (mode, 50, 20));
        assert_eq!(
            row.lost, 0,
            "{mode}: every change is answered from its new endpoint: {row:?}"
        );
        assert_eq!(row.observed, 20);
        let (p, o) = (
            row.programmed_ms.expect("programmed"),
            row.observed_ms.expect("observed"),
        );
        assert_eq!((p.n, o.n), (20, 20));
        assert!(p.min <= p.p50 && p.p50 <= p.p99 && p.p99 <= p.max, "{p:?}");
        assert!(row.syncs >= 1 && row.cpu_s >= 0.0, "{row:?}");
    }
    let json = serde_json::to_string(&report).expect("serializes");
    let back: churn::Report = serde_json::from_str(&json).expect("reads back");
    assert_eq!(back.results.len(), 2);
    assert_eq!(topology::leftovers(), Vec::<String>::new(), "nothing of ours is left");
}

#[test]
fn first_packet_measures_both_paths_per_size_and_cleans_up() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    root();
    let opts = first_packet::Opts {
        modes: vec![Mode::Nftables, Mode::Ebpf],
        services: vec![50, 0],
        connections: 50,
        rounds: 2,
        warmup: 10,
        ..first_packet::Opts::default()
    };
    let report = first_packet::run(&opts, &|s| eprintln!("{s}")).expect("the first-packet suite runs");
    println!("{}", report.table());
    assert_eq!(report.schema, first_packet::SCHEMA);
    let shape: Vec<(&str, usize)> = report.results.iter().map(|r| (r.mode.as_str(), r.services)).collect();
    assert_eq!(shape, [("nftables", 0), ("nftables", 50), ("ebpf", 0), ("ebpf", 50)]);
    for r in &report.results {
        // The ebpf mode loses a rare new connection (see the note in first_packet.rs); the
        // path must work, not be perfect.
        assert!(r.errors <= 5, "connections answered: {r:?}");
        assert!(r.direct_us.expect("direct").n + r.errors >= 100);
        if r.services == 0 {
            assert!(r.cluster_ip_us.is_none() && r.ratio_median.is_none());
        } else {
            assert!(r.cluster_ip_us.expect("ClusterIP").n >= 95);
            assert_eq!(r.ratio_median.expect("ratios").n, 2);
            assert!(r.ratio_to_bare.is_some(), "size 0 was measured: {r:?}");
        }
    }
    let json = serde_json::to_string(&report).expect("serializes");
    let _: first_packet::Report = serde_json::from_str(&json).expect("reads back");
    assert_eq!(topology::leftovers(), Vec::<String>::new(), "nothing of ours is left");
}
