//! Prometheus metrics under kube-proxy's names, so existing dashboards and alerts work
//! unchanged. The text exposition format is small enough to write by hand, which keeps a
//! metrics crate (and its registry machinery) out of the build.

use std::{fmt::Write, sync::Mutex, time::Duration};

use crate::dataplane::Mode;

/// kube-proxy's buckets for sync durations: 1 ms doubling to about 16 s.
const SYNC_BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384,
];

/// Network programming latency: fine below a second, coarse up to minutes (the SLO is
/// about p99 under 30 s).
const LATENCY_BUCKETS: [f64; 20] = [
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// What the change trackers report, read when metrics are scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackerStats {
    pub service_changes_pending: usize,
    pub service_changes_total: u64,
    pub endpoint_changes_pending: usize,
    pub endpoint_changes_total: u64,
}

#[derive(Debug)]
struct Inner {
    sync: Histogram,
    full_sync: Histogram,
    partial_sync: Histogram,
    programming: Histogram,
    last_sync_timestamp: f64,
    last_queued_timestamp: f64,
    no_local_internal: usize,
    no_local_external: usize,
    sync_failures: u64,
    full_syncs: u64,
    partial_syncs: u64,
    conntrack_deleted: u64,
    conntrack_failures: u64,
}

#[derive(Debug)]
pub struct Metrics {
    mode: Mode,
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            inner: Mutex::new(Inner {
                sync: Histogram::new(&SYNC_BUCKETS),
                full_sync: Histogram::new(&SYNC_BUCKETS),
                partial_sync: Histogram::new(&SYNC_BUCKETS),
                programming: Histogram::new(&LATENCY_BUCKETS),
                last_sync_timestamp: 0.0,
                last_queued_timestamp: 0.0,
                no_local_internal: 0,
                no_local_external: 0,
                sync_failures: 0,
                full_syncs: 0,
                partial_syncs: 0,
                conntrack_deleted: 0,
                conntrack_failures: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave these numbers inconsistent enough to
        // matter; keep serving them.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn sync_succeeded(&self, full: bool, took: Duration, now_unix: f64, no_local: (usize, usize)) {
        let mut m = self.lock();
        let secs = took.as_secs_f64();
        m.sync.observe(secs);
        if full {
            m.full_sync.observe(secs);
            m.full_syncs += 1;
        } else {
            m.partial_sync.observe(secs);
            m.partial_syncs += 1;
        }
        m.last_sync_timestamp = now_unix;
        (m.no_local_internal, m.no_local_external) = no_local;
    }

    pub fn sync_failed(&self) {
        self.lock().sync_failures += 1;
    }

    pub fn queued(&self, now_unix: f64) {
        self.lock().last_queued_timestamp = now_unix;
    }

    pub fn programmed(&self, latency: Duration) {
        self.lock().programming.observe(latency.as_secs_f64());
    }

    pub fn conntrack_cleaned(&self, deleted: usize, failed: bool) {
        let mut m = self.lock();
        m.conntrack_deleted += deleted as u64;
        m.conntrack_failures += u64::from(failed);
    }

    pub fn sync_failures(&self) -> u64 {
        self.lock().sync_failures
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, trackers: TrackerStats) -> String {
        let m = self.lock();
        let mut out = String::new();
        m.sync.write(
            &mut out,
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            "",
        );
        m.full_sync.write(
            &mut out,
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            "",
        );
        m.partial_sync.write(
            &mut out,
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            "",
        );
        m.programming.write(
            &mut out,
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            "",
        );
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        gauge(
            &mut out,
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            "gauge",
            m.last_sync_timestamp.to_string(),
        );
        gauge(
            &mut out,
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            "gauge",
            m.last_queued_timestamp.to_string(),
        );
        gauge(
            &mut out,
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            "gauge",
            trackers.endpoint_changes_pending.to_string(),
        );
        gauge(
            &mut out,
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "Cumulative proxy rules Endpoint changes",
            "counter",
            trackers.endpoint_changes_total.to_string(),
        );
        gauge(
            &mut out,
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            "gauge",
            trackers.service_changes_pending.to_string(),
        );
        gauge(
            &mut out,
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "Cumulative proxy rules Service changes",
            "counter",
            trackers.service_changes_total.to_string(),
        );
        let name = "kubeproxy_sync_proxy_rules_no_local_endpoints_total";
        let _ = writeln!(
            out,
            "# HELP {name} Number of services with a Local traffic policy and no endpoints\n# TYPE {name} gauge\n\
             {name}{{traffic_policy=\"internal\"}} {}\n{name}{{traffic_policy=\"external\"}} {}",
            m.no_local_internal, m.no_local_external
        );
        // kube-proxy's per-mode failure counters, plus one name that works for every mode.
        let failures = match self.mode {
            Mode::Iptables => Some("kubeproxy_sync_proxy_rules_iptables_restore_failures_total"),
            Mode::Nftables => Some("kubeproxy_sync_proxy_rules_nftables_sync_failures_total"),
            Mode::Ipvs | Mode::Ebpf => None,
        };
        if let Some(name) = failures {
            gauge(
                &mut out,
                name,
                "Cumulative proxy rules apply failures",
                "counter",
                m.sync_failures.to_string(),
            );
        }
        let mode = format!("{:?}", self.mode).to_lowercase();
        let name = "rudder_sync_failures_total";
        let _ = writeln!(
            out,
            "# HELP {name} Syncs whose apply failed (the previous rules stayed in place)\n# TYPE {name} counter\n\
             {name}{{mode=\"{mode}\"}} {}",
            m.sync_failures
        );
        let name = "rudder_syncs_total";
        let _ = writeln!(
            out,
            "# HELP {name} Successful syncs by kind\n# TYPE {name} counter\n\
             {name}{{kind=\"full\"}} {}\n{name}{{kind=\"partial\"}} {}",
            m.full_syncs, m.partial_syncs
        );
        gauge(
            &mut out,
            "rudder_conntrack_stale_udp_deleted_total",
            "UDP conntrack entries deleted because their endpoint went away",
            "counter",
            m.conntrack_deleted.to_string(),
        );
        gauge(
            &mut out,
            "rudder_conntrack_cleanup_failures_total",
            "Conntrack cleanups that failed",
            "counter",
            m.conntrack_failures.to_string(),
        );
        out
    }
}

/// Golden files of the exposition: what scrapers, dashboards and alerts depend on.
#[cfg(test)]
pub(crate) mod golden {
    /// One line of an exposition: comments (`# HELP`, `# TYPE`) verbatim, samples as their
    /// series (name and labels, verbatim) and value (as a number, so `1` and `1.0` agree:
    /// Prometheus parses both alike).
    #[derive(Debug, PartialEq)]
    enum Line {
        Comment(String),
        Sample(String, f64),
    }

