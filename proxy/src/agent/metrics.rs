//! Prometheus metrics under kube-proxy's names, so existing dashboards and alerts work
//! unchanged (a golden test holds the names, types, help and buckets), written with
//! `prometheus-client` through [`crate::exposition`].

use std::time::Duration;

use prometheus_client::{
    collector::Collector,
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
};

use crate::{
    dataplane::Mode,
    exposition::{Family, encode},
};

/// kube-proxy's buckets for sync durations: 1 ms doubling to about 16 s.
const SYNC_BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384,
];

/// Network programming latency: fine below a second, coarse up to minutes (the SLO is
/// about p99 under 30 s).
const LATENCY_BUCKETS: [f64; 20] = [
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0,
];

/// What the change trackers report, read when metrics are scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackerStats {
    pub service_changes_pending: usize,
    pub service_changes_total: u64,
    pub endpoint_changes_pending: usize,
    pub endpoint_changes_total: u64,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The live metrics. Each is an atomic handle shared with the families written at a
/// scrape, so recording takes no lock of ours.
#[derive(Debug)]
pub struct Metrics {
    mode: Mode,
    sync: Histogram,
    full_sync: Histogram,
    partial_sync: Histogram,
    programming: Histogram,
    last_sync_timestamp: FloatGauge,
    last_queued_timestamp: FloatGauge,
    no_local_internal: Gauge,
    no_local_external: Gauge,
    sync_failures: Counter,
    full_syncs: Counter,
    partial_syncs: Counter,
    conntrack_deleted: Counter,
    conntrack_failures: Counter,
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            sync: Histogram::new(SYNC_BUCKETS),
            full_sync: Histogram::new(SYNC_BUCKETS),
            partial_sync: Histogram::new(SYNC_BUCKETS),
            programming: Histogram::new(LATENCY_BUCKETS),
            last_sync_timestamp: FloatGauge::default(),
            last_queued_timestamp: FloatGauge::default(),
            no_local_internal: Gauge::default(),
            no_local_external: Gauge::default(),
            sync_failures: Counter::default(),
            full_syncs: Counter::default(),
            partial_syncs: Counter::default(),
            conntrack_deleted: Counter::default(),
            conntrack_failures: Counter::default(),
        }
    }

    pub fn sync_succeeded(&self, full: bool, took: Duration, now_unix: f64, no_local: (usize, usize)) {
        let secs = took.as_secs_f64();
        self.sync.observe(secs);
        if full {
            self.full_sync.observe(secs);
            self.full_syncs.inc();
        } else {
            self.partial_sync.observe(secs);
            self.partial_syncs.inc();
        }
        self.last_sync_timestamp.set(now_unix);
        self.no_local_internal.set(count(no_local.0));
        self.no_local_external.set(count(no_local.1));
    }

    pub fn sync_failed(&self) {
        self.sync_failures.inc();
    }

    pub fn queued(&self, now_unix: f64) {
        self.last_queued_timestamp.set(now_unix);
    }

    pub fn programmed(&self, latency: Duration) {
        self.programming.observe(latency.as_secs_f64());
    }

    pub fn conntrack_cleaned(&self, deleted: usize, failed: bool) {
        self.conntrack_deleted.inc_by(deleted as u64);
        if failed {
            self.conntrack_failures.inc();
        }
    }

    pub fn sync_failures(&self) -> u64 {
        self.sync_failures.get()
    }

    /// The Prometheus text exposition of everything. The trackers' numbers are read at
    /// the scrape, so the families are assembled per scrape around the live handles.
    pub fn render(&self, trackers: TrackerStats) -> String {
        let mut families: Vec<Box<dyn Collector>> = vec![
            Box::new(Family::single(
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                self.sync.clone(),
            )),
            Box::new(Family::single(
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
                self.full_sync.clone(),
            )),
            Box::new(Family::single(
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
                self.partial_sync.clone(),
            )),
            Box::new(Family::single(
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                self.programming.clone(),
            )),
            Box::new(Family::single(
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
                self.last_sync_timestamp.clone(),
            )),
            Box::new(Family::single(
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
                self.last_queued_timestamp.clone(),
            )),
            Box::new(Family::single(
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
                ConstGauge::new(count(trackers.endpoint_changes_pending)),
            )),
            Box::new(Family::single(
                "kubeproxy_sync_proxy_rules_endpoint_changes",
                "Cumulative proxy rules Endpoint changes",
                ConstCounter::new(trackers.endpoint_changes_total),
            )),
            Box::new(Family::single(
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
                ConstGauge::new(count(trackers.service_changes_pending)),
            )),
            Box::new(Family::single(
                "kubeproxy_sync_proxy_rules_service_changes",
                "Cumulative proxy rules Service changes",
                ConstCounter::new(trackers.service_changes_total),
            )),
            // A gauge despite its name, as in kube-proxy.
            Box::new(Family::labelled(
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                "Number of services with a Local traffic policy and no endpoints",
                MetricType::Gauge,
                vec![
                    (
                        vec![("traffic_policy", "internal".into())],
                        self.no_local_internal.clone(),
                    ),
                    (
                        vec![("traffic_policy", "external".into())],
                        self.no_local_external.clone(),
                    ),
                ],
            )),
        ];
        // kube-proxy's per-mode failure counters, plus one name that works for every mode.
        let failures = match self.mode {
            Mode::Iptables => Some("kubeproxy_sync_proxy_rules_iptables_restore_failures"),
            Mode::Nftables => Some("kubeproxy_sync_proxy_rules_nftables_sync_failures"),
            Mode::Ipvs | Mode::Ebpf => None,
        };
        if let Some(name) = failures {
            families.push(Box::new(Family::single(
                name,
                "Cumulative proxy rules apply failures",
                self.sync_failures.clone(),
            )));
        }
        let mode = format!("{:?}", self.mode).to_lowercase();
        families.extend::<[Box<dyn Collector>; 4]>([
            Box::new(Family::labelled(
                "rudder_sync_failures",
                "Syncs whose apply failed (the previous rules stayed in place)",
                MetricType::Counter,
                vec![(vec![("mode", mode)], self.sync_failures.clone())],
            )),
            Box::new(Family::labelled(
                "rudder_syncs",
                "Successful syncs by kind",
                MetricType::Counter,
                vec![
                    (vec![("kind", "full".into())], self.full_syncs.clone()),
                    (vec![("kind", "partial".into())], self.partial_syncs.clone()),
                ],
            )),
            Box::new(Family::single(
                "rudder_conntrack_stale_udp_deleted",
                "UDP conntrack entries deleted because their endpoint went away",
                self.conntrack_deleted.clone(),
            )),
            Box::new(Family::single(
                "rudder_conntrack_cleanup_failures",
                "Conntrack cleanups that failed",
                self.conntrack_failures.clone(),
            )),
        ]);
        encode(families)
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
        crate::exposition::golden::assert_same(&sample(Mode::Nftables), "src/agent/testdata/metrics-nftables.prom");
        crate::exposition::golden::assert_same(&sample(Mode::Iptables), "src/agent/testdata/metrics-iptables.prom");
        crate::exposition::golden::assert_same(&sample(Mode::Ebpf), "src/agent/testdata/metrics-ebpf.prom");
        crate::exposition::golden::assert_same(
            &Metrics::new(Mode::Ipvs).render(TrackerStats::default()),
            "src/agent/testdata/metrics-ipvs-fresh.prom",
        );
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
