//! Summaries of measured samples: a distribution's percentiles ([`Dist`]) and a figure's
//! spread over rounds ([`Stat`]). (The framework's `stats.rs` has the shared `Stat`; this
//! private copy keeps the churn and first-packet suites independent until they meet.)

use serde::{Deserialize, Serialize};

/// min/median/max of one figure over its rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Self> {
        let v = sorted(values);
        Some(Self {
            min: *v.first()?,
            median: quantile(&v, 0.5),
            max: *v.last()?,
            n: v.len(),
        })
    }
}

/// Percentiles of many samples (latencies, in milliseconds unless named otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Dist {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    pub fn of(values: &[f64]) -> Option<Self> {
        let v = sorted(values);
        Some(Self {
            n: v.len(),
            min: *v.first()?,
            p50: quantile(&v, 0.5),
            p99: quantile(&v, 0.99),
            max: *v.last()?,
        })
    }
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The nearest-rank quantile of sorted, non-empty samples.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `x` with 3 significant digits, for tables.
pub fn fmt3(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let d = Dist::of(&v).unwrap();
        assert_eq!((d.min, d.p50, d.p99, d.max, d.n), (1.0, 50.0, 99.0, 100.0, 100));
        let s = Stat::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max, s.n), (1.0, 2.0, 3.0, 3));
        assert!(Dist::of(&[]).is_none());
        assert_eq!(Dist::of(&[f64::NAN, 2.0]).unwrap().n, 1);
    }
}
