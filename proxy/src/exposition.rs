//! Prometheus text exposition (format 0.0.4) through `prometheus-client`, which the agent's
//! metrics and the ebpf mode's per-Service counters both write.
//!
//! Each family is a [`Family`] collector rather than a `Registry::register` entry because
//! `register` appends a full stop to the help text, and kube-proxy's help texts (which
//! dashboards show) have none; a collector also keeps series in the order given, where
//! the crate's own label-keyed family would write them in hash order.

use std::fmt::Debug;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, prometheus_text},
    metrics::MetricType,
    registry::Registry,
};

/// The content type of what [`encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Label names and values of one series.
pub type Labels = Vec<(&'static str, String)>;

/// One metric family: its name (counters without `_total`, which the encoder appends),
/// help, type, and series.
#[derive(Debug)]
pub struct Family<M> {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    series: Vec<(Labels, M)>,
}

impl<M: EncodeMetric> Family<M> {
    /// A family of one series without labels.
    pub fn single(name: &'static str, help: &'static str, metric: M) -> Self {
        Self {
            name,
            help,
            kind: metric.metric_type(),
            series: vec![(Vec::new(), metric)],
        }
    }

    /// A family of labelled series, written in this order; with none, only its help and
    /// type are written.
    pub fn labelled(name: &'static str, help: &'static str, kind: MetricType, series: Vec<(Labels, M)>) -> Self {
        Self {
            name,
            help,
            kind,
            series,
        }
    }
}

impl<M: EncodeMetric + Debug + Send + Sync + 'static> Collector for Family<M> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (labels, m) in &self.series {
            m.encode(metric.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// The exposition of `families`, in order.
pub fn encode(families: Vec<Box<dyn Collector>>) -> String {
    let mut registry = Registry::default();
    for family in families {
        registry.register_collector(family);
    }
    let mut out = String::new();
    // Writing into a String cannot fail, and our collectors fail only when writing does.
    if let Err(error) = prometheus_text::encode(&mut out, &registry) {
        tracing::warn!(%error, "encoding metrics failed; the exposition is cut short");
    }
    out
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