    fn parse(text: &str) -> Vec<Line> {
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                if l.starts_with('#') {
                    return Line::Comment(l.to_owned());
                }
                let (series, value) = l
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("a sample without a value: {l}"));
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap_or_else(|e| panic!("sample value {v:?}: {e}")),
                };
                Line::Sample(series.to_owned(), value)
            })
            .collect()
    }

    /// `actual` says the same as the golden file at `path` (relative to the crate).
    pub(crate) fn assert_same(actual: &str, path: &str) {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        let golden = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let (want, got) = (parse(&golden), parse(actual));
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(
                g,
                w,
                "line {} differs from {}\n--- actual ---\n{actual}",
                i + 1,
                file.display()
            );
        }
        assert_eq!(
            got.len(),
            want.len(),
            "line count differs from {}\n--- actual ---\n{actual}",
            file.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family, with observations spread over the buckets, in each mode's naming.
    fn sample(mode: Mode) -> String {
        let m = Metrics::new(mode);
        m.sync_succeeded(true, Duration::from_millis(3), 1_700_000_000.0, (1, 2));
        m.sync_succeeded(false, Duration::from_millis(30), 1_700_000_001.5, (3, 4));
        m.sync_succeeded(false, Duration::from_secs(20), 1_700_000_002.0, (3, 4));
        m.sync_failed();
        m.sync_failed();
        m.queued(1_700_000_003.25);
        m.programmed(Duration::from_millis(700));
        m.programmed(Duration::from_secs(400));
        m.conntrack_cleaned(5, false);
        m.conntrack_cleaned(0, true);
        m.render(TrackerStats {
            service_changes_pending: 1,
            service_changes_total: 11,
            endpoint_changes_pending: 2,
            endpoint_changes_total: 22,
        })
    }

    /// kube-proxy's metric names, types, help and buckets (and ours beside them), as
    /// written before the move to prometheus-client.
    #[test]
    fn exposition_matches_the_golden_files() {
        golden::assert_same(&sample(Mode::Nftables), "src/agent/testdata/metrics-nftables.prom");
        golden::assert_same(&sample(Mode::Iptables), "src/agent/testdata/metrics-iptables.prom");
        golden::assert_same(&sample(Mode::Ebpf), "src/agent/testdata/metrics-ebpf.prom");
        golden::assert_same(
            &Metrics::new(Mode::Ipvs).render(TrackerStats::default()),
            "src/agent/testdata/metrics-ipvs-fresh.prom",
        );
    }

    #[test]
    #[ignore = "writes the golden files from the current code"]
    fn write_golden_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for (mode, file) in [
            (Mode::Nftables, "metrics-nftables.prom"),
            (Mode::Iptables, "metrics-iptables.prom"),
            (Mode::Ebpf, "metrics-ebpf.prom"),
        ] {
            std::fs::write(dir.join("src/agent/testdata").join(file), sample(mode)).unwrap();
        }
        std::fs::write(
            dir.join("src/agent/testdata/metrics-ipvs-fresh.prom"),
            Metrics::new(Mode::Ipvs).render(TrackerStats::default()),
        )
        .unwrap();
        let (services, xdp) = crate::dataplane::ebpf::stats::tests_sample();
        std::fs::write(
            dir.join("src/dataplane/ebpf/testdata/stats.prom"),
            crate::dataplane::ebpf::stats::encode(&services, Some(xdp)),
        )
        .unwrap();
        std::fs::write(
            dir.join("src/dataplane/ebpf/testdata/stats-empty.prom"),
            crate::dataplane::ebpf::stats::encode(&[], None),
        )
        .unwrap();
    }

    #[test]
    fn exposition_uses_kube_proxy_names_and_counts() {
        let m = Metrics::new(Mode::Nftables);
        m.sync_succeeded(true, Duration::from_millis(3), 1700000000.0, (1, 2));
        m.sync_succeeded(false, Duration::from_millis(30), 1700000001.0, (0, 0));
        m.sync_failed();
        m.programmed(Duration::from_millis(700));
        let text = m.render(TrackerStats {
            endpoint_changes_total: 7,
            ..Default::default()
        });
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_duration_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 1"),
            "{text}"
        );
        assert!(text.contains("kubeproxy_sync_full_proxy_rules_duration_seconds_count 1"));
        assert!(text.contains("kubeproxy_network_programming_duration_seconds_bucket{le=\"0.75\"} 1"));
        assert!(text.contains("kubeproxy_network_programming_duration_seconds_bucket{le=\"0.5\"} 0"));
        assert!(text.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds 1700000001"));
        assert!(text.contains("kubeproxy_sync_proxy_rules_endpoint_changes_total 7"));
        assert!(text.contains("kubeproxy_sync_proxy_rules_nftables_sync_failures_total 1"));
        assert!(text.contains("rudder_sync_failures_total{mode=\"nftables\"} 1"));
        assert!(text.contains("kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"internal\"} 0"));
    }
}
