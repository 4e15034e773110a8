//! The memory suite (`rudder_proxy::bench::memory`) at its smallest: a real `rudder server`
//! with 100 Services × 2 endpoints, the real agent in each mode. The report has a row per
//! mode with one round's figures, and nothing the suite made is left behind: no namespace,
//! interface, cgroup, bpffs pin or scratch directory with its prefix, and no server or agent
//! process. Timings and absolute memory are not asserted (they are the benchmark's).

use std::{path::Path, process::Command, time::Duration};

use rudder_proxy::bench::memory::{MODES, Opts, run};
use rudder_tests::e2e::workspace_binary;

#[test]
fn the_memory_suite_reports_every_mode_and_leaves_nothing_behind() {
    let opts = Opts {
        rudder: Some(workspace_binary("rudder")),
        proxy: Some(workspace_binary("rudder-proxy")),
        sizes: vec![100],
        endpoints: 2,
        rounds: 1,
        settle: Duration::from_millis(500),
        concurrency: 8,
        timeout: Duration::from_secs(180),
        ..Opts::default()
    };
    let report = run(&opts, &|line| println!("{line}")).expect("the memory suite runs");

    assert_eq!(report.sizes.len(), 1, "{report:?}");
    let size = &report.sizes[0];
    assert_eq!((size.services, size.objects), (100, 200), "{report:?}");
    assert!(size.create_s > 0.0 && size.server_rss_mib.min > 0.0, "{report:?}");
    let modes: Vec<&str> = size.modes.iter().map(|m| m.mode.as_str()).collect();
    assert_eq!(modes, MODES, "{report:?}");
    for m in &size.modes {
        assert_eq!(m.agent_rss_mib.n, 1, "{m:?}");
        assert!(
            m.agent_rss_mib.min > 0.0 && m.agent_hwm_mib.max >= m.agent_rss_mib.max,
            "{m:?}"
        );
        assert!(m.first_sync_s.min > 0.0, "{m:?}");
    }
    let table = report.table();
    for mode in MODES {
        assert!(table.contains(&format!("| 100 | {mode} |")), "{table}");
    }
    let json = serde_json::to_string(&report).expect("the report serializes");
    assert!(json.contains("\"agent_rss_mib\""), "{json}");

    let prefix = format!("rbench-{}", std::process::id());
    let netns =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().expect("ip").stdout).into_owned();
    assert!(!netns.contains(&prefix), "namespaces left: {netns}");
    let links =
        String::from_utf8_lossy(&Command::new("ip").args(["-o", "link"]).output().expect("ip").stdout).into_owned();
    let ifname = format!("rb{}", std::process::id() % 10_000);
    assert!(
        !links
            .lines()
            .any(|l| l.contains(&format!(" {ifname}a")) || l.contains(&format!(" {ifname}n"))),
        "interfaces left: {links}"
    );
    let tmp = std::env::temp_dir();
    for dir in [Path::new("/sys/fs/bpf"), Path::new("/sys/fs/cgroup"), tmp.as_path()] {
        let left: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
    }
    // Every process the suite started named its files by the prefix.
    let processes: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&prefix))
        .collect();
    assert!(processes.is_empty(), "processes left: {processes:?}");
}
